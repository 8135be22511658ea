package claimrouter

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
)

// BenchmarkClaimExisting measures a claim of a pair whose claim is Active
// (source existing: one KV read, no write) over NATS request/reply, on an
// in-process connection to an embedded server. It reports p50 and p99
// besides ns/op.
//
//	go test ./claimrouter/ -run '^$' -bench BenchmarkClaimExisting -benchtime=5000x
func BenchmarkClaimExisting(b *testing.B) {
	env := newEnv(b, map[string]int{"demo": 1})
	env.startRouter(Config{})
	claim := bus.Client[messages.ClaimRequest, messages.ClaimView](env.client, messages.SubjectClaimsClaim, 10*time.Second)
	ctx := context.Background()
	req := messages.ClaimRequest{TenantID: "org.acme", Workload: "demo"}
	if v, err := claim(ctx, req); err != nil || v.Phase != messages.PhaseActive {
		b.Fatalf("first claim = %+v, %v", v, err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		v, err := claim(ctx, req)
		lat = append(lat, time.Since(t0))
		if err != nil || v.Source != messages.SourceExisting {
			b.Fatalf("claim = %+v, %v", v, err)
		}
	}
	b.StopTimer()
	reportLatency(b, lat)
}

// BenchmarkClaimPool measures a new claim served from the warm pool (a
// Pending Create, the acquire request, the Active compare-and-set, two
// async events), one new tenant per iteration, with the server fsyncing
// every write (sync=always, the durable setting) and without.
//
//	go test ./claimrouter/ -run '^$' -bench BenchmarkClaimPool -benchtime=2000x
func BenchmarkClaimPool(b *testing.B) {
	for _, bc := range []struct {
		name       string
		syncAlways bool
	}{{"sync=always", true}, {"sync=interval", false}} {
		b.Run(bc.name, func(b *testing.B) {
			env := newEnvSync(b, map[string]int{"demo": b.N}, bc.syncAlways)
			env.startRouter(Config{})
			claim := bus.Client[messages.ClaimRequest, messages.ClaimView](env.client, messages.SubjectClaimsClaim, 10*time.Second)
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				t0 := time.Now()
				v, err := claim(ctx, messages.ClaimRequest{TenantID: fmt.Sprintf("t%d", i), Workload: "demo"})
				lat = append(lat, time.Since(t0))
				if err != nil || v.Source != messages.SourcePool {
					b.Fatalf("claim = %+v, %v", v, err)
				}
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
