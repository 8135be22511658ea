package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/natsx"
)

// The tests run the edge over real HTTP (httptest), against a real embedded
// NATS server and a real kube-apiserver + etcd (localkube), both started
// once here. The claim-router is replaced by fakeRouter, a small service on
// the real bus that answers bh.v1.claims.* and bh.v1.tenants.* from a table.

const (
	testNamespace  = "boilerhouse"
	statsNamespace = "edge-stats"
)

var (
	plane   *localkube.Plane
	natsSrv *server.Server
	nc      *nats.Conn
	router  *fakeRouter
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var err error
	plane, err = localkube.Start(ctx, localkube.Options{Namespaces: []string{testNamespace, statsNamespace}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "edge tests: start the Kubernetes control plane:", err)
		return 1
	}
	defer func() { _ = plane.Stop() }()

	dir, err := os.MkdirTemp("", "edge-nats-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	natsSrv, err = natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, "edge tests:", err)
		return 1
	}
	defer natsx.Shutdown(natsSrv)
	nc, err = natsx.ConnectInProcess(natsSrv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "edge tests:", err)
		return 1
	}
	defer nc.Close()
	router = &fakeRouter{claims: map[string]messages.ClaimRequest{}, releases: map[string]messages.ReleaseRequest{}}
	if err := router.serve(nc); err != nil {
		fmt.Fprintln(os.Stderr, "edge tests:", err)
		return 1
	}
	return m.Run()
}

// fakeRouter stands in for the claim-router. The workload name of a claim
// picks the answer; every request is recorded by tenant id.
type fakeRouter struct {
	mu       sync.Mutex
	claims   map[string]messages.ClaimRequest
	releases map[string]messages.ReleaseRequest
	calls    atomic.Int64
}

func (f *fakeRouter) lastClaim(tenant string) (messages.ClaimRequest, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.claims[tenant]
	return r, ok
}

func (f *fakeRouter) lastRelease(tenant string) (messages.ReleaseRequest, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.releases[tenant]
	return r, ok
}

var claimedAt = messages.Timestamp(time.Date(2026, 4, 20, 10, 30, 0, 0, time.UTC))

func activeView(tenant, workload string, source messages.ClaimSource) messages.ClaimView {
	return messages.ClaimView{TenantID: tenant, Workload: workload, Phase: messages.PhaseActive,
		InstanceID: workload + "-3f9a1c2b", Endpoint: &messages.Endpoint{Host: "10.0.0.7", Port: 8080},
		Source: source, ClaimedAt: claimedAt}
}

func (f *fakeRouter) claim(ctx context.Context, req messages.ClaimRequest) (messages.ClaimView, error) {
	f.calls.Add(1)
	f.mu.Lock()
	f.claims[req.TenantID] = req
	f.mu.Unlock()
	if err := req.Validate(); err != nil {
		return messages.ClaimView{}, err
	}
	v := messages.ClaimView{TenantID: req.TenantID, Workload: req.Workload}
	switch req.Workload {
	case "pooled":
		return activeView(req.TenantID, req.Workload, messages.SourcePool), nil
	case "warm":
		return activeView(req.TenantID, req.Workload, messages.SourceExisting), nil
	case "slow":
		v.Phase, v.Detail = messages.PhasePending, "waiting for the instance to become Ready"
	case "broken":
		v.Phase, v.Detail = messages.PhaseError, "pod failed: ImagePullBackOff"
	case "tight":
		v.Phase, v.Detail = messages.PhaseError, "unschedulable: 0/1 nodes are available: insufficient cpu"
	case "late":
		v.Phase, v.Detail = messages.PhaseError, "timeout: the instance was not Ready before the claim's deadline"
	case "full":
		return v, messages.Errorf(messages.CodeCapacityExhausted, "no capacity for %q", req.Workload)
	case "frozen":
		return v, messages.Errorf(messages.CodeConflict, "claim is ReleaseFailed; retry the release first")
	case "stuck":
		// Never answers in time: the edge's own deadline must fire.
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(req.WaitMillis)*time.Millisecond + 30*time.Second):
		}
		return v, ctx.Err()
	default:
		return v, messages.Errorf(messages.CodeNotFound, "workload %q not found", req.Workload)
	}
	return v, nil
}

func (f *fakeRouter) release(ctx context.Context, req messages.ReleaseRequest) (messages.ClaimView, error) {
	f.mu.Lock()
	f.releases[req.TenantID] = req
	f.mu.Unlock()
	if err := req.Validate(); err != nil {
		return messages.ClaimView{}, err
	}
	v := messages.ClaimView{TenantID: req.TenantID, Workload: req.Workload, Phase: messages.PhaseReleased}
	switch req.Workload {
	case "pooled":
	case "saving":
		v.Phase = messages.PhaseReleasing
	case "stubborn":
		v.Phase, v.Detail = messages.PhaseReleaseFailed, "extract overlay: exec failed"
	case "stuck":
		// A router that died holding the request: the edge's own deadline must fire.
		<-ctx.Done()
		return v, ctx.Err()
	default:
		return v, messages.Errorf(messages.CodeNotFound, "no claim for tenant %q and workload %q", req.TenantID, req.Workload)
	}
	return v, nil
}

func (f *fakeRouter) getClaim(_ context.Context, req messages.ClaimGetRequest) (messages.ClaimView, error) {
	if req.Workload == "pooled" {
		return activeView(req.TenantID, req.Workload, messages.SourcePool), nil
	}
	return messages.ClaimView{}, messages.Errorf(messages.CodeNotFound, "no claim for tenant %q and workload %q", req.TenantID, req.Workload)
}

// tenants is what tenants.get and tenants.list answer.
var tenants = []messages.TenantView{
	{TenantID: "alice", Claims: []messages.ClaimView{
		activeView("alice", "pooled", messages.SourcePool),
		{TenantID: "alice", Workload: "slow", Phase: messages.PhasePending},
	}},
	{TenantID: "org.acme", Claims: []messages.ClaimView{activeView("org.acme", "pooled", messages.SourcePoolData)}},
	{TenantID: "bob", Claims: []messages.ClaimView{{TenantID: "bob", Workload: "new"}}},
}

func (f *fakeRouter) getTenant(_ context.Context, req messages.TenantGetRequest) (messages.TenantView, error) {
	for _, t := range tenants {
		if t.TenantID == req.TenantID {
			return t, nil
		}
	}
	if req.TenantID == "ghost" {
		return messages.TenantView{TenantID: "ghost"}, nil // no claims: still a 404
	}
	return messages.TenantView{}, messages.Errorf(messages.CodeNotFound, "tenant %q has no claims", req.TenantID)
}

func (f *fakeRouter) listTenants(context.Context, messages.TenantListRequest) (messages.TenantList, error) {
	return messages.TenantList{Tenants: tenants}, nil
}

func (f *fakeRouter) serve(nc *nats.Conn) error {
	opts := bus.ServeOptions{Queue: messages.QueueClaimRouter, Logger: slog.New(slog.DiscardHandler)}
	for _, s := range []struct {
		subject string
		serve   func() (*nats.Subscription, error)
	}{
		{messages.SubjectClaimsClaim, func() (*nats.Subscription, error) {
			return bus.Serve[messages.ClaimRequest](nc, messages.SubjectClaimsClaim, bus.Endpoint(f.claim), opts)
		}},
		{messages.SubjectClaimsRelease, func() (*nats.Subscription, error) {
			return bus.Serve[messages.ReleaseRequest](nc, messages.SubjectClaimsRelease, bus.Endpoint(f.release), opts)
		}},
		{messages.SubjectClaimsGet, func() (*nats.Subscription, error) {
			return bus.Serve[messages.ClaimGetRequest](nc, messages.SubjectClaimsGet, bus.Endpoint(f.getClaim), opts)
		}},
		{messages.SubjectTenantsGet, func() (*nats.Subscription, error) {
			return bus.Serve[messages.TenantGetRequest](nc, messages.SubjectTenantsGet, bus.Endpoint(f.getTenant), opts)
		}},
		{messages.SubjectTenantsList, func() (*nats.Subscription, error) {
			return bus.Serve[messages.TenantListRequest](nc, messages.SubjectTenantsList, bus.Endpoint(f.listTenants), opts)
		}},
	} {
		if _, err := s.serve(); err != nil {
			return fmt.Errorf("serve %s: %w", s.subject, err)
		}
	}
	return nc.Flush()
}

// ---- helpers ---------------------------------------------------------------

type testEdge struct {
	*Edge
	srv *httptest.Server
}

// startEdge builds an edge on the shared NATS and control plane and serves
// it over real HTTP.
func startEdge(t testing.TB, mutate ...func(*Config)) *testEdge {
	t.Helper()
	cfg := Config{NATS: nc, Client: plane.Client, Namespace: testNamespace, Logger: testLogger(t)}
	for _, f := range mutate {
		f(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)
	return &testEdge{Edge: e, srv: srv}
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// json decodes the body into v, failing the test if it is not JSON.
func (r response) json(t testing.TB, v any) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json (%s)", ct, r)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("body is not the expected JSON: %v: %s", err, r.body)
	}
}

// errorBody decodes a failure's {"error", "code"}.
func (r response) errorBody(t testing.TB) errorBody {
	t.Helper()
	var e errorBody
	r.json(t, &e)
	if e.Error == "" || e.Code == "" {
		t.Fatalf("error body lacks error or code: %s", r.body)
	}
	return e
}

func (e *testEdge) do(t testing.TB, method, path, body string, header ...string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: bytes.TrimSpace(b)}
}

// expect fails unless the answer has the status.
func expect(t testing.TB, r response, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
}

// countingClient is the real Kubernetes client, counting the calls that go
// through it.
type countingClient struct {
	client.Client
	calls atomic.Int64
}

func (c *countingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.calls.Add(1)
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c *countingClient) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	c.calls.Add(1)
	return c.Client.List(ctx, list, opts...)
}

func (c *countingClient) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	c.calls.Add(1)
	return c.Client.Create(ctx, obj, opts...)
}

func (c *countingClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	c.calls.Add(1)
	return c.Client.Update(ctx, obj, opts...)
}

func (c *countingClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	c.calls.Add(1)
	return c.Client.Patch(ctx, obj, patch, opts...)
}

func (c *countingClient) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	c.calls.Add(1)
	return c.Client.Delete(ctx, obj, opts...)
}
