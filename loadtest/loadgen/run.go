package loadgen

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Scenario is one open-loop run.
type Scenario struct {
	Workload string
	Rate     float64       // claims started per second
	Duration time.Duration // how long claims are started
	// Count, when positive, is the number of claims started (Duration is then ignored).
	Count int
	// Tenants names the tenant of the i-th claim.
	Tenants func(i int) string
	// Release releases each claim once it answered (measured as op "release").
	Release bool
	// MaxInFlight bounds outstanding requests; beyond it a claim counts as error "overload".
	MaxInFlight int
}

// Run starts claims at a fixed rate, whatever the server's pace, and waits for all of them.
func Run(ctx context.Context, c Client, sc Scenario, rec *Recorder) time.Duration {
	if sc.MaxInFlight <= 0 {
		sc.MaxInFlight = 10000
	}
	interval := time.Duration(float64(time.Second) / sc.Rate)
	total := int(sc.Rate * sc.Duration.Seconds())
	if sc.Count > 0 {
		total = sc.Count
	}
	slots := make(chan struct{}, sc.MaxInFlight)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < total; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				wg.Wait()
				return time.Since(start)
			}
		}
		select {
		case slots <- struct{}{}:
		default:
			rec.Add(Sample{Op: "claim", Code: "overload"})
			continue
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			defer func() { <-slots }()
			tenant := sc.Tenants(i)
			source, code := c.Claim(ctx, tenant, sc.Workload)
			answered := time.Now()
			rec.Add(Sample{Op: "claim", Source: source, Code: code, Latency: answered.Sub(due), At: due.Sub(start), Tenant: tenant, Answered: answered})
			if sc.Release && code == "" {
				t0 := time.Now()
				rc := c.Release(ctx, tenant, sc.Workload)
				rec.Add(Sample{Op: "release", Code: rc, Latency: time.Since(t0)})
			}
		}(i, due)
	}
	wg.Wait()
	return time.Since(start)
}

// TenantSeq names tenants prefix-0, prefix-1, ...
func TenantSeq(prefix string) func(int) string {
	return func(i int) string { return fmt.Sprintf("%s-%d", prefix, i) }
}

// TenantCycle reuses n tenants round robin (their claims are existing after the first).
func TenantCycle(prefix string, n int) func(int) string {
	return func(i int) string { return fmt.Sprintf("%s-%d", prefix, i%n) }
}
