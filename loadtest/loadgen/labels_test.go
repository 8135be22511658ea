package loadgen

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/localkube"
)

// TestLabelWatch: on a real API server, a label present at once and one added later are seen
// with their lags; a tenant never labelled, and a label outside the prefix, count as missing.
func TestLabelWatch(t *testing.T) {
	ctx := t.Context()
	const ns = "labels"
	plane, err := localkube.Start(ctx, localkube.Options{Namespaces: []string{ns}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plane.Stop() })
	pod := func(name, tenant string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "demo:1"}}},
		}
		if tenant != "" {
			p.Labels = map[string]string{v1alpha1.LabelTenant: tenant}
		}
		if err := plane.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	w, err := StartLabelWatch(ctx, plane.Config, "run-")
	if err != nil {
		t.Fatal(err)
	}
	answered := time.Now()
	pod("a", "run-1")
	pod("b", "other-1")
	late := pod("c", "")
	const delay = 300 * time.Millisecond
	time.Sleep(delay)
	late.Labels = map[string]string{v1alpha1.LabelTenant: "run-2"}
	if err := plane.Client.Update(ctx, late); err != nil {
		t.Fatal(err)
	}

	got := w.Lags(ctx, map[string]time.Time{"run-1": answered, "run-2": answered, "run-3": answered, "other-1": answered}, 2*time.Second)
	if got.Claims != 4 || got.Missing != 2 || len(got.Lag) != 1 || got.Lag[0].Count != 2 {
		t.Fatalf("lags = %+v, want 2 of 4 seen (run-3 never labelled, other-1 outside the prefix)", got)
	}
	if got.Lag[0].Max < delay || got.Lag[0].P50 >= delay {
		t.Fatalf("lags = %+v, want one under %s and one over it", got.Lag[0], delay)
	}

	// Once all are seen, Lags returns without waiting out its timeout.
	start := time.Now()
	got = w.Lags(context.Background(), map[string]time.Time{"run-1": answered}, time.Minute)
	if got.Missing != 0 || time.Since(start) > 10*time.Second {
		t.Fatalf("lags = %+v after %s, want run-1 seen at once", got, time.Since(start))
	}
}
