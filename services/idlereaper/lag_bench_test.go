package idlereaper

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"boilerhouse.dev/messages"
)

// BenchmarkReleaseLag10k: 10,000 Active claims with idle timeouts and no activity; reports how
// long after each deadline its Active -> Releasing happened (p50, p99, max). Run it once:
// go test ./services/idlereaper/ -run '^$' -bench ReleaseLag -benchtime=1x
func BenchmarkReleaseLag10k(b *testing.B) {
	const n = 10000
	for range b.N {
		e := newEnv(b)
		e.reaper(Config{})
		deadlines := make(map[string]time.Time, n)
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
		lags := make([]time.Duration, 0, n)
		e.mu.Lock()
		for key, at := range e.released {
			lags = append(lags, at.Sub(deadlines[key]))
			if e.wins[key] != 1 {
				b.Errorf("%s released %d times", key, e.wins[key])
			}
		}
		e.mu.Unlock()
		slices.Sort(lags)
		p := func(q float64) time.Duration { return lags[min(len(lags)-1, int(q*float64(len(lags))))] }
		b.ReportMetric(float64(p(0.50).Milliseconds()), "p50-lag-ms")
		b.ReportMetric(float64(p(0.99).Milliseconds()), "p99-lag-ms")
		b.ReportMetric(float64(lags[len(lags)-1].Milliseconds()), "max-lag-ms")
		if lags[0] < 0 {
			b.Errorf("a claim was released %v before its deadline", -lags[0])
		}
	}
}
