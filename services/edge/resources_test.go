package edge

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

const agentSpec = `{"version":"1.0","image":{"ref":"ghcr.io/acme/agent:1"},"resources":{"vcpus":1,"memoryMb":512,"diskGb":1},` +
	`"network":{"access":"restricted","expose":[{"guest":8080}]},"entrypoint":{"env":{"MODE":"dev"}}}`

func TestWorkloadCRUD(t *testing.T) {
	e := startEdge(t)
	r := e.do(t, "POST", "/api/v1/workloads", `{"name":"agent-crud","spec":`+agentSpec+`}`)
	expect(t, r, 201)
	var w workloadView
	r.json(t, &w)
	if w.Name != "agent-crud" || w.Spec.Version != "1.0" || w.Spec.Resources.MemoryMb != 512 || w.CreatedAt == nil || w.Generation != 1 {
		t.Fatalf("created %+v", w)
	}
	if r.header.Get("Location") != "/api/v1/workloads/agent-crud" {
		t.Fatalf("Location %q", r.header.Get("Location"))
	}
	var raw map[string]any
	r.json(t, &raw)
	for _, k := range []string{"name", "spec", "status", "createdAt"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("workload response lacks %q: %s", k, r.body)
		}
	}
	if !strings.HasSuffix(raw["createdAt"].(string), "Z") {
		t.Errorf("createdAt %v is not UTC", raw["createdAt"])
	}

	// The object is really in the API server.
	var stored v1alpha1.BoilerhouseWorkload
	if err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: testNamespace, Name: "agent-crud"}, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.Spec.Image.Ref != "ghcr.io/acme/agent:1" || stored.Spec.Network.Expose[0].Guest != 8080 {
		t.Fatalf("stored %+v", stored.Spec)
	}

	r = e.do(t, "POST", "/api/v1/workloads", `{"name":"agent-crud","spec":`+agentSpec+`}`)
	expect(t, r, 409)
	if eb := r.errorBody(t); eb.Code != "conflict" || !strings.Contains(eb.Error, "already exists") {
		t.Fatalf("duplicate %+v", eb)
	}

	// The status written by a controller shows through.
	stored.Status = v1alpha1.WorkloadStatus{Phase: v1alpha1.WorkloadReady, Detail: "image resolved", ObservedGeneration: 1}
	if err := plane.Client.Status().Update(context.Background(), &stored); err != nil {
		t.Fatal(err)
	}
	r = e.do(t, "GET", "/api/v1/workloads/agent-crud", "")
	expect(t, r, 200)
	r.json(t, &w)
	if w.Status.Phase != v1alpha1.WorkloadReady || w.Status.Detail != "image resolved" || w.Status.ObservedGeneration != 1 {
		t.Fatalf("status %+v", w.Status)
	}

	r = e.do(t, "GET", "/api/v1/workloads", "")
	expect(t, r, 200)
	var list []workloadView
	r.json(t, &list)
	if !containsWorkload(list, "agent-crud") {
		t.Fatalf("list %s", r.body)
	}

	// PUT replaces the whole spec; a GET answer sent back is accepted.
	updated := strings.Replace(agentSpec, `"version":"1.0"`, `"version":"2.0"`, 1)
	r = e.do(t, "PUT", "/api/v1/workloads/agent-crud", `{"name":"agent-crud","spec":`+updated+`,"status":{"phase":"Ready"},"createdAt":"2026-01-01T00:00:00Z"}`)
	expect(t, r, 200)
	r.json(t, &w)
	if w.Spec.Version != "2.0" || w.Generation != 2 {
		t.Fatalf("updated %+v", w)
	}
	expect(t, e.do(t, "PUT", "/api/v1/workloads/absent", `{"spec":`+agentSpec+`}`), 404)
	r = e.do(t, "PUT", "/api/v1/workloads/agent-crud", `{"name":"other","spec":`+agentSpec+`}`)
	expect(t, r, 400)
	if eb := r.errorBody(t); !strings.Contains(eb.Error, "does not match") {
		t.Fatalf("name mismatch %+v", eb)
	}
	expect(t, e.do(t, "PUT", "/api/v1/workloads/agent-crud", `{"spec":{"version":"3","image":{"ref":"x"},"resources":{"vcpus":0,"memoryMb":1}}}`), 400)

	r = e.do(t, "DELETE", "/api/v1/workloads/agent-crud", "")
	expect(t, r, 200)
	var del map[string]string
	r.json(t, &del)
	if del["status"] != "deleted" {
		t.Fatalf("delete %s", r.body)
	}
	expect(t, e.do(t, "GET", "/api/v1/workloads/agent-crud", ""), 404)
	r = e.do(t, "DELETE", "/api/v1/workloads/agent-crud", "")
	expect(t, r, 404)
	if eb := r.errorBody(t); eb.Code != "not_found" || !strings.Contains(eb.Error, `workload "agent-crud" not found`) {
		t.Fatalf("delete absent %+v", eb)
	}
}

func TestWorkloadInvalid(t *testing.T) {
	e := startEdge(t)
	for _, tc := range []struct {
		name, body, msg string
	}{
		// Rejected by the real API server's schema; its message is passed on.
		{"vcpus 0", `{"name":"bad-cpu","spec":{"version":"1","image":{"ref":"x"},"resources":{"vcpus":0,"memoryMb":512,"diskGb":1}}}`, "spec.resources.vcpus"},
		{"bad access", `{"name":"bad-net","spec":{"version":"1","image":{"ref":"x"},"resources":{"vcpus":1,"memoryMb":1,"diskGb":1},"network":{"access":"open"}}}`, "spec.network.access"},
		{"no version", `{"name":"no-version","spec":{"image":{"ref":"x"},"resources":{"vcpus":1,"memoryMb":1,"diskGb":1}}}`, "spec.version"},
		// Rejected by the edge before any API call.
		{"bad name", `{"name":"Agent_1","spec":` + agentSpec + `}`, `workload name "Agent_1"`},
		{"no name", `{"spec":` + agentSpec + `}`, "name is required"},
		{"no spec", `{"name":"no-spec"}`, "spec is required"},
		{"empty body", ``, "name is required"},
		{"unknown field", `{"name":"typo","spec":{"version":"1","image":{"ref":"x"},"resouces":{}}}`, `unknown field "resouces"`},
		{"wrong type", `{"name":"typo","spec":{"version":"1","image":{"ref":"x"},"resources":{"vcpus":"two"}}}`, `field "resources.vcpus" must be an integer`},
		{"two images", `{"name":"two","spec":{"version":"1","image":{"ref":"x","dockerfile":"D"},"resources":{"vcpus":1,"memoryMb":1,"diskGb":1}}}`, "exactly one of ref and dockerfile"},
		{"malformed", `{"name":"x","spec":`, "invalid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(t, "POST", "/api/v1/workloads", tc.body)
			expect(t, r, 400)
			if eb := r.errorBody(t); eb.Code != "invalid_argument" || !strings.Contains(eb.Error, tc.msg) {
				t.Fatalf("error %+v, want one containing %q", eb, tc.msg)
			}
		})
	}
	expect(t, e.do(t, "GET", "/api/v1/workloads/Bad_Name", ""), 400)
	expect(t, e.do(t, "GET", "/api/v1/workloads/never-created", ""), 404)
}

func containsWorkload(list []workloadView, name string) bool {
	for _, w := range list {
		if w.Name == name {
			return true
		}
	}
	return false
}

func TestPoolCRUD(t *testing.T) {
	e := startEdge(t)
	r := e.do(t, "POST", "/api/v1/pools", `{"name":"agent-pool","spec":{"workloadRef":"agent","size":3,"maxFillConcurrency":2}}`)
	expect(t, r, 201)
	var p poolView
	r.json(t, &p)
	if p.Name != "agent-pool" || p.Spec.WorkloadRef != "agent" || p.Spec.Size != 3 || p.Spec.FillConcurrency() != 2 || p.CreatedAt == nil {
		t.Fatalf("created %+v", p)
	}
	var raw map[string]any
	r.json(t, &raw)
	status, _ := raw["status"].(map[string]any)
	if _, ok := status["ready"]; !ok {
		t.Fatalf("pool status must show ready even when 0: %s", r.body)
	}
	if _, ok := status["warming"]; !ok {
		t.Fatalf("pool status must show warming even when 0: %s", r.body)
	}

	expect(t, e.do(t, "POST", "/api/v1/pools", `{"name":"agent-pool","spec":{"workloadRef":"agent","size":1}}`), 409)

	// Status from the pool-manager shows through.
	var stored v1alpha1.BoilerhousePool
	if err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: testNamespace, Name: "agent-pool"}, &stored); err != nil {
		t.Fatal(err)
	}
	stored.Status = v1alpha1.PoolStatus{Ready: 2, Warming: 1, Phase: v1alpha1.PoolDegraded, Detail: "1 warming"}
	if err := plane.Client.Status().Update(context.Background(), &stored); err != nil {
		t.Fatal(err)
	}
	r = e.do(t, "GET", "/api/v1/pools/agent-pool", "")
	expect(t, r, 200)
	r.json(t, &p)
	if p.Status.Ready != 2 || p.Status.Warming != 1 || p.Status.Phase != v1alpha1.PoolDegraded || p.Status.Detail != "1 warming" {
		t.Fatalf("status %+v", p.Status)
	}

	r = e.do(t, "GET", "/api/v1/pools", "")
	expect(t, r, 200)
	var list []poolView
	r.json(t, &list)
	if len(list) == 0 || list[0].Name != "agent-pool" {
		t.Fatalf("list %s", r.body)
	}

	r = e.do(t, "PUT", "/api/v1/pools/agent-pool", `{"spec":{"workloadRef":"agent","size":5}}`)
	expect(t, r, 200)
	p = poolView{}
	r.json(t, &p)
	if p.Spec.Size != 5 || p.Spec.MaxFillConcurrency != nil || p.Status.Ready != 2 {
		t.Fatalf("updated %+v", p)
	}

	for _, tc := range []struct{ body, msg string }{
		{`{"name":"neg","spec":{"workloadRef":"agent","size":-1}}`, "spec.size"},
		{`{"name":"fill","spec":{"workloadRef":"agent","size":1,"maxFillConcurrency":0}}`, "spec.maxFillConcurrency"},
		{`{"name":"noref","spec":{"size":1}}`, "spec.workloadRef is required"},
		{`{"name":"badref","spec":{"workloadRef":"Agent","size":1}}`, "spec.workloadRef"},
		{`{"name":"Pool_1","spec":{"workloadRef":"agent","size":1}}`, `pool name "Pool_1"`},
		{`{"name":"typo","spec":{"workloadRef":"agent","sise":1}}`, `unknown field "sise"`},
	} {
		r := e.do(t, "POST", "/api/v1/pools", tc.body)
		expect(t, r, 400)
		if eb := r.errorBody(t); !strings.Contains(eb.Error, tc.msg) {
			t.Errorf("%s: %+v, want one containing %q", tc.body, eb, tc.msg)
		}
	}
	expect(t, e.do(t, "PUT", "/api/v1/pools/agent-pool", `{"spec":{"workloadRef":"agent","size":-2}}`), 400)
	expect(t, e.do(t, "PUT", "/api/v1/pools/absent", `{"spec":{"workloadRef":"agent","size":1}}`), 404)

	r = e.do(t, "DELETE", "/api/v1/pools/agent-pool", "")
	expect(t, r, 200)
	expect(t, e.do(t, "GET", "/api/v1/pools/agent-pool", ""), 404)
	expect(t, e.do(t, "DELETE", "/api/v1/pools/agent-pool", ""), 404)
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	e := startEdge(t, func(c *Config) { c.Namespace = statsNamespace })
	pod := func(name string, managed bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: statsNamespace, Labels: map[string]string{}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
		}
		if managed {
			p.Labels[v1alpha1.LabelManaged] = "true"
		}
		if err := plane.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = plane.Client.Delete(ctx, p, client.GracePeriodSeconds(0))
		})
		return p
	}
	running := pod("running-1", true)
	pod("pending-1", true)
	pod("pending-2", true)
	pod("unmanaged", false)
	running.Status.Phase = corev1.PodRunning
	if err := plane.Client.Status().Update(ctx, running); err != nil {
		t.Fatal(err)
	}

	r := e.do(t, "GET", "/api/v1/stats", "")
	expect(t, r, 200)
	var s statsBody
	r.json(t, &s)
	if s.Instances.Total != 3 || s.Instances.ByPhase["Running"] != 1 || s.Instances.ByPhase["Pending"] != 2 {
		t.Fatalf("instances %+v", s.Instances)
	}
	// fakeRouter's tenants: alice Active + Pending, org.acme Active, bob "" (counted as Pending).
	if s.Claims.Total != 4 || s.Claims.ByPhase[string(messages.PhaseActive)] != 2 || s.Claims.ByPhase[string(messages.PhasePending)] != 2 {
		t.Fatalf("claims %+v", s.Claims)
	}

	// An empty namespace: zeros, and byPhase is an object, not null.
	e2 := startEdge(t, func(c *Config) { c.Namespace = "no-such-namespace" })
	r = e2.do(t, "GET", "/api/v1/stats", "")
	expect(t, r, 200)
	if !strings.Contains(string(r.body), `"instances":{"total":0,"byPhase":{}}`) {
		t.Fatalf("empty stats %s", r.body)
	}
}

// TestKubeUnavailable: an API server that cannot be reached is 503, not 500.
func TestKubeUnavailable(t *testing.T) {
	cfg := *plane.Config
	cfg.Host = "https://127.0.0.1:1" // nothing listens there
	cfg.Timeout = 2 * time.Second
	down, err := client.New(&cfg, client.Options{Scheme: plane.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, func(c *Config) { c.Client = down })
	r := e.do(t, "GET", "/api/v1/workloads", "")
	expect(t, r, 503)
	if eb := r.errorBody(t); eb.Code != "unavailable" {
		t.Fatalf("%+v", eb)
	}
	expect(t, e.do(t, "POST", "/api/v1/tenants/alice/claim", `{"workload":"pooled"}`), 201)
}
