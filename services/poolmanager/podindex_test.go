package poolmanager

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

func indexedPod(name, pool, workload string, isReady bool, extra map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelWorkload: workload}}}
	if pool != "" {
		p.Labels[v1alpha1.LabelPool] = pool
	}
	for k, v := range extra {
		p.Labels[k] = v
	}
	if isReady {
		p.Status.Phase, p.Status.PodIP = corev1.PodRunning, "10.0.0.1"
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}
	return p
}

func names(pods []*corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	slices.Sort(out)
	return out
}

func TestPodIndex(t *testing.T) {
	x := newPodIndex()
	none := func(*corev1.Pod) bool { return false }
	check := func(step, pool string, wantPool []string, workload string, wantReady []string) {
		t.Helper()
		if got := names(x.pool(pool)); !slices.Equal(got, wantPool) {
			t.Errorf("%s: pool %s = %v, want %v", step, pool, got, wantPool)
		}
		if got := names(x.candidates(workload, 10, none)); !slices.Equal(got, wantReady) {
			t.Errorf("%s: acquirable %s = %v, want %v", step, workload, got, wantReady)
		}
	}

	x.update(indexedPod("a", "p1", "w", true, nil))
	x.update(indexedPod("b", "p1", "w", false, nil))
	x.update(indexedPod("c", "", "w", true, map[string]string{v1alpha1.LabelTenant: "t"}))
	check("filed", "p1", []string{"a", "b"}, "w", []string{"a"})
	if x.poolOf("a") != "p1" || x.poolOf("c") != "" || x.poolOf("nope") != "" {
		t.Errorf("poolOf: a=%q c=%q nope=%q", x.poolOf("a"), x.poolOf("c"), x.poolOf("nope"))
	}

	x.update(indexedPod("b", "p1", "w", true, nil))
	check("b became ready", "p1", []string{"a", "b"}, "w", []string{"a", "b"})

	x.taken("a")
	check("a acquired: still in its pool", "p1", []string{"a", "b"}, "w", []string{"b"})

	x.update(indexedPod("a", "p1", "w", true, map[string]string{v1alpha1.LabelTenant: "t", v1alpha1.LabelPoolStatus: v1alpha1.PoolStatusAcquired}))
	check("a labelled for its tenant", "p1", []string{"a", "b"}, "w", []string{"b"})

	x.update(indexedPod("b", "p2", "w2", true, nil))
	check("b moved to another pool and workload", "p1", []string{"a"}, "w", nil)
	check("b's new place", "p2", []string{"b"}, "w2", []string{"b"})

	skipB := func(p *corev1.Pod) bool { return p.Name == "b" }
	if got := x.candidates("w2", 10, skipB); len(got) != 0 {
		t.Errorf("skip ignored: %v", names(got))
	}

	deleting := indexedPod("b", "p2", "w2", true, nil)
	deleting.DeletionTimestamp = &metav1.Time{}
	x.update(deleting)
	check("b terminating: in its pool, not acquirable", "p2", []string{"b"}, "w2", nil)

	x.deleted("b")
	x.deleted("a")
	check("gone", "p2", nil, "w2", nil)
	check("gone", "p1", nil, "w", nil)
	if len(x.byPool) != 0 || len(x.ready) != 0 || len(x.poolByPod) != 0 || len(x.workloadByPod) != 0 {
		t.Errorf("leftovers: byPool %v ready %v poolByPod %v workloadByPod %v", x.byPool, x.ready, x.poolByPod, x.workloadByPod)
	}
}
