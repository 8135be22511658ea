// Package loadgen drives open-loop (fixed arrival rate) claim load against Boilerhouse over
// REST or NATS and summarises latency per claim source. Latency is measured from each
// request's scheduled start, so a slow server cannot hide queueing (no coordinated omission).
package loadgen

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"time"

	"boilerhouse.dev/messages"
)

// Sample is one finished request.
type Sample struct {
	Op      string // "claim" or "release"
	Source  string // claim source, "" for releases and errors
	Code    string // "" on success, else the error code or HTTP status
	Latency time.Duration
	At      time.Duration // scheduled start, from the start of the run
	// Tenant and Answered (when the answer came) are set for claims.
	Tenant   string
	Answered time.Time
}

// Recorder collects samples from many goroutines.
type Recorder struct {
	mu      sync.Mutex
	samples []Sample
}

func (r *Recorder) Add(s Sample) {
	r.mu.Lock()
	r.samples = append(r.samples, s)
	r.mu.Unlock()
}

// NewClaims maps each tenant whose claim succeeded with a source other than existing to when
// that claim answered.
func (r *Recorder) NewClaims() map[string]time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string]time.Time{}
	for _, s := range r.samples {
		if s.Op == "claim" && s.Code == "" && s.Source != string(messages.SourceExisting) && s.Tenant != "" {
			m[s.Tenant] = s.Answered
		}
	}
	return m
}

// Summary is the latency distribution of one group of samples.
type Summary struct {
	Group              string
	Count              int
	P50, P90, P99, Max time.Duration
}

// Report is what a run measured.
type Report struct {
	Elapsed    time.Duration
	Sent       int
	OK         int
	Throughput float64 // successful requests per second
	Groups     []Summary
	Errors     map[string]int
}

// Percentile of sorted durations, nearest-rank.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// Summarise groups successful samples by op and source.
func (r *Recorder) Summarise(elapsed time.Duration) Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := Report{Elapsed: elapsed, Sent: len(r.samples), Errors: map[string]int{}}
	groups := map[string][]time.Duration{}
	for _, s := range r.samples {
		if s.Code != "" {
			rep.Errors[s.Op+" "+s.Code]++
			continue
		}
		rep.OK++
		g := s.Op
		if s.Source != "" {
			g += " " + s.Source
		}
		groups[g] = append(groups[g], s.Latency)
	}
	for g, ds := range groups {
		slices.Sort(ds)
		rep.Groups = append(rep.Groups, Summary{Group: g, Count: len(ds),
			P50: Percentile(ds, 50), P90: Percentile(ds, 90), P99: Percentile(ds, 99), Max: ds[len(ds)-1]})
	}
	sort.Slice(rep.Groups, func(i, j int) bool { return rep.Groups[i].Group < rep.Groups[j].Group })
	if elapsed > 0 {
		rep.Throughput = float64(rep.OK) / elapsed.Seconds()
	}
	return rep
}

// WriteMarkdown prints the report as a table.
func (rep Report) WriteMarkdown(w io.Writer) {
	WriteTable(w, rep.Groups)
	fmt.Fprintf(w, "\nsent %d, ok %d in %s: %.1f ok/s\n", rep.Sent, rep.OK, rep.Elapsed.Round(time.Millisecond), rep.Throughput)
	if len(rep.Errors) == 0 {
		fmt.Fprintf(w, "errors: none\n")
		return
	}
	keys := make([]string, 0, len(rep.Errors))
	for k := range rep.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "errors:")
	for _, k := range keys {
		fmt.Fprintf(w, " %s=%d", k, rep.Errors[k])
	}
	fmt.Fprintln(w)
}

// WriteTable prints latency summaries as a markdown table.
func WriteTable(w io.Writer, groups []Summary) {
	fmt.Fprintf(w, "| group | count | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n")
	for _, g := range groups {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s |\n", g.Group, g.Count, ms(g.P50), ms(g.P90), ms(g.P99), ms(g.Max))
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// WriteTimeline prints successful claims' latency per interval of their scheduled start, to
// show whether a tail is spread over the run or comes in stalls.
func (r *Recorder) WriteTimeline(w io.Writer, interval time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	buckets := map[int][]time.Duration{}
	last := 0
	for _, s := range r.samples {
		if s.Code != "" || s.Op != "claim" {
			continue
		}
		b := int(s.At / interval)
		buckets[b] = append(buckets[b], s.Latency)
		last = max(last, b)
	}
	fmt.Fprintf(w, "| from | count | p50 | p99 | max |\n|---|---|---|---|---|\n")
	for b := 0; b <= last; b++ {
		ds := buckets[b]
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", time.Duration(b)*interval, len(ds),
			ms(Percentile(ds, 50)), ms(Percentile(ds, 99)), ms(ds[len(ds)-1]))
	}
}
