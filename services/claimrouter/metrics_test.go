package claimrouter

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"boilerhouse.dev/messages"
)

// sample is the value of the series name{labels} in reg: a counter's value or a histogram's
// count; -1 when absent.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return value(m)
		}
	}
	return -1
}

func value(m *dto.Metric) float64 {
	if h := m.GetHistogram(); h != nil {
		return float64(h.GetSampleCount())
	}
	return m.GetCounter().GetValue()
}

// Claims and releases are counted by source and result, and Active answers timed.
func TestRequestMetrics(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 1})
	reg := prometheus.NewRegistry()
	env.startRouter(Config{Metrics: reg})

	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
	mustActive(t, v, err, messages.SourcePool)
	for range 2 {
		v, err = env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
		mustActive(t, v, err, messages.SourceExisting)
	}
	if _, err := env.claim(messages.ClaimRequest{TenantID: "Not Valid", Workload: "demo"}); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Fatalf("invalid tenant: %v", err)
	}
	if v, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "demo"}); err != nil || v.Phase != messages.PhaseReleased {
		t.Fatalf("release: %+v %v", v, err)
	}

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"boilerhouse_claims_total", map[string]string{"source": "pool", "result": "Active"}, 1},
		{"boilerhouse_claims_total", map[string]string{"source": "existing", "result": "Active"}, 2},
		{"boilerhouse_claims_total", map[string]string{"source": "none", "result": "invalid_argument"}, 1},
		{"boilerhouse_claim_duration_seconds", map[string]string{"source": "pool"}, 1},
		{"boilerhouse_claim_duration_seconds", map[string]string{"source": "existing"}, 2},
		{"boilerhouse_releases_total", map[string]string{"result": "Released"}, 1},
	} {
		if got := sample(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
