package devstack_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/natsx/natstest"
	"boilerhouse.dev/services/claimrouter"
	"boilerhouse.dev/services/edge"
	"boilerhouse.dev/services/overlaystore"
	"boilerhouse.dev/services/poolmanager"
	"boilerhouse.dev/tools/devnode"
)

// The integration tests compose the real services by hand (unlike the e2e test, which runs
// the binary) so that one of them can be killed and started again.

var plane *localkube.Plane

const ns = "boilerhouse"

func TestMain(m *testing.M) {
	natstest.ServeIfAsked() // the NATS server process of natstest.StartProcess
	var err error
	plane, err = localkube.Start(context.Background(), localkube.Options{Namespaces: []string{ns}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = plane.Stop()
	os.Exit(code)
}

type system struct {
	t      *testing.T
	ctx    context.Context
	nats   *natstest.Server
	rest   string
	client client.Client
	claim  bus.Handler[messages.ClaimRequest, messages.ClaimView]
	kv     jetstream.KeyValue
	wg     sync.WaitGroup
	conns  []*nats.Conn
}

// startSystem runs NATS (restartable, see natstest), the dev node, pool-manager and edge for the
// whole test; claim-routers and overlay-stores are started by the test (killable).
func startSystem(t *testing.T) *system {
	t.Helper()
	s := startBase(t)
	pm, err := poolmanager.New(poolmanager.Config{RestConfig: plane.Config, NATS: s.conn(), Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	s.goRun("pool-manager", pm.Run)
	s.ready("pool-manager", pm.Ready())
	return s
}

// startBase runs NATS (in the test's process), the dev node and edge for the whole test, and
// no pool-manager.
func startBase(t *testing.T) *system {
	t.Helper()
	return startBaseOn(t, natstest.Start(t, false))
}

// startBaseOn is startBase on the NATS server n.
func startBaseOn(t *testing.T, n *natstest.Server) *system {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &system{t: t, ctx: ctx, nats: n, client: plane.Client}
	t.Cleanup(func() {
		// The services stop before their connections close.
		cancel()
		s.wg.Wait()
		for _, nc := range s.conns {
			nc.Close()
		}
	})
	nc := s.conn()
	js, _ := jetstream.New(nc)
	if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatal(err)
	}
	s.kv = kv
	s.claim = bus.Client[messages.ClaimRequest, messages.ClaimView](nc, messages.SubjectClaimsClaim, time.Minute)
	ips, _ := devnode.ParseIPRange("127.90.0.1-127.90.255.254")
	node, err := devnode.New(devnode.Config{RestConfig: plane.Config, IPRange: ips, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s.goRun("devnode", node.Run)
	ed, err := edge.New(edge.Config{NATS: s.conn(), Client: plane.Client, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.goRun("edge", func(ctx context.Context) error { return ed.Serve(ctx, ln) })
	s.rest = "http://" + ln.Addr().String()
	return s
}

// conn connects a client that is closed when the test ends, after the services have stopped.
func (s *system) conn() *nats.Conn {
	s.t.Helper()
	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		s.t.Fatal(err)
	}
	s.conns = append(s.conns, nc)
	return nc
}

// goRun runs f until the test ends; an error before then fails the test.
func (s *system) goRun(name string, f func(context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f(s.ctx); err != nil && s.ctx.Err() == nil {
			s.t.Errorf("%s: %v", name, err)
		}
	}()
}

func (s *system) ready(name string, ch <-chan struct{}) {
	s.t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		s.t.Fatalf("%s not ready", name)
	}
}

// killable starts a service on a connection of its own; the returned function kills it the
// way a crash would: its NATS connection drops mid-request and its context ends.
func killable[S interface{ Run(context.Context) error }](s *system, newService func(*nats.Conn) (S, error)) (S, func()) {
	s.t.Helper()
	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		s.t.Fatal(err)
	}
	svc, err := newService(nc)
	if err != nil {
		nc.Close()
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	var once sync.Once
	kill := func() { once.Do(func() { nc.Close(); cancel(); <-done }) }
	s.t.Cleanup(kill)
	return svc, kill
}

// router starts a claim-router; the returned function kills it (killable).
func (s *system) router(cfg claimrouter.Config) (kill func()) {
	s.t.Helper()
	_, kill = killable(s, func(nc *nats.Conn) (*claimrouter.Router, error) {
		cfg.Conn = nc
		return claimrouter.New(cfg)
	})
	// Serving once it answers: a request sent before its subscriptions exist has no responder.
	list := bus.Client[messages.TenantListRequest, messages.TenantList](s.conn(), messages.SubjectTenantsList, time.Second)
	eventually(s.t, "claim-router serving", 30*time.Second, func() bool {
		_, err := list(s.ctx, messages.TenantListRequest{})
		return err == nil
	})
	return kill
}

// store starts an overlay-store on dir; the returned function kills it (killable).
func (s *system) store(dir string) (kill func()) {
	s.t.Helper()
	st, kill := killable(s, func(nc *nats.Conn) (*overlaystore.Service, error) {
		return overlaystore.New(overlaystore.Config{RestConfig: plane.Config, NATS: nc, Namespace: ns, StoreDir: dir})
	})
	s.ready("overlay-store", st.Ready())
	return kill
}

// workload creates a workload served on 8080 with a pool of size (no pool when size < 0).
func (s *system) workload(name string, size int32, overlayDirs ...string) {
	s.t.Helper()
	w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.WorkloadSpec{Version: "1", Image: v1alpha1.ImageSpec{Ref: "demo:1"},
			Resources: v1alpha1.ResourcesSpec{VCPUs: 1, MemoryMb: 64},
			Network:   &v1alpha1.NetworkSpec{Expose: []v1alpha1.ExposeSpec{{Guest: 8080}}},
			Health: &v1alpha1.HealthSpec{IntervalSeconds: 1, UnhealthyThreshold: 3,
				HTTPGet: &v1alpha1.HTTPGetHealth{Path: "/health", Port: 8080}}}}
	if len(overlayDirs) > 0 {
		w.Spec.Filesystem = &v1alpha1.FilesystemSpec{OverlayDirs: overlayDirs}
	}
	if err := s.client.Create(s.ctx, w); err != nil {
		s.t.Fatal(err)
	}
	if size >= 0 {
		p := &v1alpha1.BoilerhousePool{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: v1alpha1.PoolSpec{WorkloadRef: name, Size: size, MaxFillConcurrency: ptr.To[int32](25)}}
		if err := s.client.Create(s.ctx, p); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *system) poolReady(name string, want int32) {
	s.t.Helper()
	eventually(s.t, "pool "+name+" ready", 2*time.Minute, func() bool {
		var p v1alpha1.BoilerhousePool
		return s.client.Get(s.ctx, client.ObjectKey{Namespace: ns, Name: name}, &p) == nil && p.Status.Ready == want
	})
}

func (s *system) pod(name string) *corev1.Pod {
	var p corev1.Pod
	if err := s.client.Get(s.ctx, client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
		s.t.Fatalf("pod %s: %v", name, err)
	}
	return &p
}

func (s *system) restClaim(tenant, workload string) (int, messages.ClaimView) {
	var v messages.ClaimView
	code := postJSON(s.t, s.rest+"/api/v1/tenants/"+tenant+"/claim", `{"workload":"`+workload+`"}`, &v)
	return code, v
}

func TestClaimSourcesExistingAndIsolation(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.workload("web", 2)
	s.workload("solo", -1)
	s.poolReady("web", 2)

	code, a := s.restClaim("alice", "web")
	if code != 201 || a.Phase != messages.PhaseActive || a.Source != messages.SourcePool {
		t.Fatalf("alice: %d %+v, want 201 Active pool", code, a)
	}
	code, again := s.restClaim("alice", "web")
	if code != 200 || again.Source != messages.SourceExisting || again.InstanceID != a.InstanceID || *again.Endpoint != *a.Endpoint {
		t.Fatalf("alice again: %d %+v, want 200 existing %s", code, again, a.InstanceID)
	}
	code, b := s.restClaim("bob", "web")
	if code != 201 || b.InstanceID == a.InstanceID || *b.Endpoint == *a.Endpoint {
		t.Fatalf("bob shares alice's instance: %d %+v", code, b)
	}
	code, c := s.restClaim("carol", "solo")
	if code != 201 || c.Source != messages.SourceCold {
		t.Fatalf("carol on a workload without pool: %d %+v, want cold", code, c)
	}
	// Every endpoint answers, from a Pod labelled with its tenant and workload.
	for tenant, v := range map[string]messages.ClaimView{"alice": a, "bob": b, "carol": c} {
		eventually(t, tenant+"'s Pod labelled", 10*time.Second, func() bool {
			return s.pod(v.InstanceID).Labels[v1alpha1.LabelTenant] == tenant
		})
		resp, err := http.Get(fmt.Sprintf("http://%s:%d/", v.Endpoint.Host, v.Endpoint.Port))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s's endpoint: %v", tenant, err)
		}
		resp.Body.Close()
	}
	if code, _ := s.restClaim("org.acme", "web"); code != 201 {
		t.Fatalf("org.acme: %d", code)
	}
	if code, _ := s.restClaim("Bad%20Tenant!", "web"); code != 400 {
		t.Errorf("invalid tenant: %d, want 400", code)
	}
	if code, _ := s.restClaim("dave", "no-such-workload"); code != 404 {
		t.Errorf("unknown workload: %d, want 404", code)
	}
	// Release destroys the Pod; the next claim gets a fresh instance.
	var rel messages.ClaimView
	if code := postJSON(t, s.rest+"/api/v1/tenants/alice/release", `{"workload":"web"}`, &rel); code != 200 || rel.Phase != messages.PhaseReleased {
		t.Fatalf("release: %d %+v", code, rel)
	}
	eventually(t, "alice's Pod deleted", 10*time.Second, func() bool {
		var p corev1.Pod
		return client.IgnoreNotFound(s.client.Get(s.ctx, client.ObjectKey{Namespace: ns, Name: a.InstanceID}, &p)) == nil && p.Name == ""
	})
	if code, next := s.restClaim("alice", "web"); code != 201 || next.InstanceID == a.InstanceID {
		t.Fatalf("claim after release: %d %+v", code, next)
	}
}

// Test200TenantsAgainstPoolOf50: 200 concurrent claims for 200 tenants against a pool of 50
// give 200 distinct Ready Pods (pool first, then cold), one per tenant, and the pool refills.
func Test200TenantsAgainstPoolOf50(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.workload("burst", 50)
	s.poolReady("burst", 50)

	views := make([]messages.ClaimView, 200)
	codes := make([]int, 200)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], views[i] = s.restClaim(fmt.Sprintf("t-%d", i), "burst")
		}()
	}
	wg.Wait()
	sources := map[messages.ClaimSource]int{}
	seen := map[string]string{}
	for i, v := range views {
		if codes[i] != 201 || v.Phase != messages.PhaseActive {
			t.Fatalf("claim %d: %d %+v", i, codes[i], v)
		}
		if other, dup := seen[v.InstanceID]; dup {
			t.Fatalf("%s handed to %s and %s", v.InstanceID, other, v.TenantID)
		}
		seen[v.InstanceID] = v.TenantID
		sources[v.Source]++
	}
	// The pool refills while the burst runs, so a refilled Pod may serve a claim too.
	if sources[messages.SourcePool] < 50 || sources[messages.SourcePool]+sources[messages.SourceCold] != 200 {
		t.Errorf("sources %v, want at least 50 pool and the rest cold", sources)
	}
	t.Logf("sources %v", sources)
	// Exactly one Ready Pod per tenant, carrying that tenant's label.
	eventually(t, "tenant labels on 200 Pods", 30*time.Second, func() bool {
		var pods corev1.PodList
		if err := s.client.List(s.ctx, &pods, client.InNamespace(ns), client.MatchingLabels{v1alpha1.LabelWorkload: "burst"}); err != nil {
			return false
		}
		perTenant := map[string]int{}
		for _, p := range pods.Items {
			if tenant := p.Labels[v1alpha1.LabelTenant]; tenant != "" && p.DeletionTimestamp == nil {
				perTenant[tenant]++
				if seen[p.Name] != tenant {
					t.Fatalf("Pod %s labelled %s but claimed by %q", p.Name, tenant, seen[p.Name])
				}
			}
		}
		for _, n := range perTenant {
			if n != 1 {
				return false
			}
		}
		return len(perTenant) == 200
	})
	s.poolReady("burst", 50)
}

// TestClaimRouterKilledMidClaim: a claim whose router dies during its cold boot ends Active
// through another router, with one instance, never stuck Pending.
func TestClaimRouterKilledMidClaim(t *testing.T) {
	s := startSystem(t)
	kill := s.router(claimrouter.Config{StaleAfter: time.Second, SweepInterval: 200 * time.Millisecond})
	s.workload("slow", -1)

	// Ask without waiting, then kill the router while the claim is Pending.
	v, err := s.claim(s.ctx, messages.ClaimRequest{TenantID: "erin", Workload: "slow", WaitMillis: 1})
	if err != nil || v.Phase != messages.PhasePending {
		t.Fatalf("claim: %+v %v, want Pending", v, err)
	}
	kill()
	s.router(claimrouter.Config{StaleAfter: time.Second, SweepInterval: 200 * time.Millisecond})
	key := messages.ClaimKey("erin", "slow")
	eventually(t, "claim settled after the crash", time.Minute, func() bool {
		e, err := s.kv.Get(s.ctx, key)
		if err != nil {
			return false
		}
		return !jsonHasPhase(e.Value(), messages.PhasePending)
	})
	got, err := s.claim(s.ctx, messages.ClaimRequest{TenantID: "erin", Workload: "slow"})
	if err != nil || got.Source != messages.SourceExisting {
		t.Fatalf("after takeover: %+v %v, want an existing Active claim", got, err)
	}
	var pods corev1.PodList
	if err := s.client.List(s.ctx, &pods, client.InNamespace(ns), client.MatchingLabels{v1alpha1.LabelTenant: "erin"}); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 || pods.Items[0].Name != got.InstanceID {
		t.Fatalf("erin has %d Pods, want exactly the claimed one %s", len(pods.Items), got.InstanceID)
	}
}

func jsonHasPhase(b []byte, p messages.ClaimPhase) bool {
	return strings.Contains(string(b), `"phase":"`+string(p)+`"`)
}

// Test50TenantsHibernateAndResume: 50 tenants write their own bytes, hibernate at once, claim
// again at once, and each reads back exactly its own data.
func Test50TenantsHibernateAndResume(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.store(t.TempDir())
	s.workload("notes", 20, "/data")
	s.poolReady("notes", 20)

	const n = 50
	views := make([]messages.ClaimView, n)
	run := func(what string, f func(i int, tenant string)) {
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() { defer wg.Done(); f(i, fmt.Sprintf("n-%d", i)) }()
		}
		wg.Wait()
		if t.Failed() {
			t.Fatalf("%s failed", what)
		}
	}
	run("claim and write", func(i int, tenant string) {
		code, v := s.restClaim(tenant, "notes")
		if code != 201 {
			t.Errorf("%s: claim %d %+v", tenant, code, v)
			return
		}
		views[i] = v
		req, _ := http.NewRequest(http.MethodPut, endpointURL(v, "/files/data/me.txt"), strings.NewReader("I am "+tenant))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode/100 != 2 {
			t.Errorf("%s: write: %v %v", tenant, err, resp)
			return
		}
		resp.Body.Close()
	})
	run("hibernate", func(_ int, tenant string) {
		var rel messages.ClaimView
		if code := postJSON(t, s.rest+"/api/v1/tenants/"+tenant+"/release", `{"workload":"notes"}`, &rel); code != 200 || rel.Phase != messages.PhaseReleased {
			t.Errorf("%s: release %d %+v", tenant, code, rel)
		}
	})
	sources := map[messages.ClaimSource]int{}
	var mu sync.Mutex
	run("resume and read", func(_ int, tenant string) {
		code, v := s.restClaim(tenant, "notes")
		if code != 201 || (v.Source != messages.SourcePoolData && v.Source != messages.SourceColdData) {
			t.Errorf("%s: resume %d %+v, want pool+data or cold+data", tenant, code, v)
			return
		}
		mu.Lock()
		sources[v.Source]++
		mu.Unlock()
		status, body := getFile(t, endpointURL(v, "/files/data/me.txt"))
		if status != 200 || string(body) != "I am "+tenant {
			t.Errorf("%s read back %d %q", tenant, status, body)
		}
	})
	t.Logf("resumed from %v", sources)
}

// TestOverlayStoreCrashDuringExtraction: the overlay-store dies while it extracts a release;
// the release still ends Released with the data stored (once a store is back), and the next
// claim reads the same bytes. The router notices the dead store by its missing progress
// messages (OverlayIdle, 10 s), not at OverlayTimeout (5 min, kept at its default here).
func TestOverlayStoreCrashDuringExtraction(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{
		ExtractBackoff: []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}})
	dir := t.TempDir()
	kill := s.store(dir)
	s.workload("vault", 2, "/data")
	s.poolReady("vault", 2)

	code, v := s.restClaim("frank", "vault")
	if code != 201 {
		t.Fatalf("claim %d %+v", code, v)
	}
	data := make([]byte, 64<<20) // large enough that the extract is still running when we kill
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	req, _ := http.NewRequest(http.MethodPut, endpointURL(v, "/files/data/big.bin"), bytes.NewReader(data))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("write: %v %v", err, resp)
	}
	resp.Body.Close()

	go func() {
		var rel messages.ClaimView
		postJSON(t, s.rest+"/api/v1/tenants/frank/release", `{"workload":"vault"}`, &rel)
	}()
	key := messages.ClaimKey("frank", "vault")
	eventually(t, "release started", 10*time.Second, func() bool {
		e, err := s.kv.Get(s.ctx, key)
		return err == nil && jsonHasPhase(e.Value(), messages.PhaseReleasing)
	})
	time.Sleep(150 * time.Millisecond) // into the extraction
	kill()
	s.store(dir) // the store comes back; the router's retry reaches it

	var rel messages.ClaimView
	killed := time.Now()
	eventually(t, "release ended", 2*time.Minute, func() bool {
		e, err := s.kv.Get(s.ctx, key)
		if err != nil || jsonHasPhase(e.Value(), messages.PhaseReleasing) {
			return false
		}
		var rec messages.ClaimRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			t.Fatal(err)
		}
		rel = rec.View()
		return true
	})
	if d := time.Since(killed); d > time.Minute {
		t.Errorf("the release ended %s after the store died; want about OverlayIdle plus the retry", d.Round(time.Second))
	}
	t.Logf("release ended %s after the store died", time.Since(killed).Round(100*time.Millisecond))
	if rel.Phase != messages.PhaseReleased {
		// The only other acceptable end is ReleaseFailed with the Pod kept.
		if rel.Phase != messages.PhaseReleaseFailed {
			t.Fatalf("release ended %+v", rel)
		}
		s.pod(v.InstanceID) // still there
		t.Fatalf("release ended ReleaseFailed (Pod kept): %s", rel.Detail)
	}
	code, again := s.restClaim("frank", "vault")
	if code != 201 || again.Source != messages.SourcePoolData {
		t.Fatalf("claim after crash: %d %+v, want pool+data", code, again)
	}
	status, got := getFile(t, endpointURL(again, "/files/data/big.bin"))
	if status != 200 || !bytes.Equal(got, data) {
		t.Fatalf("read back %d, %d bytes, want the %d written", status, len(got), len(data))
	}
}
