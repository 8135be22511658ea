package loadgen

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {90, 90 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := Percentile(ds, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("empty input must give 0")
	}
}

func TestSummariseGroupsBySourceAndCountsErrors(t *testing.T) {
	var r Recorder
	r.Add(Sample{Op: "claim", Source: "pool", Latency: 2 * time.Millisecond})
	r.Add(Sample{Op: "claim", Source: "pool", Latency: 4 * time.Millisecond})
	r.Add(Sample{Op: "claim", Source: "cold", Latency: time.Second})
	r.Add(Sample{Op: "claim", Code: "503"})
	r.Add(Sample{Op: "release", Latency: time.Millisecond})
	rep := r.Summarise(2 * time.Second)
	if rep.Sent != 5 || rep.OK != 4 || rep.Errors["claim 503"] != 1 || rep.Throughput != 2 {
		t.Fatalf("report %+v", rep)
	}
	var names []string
	for _, g := range rep.Groups {
		names = append(names, g.Group)
	}
	if strings.Join(names, ",") != "claim cold,claim pool,release" {
		t.Fatalf("groups %v", names)
	}
	var b strings.Builder
	rep.WriteMarkdown(&b)
	if !strings.Contains(b.String(), "| claim pool | 2 | 2.00 ms | 4.00 ms | 4.00 ms | 4.00 ms |") {
		t.Fatalf("markdown:\n%s", b.String())
	}
}

func TestTimeline(t *testing.T) {
	var r Recorder
	r.Add(Sample{Op: "claim", Source: "pool", Latency: 2 * time.Millisecond, At: 100 * time.Millisecond})
	r.Add(Sample{Op: "claim", Source: "pool", Latency: 4 * time.Millisecond, At: 900 * time.Millisecond})
	r.Add(Sample{Op: "claim", Code: "503", At: 1100 * time.Millisecond})
	r.Add(Sample{Op: "claim", Source: "pool", Latency: 300 * time.Millisecond, At: 2500 * time.Millisecond})
	var b strings.Builder
	r.WriteTimeline(&b, time.Second)
	want := "| from | count | p50 | p99 | max |\n|---|---|---|---|---|\n" +
		"| 0s | 2 | 2.00 ms | 4.00 ms | 4.00 ms |\n" +
		"| 2s | 1 | 300.00 ms | 300.00 ms | 300.00 ms |\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// TestNewClaims: only successful claims that were not existing ones count, with their answer time.
func TestNewClaims(t *testing.T) {
	at := time.Unix(1000, 0)
	var rec Recorder
	rec.Add(Sample{Op: "claim", Source: "pool", Tenant: "a", Answered: at})
	rec.Add(Sample{Op: "claim", Source: "cold", Tenant: "b", Answered: at.Add(time.Second)})
	rec.Add(Sample{Op: "claim", Source: "existing", Tenant: "c", Answered: at})
	rec.Add(Sample{Op: "claim", Code: "503", Tenant: "d", Answered: at})
	rec.Add(Sample{Op: "release", Tenant: "e", Answered: at})
	got := rec.NewClaims()
	if len(got) != 2 || !got["a"].Equal(at) || !got["b"].Equal(at.Add(time.Second)) {
		t.Fatalf("new claims = %v, want a and b with their answer times", got)
	}
}
