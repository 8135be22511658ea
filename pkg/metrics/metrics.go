// Package metrics holds what Boilerhouse's services share for their Prometheus metrics.
package metrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Must registers c with reg and returns it, or returns the collector registered before under
// the same name, so that several instances of a service in one process (the dev stack, tests)
// share their metrics. Like prometheus.MustRegister it panics on any other failure: a
// collector that clashes with another is a programming error.
func Must[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(err)
}

// LatencyBuckets are the histogram buckets (seconds) of request latencies: a pool claim's
// milliseconds up to a cold boot's minutes.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
