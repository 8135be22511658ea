package poolmanager

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"boilerhouse.dev/pkg/metrics"
)

// Pool gauges, set by the pool reconciler (the leader's), served with controller-runtime's
// metrics on pool-manager's metrics listener.
var poolPods = metrics.Must(ctrlmetrics.Registry, prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "boilerhouse_pool_pods",
	Help: "Pods of a pool by state (ready: can be handed out; warming: starting), as the pool reconciler last counted them.",
}, []string{"pool", "state"}))

func setPoolPods(pool string, ready, warming int32) {
	poolPods.WithLabelValues(pool, "ready").Set(float64(ready))
	poolPods.WithLabelValues(pool, "warming").Set(float64(warming))
}

func forgetPool(pool string) { poolPods.DeletePartialMatch(prometheus.Labels{"pool": pool}) }
