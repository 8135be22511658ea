package edge

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/translate"
	"boilerhouse.dev/tools/devnode"
)

// ---- release retry / force ---------------------------------------------------

func TestReleaseRetryAndForce(t *testing.T) {
	e := startEdge(t)
	for _, tc := range []struct {
		path   string
		reason messages.ReleaseReason
		force  bool
	}{
		{"retry", messages.ReasonRetry, false},
		{"force", messages.ReasonForce, true},
	} {
		t.Run(tc.path, func(t *testing.T) {
			tenant := "rel-" + tc.path
			r := e.do(t, "POST", "/api/v1/tenants/"+tenant+"/release/"+tc.path, `{"workload":"pooled"}`)
			expect(t, r, 200)
			var v messages.ClaimView
			r.json(t, &v)
			if v.Phase != messages.PhaseReleased || v.TenantID != tenant || v.Workload != "pooled" {
				t.Fatalf("view %+v", v)
			}
			got, ok := router.lastRelease(tenant)
			if !ok || got.Reason != tc.reason || got.Force != tc.force || got.Workload != "pooled" {
				t.Fatalf("release request %+v, want reason %s force %v", got, tc.reason, tc.force)
			}
			// workloadRef is an alias; answers follow release's.
			expect(t, e.do(t, "POST", "/api/v1/tenants/"+tenant+"/release/"+tc.path, `{"workloadRef":"saving"}`), 202)
			r = e.do(t, "POST", "/api/v1/tenants/"+tenant+"/release/"+tc.path, `{"workload":"stubborn"}`)
			expect(t, r, 502)
			if eb := r.errorBody(t); eb.Code != codeReleaseFailed || !strings.Contains(eb.Error, "extract overlay") {
				t.Fatalf("ReleaseFailed answer %+v", eb)
			}
			expect(t, e.do(t, "POST", "/api/v1/tenants/"+tenant+"/release/"+tc.path, `{"workload":"never-claimed"}`), 404)
			expect(t, e.do(t, "POST", "/api/v1/tenants/"+tenant+"/release/"+tc.path, `{}`), 400)
			expect(t, e.do(t, "POST", "/api/v1/tenants/"+tenant+"/release/"+tc.path, `{"workload":"Bad_Name"}`), 400)
			expect(t, e.do(t, "POST", "/api/v1/tenants/a%20b/release/"+tc.path, `{"workload":"pooled"}`), 400)
			expect(t, e.do(t, "GET", "/api/v1/tenants/"+tenant+"/release/"+tc.path, ""), 405)
		})
	}
}

// ---- snapshots ----------------------------------------------------------------

// fakeOverlayStore answers bh.v1.overlays.list from a table, filtering like the real one.
type fakeOverlayStore struct {
	mu   sync.Mutex
	last messages.OverlayListRequest
}

var snapAt = time.Date(2026, 4, 20, 11, 0, 0, 0, time.UTC)

var storedSnapshots = []messages.Snapshot{
	{TenantID: "alice", Workload: "agent", Path: "alice/agent/2.tar.gz", Size: 1234, SHA256: strings.Repeat("a", 64), Generation: 2, CreatedAt: snapAt},
	{TenantID: "alice", Workload: "other", Path: "alice/other/1.tar.gz", Size: 10, SHA256: strings.Repeat("b", 64), Generation: 1, CreatedAt: snapAt},
	{TenantID: "org.acme", Workload: "agent", Path: "org_2eacme/agent/7.tar.gz", Size: 99, SHA256: strings.Repeat("c", 64), Generation: 7, CreatedAt: snapAt},
}

func (f *fakeOverlayStore) list(_ context.Context, req messages.OverlayListRequest) (messages.SnapshotList, error) {
	f.mu.Lock()
	f.last = req
	f.mu.Unlock()
	var out messages.SnapshotList
	for _, s := range storedSnapshots {
		if (req.TenantID == "" || req.TenantID == s.TenantID) && (req.Workload == "" || req.Workload == s.Workload) {
			out.Snapshots = append(out.Snapshots, s)
		}
	}
	return out, nil
}

func (f *fakeOverlayStore) lastRequest() messages.OverlayListRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func TestSnapshots(t *testing.T) {
	e := startEdge(t)
	// No overlay-store: 503, retryable.
	r := e.do(t, "GET", "/api/v1/snapshots", "")
	expect(t, r, 503)
	if eb := r.errorBody(t); eb.Code != "unavailable" || r.header.Get("Retry-After") == "" {
		t.Fatalf("no overlay-store: %+v, Retry-After %q", eb, r.header.Get("Retry-After"))
	}
	expect(t, e.do(t, "GET", "/api/v1/workloads/agent/snapshots", ""), 503)

	store := &fakeOverlayStore{}
	sub, err := bus.Serve[messages.OverlayListRequest](nc, messages.SubjectOverlaysList, bus.Endpoint(store.list),
		bus.ServeOptions{Queue: messages.QueueOverlayStore, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	r = e.do(t, "GET", "/api/v1/snapshots", "")
	expect(t, r, 200)
	var all []messages.Snapshot
	r.json(t, &all)
	if len(all) != 3 || all[0] != storedSnapshots[0] || store.lastRequest() != (messages.OverlayListRequest{}) {
		t.Fatalf("all snapshots %+v (request %+v)", all, store.lastRequest())
	}
	// The exact shape.
	var raw []map[string]any
	r.json(t, &raw)
	for _, k := range []string{"tenantId", "workloadRef", "path", "size", "sha256", "generation", "createdAt"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("snapshot lacks %q: %s", k, r.body)
		}
	}
	if raw[0]["createdAt"] != "2026-04-20T11:00:00Z" {
		t.Errorf("createdAt %v", raw[0]["createdAt"])
	}

	r = e.do(t, "GET", "/api/v1/workloads/agent/snapshots", "")
	expect(t, r, 200)
	var ofAgent []messages.Snapshot
	r.json(t, &ofAgent)
	if len(ofAgent) != 2 || ofAgent[0].Workload != "agent" || ofAgent[1].Workload != "agent" ||
		store.lastRequest() != (messages.OverlayListRequest{Workload: "agent"}) {
		t.Fatalf("agent snapshots %+v (request %+v)", ofAgent, store.lastRequest())
	}
	r = e.do(t, "GET", "/api/v1/workloads/agent/snapshots?tenant=org.acme", "")
	expect(t, r, 200)
	r.json(t, &ofAgent)
	if len(ofAgent) != 1 || ofAgent[0].Generation != 7 || store.lastRequest() != (messages.OverlayListRequest{TenantID: "org.acme", Workload: "agent"}) {
		t.Fatalf("org.acme's agent snapshots %+v", ofAgent)
	}
	r = e.do(t, "GET", "/api/v1/snapshots?tenant=alice", "")
	expect(t, r, 200)
	r.json(t, &all)
	if len(all) != 2 || store.lastRequest() != (messages.OverlayListRequest{TenantID: "alice"}) {
		t.Fatalf("alice's snapshots %+v", all)
	}
	// Nothing stored: [], never null.
	r = e.do(t, "GET", "/api/v1/workloads/unknown/snapshots", "")
	expect(t, r, 200)
	if string(r.body) != "[]" {
		t.Fatalf("no snapshots: %s", r.body)
	}
	expect(t, e.do(t, "GET", "/api/v1/workloads/Bad_Name/snapshots", ""), 400)
	expect(t, e.do(t, "GET", "/api/v1/snapshots?tenant=a%20b", ""), 400)
	expect(t, e.do(t, "POST", "/api/v1/snapshots", "{}"), 405)

	// Behind the API key like every other route.
	keyed := startEdge(t, func(c *Config) { c.APIKey = "sekret" })
	expect(t, keyed.do(t, "GET", "/api/v1/snapshots", ""), 401)
	expect(t, keyed.do(t, "GET", "/api/v1/snapshots", "", "Authorization", "Bearer sekret"), 200)
}

// ---- instances ----------------------------------------------------------------

// createPod creates a Pod (optionally managed, with labels) and records its status.
func createPod(t *testing.T, ns, name string, labels map[string]string, status corev1.PodStatus) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "busybox"}, {Name: "overlay", Image: "busybox"}}},
	}
	if err := plane.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plane.Client.Delete(ctx, p, client.GracePeriodSeconds(0)) })
	if status.Phase != "" {
		p.Status = status
		if err := plane.Client.Status().Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func managedLabels(tenant, workload string) map[string]string {
	l := map[string]string{v1alpha1.LabelManaged: "true", v1alpha1.LabelWorkload: workload, v1alpha1.LabelInstance: "x"}
	if tenant != "" {
		l[v1alpha1.LabelTenant] = tenant
	}
	return l
}

func TestInstances(t *testing.T) {
	const ns = "edge-instances"
	ensureNamespace(t, ns)
	e := startEdge(t, func(c *Config) { c.Namespace = ns; c.RestConfig = plane.Config })
	running := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.2.3"}
	createPod(t, ns, "agent-c-0123456789ab", managedLabels("org.acme", "agent"), running)
	// The instance of alice's Active claim in the fake claim-router: claimedAt is filled in.
	createPod(t, ns, "pooled-3f9a1c2b", managedLabels("alice", "pooled"), running)
	createPod(t, ns, "agent-p-abcdefghij", managedLabels("", "agent"), corev1.PodStatus{})
	createPod(t, ns, "outsider", map[string]string{"app": "other"}, running)
	createPod(t, ns, "fake-managed", map[string]string{v1alpha1.LabelManaged: "yes"}, running)

	r := e.do(t, "GET", "/api/v1/instances", "")
	expect(t, r, 200)
	var list []instanceView
	r.json(t, &list)
	if len(list) != 3 || list[0].Name != "agent-c-0123456789ab" || list[1].Name != "agent-p-abcdefghij" || list[2].Name != "pooled-3f9a1c2b" {
		t.Fatalf("instances %s", r.body)
	}
	a := list[0]
	if a.Phase != "Running" || a.TenantID != "org.acme" || a.Workload != "agent" || a.IP != "10.1.2.3" || a.CreatedAt == nil ||
		a.Labels[v1alpha1.LabelManaged] != "true" || a.ClaimedAt != nil {
		t.Errorf("instance %+v", a)
	}
	if p := list[1]; p.Phase != "Pending" || p.TenantID != "" || p.IP != "" {
		t.Errorf("pool instance %+v", p)
	}
	if c := list[2]; c.ClaimedAt == nil || !c.ClaimedAt.Equal(*claimedAt) || c.TenantID != "alice" {
		t.Errorf("claimed instance %+v, want claimedAt %v", c, claimedAt)
	}
	var raw []map[string]any
	r.json(t, &raw)
	for _, k := range []string{"name", "phase", "tenantId", "workloadRef", "ip", "labels", "createdAt"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("instance lacks %q: %s", k, r.body)
		}
	}
	if _, ok := raw[1]["tenantId"]; ok {
		t.Errorf("pool instance shows a tenantId: %v", raw[1])
	}

	r = e.do(t, "GET", "/api/v1/instances/pooled-3f9a1c2b", "")
	expect(t, r, 200)
	var one instanceView
	r.json(t, &one)
	if one.Name != "pooled-3f9a1c2b" || one.TenantID != "alice" || one.ClaimedAt == nil || one.Phase != "Running" {
		t.Fatalf("instance %s", r.body)
	}
	for _, id := range []string{"outsider", "fake-managed", "missing"} {
		r = e.do(t, "GET", "/api/v1/instances/"+id, "")
		expect(t, r, 404)
		if eb := r.errorBody(t); eb.Code != "not_found" {
			t.Errorf("%s: %+v", id, eb)
		}
		// Nothing but managed Pods can be read, exec'd into or destroyed.
		expect(t, e.do(t, "GET", "/api/v1/instances/"+id+"/logs", ""), 404)
		expect(t, e.do(t, "POST", "/api/v1/instances/"+id+"/exec", `{"command":["true"]}`), 404)
		expect(t, e.do(t, "POST", "/api/v1/instances/"+id+"/destroy", ""), 404)
	}
	if err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "outsider"}, &corev1.Pod{}); err != nil {
		t.Fatalf("the unmanaged pod: %v", err)
	}
	expect(t, e.do(t, "GET", "/api/v1/instances/Not_A_Pod", ""), 400)

	// Request checks come before any I/O.
	r = e.do(t, "POST", "/api/v1/instances/agent-c-0123456789ab/exec", `{"command":[]}`)
	expect(t, r, 400)
	if eb := r.errorBody(t); eb.Error != "command is required" {
		t.Errorf("empty command: %+v", eb)
	}
	expect(t, e.do(t, "POST", "/api/v1/instances/agent-c-0123456789ab/exec", `{}`), 400)
	expect(t, e.do(t, "POST", "/api/v1/instances/agent-c-0123456789ab/exec", `{"command":[""]}`), 400)
	expect(t, e.do(t, "POST", "/api/v1/instances/agent-c-0123456789ab/exec", `{"command":"ls"}`), 400)
	expect(t, e.do(t, "POST", "/api/v1/instances/agent-c-0123456789ab/exec", `{"command":["ls"],"container":"nope"}`), 400)
	expect(t, e.do(t, "GET", "/api/v1/instances/agent-c-0123456789ab/logs?tail=-1", ""), 400)
	expect(t, e.do(t, "GET", "/api/v1/instances/agent-c-0123456789ab/logs?tail=x", ""), 400)
	expect(t, e.do(t, "GET", "/api/v1/instances/agent-c-0123456789ab/logs?container=nope", ""), 400)

	// Without a REST config, logs and exec are unavailable; the rest works.
	bare := startEdge(t, func(c *Config) { c.Namespace = ns })
	expect(t, bare.do(t, "GET", "/api/v1/instances/agent-c-0123456789ab/logs", ""), 503)
	expect(t, bare.do(t, "POST", "/api/v1/instances/agent-c-0123456789ab/exec", `{"command":["true"]}`), 503)
	expect(t, bare.do(t, "GET", "/api/v1/instances/agent-c-0123456789ab", ""), 200)

	// Destroy deletes the Pod; a second destroy is a 404.
	r = e.do(t, "POST", "/api/v1/instances/agent-p-abcdefghij/destroy", "")
	expect(t, r, 200)
	if string(r.body) != `{"status":"destroyed","instance":"agent-p-abcdefghij"}` {
		t.Fatalf("destroy answer %s", r.body)
	}
	err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "agent-p-abcdefghij"}, &corev1.Pod{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("destroyed pod: %v", err)
	}
	expect(t, e.do(t, "POST", "/api/v1/instances/agent-p-abcdefghij/destroy", ""), 404)
	expect(t, e.do(t, "GET", "/api/v1/instances/agent-p-abcdefghij", ""), 404)

	r = e.do(t, "GET", "/api/v1/instances", "")
	expect(t, r, 200)
	r.json(t, &list)
	if len(list) != 2 {
		t.Fatalf("after destroy: %s", r.body)
	}
}

func ensureNamespace(t *testing.T, ns string) {
	t.Helper()
	err := plane.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// ---- exec and logs through a dev node ------------------------------------------

// startDevNode runs a dev node (tools/devnode) for one test: it serves the kubelet API the API
// server proxies pods/exec and pods/log to. It binds every unscheduled Pod, so it only runs
// while its test does.
func startDevNode(t *testing.T, name string) {
	t.Helper()
	n, err := devnode.New(devnode.Config{
		RestConfig: plane.Config, NodeName: name, StateDir: t.TempDir(),
		IPRange: devnode.IPRange{First: netip.MustParseAddr("127.79.0.1"), Last: netip.MustParseAddr("127.79.255.254")},
		Logger:  testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dev node: %v", err)
		}
	})
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestInstanceExecAndLogs(t *testing.T) {
	const ns = "edge-exec"
	ensureNamespace(t, ns)
	startDevNode(t, "edge-devnode")
	ctx := context.Background()

	// A Pod as pool-manager makes it for a workload with an overlay dir.
	w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: ns}, Spec: v1alpha1.WorkloadSpec{
		Version: "1", Image: v1alpha1.ImageSpec{Ref: "boilerhouse/echo:dev"}, Resources: v1alpha1.ResourcesSpec{VCPUs: 1, MemoryMb: 64},
		Network:    &v1alpha1.NetworkSpec{Expose: []v1alpha1.ExposeSpec{{Guest: 8080}}},
		Health:     &v1alpha1.HealthSpec{IntervalSeconds: 1, UnhealthyThreshold: 2, HTTPGet: &v1alpha1.HTTPGetHealth{Path: "/health", Port: 8080}},
		Filesystem: &v1alpha1.FilesystemSpec{OverlayDirs: []string{"/data"}},
	}}
	pod, err := translate.Pod(w, translate.Options{Namespace: ns, InstanceID: "agent-c-000000000001", TenantID: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if err := plane.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plane.Client.Delete(ctx, pod, client.GracePeriodSeconds(0)) })
	waitFor(t, 30*time.Second, "pod Ready", func() (bool, string) {
		var p corev1.Pod
		if err := plane.Client.Get(ctx, client.ObjectKeyFromObject(pod), &p); err != nil {
			return false, err.Error()
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, fmt.Sprintf("phase %s", p.Status.Phase)
	})

	e := startEdge(t, func(c *Config) { c.Namespace = ns; c.RestConfig = plane.Config; c.ExecTimeout = 2 * time.Second })
	base := "/api/v1/instances/" + pod.Name

	exec := func(body string) execReply {
		t.Helper()
		r := e.do(t, "POST", base+"/exec", body)
		expect(t, r, 200)
		var x execReply
		r.json(t, &x)
		return x
	}
	if x := exec(`{"command":["sh","-c","echo hello; echo oops >&2; exit 3"]}`); x.Stdout != "hello" || x.Stderr != "oops" || x.ExitCode != 3 || x.Truncated {
		t.Errorf("exec with exit 3: %+v", x)
	}
	if x := exec(`{"command":["sh","-c","printf 'a\nb\n\n'"]}`); x.Stdout != "a\nb" || x.ExitCode != 0 {
		t.Errorf("exec output %+v (trailing newlines trimmed)", x)
	}
	// The helper container runs as 65534, with the overlay volume and the control dir.
	if x := exec(`{"command":["sh","-c","id -u; id -g; ls -d /overlay/0 /bh"],"container":"overlay"}`); x.Stdout != "65534\n65534\n/bh\n/overlay/0" || x.ExitCode != 0 {
		t.Errorf("exec in the helper: %+v", x)
	}
	if x := exec(`{"command":["sh","-c","head -c 1200000 /dev/zero | tr '\\0' x"]}`); !x.Truncated || len(x.Stdout) != maxExecOutput {
		t.Errorf("large output: truncated %v, %d bytes", x.Truncated, len(x.Stdout))
	}
	r := e.do(t, "POST", base+"/exec", `{"command":["sleep","10"]}`)
	expect(t, r, 504)
	if eb := r.errorBody(t); eb.Code != "deadline_exceeded" {
		t.Errorf("timed out exec: %+v", eb)
	}
	// A command that cannot start is the exec stream failing (as with a real kubelet): 502.
	r = e.do(t, "POST", base+"/exec", `{"command":["no-such-command-anywhere"]}`)
	expect(t, r, 502)
	if eb := r.errorBody(t); !strings.Contains(eb.Error, "exec failed") || !strings.Contains(eb.Error, "no-such-command-anywhere") {
		t.Errorf("missing command: %+v", eb)
	}

	// Logs: text/plain of main (the demo server's lines), tail, another container.
	if _, err := httpGet("http://" + podIP(t, pod) + ":8080/hello"); err != nil {
		t.Fatal(err)
	}
	r = e.do(t, "GET", base+"/logs", "")
	expect(t, r, 200)
	if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("logs Content-Type %q", ct)
	}
	if !strings.Contains(string(r.body), "devnode demo server listening on") || !strings.Contains(string(r.body), "GET /hello") {
		t.Errorf("logs %q", r.body)
	}
	r = e.do(t, "GET", base+"/logs?tail=1", "")
	expect(t, r, 200)
	if lines := strings.Split(strings.TrimSpace(string(r.body)), "\n"); len(lines) != 1 {
		t.Errorf("tail=1: %q", r.body)
	}
	r = e.do(t, "GET", base+"/logs?tail=0", "")
	expect(t, r, 200)
	if len(r.body) != 0 {
		t.Errorf("tail=0: %q", r.body)
	}
	r = e.do(t, "GET", base+"/logs?container=overlay", "")
	expect(t, r, 200)

	// A Pod held back by its restore init container: main has not started.
	gated, err := translate.Pod(w, translate.Options{Namespace: ns, InstanceID: "agent-c-000000000002", TenantID: "alice", Restore: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := plane.Client.Create(ctx, gated); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plane.Client.Delete(ctx, gated, client.GracePeriodSeconds(0)) })
	waitFor(t, 30*time.Second, "restore init container running", func() (bool, string) {
		var p corev1.Pod
		if err := plane.Client.Get(ctx, client.ObjectKeyFromObject(gated), &p); err != nil {
			return false, err.Error()
		}
		cs := p.Status.InitContainerStatuses
		return len(cs) == 1 && cs[0].State.Running != nil, fmt.Sprintf("%+v", cs)
	})
	gbase := "/api/v1/instances/" + gated.Name
	// main is not running yet: 409, for exec and logs alike.
	for _, r := range []response{e.do(t, "POST", gbase+"/exec", `{"command":["true"]}`), e.do(t, "GET", gbase+"/logs", "")} {
		expect(t, r, 409)
		if eb := r.errorBody(t); eb.Code != "conflict" || !strings.Contains(eb.Error, `container "main" of instance "agent-c-000000000002" is not running`) {
			t.Errorf("main while initializing: %+v", eb)
		}
	}
	if x := exec2(t, e, gbase, `{"command":["sh","-c","id -u; ls /bh"],"container":"overlay-restore"}`); x.Stdout != "65534" || x.ExitCode != 0 {
		t.Errorf("exec in the restore init container: %+v", x)
	}
	expect(t, e.do(t, "GET", gbase+"/logs?container=overlay-restore", ""), 200)

	// Destroy: the Pod goes away through the node.
	expect(t, e.do(t, "POST", base+"/destroy", ""), 200)
	waitFor(t, 30*time.Second, "destroyed pod gone", func() (bool, string) {
		err := plane.Client.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

func exec2(t *testing.T, e *testEdge, base, body string) execReply {
	t.Helper()
	r := e.do(t, "POST", base+"/exec", body)
	expect(t, r, 200)
	var x execReply
	r.json(t, &x)
	return x
}

func podIP(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	var got corev1.Pod
	if err := plane.Client.Get(context.Background(), client.ObjectKeyFromObject(p), &got); err != nil {
		t.Fatal(err)
	}
	return got.Status.PodIP
}

// httpGet fetches a URL directly (no proxy), discarding the body.
func httpGet(url string) (int, error) {
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
