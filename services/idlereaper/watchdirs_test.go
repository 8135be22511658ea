package idlereaper

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"boilerhouse.dev/messages"
)

func TestProbeCommandQuotesDirs(t *testing.T) {
	dir := t.TempDir()
	odd := dir + "/it's a $(dir)"
	if err := exec.Command("mkdir", "-p", odd+"/sub").Run(); err != nil {
		t.Fatal(err)
	}
	cmd := probeCommand([]string{odd, dir + "/missing"})
	out, err := exec.Command(cmd[0], cmd[1:]...).Output()
	if err != nil {
		t.Fatalf("%q: %v", cmd, err)
	}
	v, err := parseProbe(out)
	if err != nil || v <= 0 {
		t.Fatalf("probe of %q printed %q (%v, %v), want a modification time", odd, out, v, err)
	}
	if v, err := parseProbe([]byte("\n")); err != nil || v != 0 {
		t.Fatalf("empty output: %v %v", v, err)
	}
}

func TestProbeInterval(t *testing.T) {
	for _, c := range []struct {
		s    int32
		want time.Duration
	}{{1, 500 * time.Millisecond}, {3, 750 * time.Millisecond}, {60, 15 * time.Second}, {3600, 30 * time.Second}} {
		if got := probeInterval(messages.ClaimRecord{IdleTimeoutSeconds: c.s}); got != c.want {
			t.Errorf("timeout %ds: interval %s, want %s", c.s, got, c.want)
		}
	}
}

// fakeExec answers probes with a modification time the test moves.
type fakeExec struct {
	mu     sync.Mutex
	newest float64
	calls  atomic.Int64
	pods   map[string]bool
}

func (f *fakeExec) Exec(_ context.Context, namespace, pod, container string, _ []string, _ io.Reader, stdout io.Writer) error {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[namespace+"/"+pod+"/"+container] = true
	_, err := fmt.Fprintf(stdout, "%.6f\n", f.newest)
	return err
}

func (f *fakeExec) touch() {
	f.mu.Lock()
	f.newest = float64(time.Now().UnixNano()) / 1e9
	f.mu.Unlock()
}

func TestWatchDirsProbesCountAsActivity(t *testing.T) {
	e := newEnv(t)
	fe := &fakeExec{pods: map[string]bool{}}
	fe.touch()
	e.reaper(Config{Executor: fe, Namespace: "ns"})
	now := time.Now()
	rec := messages.ClaimRecord{TenantID: "t", Workload: "w", ID: "c-watch", Phase: messages.PhaseActive, InstanceID: "i-t",
		ClaimedAt: messages.Timestamp(now), IdleTimeoutSeconds: 2, WatchDirs: []string{"/data"}, CreatedAt: now.UTC(), UpdatedAt: now.UTC()}
	b, _ := json.Marshal(rec)
	key := messages.ClaimKey("t", "w")
	if _, err := e.claims.Put(e.ctx, key, b); err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for range 4 { // 4 s of writes, twice the timeout
		time.Sleep(time.Second)
		if _, ok := e.releasedAt(key); ok {
			t.Fatal("released while its watched dirs change")
		}
		fe.touch()
		last = time.Now()
	}
	at := e.waitReleased(key, 5*time.Second)
	if d := at.Sub(last); d < 1500*time.Millisecond || d > 3500*time.Millisecond {
		t.Errorf("released %s after the last change, want about 2s..3s", d)
	}
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if !fe.pods["ns/i-t/main"] || len(fe.pods) != 1 {
		t.Errorf("probed %v, want ns/i-t/main", fe.pods)
	}
}

func TestWatchDirsIgnoredWithoutExecutor(t *testing.T) {
	e := newEnv(t)
	e.reaper(Config{})
	now := time.Now()
	rec := messages.ClaimRecord{TenantID: "t", Workload: "w", ID: "c-noexec", Phase: messages.PhaseActive, InstanceID: "i-t",
		ClaimedAt: messages.Timestamp(now), IdleTimeoutSeconds: 1, WatchDirs: []string{"/data"}, CreatedAt: now.UTC(), UpdatedAt: now.UTC()}
	b, _ := json.Marshal(rec)
	if _, err := e.claims.Put(e.ctx, messages.ClaimKey("t", "w"), b); err != nil {
		t.Fatal(err)
	}
	e.waitReleased(messages.ClaimKey("t", "w"), 4*time.Second)
}
