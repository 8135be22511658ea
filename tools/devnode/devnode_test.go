package devnode

import (
	"context"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

func TestNodeRegistration(t *testing.T) {
	ctx := context.Background()
	name, fresh := uniq("dn-registration"), uniq("dn-registration-fresh")
	// A Node left behind with the admission plugin's not-ready taint and a taint of its own:
	// the dev node must lift the first and keep the second.
	pre := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{
			{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoSchedule},
			{Key: "example.com/keep", Value: "me", Effect: corev1.TaintEffectNoSchedule},
		}},
	}
	if err := plane.Client.Create(ctx, pre); err != nil {
		t.Fatal(err)
	}
	startNode(t, Config{NodeName: name, HeartbeatInterval: 200 * time.Millisecond})

	var node corev1.Node
	waitFor(t, 30*time.Second, "node Ready", func() (bool, error) {
		if err := plane.Client.Get(ctx, client.ObjectKey{Name: name}, &node); err != nil {
			return false, err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	keys := []string{}
	for _, tn := range node.Spec.Taints {
		keys = append(keys, tn.Key)
	}
	if !slices.Equal(keys, []string{"example.com/keep"}) {
		t.Errorf("taints %v, want only example.com/keep", keys)
	}
	for name, want := range map[corev1.ResourceName]string{"cpu": "64", "memory": "256Gi", "pods": "10000"} {
		for _, list := range []corev1.ResourceList{node.Status.Capacity, node.Status.Allocatable} {
			got := list[name]
			if got.Cmp(resource.MustParse(want)) != 0 {
				t.Errorf("%s = %s, want %s", name, got.String(), want)
			}
		}
	}

	// A Node created from scratch gets no not-ready taint left on it either.
	startNode(t, Config{NodeName: fresh})
	waitFor(t, 30*time.Second, "fresh node without taints", func() (bool, error) {
		var freshNode corev1.Node
		err := plane.Client.Get(ctx, client.ObjectKey{Name: fresh}, &freshNode)
		return err == nil && len(freshNode.Spec.Taints) == 0 && len(freshNode.Status.Conditions) > 0, err
	})

	// The Lease is renewed.
	var lease coordinationv1.Lease
	key := client.ObjectKey{Namespace: corev1.NamespaceNodeLease, Name: name}
	if err := plane.Client.Get(ctx, key, &lease); err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != name || lease.Spec.RenewTime == nil {
		t.Fatalf("lease spec %+v", lease.Spec)
	}
	first := lease.Spec.RenewTime.Time
	waitFor(t, 10*time.Second, "lease renewal", func() (bool, error) {
		var l coordinationv1.Lease
		err := plane.Client.Get(ctx, key, &l)
		return err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.After(first), err
	})
}

func TestPodLifecycle(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, "lifecycle")
	n := startNode(t, Config{NodeName: uniq("dn-lifecycle")})
	nodeName := n.Name()
	createPod(t, demoPod(ns, "web", "tenant-a"))

	pod := waitReady(t, ns, "web")
	if pod.Spec.NodeName != nodeName {
		t.Errorf("nodeName %q", pod.Spec.NodeName)
	}
	checkPodIP(t, pod.Status.PodIP)
	if pod.Status.HostIP != "127.0.0.1" || len(pod.Status.PodIPs) != 1 || pod.Status.PodIPs[0].IP != pod.Status.PodIP {
		t.Errorf("hostIP %q podIPs %v", pod.Status.HostIP, pod.Status.PodIPs)
	}
	if pod.Status.StartTime == nil {
		t.Error("no startTime")
	}
	for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if podCondition(pod, c) != corev1.ConditionTrue {
			t.Errorf("condition %s = %q", c, podCondition(pod, c))
		}
	}
	if cs := pod.Status.ContainerStatuses; len(cs) != 1 || cs[0].State.Running == nil || !cs[0].Ready ||
		cs[0].Started == nil || !*cs[0].Started {
		t.Errorf("container statuses %+v", cs)
	}

	ip := pod.Status.PodIP
	got, err := demoGet(ip, 8080)
	if err != nil {
		t.Fatal(err)
	}
	want := DemoReply{Pod: "web", Namespace: ns, Workload: "echo", Tenant: "tenant-a", Port: 8080}
	if got != want {
		t.Errorf("GET / = %+v, want %+v", got, want)
	}
	var health HealthReply
	if code, err := getJSON(ip, 8080, "/health", &health); err != nil || code != http.StatusOK || health.Status != "ok" {
		t.Errorf("GET /health = %d %+v %v", code, health, err)
	}

	// Relabel the tenant (as a pool hand-out does): the answer follows the current labels.
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Labels[v1alpha1.LabelTenant] = "tenant-b"
	if err := plane.Client.Patch(ctx, pod, patch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "tenant-b in the answer", func() (bool, error) {
		got, err := demoGet(ip, 8080)
		return err == nil && got.Tenant == "tenant-b", err
	})

	// Delete (with the default grace period): the node stops the servers and completes it.
	deletePod(t, pod)
	waitGone(t, ns, "web")
	if ok, err := refused(ip, 8080); !ok {
		t.Errorf("port 8080 of a deleted pod: want connection refused, got %v", err)
	}
	waitFor(t, 5*time.Second, "pod IP freed", func() (bool, error) { return n.alloc.len() == 0, nil })

	// With a finalizer the Pod outlives the node's final delete: its servers are already
	// stopped then, and its IP stays reserved until the Pod is really gone.
	createPod(t, demoPod(ns, "held", "tenant-a", func(p *corev1.Pod) { p.Finalizers = []string{v1alpha1.Finalizer} }))
	held := waitReady(t, ns, "held")
	deletePod(t, held)
	waitFor(t, 30*time.Second, "final delete of held", func() (bool, error) {
		held = getPod(t, ns, "held")
		g := held.DeletionGracePeriodSeconds
		return g != nil && *g == 0, nil
	})
	if ok, err := refused(held.Status.PodIP, 8080); !ok {
		t.Errorf("servers still up when the node completed the deletion: %v", err)
	}
	if n.alloc.len() != 1 {
		t.Errorf("IPs reserved while held exists: %d, want 1", n.alloc.len())
	}
	patch = client.MergeFrom(held.DeepCopy())
	held.Finalizers = nil
	if err := plane.Client.Patch(ctx, held, patch); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, "held")
	waitFor(t, 5*time.Second, "held's IP freed", func() (bool, error) { return n.alloc.len() == 0, nil })
}

func TestTwoPodsAndBehaviors(t *testing.T) {
	ns := newNamespace(t, "behaviors")
	startNode(t, Config{NodeName: uniq("dn-behaviors")})
	createPod(t, demoPod(ns, "a", "t1"))
	createPod(t, demoPod(ns, "b", "t2"))
	createPod(t, demoPod(ns, "crash", "t3", withBehavior(BehaviorFail)))
	createPod(t, demoPod(ns, "sulky", "t4", withBehavior(BehaviorNeverReady)))

	a, b := waitReady(t, ns, "a"), waitReady(t, ns, "b")
	checkPodIP(t, a.Status.PodIP)
	checkPodIP(t, b.Status.PodIP)
	if a.Status.PodIP == b.Status.PodIP {
		t.Fatalf("pods a and b share IP %s", a.Status.PodIP)
	}
	for _, p := range []*corev1.Pod{a, b} {
		got, err := demoGet(p.Status.PodIP, 8080)
		if err != nil || got.Pod != p.Name {
			t.Errorf("GET / on %s (%s) = %+v, %v", p.Name, p.Status.PodIP, got, err)
		}
	}

	// fail: ends Failed with exit code 1, servers stopped, and stays so.
	var crash *corev1.Pod
	waitFor(t, 30*time.Second, "crash Failed", func() (bool, error) {
		crash = getPod(t, ns, "crash")
		return crash.Status.Phase == corev1.PodFailed, nil
	})
	cs := crash.Status.ContainerStatuses
	if len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 1 {
		t.Errorf("crash container statuses %+v", cs)
	}
	if isReady(crash) {
		t.Error("failed pod is Ready")
	}
	checkPodIP(t, crash.Status.PodIP)
	if ok, err := refused(crash.Status.PodIP, 8080); !ok {
		t.Errorf("failed pod's port: want connection refused, got %v", err)
	}

	// never-ready: Running, /health 503, and its probe (every 1s) never passes.
	sulky := getPod(t, ns, "sulky")
	waitFor(t, 30*time.Second, "sulky Running", func() (bool, error) {
		sulky = getPod(t, ns, "sulky")
		return sulky.Status.Phase == corev1.PodRunning, nil
	})
	var health HealthReply
	if code, err := getJSON(sulky.Status.PodIP, 8080, "/health", &health); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("never-ready GET /health = %d %v, want 503", code, err)
	}
	if _, err := demoGet(sulky.Status.PodIP, 8080); err != nil {
		t.Errorf("never-ready GET /: %v", err)
	}
	for range 4 {
		time.Sleep(time.Second)
		sulky = getPod(t, ns, "sulky")
		if isReady(sulky) || sulky.Status.Phase != corev1.PodRunning {
			t.Fatalf("never-ready pod: phase %s ready %v", sulky.Status.Phase, isReady(sulky))
		}
	}
	ips := map[string]string{}
	for _, p := range []*corev1.Pod{a, b, crash, sulky} {
		if other, dup := ips[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s share IP %s", other, p.Name, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = p.Name
	}
	// The failed pod is not restarted.
	time.Sleep(time.Second)
	if crash = getPod(t, ns, "crash"); crash.Status.Phase != corev1.PodFailed {
		t.Errorf("failed pod went %s", crash.Status.Phase)
	}
}

// A probe that starts failing turns the Pod not Ready after failureThreshold periods, and Ready
// again once it passes.
func TestReadinessProbeFlips(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, "flips")
	startNode(t, Config{NodeName: uniq("dn-flips")})
	noProbe := demoPod(ns, "noprobe", "t1")
	noProbe.Spec.Containers[0].ReadinessProbe = nil
	createPod(t, noProbe)
	createPod(t, demoPod(ns, "flip", "t1"))
	waitReady(t, ns, "noprobe")
	pod := waitReady(t, ns, "flip")

	setBehavior := func(b string) {
		t.Helper()
		p := getPod(t, ns, "flip")
		patch := client.MergeFrom(p.DeepCopy())
		if b == "" {
			delete(p.Annotations, BehaviorAnnotation)
		} else {
			p.Annotations = map[string]string{BehaviorAnnotation: b}
		}
		if err := plane.Client.Patch(ctx, p, patch); err != nil {
			t.Fatal(err)
		}
	}
	setBehavior(BehaviorNeverReady)
	start := time.Now()
	waitFor(t, 15*time.Second, "flip not Ready", func() (bool, error) {
		p := getPod(t, ns, "flip")
		return !isReady(p) && p.Status.Phase == corev1.PodRunning, nil
	})
	t.Logf("Ready went false %s after /health started failing (period 1s, failureThreshold 2)", time.Since(start).Round(10*time.Millisecond))
	setBehavior("")
	waitReady(t, ns, "flip")
	if p := getPod(t, ns, "flip"); p.Status.PodIP != pod.Status.PodIP {
		t.Errorf("pod IP changed from %s to %s", pod.Status.PodIP, p.Status.PodIP)
	}
}

func TestRestartAdoption(t *testing.T) {
	ns := newNamespace(t, "restart")
	nodeName := uniq("dn-restart")
	first := startNode(t, Config{NodeName: nodeName})
	// keeper is the first Pod of a fresh node, so it holds the first IP of the range: the IP a
	// restarted node would hand out first if it did not adopt recorded IPs.
	createPod(t, demoPod(ns, "keeper", "tenant-a"))
	pod := waitReady(t, ns, "keeper")
	ip := pod.Status.PodIP
	createPod(t, demoPod(ns, "crash", "t3", withBehavior(BehaviorFail)))
	if _, err := demoGet(ip, 8080); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "crash Failed", func() (bool, error) {
		return getPod(t, ns, "crash").Status.Phase == corev1.PodFailed, nil
	})
	crashIP := getPod(t, ns, "crash").Status.PodIP

	// Stop: every listener is closed by the time Run returns.
	if err := first.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if ok, err := refused(ip, 8080); !ok {
		t.Fatalf("after Run returned, %s:8080 should refuse connections: %v", ip, err)
	}
	// While the node is down: an unscheduled Pod, and one already bound to the node whose key
	// sorts first, so a single worker allocates for it before it reaches keeper.
	createPod(t, demoPod(ns, "latecomer", "tenant-b"))
	createPod(t, demoPod(ns, "0-prebound", "tenant-c", func(p *corev1.Pod) { p.Spec.NodeName = nodeName }))

	startNode(t, Config{NodeName: nodeName, Workers: 1})
	late, pre := waitReady(t, ns, "latecomer"), waitReady(t, ns, "0-prebound")
	waitFor(t, 30*time.Second, "keeper answers again", func() (bool, error) {
		got, err := demoGet(ip, 8080)
		return err == nil && got.Pod == "keeper" && got.Tenant == "tenant-a", err
	})
	pod = getPod(t, ns, "keeper")
	if pod.Status.PodIP != ip || !isReady(pod) {
		t.Errorf("after restart keeper has IP %s (was %s), ready %v", pod.Status.PodIP, ip, isReady(pod))
	}
	for _, p := range []*corev1.Pod{late, pre} {
		checkPodIP(t, p.Status.PodIP)
		if p.Status.PodIP == ip || p.Status.PodIP == crashIP {
			t.Errorf("%s got IP %s that an adopted pod holds", p.Name, p.Status.PodIP)
		}
	}
	if late.Status.PodIP == pre.Status.PodIP {
		t.Errorf("latecomer and 0-prebound share IP %s", late.Status.PodIP)
	}
	if c := getPod(t, ns, "crash"); c.Status.Phase != corev1.PodFailed || c.Status.PodIP != crashIP {
		t.Errorf("failed pod after restart: phase %s IP %s", c.Status.Phase, c.Status.PodIP)
	}
	if ok, err := refused(crashIP, 8080); !ok {
		t.Errorf("failed pod restarted its server after node restart: %v", err)
	}
}

// A new Pod whose IP:port is already taken on this machine (another dev node, a host service)
// moves to the next IP instead of getting stuck.
func TestPortInUseMovesPod(t *testing.T) {
	ns := newNamespace(t, "portinuse")
	r, err := ParseIPRange("127.3.0.1-127.3.0.20")
	if err != nil {
		t.Fatal(err)
	}
	squatter, err := net.Listen("tcp", "127.3.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	startNode(t, Config{NodeName: uniq("dn-portinuse"), IPRange: r})
	createPod(t, demoPod(ns, "mover", "t1"))
	pod := waitReady(t, ns, "mover")
	if pod.Status.PodIP != "127.3.0.2" {
		t.Errorf("pod IP %s, want 127.3.0.2 (the next in the range)", pod.Status.PodIP)
	}
	if got, err := demoGet(pod.Status.PodIP, 8080); err != nil || got.Pod != "mover" {
		t.Errorf("GET / = %+v, %v", got, err)
	}
}
