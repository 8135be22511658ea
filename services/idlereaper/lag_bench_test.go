package idlereaper

import (
	"encoding/json"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
)

// BenchmarkReleaseLag10k: 10,000 Active claims with idle timeouts and no activity; reports how
// long after each deadline its Active -> Releasing happened (p50, p99, max). Run it once:
// go test ./services/idlereaper/ -run '^$' -bench ReleaseLag -benchtime=1x
// The *-lag-ms figures count from claimedAt + timeout, and claimedAt is cut to whole seconds, so
// they overstate the lag by up to a second (by where in its second the batch was written); the
// *-exact-lag-ms figures count from the deadline the reaper keeps (activation + timeout).
func BenchmarkReleaseLag10k(b *testing.B) {
	const n = 10000
	for range b.N {
		e := newEnv(b)
		e.reaper(Config{})
		deadlines := make(map[string]time.Time, n)
		exact := make(map[string]time.Time, n)
		for i := range n {
			now := time.Now()
			// Timeouts of 5–8 s spread the deadlines over a few seconds, as real traffic would.
			timeout := int32(5 + i%4)
			tenant := fmt.Sprintf("lag-%d", i)
			rec := messages.ClaimRecord{TenantID: tenant, Workload: "w", ID: fmt.Sprintf("c%d", i),
				Phase: messages.PhaseActive, InstanceID: "i-" + tenant, ClaimedAt: messages.Timestamp(now),
				IdleTimeoutSeconds: timeout, CreatedAt: now.UTC(), UpdatedAt: now.UTC()}
			v, _ := json.Marshal(rec)
			key := messages.ClaimKey(tenant, "w")
			if _, err := e.claims.Put(e.ctx, key, v); err != nil {
				b.Fatal(err)
			}
			deadlines[key] = rec.ClaimedAt.Add(time.Duration(timeout) * time.Second)
			exact[key] = rec.UpdatedAt.Add(time.Duration(timeout) * time.Second)
		}
		end := time.Now().Add(time.Minute)
		for {
			e.mu.Lock()
			done := len(e.released)
			e.mu.Unlock()
			if done == n {
				break
			}
			if time.Now().After(end) {
				b.Fatalf("%d of %d claims released within a minute", done, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // a second release request would arrive by now
		lags := make([]time.Duration, 0, n)
		exactLags := make([]time.Duration, 0, n)
		e.mu.Lock()
		for key, at := range e.released {
			lags = append(lags, at.Sub(deadlines[key]))
			exactLags = append(exactLags, at.Sub(exact[key]))
			if e.wins[key] != 1 || e.calls[key] != 1 {
				b.Errorf("%s: %d release requests, released %d times", key, e.calls[key], e.wins[key])
			}
		}
		e.mu.Unlock()
		for _, l := range []struct {
			lags []time.Duration
			name string
		}{{lags, "lag"}, {exactLags, "exact-lag"}} {
			slices.Sort(l.lags)
			p := func(q float64) time.Duration { return l.lags[min(len(l.lags)-1, int(q*float64(len(l.lags))))] }
			b.ReportMetric(float64(p(0.50).Milliseconds()), "p50-"+l.name+"-ms")
			b.ReportMetric(float64(p(0.99).Milliseconds()), "p99-"+l.name+"-ms")
			b.ReportMetric(float64(l.lags[len(l.lags)-1].Milliseconds()), "max-"+l.name+"-ms")
		}
		if exactLags[0] < 0 {
			b.Errorf("a claim was released %v before its deadline", -exactLags[0])
		}
	}
}

// BenchmarkIdleCPU10k: the CPU this process (the reaper, embedded NATS, the test) uses per
// second while 10,000 claims wait for deadlines an hour away, i.e. the cost of tracking them.
// go test ./services/idlereaper/ -run '^$' -bench IdleCPU -benchtime=1x
func BenchmarkIdleCPU10k(b *testing.B) {
	const n = 10000
	for range b.N {
		e := newEnv(b)
		e.reaper(Config{})
		for i := range n {
			now := time.Now()
			tenant := fmt.Sprintf("cpu-%d", i)
			rec := messages.ClaimRecord{TenantID: tenant, Workload: "w", ID: fmt.Sprintf("c%d", i),
				Phase: messages.PhaseActive, InstanceID: "i-" + tenant, ClaimedAt: messages.Timestamp(now),
				IdleTimeoutSeconds: 3600, CreatedAt: now.UTC(), UpdatedAt: now.UTC()}
			v, _ := json.Marshal(rec)
			if _, err := e.claims.Put(e.ctx, messages.ClaimKey(tenant, "w"), v); err != nil {
				b.Fatal(err)
			}
		}
		js, _ := jetstream.New(e.nc)
		st, err := js.Stream(e.ctx, "KV_"+messages.BucketIdle)
		if err != nil {
			b.Fatal(err)
		}
		for end := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
			info, err := st.Info(e.ctx)
			if err != nil {
				b.Fatal(err)
			}
			if info.State.Msgs == n {
				break
			}
			if time.Now().After(end) {
				b.Fatalf("%d of %d deadlines written within a minute", info.State.Msgs, n)
			}
		}
		time.Sleep(time.Second) // the writes' tail settles
		const span = 5 * time.Second
		before := cpuTime(b)
		time.Sleep(span)
		used := cpuTime(b) - before
		b.ReportMetric(float64(used.Milliseconds())/span.Seconds(), "cpu-ms/s")
	}
}

// cpuTime is this process's user + system CPU time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
