package claimrouter

import (
	"context"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/prometheus/client_golang/prometheus"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/metrics"
)

// routerMetrics count the claim and release requests a replica answers.
type routerMetrics struct {
	claims   *prometheus.CounterVec   // source, result
	duration *prometheus.HistogramVec // source
	releases *prometheus.CounterVec   // result
}

func newRouterMetrics(reg prometheus.Registerer) *routerMetrics {
	return &routerMetrics{
		claims: metrics.Must(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "boilerhouse_claims_total",
			Help: "Claim requests answered by claim-router, by source (existing, pool, pool+data, cold, cold+data; none when the answer has none) and result (the phase answered, or the error code).",
		}, []string{"source", "result"})),
		duration: metrics.Must(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "boilerhouse_claim_duration_seconds",
			Help:    "Time claim-router took to answer a claim Active, by source.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"source"})),
		releases: metrics.Must(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "boilerhouse_releases_total",
			Help: "Release requests answered by claim-router, by result (the phase answered, or the error code).",
		}, []string{"result"})),
	}
}

// result labels an answer: the phase of the view, or the error's code.
func result(v messages.ClaimView, err error) string {
	if err != nil {
		return string(messages.CodeOf(err))
	}
	return string(v.Phase)
}

// measureClaims counts and times the claim requests e answers.
func (m *routerMetrics) measureClaims(e endpoint.Endpoint) endpoint.Endpoint {
	return func(ctx context.Context, req any) (any, error) {
		start := time.Now()
		resp, err := e(ctx, req)
		v, _ := resp.(messages.ClaimView)
		source := string(v.Source)
		if err != nil || source == "" {
			source = "none"
		}
		m.claims.WithLabelValues(source, result(v, err)).Inc()
		if err == nil && v.Phase == messages.PhaseActive {
			m.duration.WithLabelValues(source).Observe(time.Since(start).Seconds())
		}
		return resp, err
	}
}

// measureReleases counts the release requests e answers.
func (m *routerMetrics) measureReleases(e endpoint.Endpoint) endpoint.Endpoint {
	return func(ctx context.Context, req any) (any, error) {
		resp, err := e(ctx, req)
		v, _ := resp.(messages.ClaimView)
		m.releases.WithLabelValues(result(v, err)).Inc()
		return resp, err
	}
}
