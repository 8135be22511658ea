// Package stalls reads a Go execution trace and finds the system calls that blocked a goroutine
// longer than a threshold. Pointed at the dev stack during a load run, it shows what the claim
// path waited for: JetStream's file store fsyncs every write with SyncAlways while it holds the
// stream's lock, so one slow fsync stalls every claim that writes, or reads, that stream.
package stalls

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

// Stall is one system call that blocked longer than the threshold.
type Stall struct {
	// Start is the offset from the beginning of the trace.
	Start, Duration time.Duration
	// Call names the system call and the first caller outside the runtime, syscall, os and
	// internal/poll packages, e.g. "syscall.Fsync in server.(*msgBlock).flushPendingMsgsLocked".
	Call string
}

// Report is what [Read] found.
type Report struct {
	// Span is how long the trace covers.
	Span time.Duration
	// Min is the threshold.
	Min time.Duration
	// Stalls in the order they ended.
	Stalls []Stall
}

// Read parses a Go execution trace (runtime/trace, or /debug/pprof/trace) and returns the
// system calls of at least min whose stack has a frame containing match (every call when
// match is empty).
func Read(r io.Reader, min time.Duration, match string) (Report, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return Report{}, fmt.Errorf("stalls: %w", err)
	}
	type open struct {
		since trace.Time
		call  string
	}
	inSyscall := map[trace.GoID]open{}
	var first, last trace.Time
	rep := Report{Min: min}
	for {
		ev, err := tr.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Report{}, fmt.Errorf("stalls: %w", err)
		}
		if first == 0 {
			first = ev.Time()
		}
		last = ev.Time()
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		g := st.Resource.Goroutine()
		from, to := st.Goroutine()
		if o, ok := inSyscall[g]; ok && from == trace.GoSyscall {
			delete(inSyscall, g)
			if d := time.Duration(ev.Time() - o.since); d >= min {
				rep.Stalls = append(rep.Stalls, Stall{Start: time.Duration(o.since - first), Duration: d, Call: o.call})
			}
		}
		if to == trace.GoSyscall {
			if call, ok := describe(st.Stack, match); ok {
				inSyscall[g] = open{since: ev.Time(), call: call}
			}
		}
	}
	rep.Span = time.Duration(last - first)
	return rep, nil
}

// describe names a system call's stack, and says whether a frame contains match.
func describe(s trace.Stack, match string) (string, bool) {
	var call, caller string
	matched := match == ""
	for f := range s.Frames() {
		if strings.Contains(f.Func, match) {
			matched = true
		}
		switch {
		case call == "" && strings.HasPrefix(f.Func, "syscall."):
			call = f.Func
		case caller == "" && call != "" && !plumbing(f.Func):
			caller = short(f.Func)
		}
	}
	if call == "" {
		call = "syscall"
	}
	if caller != "" {
		call += " in " + caller
	}
	return call, matched
}

// plumbing: the packages between a system call and the code that asked for it.
func plumbing(fn string) bool {
	for _, p := range []string{"runtime.", "syscall.", "os.", "internal/"} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

// short drops the import path: "github.com/x/y/server.(*T).f" -> "server.(*T).f".
func short(fn string) string {
	if i := strings.LastIndex(fn, "/"); i >= 0 {
		return fn[i+1:]
	}
	return fn
}

// Total is the time spent in the stalls.
func (r Report) Total() time.Duration {
	var t time.Duration
	for _, s := range r.Stalls {
		t += s.Duration
	}
	return t
}

// Longest returns the n longest stalls, longest first.
func (r Report) Longest(n int) []Stall {
	s := slices.Clone(r.Stalls)
	slices.SortFunc(s, func(a, b Stall) int { return int(b.Duration - a.Duration) })
	return s[:min(n, len(s))]
}

// Markdown writes a summary (count and total time of the stalls) and the n longest.
func (r Report) Markdown(w io.Writer, n int) {
	fmt.Fprintf(w, "%d system calls of %v or more in %.1fs of trace, %v in all", len(r.Stalls), r.Min, r.Span.Seconds(), r.Total().Round(time.Millisecond))
	if len(r.Stalls) == 0 {
		fmt.Fprintln(w)
		return
	}
	fmt.Fprintln(w, "; the longest:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| at | took | call |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, s := range r.Longest(n) {
		fmt.Fprintf(w, "| %.2fs | %.1f ms | %s |\n", s.Start.Seconds(), float64(s.Duration)/float64(time.Millisecond), s.Call)
	}
}
