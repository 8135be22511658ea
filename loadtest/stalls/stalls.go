// Package stalls reads a Go execution trace and finds what held goroutines up: the system calls
// that blocked longer than a threshold, and the garbage collections with the marking that
// allocating goroutines had to do themselves (assists). Pointed at the dev stack during a load
// run, it shows what the claim path waited for: JetStream's file store fsyncs every write with
// SyncAlways while it holds the stream's lock, so one slow fsync stalls every claim that
// writes, or reads, that stream; and a collection that starts late makes every allocating
// goroutine mark.
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

// GC is one garbage collection's concurrent mark phase.
type GC struct {
	// Start is the offset from the beginning of the trace.
	Start, Mark time.Duration
	// Assist is the marking done by allocating goroutines during the phase, added up.
	Assist time.Duration
}

// Report is what [Read] found.
type Report struct {
	// Span is how long the trace covers.
	Span time.Duration
	// Min is the threshold.
	Min time.Duration
	// Stalls in the order they ended.
	Stalls []Stall
	// GCs whose mark phase ended within the trace, in order.
	GCs []GC
}

// Read parses a Go execution trace (runtime/trace, or /debug/pprof/trace) and returns the
// system calls of at least min whose stack has a frame containing match (every call when
// match is empty).
func Read(r io.Reader, min time.Duration, match string) (Report, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return Report{}, fmt.Errorf("stalls: %w", err)
	}
	sc := scan{rep: Report{Min: min}, min: min, match: match,
		inSyscall: map[trace.GoID]openCall{}, assisting: map[trace.GoID]trace.Time{}}
	var last trace.Time
	for {
		ev, err := tr.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Report{}, fmt.Errorf("stalls: %w", err)
		}
		if sc.first == 0 {
			sc.first = ev.Time()
		}
		last = ev.Time()
		switch ev.Kind() {
		case trace.EventRangeBegin:
			sc.rangeBegin(ev)
		case trace.EventRangeEnd:
			sc.rangeEnd(ev)
		case trace.EventStateTransition:
			sc.transition(ev)
		}
	}
	sc.rep.Span = time.Duration(last - sc.first)
	return sc.rep, nil
}

// scan is the state of one pass over a trace.
type scan struct {
	rep        Report
	min        time.Duration
	match      string
	first      trace.Time
	inSyscall  map[trace.GoID]openCall
	assisting  map[trace.GoID]trace.Time // goroutine -> start of its assist
	markStart  trace.Time                // of the mark phase under way; 0: none
	markAssist time.Duration             // assists in it so far
}

type openCall struct {
	since trace.Time
	call  string
}

func (s *scan) rangeBegin(ev trace.Event) {
	switch ev.Range().Name {
	case markPhase:
		s.markStart, s.markAssist = ev.Time(), 0
	case markAssist:
		s.assisting[ev.Goroutine()] = ev.Time()
	}
}

func (s *scan) rangeEnd(ev trace.Event) {
	switch ev.Range().Name {
	case markPhase:
		if s.markStart != 0 {
			s.rep.GCs = append(s.rep.GCs, GC{Start: time.Duration(s.markStart - s.first),
				Mark: time.Duration(ev.Time() - s.markStart), Assist: s.markAssist})
		}
		s.markStart = 0
	case markAssist:
		if t, ok := s.assisting[ev.Goroutine()]; ok {
			delete(s.assisting, ev.Goroutine())
			s.markAssist += time.Duration(ev.Time() - t)
		}
	}
}

// transition opens a goroutine's system call, or closes one (kept when it lasted min or more).
func (s *scan) transition(ev trace.Event) {
	st := ev.StateTransition()
	if st.Resource.Kind != trace.ResourceGoroutine {
		return
	}
	g := st.Resource.Goroutine()
	from, to := st.Goroutine()
	if o, ok := s.inSyscall[g]; ok && from == trace.GoSyscall {
		delete(s.inSyscall, g)
		if d := time.Duration(ev.Time() - o.since); d >= s.min {
			s.rep.Stalls = append(s.rep.Stalls, Stall{Start: time.Duration(o.since - s.first), Duration: d, Call: o.call})
		}
	}
	if to == trace.GoSyscall {
		if call, ok := describe(st.Stack, s.match); ok {
			s.inSyscall[g] = openCall{since: ev.Time(), call: call}
		}
	}
}

// Names of the runtime's trace ranges for a collection's mark phase and a goroutine's assist.
const (
	markPhase  = "GC concurrent mark phase"
	markAssist = "GC mark assist"
)

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

// Markdown writes a summary of the stalls (count and total time) with the n longest, then the
// collections.
func (r Report) Markdown(w io.Writer, n int) {
	fmt.Fprintf(w, "%d system calls of %v or more in %.1fs of trace, %v in all", len(r.Stalls), r.Min, r.Span.Seconds(), r.Total().Round(time.Millisecond))
	if len(r.Stalls) > 0 {
		fmt.Fprintln(w, "; the longest:")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| at | took | call |")
		fmt.Fprintln(w, "|---|---|---|")
		for _, s := range r.Longest(n) {
			fmt.Fprintf(w, "| %.2fs | %.1f ms | %s |\n", s.Start.Seconds(), ms(s.Duration), s.Call)
		}
	} else {
		fmt.Fprintln(w, ".")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%d garbage collections", len(r.GCs))
	for i, g := range r.GCs {
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprintf(w, "%sat %.2fs (mark %.0f ms, assists %.0f ms)", sep, g.Start.Seconds(), ms(g.Mark), ms(g.Assist))
	}
	fmt.Fprintln(w, ".")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
