package natsx_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

// BenchmarkKVUpdate measures one compare-and-set (Update at the current
// revision) on the claims bucket over an in-process connection, with the
// server fsyncing every write (SyncAlways) and with the default 2-minute
// background sync. It reports p50 and p99 latency besides ns/op.
//
//	go test ./natsx/ -run '^$' -bench BenchmarkKVUpdate -benchtime=2000x
func BenchmarkKVUpdate(b *testing.B) {
	for _, bc := range []struct {
		name       string
		syncAlways bool
	}{
		{"sync=always", true},
		{"sync=interval", false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			s := startServer(b, b.TempDir(), bc.syncAlways)
			_, js := connectJS(b, s)
			if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{}); err != nil {
				b.Fatalf("Provision: %v", err)
			}
			claims, err := js.KeyValue(ctx, messages.BucketClaims)
			if err != nil {
				b.Fatalf("claims bucket: %v", err)
			}
			key := messages.ClaimKey("org.acme", "demo")
			value := []byte(`{"tenantId":"org.acme","workload":"demo","phase":"Active","instanceId":"demo-7f9c2","endpoint":{"host":"10.0.0.12","port":8080},"source":"pool","claimedAt":"2026-01-01T00:00:00Z","resume":true,"overlayGeneration":3}`)
			rev, err := claims.Put(ctx, key, value)
			if err != nil {
				b.Fatalf("Put: %v", err)
			}
			benchUpdates(b, ctx, claims, key, value, rev)
		})
	}
}

func benchUpdates(b *testing.B, ctx context.Context, kv jetstream.KeyValue, key string, value []byte, rev uint64) {
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		next, err := kv.Update(ctx, key, value, rev)
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatalf("Update at revision %d: %v", rev, err)
		}
		rev = next
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
