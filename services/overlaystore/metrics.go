package overlaystore

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/metrics"
)

// storeMetrics count and time the extracts and restores the service answers.
type storeMetrics struct {
	ops      *prometheus.CounterVec   // op, result
	duration *prometheus.HistogramVec // op
}

func newStoreMetrics(reg prometheus.Registerer) *storeMetrics {
	return &storeMetrics{
		ops: metrics.Must(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "boilerhouse_snapshots_total",
			Help: "Overlay extracts and restores, by op (extract, restore) and result (saved, restored, nothing when there was nothing to save or restore, or the error code).",
		}, []string{"op", "result"})),
		duration: metrics.Must(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "boilerhouse_snapshot_duration_seconds",
			Help:    "Time to save (extract) or restore an overlay that moved data, by op.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"op"})),
	}
}

// Extract implements Service: it saves the Pod's overlay dirs as a new generation.
func (s *Service) Extract(ctx context.Context, req messages.ExtractRequest) (messages.Snapshot, error) {
	start := time.Now()
	snap, err := s.extract(ctx, req)
	result := "saved"
	if err == nil && snap.Generation == 0 {
		result = "nothing"
	}
	s.metrics.done("extract", result, start, err)
	return snap, err
}

// Restore implements Service: it writes a stored generation into the Pod's overlay dirs.
func (s *Service) Restore(ctx context.Context, req messages.RestoreRequest) (messages.RestoreReply, error) {
	start := time.Now()
	reply, err := s.restore(ctx, req)
	result := "restored"
	if err == nil && !reply.Restored {
		result = "nothing"
	}
	s.metrics.done("restore", result, start, err)
	return reply, err
}

func (m *storeMetrics) done(op, result string, start time.Time, err error) {
	if err != nil {
		result = string(messages.CodeOf(err))
	} else if result != "nothing" {
		m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	}
	m.ops.WithLabelValues(op, result).Inc()
}
