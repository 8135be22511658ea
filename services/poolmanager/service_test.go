package poolmanager

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

var t0 = time.Date(2026, 4, 20, 10, 0, 0, 0, time.UTC)

func ready(name string, age int) PodInfo {
	return PodInfo{Name: name, Ready: true, Created: t0.Add(-time.Duration(age) * time.Minute)}
}

func warming(name string, age int) PodInfo {
	return PodInfo{Name: name, Created: t0.Add(-time.Duration(age) * time.Minute)}
}

func poolSpec(size int32, fill *int32) v1alpha1.PoolSpec {
	return v1alpha1.PoolSpec{WorkloadRef: "w", Size: size, MaxFillConcurrency: fill}
}

func TestPlanPool(t *testing.T) {
	one, three := int32(1), int32(3)
	tests := []struct {
		name          string
		spec          v1alpha1.PoolSpec
		workloadReady bool
		pods          []PodInfo
		held          map[string]bool
		want          Plan
	}{
		{"empty pool fills at fill concurrency (default 2)", poolSpec(5, nil), true, nil, nil,
			Plan{Create: 2, Status: v1alpha1.PoolStatus{Phase: v1alpha1.PoolDegraded}}},
		{"fill concurrency 3", poolSpec(5, &three), true, nil, nil,
			Plan{Create: 3, Status: v1alpha1.PoolStatus{Phase: v1alpha1.PoolDegraded}}},
		{"warming pods use the fill budget", poolSpec(5, nil), true, []PodInfo{warming("a", 1)}, nil,
			Plan{Create: 1, Status: v1alpha1.PoolStatus{Warming: 1, Phase: v1alpha1.PoolDegraded}}},
		{"fill budget spent", poolSpec(5, &one), true, []PodInfo{warming("a", 1), ready("b", 2)}, nil,
			Plan{Status: v1alpha1.PoolStatus{Ready: 1, Warming: 1, Phase: v1alpha1.PoolDegraded}}},
		{"never beyond size", poolSpec(3, &three), true, []PodInfo{ready("a", 1), ready("b", 1)}, nil,
			Plan{Create: 1, Status: v1alpha1.PoolStatus{Ready: 2, Phase: v1alpha1.PoolDegraded}}},
		{"full and healthy", poolSpec(2, nil), true, []PodInfo{ready("a", 1), ready("b", 1)}, nil,
			Plan{Status: v1alpha1.PoolStatus{Ready: 2, Phase: v1alpha1.PoolHealthy}}},
		{"held pods do not count and are replaced", poolSpec(2, nil), true,
			[]PodInfo{ready("a", 1), ready("b", 1), ready("c", 1)}, map[string]bool{"a": true, "b": true},
			Plan{Create: 1, Status: v1alpha1.PoolStatus{Ready: 1, Phase: v1alpha1.PoolDegraded}}},
		{"failed pods are deleted and replaced", poolSpec(2, nil), true,
			[]PodInfo{ready("a", 1), {Name: "f", Failed: true}}, nil,
			Plan{Create: 1, Delete: []string{"f"}, Status: v1alpha1.PoolStatus{Ready: 1, Phase: v1alpha1.PoolDegraded}}},
		{"held failed pods are left alone", poolSpec(1, nil), true,
			[]PodInfo{ready("a", 1), {Name: "f", Failed: true}}, map[string]bool{"f": true},
			Plan{Status: v1alpha1.PoolStatus{Ready: 1, Phase: v1alpha1.PoolHealthy}}},
		{"stuck warming pods are replaced", poolSpec(1, nil), true,
			[]PodInfo{{Name: "s", Stuck: true}}, nil,
			Plan{Create: 1, Delete: []string{"s"}, Status: v1alpha1.PoolStatus{Phase: v1alpha1.PoolDegraded}}},
		{"stale pods (other workload) are replaced", poolSpec(1, nil), true,
			[]PodInfo{{Name: "o", Ready: true, Stale: true}}, nil,
			Plan{Create: 1, Delete: []string{"o"}, Status: v1alpha1.PoolStatus{Phase: v1alpha1.PoolDegraded}}},
		{"terminating pods do not count", poolSpec(1, nil), true,
			[]PodInfo{{Name: "t", Ready: true, Terminating: true}}, nil,
			Plan{Create: 1, Status: v1alpha1.PoolStatus{Phase: v1alpha1.PoolDegraded}}},
		{"scale down deletes warming first, newest first", poolSpec(1, nil), true,
			[]PodInfo{ready("r-old", 9), ready("r-new", 1), warming("w-old", 5), warming("w-new", 2)}, nil,
			Plan{Delete: []string{"w-new", "w-old", "r-new"}, Status: v1alpha1.PoolStatus{Ready: 1, Phase: v1alpha1.PoolHealthy}}},
		{"scale down only warming", poolSpec(2, nil), true,
			[]PodInfo{ready("r", 9), warming("w1", 5), warming("w2", 2)}, nil,
			Plan{Delete: []string{"w2"}, Status: v1alpha1.PoolStatus{Ready: 1, Warming: 1, Phase: v1alpha1.PoolDegraded}}},
		{"scale to zero", poolSpec(0, nil), true,
			[]PodInfo{ready("a", 1), warming("b", 1)}, map[string]bool{"c": true},
			Plan{Delete: []string{"b", "a"}, Status: v1alpha1.PoolStatus{Phase: v1alpha1.PoolHealthy}}},
		{"workload not ready: nothing created, Error", poolSpec(3, nil), false,
			[]PodInfo{ready("a", 1), {Name: "f", Failed: true}}, nil,
			Plan{Delete: []string{"f"}, Status: v1alpha1.PoolStatus{Ready: 1, Phase: v1alpha1.PoolError}}},
		{"workload not ready still scales down", poolSpec(1, nil), false,
			[]PodInfo{ready("a", 2), ready("b", 1)}, nil,
			Plan{Delete: []string{"b"}, Status: v1alpha1.PoolStatus{Ready: 1, Phase: v1alpha1.PoolError}}},
		{"same age sorts by name", poolSpec(1, nil), true,
			[]PodInfo{ready("a", 1), ready("b", 1), ready("c", 1)}, nil,
			Plan{Delete: []string{"c", "b"}, Status: v1alpha1.PoolStatus{Ready: 1, Phase: v1alpha1.PoolHealthy}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PlanPool(tt.spec, tt.workloadReady, tt.pods, tt.held)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("PlanPool =\n %+v\nwant\n %+v", got, tt.want)
			}
			// The invariant: after the plan, warming + ready (+ created) never exceeds size.
			if n := int(got.Status.Ready+got.Status.Warming) + got.Create; n > int(tt.spec.Size) {
				t.Errorf("plan leaves %d pods for size %d", n, tt.spec.Size)
			}
			if int(got.Status.Warming)+got.Create > int(tt.spec.FillConcurrency()) && got.Create > 0 {
				t.Errorf("plan warms %d at once, fill concurrency %d", int(got.Status.Warming)+got.Create, tt.spec.FillConcurrency())
			}
		})
	}
}

// TestPlanPoolConverges runs the planner against a simulated pool: Pods created become ready
// the next round; whatever the sizes, the pool never holds more than size unheld Pods.
func TestPlanPoolConverges(t *testing.T) {
	for _, sizes := range [][]int32{{3}, {5, 1}, {1, 4, 0, 2}} {
		var pods []PodInfo
		n := 0
		for _, size := range sizes {
			for range 20 {
				plan := PlanPool(poolSpec(size, nil), true, pods, nil)
				del := map[string]bool{}
				for _, d := range plan.Delete {
					del[d] = true
				}
				var next []PodInfo
				for _, p := range pods {
					if !del[p.Name] {
						p.Ready = true
						next = append(next, p)
					}
				}
				for range plan.Create {
					n++
					next = append(next, PodInfo{Name: string(rune('a'+n%26)) + time.Duration(n).String(), Created: t0.Add(time.Duration(n))})
				}
				pods = next
				if len(pods) > int(size) {
					t.Fatalf("sizes %v: %d pods for size %d", sizes, len(pods), size)
				}
			}
			if len(pods) != int(size) {
				t.Errorf("sizes %v: converged to %d pods, want %d", sizes, len(pods), size)
			}
		}
	}
}

func TestFailureBackoff(t *testing.T) {
	tests := []struct {
		n    int
		want time.Duration
	}{
		{0, 0}, {1, 0}, {2, 500 * time.Millisecond}, {3, time.Second}, {4, 2 * time.Second},
		{8, 30 * time.Second}, {9, 30 * time.Second}, {100, 30 * time.Second},
	}
	for _, tt := range tests {
		if got := FailureBackoff(tt.n); got != tt.want {
			t.Errorf("FailureBackoff(%d) = %s, want %s", tt.n, got, tt.want)
		}
	}
}

func TestFailureTracker(t *testing.T) {
	var f failureTracker
	if d := f.record("p", true, false); d > 0 {
		t.Errorf("first failure waits %s, want 0 (replaced at once)", d)
	}
	time.Sleep(time.Millisecond)
	if d := f.record("p", true, false); d <= 0 || d > 500*time.Millisecond {
		t.Errorf("second failure round waits %s, want (0, 500ms]", d)
	}
	if d := f.record("p", false, false); d <= 0 {
		t.Errorf("still backing off: wait %s, want > 0", d)
	}
	if d := f.record("other", false, false); d != 0 {
		t.Errorf("another pool waits %s", d)
	}
	if d := f.record("p", false, true); d != 0 {
		t.Errorf("healthy pool waits %s", d)
	}
	if d := f.record("p", true, false); d > 0 {
		t.Errorf("after recovery, first failure waits %s", d)
	}
}

func TestWorkloadStatus(t *testing.T) {
	w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: "w", Generation: 4}, Spec: v1alpha1.WorkloadSpec{
		Image: v1alpha1.ImageSpec{Ref: "img"}, Resources: v1alpha1.ResourcesSpec{VCPUs: 1, MemoryMb: 64}}}
	check := func(what string, got v1alpha1.WorkloadStatus, phase v1alpha1.WorkloadPhase, detail string, ready metav1.ConditionStatus, reason string) {
		t.Helper()
		if got.Phase != phase || got.Detail != detail || got.ObservedGeneration != 4 {
			t.Errorf("%s: %+v, want phase %s, detail %q, observedGeneration 4", what, got, phase, detail)
		}
		c := meta.FindStatusCondition(got.Conditions, v1alpha1.ConditionReady)
		if len(got.Conditions) != 1 || c == nil || c.Status != ready || c.Reason != reason || c.Message != detail ||
			c.ObservedGeneration != 4 || c.LastTransitionTime.IsZero() {
			t.Errorf("%s: conditions %+v, want Ready %s reason %s", what, got.Conditions, ready, reason)
		}
	}
	valid := WorkloadStatus(w)
	check("valid", valid, v1alpha1.WorkloadReady, "", metav1.ConditionTrue, "Valid")
	w.Status = valid
	if again := WorkloadStatus(w); !equality.Semantic.DeepEqual(again, valid) {
		t.Errorf("an unchanged workload's status changed: %+v, then %+v", valid, again)
	}
	w.Spec.Image.Dockerfile = "Dockerfile"
	w.Spec.Entrypoint = &v1alpha1.EntrypointSpec{Env: &apiextensionsv1.JSON{Raw: []byte(`[1]`)}}
	check("invalid", WorkloadStatus(w), v1alpha1.WorkloadError,
		"image.ref and image.dockerfile are mutually exclusive; entrypoint.env must be an object of string values", metav1.ConditionFalse, "Invalid")
}

func TestPodHelpers(t *testing.T) {
	now := metav1.Now()
	readyPod := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Ports: []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: 9090}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.1.0.5",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		}
		if mut != nil {
			mut(p)
		}
		return p
	}
	tests := []struct {
		name  string
		pod   *corev1.Pod
		ready bool
	}{
		{"ready", readyPod(nil), true},
		{"no ip", readyPod(func(p *corev1.Pod) { p.Status.PodIP = "" }), false},
		{"pending", readyPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), false},
		{"condition false", readyPod(func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }), false},
		{"no condition", readyPod(func(p *corev1.Pod) { p.Status.Conditions = nil }), false},
		{"terminating", readyPod(func(p *corev1.Pod) { p.DeletionTimestamp = &now }), false},
	}
	for _, tt := range tests {
		if got := PodReady(tt.pod); got != tt.ready {
			t.Errorf("%s: PodReady = %v, want %v", tt.name, got, tt.ready)
		}
	}
	if ep := Endpoint(readyPod(nil)); *ep != (messages.Endpoint{Host: "127.1.0.5", Port: 8080}) {
		t.Errorf("Endpoint = %+v", ep)
	}

	failed := readyPod(func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodFailed
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error", Message: "boom"}}}}
	})
	if !PodFinished(failed) || PodFinished(readyPod(nil)) {
		t.Error("PodFinished wrong")
	}
	if got, want := FailureReason(failed), "container main exited with code 1 (Error): boom"; got != want {
		t.Errorf("FailureReason = %q, want %q", got, want)
	}
	unsched := readyPod(func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: "0/1 nodes are available: insufficient cpu"}}
	})
	if msg, ok := Unschedulable(unsched); !ok || msg != "0/1 nodes are available: insufficient cpu" {
		t.Errorf("Unschedulable = %q, %v", msg, ok)
	}
	if _, ok := Unschedulable(readyPod(nil)); ok {
		t.Error("ready pod reported unschedulable")
	}
	tenant := readyPod(func(p *corev1.Pod) { p.Labels = map[string]string{v1alpha1.LabelTenant: "t"} })
	acquired := readyPod(func(p *corev1.Pod) {
		p.Labels = map[string]string{v1alpha1.LabelPoolStatus: v1alpha1.PoolStatusAcquired}
	})
	if !HeldBy(tenant, false) || !HeldBy(acquired, false) || !HeldBy(readyPod(nil), true) || HeldBy(readyPod(nil), false) {
		t.Error("HeldBy wrong")
	}
}

func TestOverlayPodHelpers(t *testing.T) {
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	done := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}}
	waiting := corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}
	pod := func(init []string, containers []string, statuses map[string]corev1.ContainerState) *corev1.Pod {
		p := &corev1.Pod{}
		for _, n := range init {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: n})
		}
		for _, n := range containers {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: n})
		}
		for n, s := range statuses {
			p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, corev1.ContainerStatus{Name: n, State: s})
		}
		return p
	}
	tests := []struct {
		name                     string
		pod                      *corev1.Pod
		gated, waiting, overlays bool
	}{
		{"plain", pod(nil, []string{"main"}, nil), false, false, false},
		{"helper only", pod(nil, []string{"main", "overlay"}, nil), false, false, true},
		{"gated, not started", pod([]string{"overlay-restore"}, []string{"main", "overlay"}, nil), true, false, true},
		{"gated, waiting to start", pod([]string{"overlay-restore"}, []string{"main", "overlay"}, map[string]corev1.ContainerState{"overlay-restore": waiting}), true, false, true},
		{"gated, running", pod([]string{"overlay-restore"}, []string{"main", "overlay"}, map[string]corev1.ContainerState{"overlay-restore": running}), true, true, true},
		{"gated, done", pod([]string{"overlay-restore"}, []string{"main", "overlay"}, map[string]corev1.ContainerState{"overlay-restore": done}), true, false, true},
		{"another init running", pod([]string{"other"}, []string{"main"}, map[string]corev1.ContainerState{"other": running}), false, false, false},
	}
	for _, tt := range tests {
		if got := RestoreGated(tt.pod); got != tt.gated {
			t.Errorf("%s: RestoreGated = %v, want %v", tt.name, got, tt.gated)
		}
		if got := RestoreWaiting(tt.pod); got != tt.waiting {
			t.Errorf("%s: RestoreWaiting = %v, want %v", tt.name, got, tt.waiting)
		}
		if got := HasOverlayHelper(tt.pod); got != tt.overlays {
			t.Errorf("%s: HasOverlayHelper = %v, want %v", tt.name, got, tt.overlays)
		}
	}

	for _, tt := range []struct {
		w    *v1alpha1.BoilerhouseWorkload
		want string
	}{
		{nil, "hibernate"},
		{&v1alpha1.BoilerhouseWorkload{}, "hibernate"},
		{&v1alpha1.BoilerhouseWorkload{Spec: v1alpha1.WorkloadSpec{Idle: &v1alpha1.IdleSpec{TimeoutSeconds: 60}}}, "hibernate"},
		{&v1alpha1.BoilerhouseWorkload{Spec: v1alpha1.WorkloadSpec{Idle: &v1alpha1.IdleSpec{Action: v1alpha1.IdleActionDestroy}}}, "destroy"},
		{&v1alpha1.BoilerhouseWorkload{Spec: v1alpha1.WorkloadSpec{Idle: &v1alpha1.IdleSpec{Action: v1alpha1.IdleActionHibernate}}}, "hibernate"},
	} {
		if got := ReleaseAction(tt.w); got != tt.want {
			t.Errorf("ReleaseAction(%+v) = %q, want %q", tt.w, got, tt.want)
		}
	}
	if ep := Endpoint(&corev1.Pod{}); ep != nil {
		t.Errorf("Endpoint of a Pod without IP = %+v, want nil", ep)
	}
}
