package edge

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkClaimHTTP measures a pool claim through the whole edge: real HTTP,
// the go-kit transport, one NATS request to the fake router and back. It
// reports the median and p99 latency of the sequential requests.
func BenchmarkClaimHTTP(b *testing.B) {
	e := startEdge(b)
	url := e.srv.URL + "/api/v1/tenants/bench/claim"
	c := e.srv.Client()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		resp, err := c.Post(url, "application/json", strings.NewReader(`{"workload":"pooled"}`))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b.Fatalf("status %d", resp.StatusCode)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
