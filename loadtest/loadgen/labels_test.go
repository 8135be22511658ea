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

// TestLabelWatch: on a real API server, a Pod label present at once and one added later are
// seen with their lags, and so is a BoilerhouseClaim; a tenant never labelled, and a label
// outside the prefix, count as missing.
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
	claim := func(tenant string) {
		c := &v1alpha1.BoilerhouseClaim{
			ObjectMeta: metav1.ObjectMeta{Name: tenant, Namespace: ns, Labels: map[string]string{v1alpha1.LabelTenant: tenant}},
			Spec:       v1alpha1.ClaimSpec{TenantID: tenant, WorkloadRef: "demo"},
		}
		if err := plane.Client.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// The API server's watch of a just-installed CRD starts up to seconds late: wait until
	// both watches deliver before timing anything.
	pod("warm", "run-0")
	claim("run-0")
	if got := w.Lags(ctx, map[string]time.Time{"run-0": time.Now()}, time.Minute); len(got.Missing) != 0 {
		t.Fatalf("the watches never showed run-0: %+v", got)
	}

	answered := time.Now()
	claim("run-1")
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
	// Two Pods of 4 tenants seen (run-3 never labelled, other-1 outside the prefix), one claim.
	if got.Claims != 4 || got.Missing["Pod tenant label"] != 2 || got.Missing["BoilerhouseClaim"] != 3 || len(got.Lag) != 2 {
		t.Fatalf("lags = %+v, want Pods of run-1 and run-2 and the claim of run-1", got)
	}
	claims, pods := got.Lag[0], got.Lag[1]
	if claims.Group != "BoilerhouseClaim" || claims.Count != 1 || claims.Max >= delay {
		t.Fatalf("claim lags = %+v, want run-1's only, under %s", claims, delay)
	}
	if pods.Group != "Pod tenant label" || pods.Count != 2 || pods.Max < delay || pods.P50 >= delay {
		t.Fatalf("pod lags = %+v, want one under %s and one over it", pods, delay)
	}

	// Once all are seen, Lags returns without waiting out its timeout.
	start := time.Now()
	got = w.Lags(context.Background(), map[string]time.Time{"run-1": answered}, time.Minute)
	if len(got.Missing) != 0 || time.Since(start) > 10*time.Second {
		t.Fatalf("lags = %+v after %s, want run-1 seen at once", got, time.Since(start))
	}
}
