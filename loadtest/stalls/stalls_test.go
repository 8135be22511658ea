package stalls

import (
	"bytes"
	"fmt"
	"runtime"
	"runtime/trace"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sleepInSyscall blocks its goroutine in a system call for d.
func sleepInSyscall(t *testing.T, d time.Duration) {
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	if err := syscall.Nanosleep(&ts, nil); err != nil {
		t.Fatal(err)
	}
}

func TestReadFindsLongSyscalls(t *testing.T) {
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Fatal(err)
	}
	sleepInSyscall(t, 2*time.Millisecond)
	sleepInSyscall(t, 60*time.Millisecond)
	sleepInSyscall(t, 30*time.Millisecond)
	runtime.GC()
	trace.Stop()

	rep, err := Read(bytes.NewReader(buf.Bytes()), 20*time.Millisecond, "stalls.sleepInSyscall")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Stalls) != 2 {
		t.Fatalf("stalls = %+v, want the 60 ms and the 30 ms sleeps", rep.Stalls)
	}
	long := rep.Longest(1)[0]
	if long.Duration < 60*time.Millisecond || long.Duration > time.Second {
		t.Errorf("longest = %v, want about 60 ms", long.Duration)
	}
	if !strings.Contains(long.Call, "syscall.Nanosleep in stalls.sleepInSyscall") {
		t.Errorf("call = %q, want the syscall and its caller", long.Call)
	}
	if rep.Stalls[0].Start >= rep.Stalls[1].Start {
		t.Errorf("stalls out of order: %+v", rep.Stalls)
	}
	if rep.Total() < 90*time.Millisecond || rep.Span < rep.Total() {
		t.Errorf("total %v, span %v", rep.Total(), rep.Span)
	}

	// A frame filter that no stack matches finds nothing.
	none, err := Read(bytes.NewReader(buf.Bytes()), 20*time.Millisecond, "no.such.function")
	if err != nil {
		t.Fatal(err)
	}
	if len(none.Stalls) != 0 {
		t.Errorf("unmatched filter found %+v", none.Stalls)
	}

	// The forced collection, after the sleeps.
	if len(rep.GCs) == 0 {
		t.Fatal("no garbage collection found")
	}
	gc := rep.GCs[len(rep.GCs)-1]
	if gc.Mark <= 0 || gc.Assist < 0 || gc.Start < rep.Stalls[1].Start || gc.Start > rep.Span {
		t.Errorf("collection %+v, stalls %+v, span %v", gc, rep.Stalls, rep.Span)
	}

	var md strings.Builder
	rep.Markdown(&md, 1)
	if !strings.Contains(md.String(), "2 system calls of 20ms or more") || strings.Count(md.String(), "| syscall.Nanosleep") != 1 ||
		!strings.Contains(md.String(), fmt.Sprintf("%d garbage collections: at ", len(rep.GCs))) {
		t.Errorf("markdown:\n%s", md.String())
	}
}

func TestReadRejectsGarbage(t *testing.T) {
	if _, err := Read(strings.NewReader("not a trace"), time.Millisecond, ""); err == nil {
		t.Fatal("no error for a file that is not a trace")
	}
}
