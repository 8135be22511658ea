package loadgen

import (
	"context"
	"crypto/rand"
	"sync"
	"time"
)

// DataScenario measures the overlay path: each tenant claims, writes Bytes into its instance,
// releases (hibernate: the overlay is extracted, op "release+data"), claims again (restored:
// "claim pool+data" or "claim cold+data") and releases once more. Tenants start at Rate.
type DataScenario struct {
	Workload string
	Tenants  int
	Rate     float64
	Bytes    int
	Path     string // file written inside the instance, e.g. /data/blob
	Prefix   string
}

// RunData runs the scenario and waits for every tenant.
func RunData(ctx context.Context, w Writer, rel Client, sc DataScenario, rec *Recorder) time.Duration {
	data := make([]byte, sc.Bytes)
	_, _ = rand.Read(data)
	interval := time.Duration(float64(time.Second) / sc.Rate)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < sc.Tenants; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(tenant string) {
			defer wg.Done()
			timed := func(op string, f func() (string, string)) bool {
				t0 := time.Now()
				source, code := f()
				rec.Add(Sample{Op: op, Source: source, Code: code, Latency: time.Since(t0)})
				return code == ""
			}
			v, code := w.ClaimWithEndpoint(ctx, tenant, sc.Workload)
			if code != "" {
				rec.Add(Sample{Op: "claim", Code: code})
				return
			}
			if code := w.Write(ctx, v, sc.Path, data); code != "" {
				rec.Add(Sample{Op: "write", Code: code})
				return
			}
			if !timed("release+data", func() (string, string) { return "", rel.Release(ctx, tenant, sc.Workload) }) {
				return
			}
			if !timed("claim", func() (string, string) { return rel.Claim(ctx, tenant, sc.Workload) }) {
				return
			}
			timed("release+data", func() (string, string) { return "", rel.Release(ctx, tenant, sc.Workload) })
		}(TenantSeq(sc.Prefix)(i))
	}
	wg.Wait()
	return time.Since(start)
}
