package poolmanager

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// overshootWatch watches a pool's Pods on the API server and records the largest number of live
// unheld Pods seen at any event.
type overshootWatch struct {
	mu   sync.Mutex
	max  int
	live map[string]bool
	stop func()
	done chan struct{}
}

func watchPoolPods(t *testing.T, pool string) *overshootWatch {
	t.Helper()
	wc, err := client.NewWithWatch(plane.Config, client.Options{Scheme: plane.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w, err := wc.Watch(ctx, &corev1.PodList{}, client.InNamespace(testNamespace), client.MatchingLabels{v1alpha1.LabelPool: pool})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	o := &overshootWatch{live: map[string]bool{}, done: make(chan struct{})}
	o.stop = func() { cancel(); w.Stop(); <-o.done }
	go func() {
		defer close(o.done)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			o.mu.Lock()
			live := ev.Type != watch.Deleted && p.DeletionTimestamp == nil && !PodFinished(p) && p.Labels[v1alpha1.LabelTenant] == ""
			if live {
				o.live[p.Name] = true
			} else {
				delete(o.live, p.Name)
			}
			o.max = max(o.max, len(o.live))
			o.mu.Unlock()
		}
	}()
	t.Cleanup(o.stop)
	return o
}

func (o *overshootWatch) maxLive() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.max
}

func TestPoolFillsToSizeWithoutOvershoot(t *testing.T) {
	createWorkload(t, "fill", nil)
	obs := watchPoolPods(t, "fill-pool")
	createPool(t, "fill-pool", "fill", 3, nil)
	waitPoolFull(t, "fill-pool", 3)
	waitFor(t, 10*time.Second, "pool-status=ready labels", func() (bool, string) {
		pods := listPods(t, map[string]string{v1alpha1.LabelPool: "fill-pool"})
		var labels []string
		for _, p := range pods {
			labels = append(labels, p.Labels[v1alpha1.LabelPoolStatus])
		}
		return len(pods) == 3 && strings.Join(labels, ",") == "ready,ready,ready", fmt.Sprint(labels)
	})
	for _, p := range listPods(t, map[string]string{v1alpha1.LabelPool: "fill-pool"}) {
		if p.Labels[v1alpha1.LabelWorkload] != "fill" || p.Labels[v1alpha1.LabelManaged] != "true" || p.Labels[v1alpha1.LabelInstance] != p.Name {
			t.Errorf("pod %s labels = %v", p.Name, p.Labels)
		}
		if !strings.HasPrefix(p.Name, "fill-p-") {
			t.Errorf("pod name %s, want fill-p-<random>", p.Name)
		}
	}
	if got := getPool(t, "fill-pool").Status.ObservedGeneration; got != getPool(t, "fill-pool").Generation {
		t.Errorf("observedGeneration = %d", got)
	}
	if m := obs.maxLive(); m > 3 {
		t.Errorf("saw %d live pool pods at once, size is 3", m)
	}
}

func TestPoolScalesDown(t *testing.T) {
	createWorkload(t, "shrink", nil)
	three := int32(3)
	createPool(t, "shrink-pool", "shrink", 3, &three)
	waitPoolFull(t, "shrink-pool", 3)
	obs := watchPoolPods(t, "shrink-pool")
	before, _ := unheldPoolPods(t, "shrink-pool")

	p := getPool(t, "shrink-pool")
	patch := client.MergeFrom(p.DeepCopy())
	p.Spec.Size = 1
	if err := plane.Client.Patch(context.Background(), p, patch); err != nil {
		t.Fatal(err)
	}
	waitPoolFull(t, "shrink-pool", 1)
	waitFor(t, 30*time.Second, "scaled-down pods gone with their ledger keys", func() (bool, string) {
		pods := listPods(t, map[string]string{v1alpha1.LabelPool: "shrink-pool"})
		if len(pods) != 1 {
			return false, fmt.Sprintf("%d pods", len(pods))
		}
		for _, name := range before {
			if name == pods[0].Name {
				continue
			}
			if _, err := kv.Get(context.Background(), name); err == nil {
				return false, "ledger still holds " + name
			}
		}
		return true, ""
	})
	if m := obs.maxLive(); m > 3 {
		t.Errorf("saw %d live pool pods at once, size was at most 3", m)
	}
	waitFor(t, 10*time.Second, "pool gauges at the new size", func() (bool, string) {
		ready := testutil.ToFloat64(poolPods.WithLabelValues("shrink-pool", "ready"))
		warming := testutil.ToFloat64(poolPods.WithLabelValues("shrink-pool", "warming"))
		return ready == 1 && warming == 0, fmt.Sprintf("ready %v, warming %v", ready, warming)
	})
}

func TestFailedPoolPodIsReplaced(t *testing.T) {
	createWorkload(t, "flaky", failing)
	createPool(t, "flaky-pool", "flaky", 1, nil)
	var first string
	waitFor(t, 30*time.Second, "a pool pod", func() (bool, string) {
		pods := listPods(t, map[string]string{v1alpha1.LabelPool: "flaky-pool"})
		if len(pods) > 0 {
			first = pods[0].Name
		}
		return first != "", "no pods"
	})
	waitFor(t, 30*time.Second, "the first pod to fail and be replaced", func() (bool, string) {
		if p, ok := getPod(t, first); ok {
			return false, fmt.Sprintf("%s still there, phase %s", first, p.Status.Phase)
		}
		for _, p := range listPods(t, map[string]string{v1alpha1.LabelPool: "flaky-pool"}) {
			if p.Name != first {
				return true, ""
			}
		}
		return false, "no replacement"
	})
	waitFor(t, 10*time.Second, "pool Degraded", func() (bool, string) {
		st := getPool(t, "flaky-pool").Status
		return st.Phase == v1alpha1.PoolDegraded && st.Ready == 0, fmt.Sprintf("%+v", st)
	})
	if m := len(listPods(t, map[string]string{v1alpha1.LabelPool: "flaky-pool"})); m > 2 {
		t.Errorf("%d pods for a pool of size 1 (one failed being deleted at most)", m)
	}
}

func TestPoolErrorWhenWorkloadMissing(t *testing.T) {
	createPool(t, "orphan-pool", "ghost", 1, nil)
	waitFor(t, 20*time.Second, "pool Error", func() (bool, string) {
		st := getPool(t, "orphan-pool").Status
		c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
		return st.Phase == v1alpha1.PoolError && st.Detail == `workload "ghost" not found` && st.Ready == 0 &&
			c != nil && c.Status == metav1.ConditionFalse && c.Reason == "Error" && c.Message == st.Detail, fmt.Sprintf("%+v", st)
	})
	if n := len(listPods(t, map[string]string{v1alpha1.LabelPool: "orphan-pool"})); n != 0 {
		t.Errorf("%d pods created for a missing workload", n)
	}
	// The workload appearing fills the pool (pools watch workloads).
	createWorkload(t, "ghost", nil)
	waitPoolFull(t, "orphan-pool", 1)
	if d := getPool(t, "orphan-pool").Status.Detail; d != "" {
		t.Errorf("detail = %q after recovery", d)
	}
}

func TestPoolErrorWhenWorkloadInvalid(t *testing.T) {
	createWorkload(t, "broken", func(w *v1alpha1.BoilerhouseWorkload) {
		w.Spec.Entrypoint = &v1alpha1.EntrypointSpec{Env: envJSON(`{"A":1}`)}
	})
	createPool(t, "broken-pool", "broken", 2, nil)
	waitFor(t, 20*time.Second, "pool Error", func() (bool, string) {
		st := getPool(t, "broken-pool").Status
		return st.Phase == v1alpha1.PoolError && strings.Contains(st.Detail, `entrypoint.env["A"] must be a string`), fmt.Sprintf("%+v", st)
	})
}

func TestTwoPoolsOfOneWorkloadDoNotFight(t *testing.T) {
	createWorkload(t, "shared", nil)
	createPool(t, "shared-a", "shared", 1, nil)
	createPool(t, "shared-b", "shared", 2, nil)
	waitPoolFull(t, "shared-a", 1)
	waitPoolFull(t, "shared-b", 2)
	if n := len(listPods(t, map[string]string{v1alpha1.LabelWorkload: "shared"})); n != 3 {
		t.Errorf("%d pods of the workload, want 3", n)
	}
}

func TestPoolDeletionKeepsAcquiredPods(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "keep", nil)
	pool := createPool(t, "keep-pool", "keep", 2, nil)
	waitPoolFull(t, "keep-pool", 2)
	if n := poolSeries(t, "keep-pool"); n != 2 {
		t.Fatalf("a full pool has %d gauge series, want ready and warming", n)
	}
	inst, err := acquire(ctx, acquireReq("keep", "tenant-keep", "claim-keep"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "tenant label", func() (bool, string) {
		p, ok := getPod(t, inst.InstanceID)
		return ok && p.Labels[v1alpha1.LabelTenant] == "tenant-keep", "not yet"
	})
	if err := plane.Client.Delete(ctx, pool); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "unheld pool pods deleted", func() (bool, string) {
		var names []string
		for _, p := range listPods(t, map[string]string{v1alpha1.LabelPool: "keep-pool"}) {
			names = append(names, p.Name)
		}
		return len(names) == 1 && names[0] == inst.InstanceID, fmt.Sprint(names)
	})
	p, ok := getPod(t, inst.InstanceID)
	if !ok || p.DeletionTimestamp != nil || !PodReady(p) {
		t.Fatalf("acquired pod %s was touched by the pool deletion", inst.InstanceID)
	}
	waitFor(t, 10*time.Second, "a deleted pool's gauges gone", func() (bool, string) {
		n := poolSeries(t, "keep-pool")
		return n == 0, fmt.Sprintf("%d series", n)
	})
	if _, err := retire(ctx, retireReq(inst)); err != nil {
		t.Fatal(err)
	}
}

// TestPoolPodOfOtherWorkloadIsReplaced: when a pool moves to another workload, its Pods of the old
// one are replaced.
func TestPoolPodOfOtherWorkloadIsReplaced(t *testing.T) {
	createWorkload(t, "move-a", nil)
	createWorkload(t, "move-b", nil)
	createPool(t, "move-pool", "move-a", 1, nil)
	waitPoolFull(t, "move-pool", 1)
	old, _ := unheldPoolPods(t, "move-pool")
	p := getPool(t, "move-pool")
	patch := client.MergeFrom(p.DeepCopy())
	p.Spec.WorkloadRef = "move-b"
	if err := plane.Client.Patch(context.Background(), p, patch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "pool rolled to move-b", func() (bool, string) {
		pods := listPods(t, map[string]string{v1alpha1.LabelPool: "move-pool"})
		if len(pods) != 1 || pods[0].Name == old[0] || pods[0].Labels[v1alpha1.LabelWorkload] != "move-b" || !PodReady(&pods[0]) {
			return false, fmt.Sprintf("%d pods", len(pods))
		}
		return true, ""
	})
}

// poolSeries counts the pool gauges' series of pool.
func poolSeries(t *testing.T, pool string) int {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	poolPods.Collect(ch)
	close(ch)
	n := 0
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		for _, l := range d.GetLabel() {
			if l.GetName() == "pool" && l.GetValue() == pool {
				n++
			}
		}
	}
	return n
}
