package edge

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

func TestClaimStatusByView(t *testing.T) {
	kube := &countingClient{Client: plane.Client}
	e := startEdge(t, func(c *Config) { c.Client = kube })
	for _, tc := range []struct {
		tenant, workload string
		status           int
		phase            messages.ClaimPhase
		retryAfter       bool
	}{
		{"t-pool", "pooled", 201, messages.PhaseActive, false},
		{"t-existing", "warm", 200, messages.PhaseActive, false},
		{"t-pending", "slow", 202, messages.PhasePending, false},
		{"t-broken", "broken", 502, messages.PhaseError, false},
		{"t-tight", "tight", 503, messages.PhaseError, true},
		{"t-late", "late", 504, messages.PhaseError, false},
	} {
		t.Run(tc.workload, func(t *testing.T) {
			r := e.do(t, "POST", "/api/v1/tenants/"+tc.tenant+"/claim", `{"workload":"`+tc.workload+`"}`)
			expect(t, r, tc.status)
			var v messages.ClaimView
			r.json(t, &v)
			if v.TenantID != tc.tenant || v.Phase != tc.phase {
				t.Fatalf("view %+v, want tenant %s phase %s", v, tc.tenant, tc.phase)
			}
			if got := r.header.Get("Retry-After") != ""; got != tc.retryAfter {
				t.Fatalf("Retry-After %q, want set: %v", r.header.Get("Retry-After"), tc.retryAfter)
			}
			if tc.phase == messages.PhaseError && v.Detail == "" {
				t.Fatal("an Error view must carry its detail")
			}
			if tc.status >= 400 {
				// A failure is still a failure body: the view plus error and code.
				eb := r.errorBody(t)
				if !strings.Contains(eb.Error, v.Detail) {
					t.Fatalf("error %q does not carry the detail %q", eb.Error, v.Detail)
				}
			}
			if tc.status == 202 && r.header.Get("Location") != "/api/v1/tenants/t-pending/claims/slow" {
				t.Fatalf("202 without the claim's Location: %q", r.header.Get("Location"))
			}
		})
	}
	// The seed's claim shape, exactly.
	r := e.do(t, "POST", "/api/v1/tenants/alice/claim", `{"workload":"pooled"}`)
	var raw map[string]any
	r.json(t, &raw)
	for _, k := range []string{"tenantId", "phase", "instanceId", "endpoint", "source", "claimedAt"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("claim view lacks %q: %s", k, r.body)
		}
	}
	if raw["claimedAt"] != "2026-04-20T10:30:00Z" || raw["endpoint"].(map[string]any)["port"] != float64(8080) {
		t.Errorf("claim view: %s", r.body)
	}
	if n := kube.calls.Load(); n != 0 {
		t.Fatalf("the claim path made %d Kubernetes calls, want none", n)
	}
}

func TestClaimRequestReachesRouter(t *testing.T) {
	e := startEdge(t)
	// A dotted tenant id goes through the path, NATS and back unchanged.
	r := e.do(t, "POST", "/api/v1/tenants/org.acme/claim", `{"workloadRef":"pooled","resume":false}`, "X-Request-Id", "abc-123")
	expect(t, r, 201)
	var v messages.ClaimView
	r.json(t, &v)
	if v.TenantID != "org.acme" {
		t.Fatalf("view tenant %q", v.TenantID)
	}
	got, ok := router.lastClaim("org.acme")
	if !ok || got.TenantID != "org.acme" || got.Workload != "pooled" || got.ResumeOrDefault() || got.RequestID != "abc-123" {
		t.Fatalf("router received %+v (seen %v)", got, ok)
	}
	if got.WaitMillis != DefaultWait.Milliseconds() {
		t.Fatalf("default wait sent as %d ms", got.WaitMillis)
	}
	for _, tc := range []struct {
		query string
		want  int64
	}{
		{"wait=2.5", 2500},
		{"wait=10s", 10000},
		{"wait=10m", MaxWait.Milliseconds()},
		{"wait=0", 1},
	} {
		expect(t, e.do(t, "POST", "/api/v1/tenants/waiter/claim?"+tc.query, `{"workload":"pooled"}`), 201)
		if got, _ := router.lastClaim("waiter"); got.WaitMillis != tc.want {
			t.Errorf("?%s sent WaitMillis %d, want %d", tc.query, got.WaitMillis, tc.want)
		}
	}
	// The tenant id in the path also reaches the router escaped in the URL.
	expect(t, e.do(t, "POST", "/api/v1/tenants/Org_X.Y-1/claim", `{"workload":"pooled"}`), 201)
	if _, ok := router.lastClaim("Org_X.Y-1"); !ok {
		t.Fatal("tenant Org_X.Y-1 did not reach the router")
	}
}

func TestClaimBadRequests(t *testing.T) {
	e := startEdge(t)
	before := router.calls.Load()
	for _, tc := range []struct {
		name, path, body string
		status           int
		msg              string
	}{
		{"space and bang", "/api/v1/tenants/Bad%20Tenant%21/claim", `{"workload":"pooled"}`, 400, "[A-Za-z0-9._-]"},
		{"64 characters", "/api/v1/tenants/" + strings.Repeat("a", 64) + "/claim", `{"workload":"pooled"}`, 400, "must be at most 63"},
		{"leading dot", "/api/v1/tenants/.hidden/claim", `{"workload":"pooled"}`, 400, "begin and end with a letter or digit"},
		{"malformed JSON", "/api/v1/tenants/alice/claim", `{"workload": "pooled"`, 400, "invalid JSON"},
		{"bad syntax", "/api/v1/tenants/alice/claim", `{"workload": pooled}`, 400, "invalid JSON at byte 14: invalid character 'p'"},
		{"wrong type", "/api/v1/tenants/alice/claim", `{"workload": 7}`, 400, `field "workload" must be a string, not number`},
		{"not an object", "/api/v1/tenants/alice/claim", `["pooled"]`, 400, "must be a JSON object"},
		{"missing workload", "/api/v1/tenants/alice/claim", `{"resume": true}`, 400, "workload is required"},
		{"empty body", "/api/v1/tenants/alice/claim", ``, 400, "workload is required"},
		{"bad workload", "/api/v1/tenants/alice/claim", `{"workload": "My_Agent"}`, 400, "DNS-1123"},
		{"bad wait", "/api/v1/tenants/alice/claim?wait=forever", `{"workload": "pooled"}`, 400, `wait "forever"`},
		{"negative wait", "/api/v1/tenants/alice/claim?wait=-3", `{"workload": "pooled"}`, 400, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(t, "POST", tc.path, tc.body)
			expect(t, r, tc.status)
			eb := r.errorBody(t)
			if eb.Code != "invalid_argument" || !strings.Contains(eb.Error, tc.msg) {
				t.Fatalf("error %+v, want invalid_argument containing %q", eb, tc.msg)
			}
		})
	}
	if n := router.calls.Load() - before; n != 0 {
		t.Fatalf("%d invalid requests reached the claim-router", n)
	}
	big := `{"workload":"pooled","pad":"` + strings.Repeat("x", maxBodyBytes) + `"}`
	r := e.do(t, "POST", "/api/v1/tenants/alice/claim", big)
	expect(t, r, http.StatusRequestEntityTooLarge)
	if eb := r.errorBody(t); eb.Code != codePayloadTooLarge {
		t.Fatalf("too large: %+v", eb)
	}
}

func TestClaimErrorsFromRouter(t *testing.T) {
	e := startEdge(t)
	for _, tc := range []struct {
		workload   string
		status     int
		code       string
		retryAfter string
	}{
		{"unknown-workload", 404, "not_found", ""},
		{"full", 429, "capacity_exhausted", "5"},
		{"frozen", 409, "conflict", ""},
	} {
		r := e.do(t, "POST", "/api/v1/tenants/errs/claim", `{"workload":"`+tc.workload+`"}`)
		expect(t, r, tc.status)
		if eb := r.errorBody(t); eb.Code != tc.code {
			t.Errorf("%s: code %q, want %q", tc.workload, eb.Code, tc.code)
		}
		if got := r.header.Get("Retry-After"); got != tc.retryAfter {
			t.Errorf("%s: Retry-After %q, want %q", tc.workload, got, tc.retryAfter)
		}
	}
	r := e.do(t, "POST", "/api/v1/tenants/errs/claim", `{"workload":"unknown-workload"}`)
	if eb := r.errorBody(t); !strings.Contains(eb.Error, `workload "unknown-workload" not found`) {
		t.Errorf("404 message %q", eb.Error)
	}
}

// TestClaimDeadline: when the router does not answer within wait + margin,
// the edge answers 504 on its own.
func TestClaimDeadline(t *testing.T) {
	e := startEdge(t)
	start := time.Now()
	r := e.do(t, "POST", "/api/v1/tenants/patient/claim?wait=0", `{"workload":"stuck"}`)
	expect(t, r, http.StatusGatewayTimeout)
	if eb := r.errorBody(t); eb.Code != "deadline_exceeded" {
		t.Fatalf("code %q", eb.Code)
	}
	if d := time.Since(start); d < replyMargin || d > replyMargin+2*time.Second {
		t.Fatalf("answered after %v, want about %v", d, replyMargin)
	}
}

// TestReleaseWait: a release sends its ?wait= (default DefaultWait) to the router, and when
// no answer comes within wait + margin the edge answers 504 on its own, as for a claim.
func TestReleaseWait(t *testing.T) {
	e := startEdge(t)
	for _, tc := range []struct {
		path string
		want int64
	}{
		{"/release", DefaultWait.Milliseconds()},
		{"/release?wait=2s", 2000},
		{"/release/retry?wait=10m", MaxWait.Milliseconds()},
		{"/release/force?wait=0", 1},
	} {
		expect(t, e.do(t, "POST", "/api/v1/tenants/leaver"+tc.path, `{"workload":"pooled"}`), 200)
		if got, _ := router.lastRelease("leaver"); got.WaitMillis != tc.want {
			t.Errorf("%s sent WaitMillis %d, want %d", tc.path, got.WaitMillis, tc.want)
		}
	}
	expect(t, e.do(t, "POST", "/api/v1/tenants/leaver/release?wait=forever", `{"workload":"pooled"}`), 400)
	start := time.Now()
	r := e.do(t, "POST", "/api/v1/tenants/patient/release?wait=0", `{"workload":"stuck"}`)
	expect(t, r, http.StatusGatewayTimeout)
	if eb := r.errorBody(t); eb.Code != "deadline_exceeded" {
		t.Fatalf("code %q", eb.Code)
	}
	if d := time.Since(start); d < replyMargin || d > replyMargin+2*time.Second {
		t.Fatalf("answered after %v, want about %v", d, replyMargin)
	}
}

func TestNoClaimRouter(t *testing.T) {
	s, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsx.Shutdown(s) })
	lonely, err := natsx.ConnectInProcess(s)
	if err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, func(c *Config) { c.NATS = lonely })
	for _, req := range [][3]string{
		{"POST", "/api/v1/tenants/alice/claim", `{"workload":"pooled"}`},
		{"POST", "/api/v1/tenants/alice/release", `{"workload":"pooled"}`},
		{"GET", "/api/v1/tenants/alice", ""},
		{"GET", "/api/v1/tenants", ""},
	} {
		r := e.do(t, req[0], req[1], req[2])
		expect(t, r, http.StatusServiceUnavailable)
		if eb := r.errorBody(t); eb.Code != "unavailable" || r.header.Get("Retry-After") == "" {
			t.Fatalf("%s %s: %+v, Retry-After %q", req[0], req[1], eb, r.header.Get("Retry-After"))
		}
	}
	expect(t, e.do(t, "GET", "/api/v1/health", ""), 200) // connected, just nobody answering

	// A closed connection: claims are 503 and health says so.
	lonely.Close()
	r := e.do(t, "POST", "/api/v1/tenants/alice/claim", `{"workload":"pooled"}`)
	expect(t, r, http.StatusServiceUnavailable)
	r = e.do(t, "GET", "/api/v1/health", "")
	expect(t, r, http.StatusServiceUnavailable)
	var h healthBody
	r.json(t, &h)
	if h.NATS != "closed" || h.Code != "unavailable" {
		t.Fatalf("health %+v", h)
	}
}

func TestReleaseAndGetClaim(t *testing.T) {
	e := startEdge(t)
	r := e.do(t, "POST", "/api/v1/tenants/org.acme/release", `{"workloadRef":"pooled"}`)
	expect(t, r, 200)
	var v messages.ClaimView
	r.json(t, &v)
	if v.Phase != messages.PhaseReleased || v.TenantID != "org.acme" {
		t.Fatalf("release view %+v", v)
	}
	if got, _ := router.lastRelease("org.acme"); got.Reason != messages.ReasonAPI || got.Force {
		t.Fatalf("release request %+v", got)
	}
	expect(t, e.do(t, "POST", "/api/v1/tenants/rel-force/release", `{"workload":"pooled","force":true}`), 200)
	if got, _ := router.lastRelease("rel-force"); got.Reason != messages.ReasonForce || !got.Force {
		t.Fatalf("forced release request %+v", got)
	}
	r = e.do(t, "POST", "/api/v1/tenants/alice/release", `{"workload":"saving"}`)
	expect(t, r, 202)
	if r.header.Get("Location") != "/api/v1/tenants/alice/claims/saving" {
		t.Fatalf("Location %q", r.header.Get("Location"))
	}
	r = e.do(t, "POST", "/api/v1/tenants/alice/release", `{"workload":"stubborn"}`)
	expect(t, r, 502)
	if eb := r.errorBody(t); eb.Code != codeReleaseFailed || !strings.Contains(eb.Error, "exec failed") {
		t.Fatalf("ReleaseFailed: %+v", eb)
	}
	r.json(t, &v)
	if v.Phase != messages.PhaseReleaseFailed {
		t.Fatalf("ReleaseFailed view %+v", v)
	}
	r = e.do(t, "POST", "/api/v1/tenants/alice/release", `{"workload":"never-claimed"}`)
	expect(t, r, 404)
	if eb := r.errorBody(t); eb.Code != "not_found" {
		t.Fatalf("release of nothing: %+v", eb)
	}
	expect(t, e.do(t, "POST", "/api/v1/tenants/alice/release", `{}`), 400)
	expect(t, e.do(t, "POST", "/api/v1/tenants/a%2Fb/release", `{"workload":"pooled"}`), 400)

	r = e.do(t, "GET", "/api/v1/tenants/org.acme/claims/pooled", "")
	expect(t, r, 200)
	r.json(t, &v)
	if v.Phase != messages.PhaseActive || v.TenantID != "org.acme" {
		t.Fatalf("get claim %+v", v)
	}
	expect(t, e.do(t, "GET", "/api/v1/tenants/org.acme/claims/nothing", ""), 404)
	expect(t, e.do(t, "GET", "/api/v1/tenants/org.acme/claims/No_Such", ""), 400)
}

func TestTenants(t *testing.T) {
	e := startEdge(t)
	r := e.do(t, "GET", "/api/v1/tenants/alice", "")
	expect(t, r, 200)
	var tv messages.TenantView
	r.json(t, &tv)
	if tv.TenantID != "alice" || len(tv.Claims) != 2 || tv.Claims[0].Phase != messages.PhaseActive {
		t.Fatalf("tenant %+v", tv)
	}
	r = e.do(t, "GET", "/api/v1/tenants/org.acme", "")
	expect(t, r, 200)
	r.json(t, &tv)
	if tv.TenantID != "org.acme" || len(tv.Claims) != 1 {
		t.Fatalf("tenant %+v", tv)
	}
	for _, id := range []string{"nobody", "ghost"} {
		r = e.do(t, "GET", "/api/v1/tenants/"+id, "")
		expect(t, r, 404)
		if eb := r.errorBody(t); !strings.Contains(eb.Error, id) {
			t.Fatalf("404 for %s: %+v", id, eb)
		}
	}
	expect(t, e.do(t, "GET", "/api/v1/tenants/-bad-", ""), 400)

	r = e.do(t, "GET", "/api/v1/tenants", "")
	expect(t, r, 200)
	var list []messages.TenantView
	r.json(t, &list)
	if len(list) != len(tenants) || list[1].TenantID != "org.acme" {
		t.Fatalf("tenants %+v", list)
	}
}

func TestHealthAndSecurityHeaders(t *testing.T) {
	e := startEdge(t)
	r := e.do(t, "GET", "/api/v1/health", "")
	expect(t, r, 200)
	var h healthBody
	r.json(t, &h)
	if h.Status != "ok" || h.NATS != "connected" {
		t.Fatalf("health %+v", h)
	}
	for _, path := range []string{"/api/v1/health", "/api/v1/nope", "/api/v1/tenants/alice/claim"} {
		r := e.do(t, "GET", path, "")
		if r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: security headers missing: %v", path, r.header)
		}
	}
	expect(t, e.do(t, "GET", "/healthz", ""), 200)
	expect(t, e.do(t, "GET", "/readyz", ""), 200)
}

func TestUnknownRouteAndMethod(t *testing.T) {
	e := startEdge(t)
	r := e.do(t, "GET", "/api/v1/nope", "")
	expect(t, r, 404)
	if eb := r.errorBody(t); eb.Code != "not_found" || !strings.Contains(eb.Error, "/api/v1/nope") {
		t.Fatalf("404 body %+v", eb)
	}
	expect(t, e.do(t, "GET", "/", ""), 404)
	r = e.do(t, "DELETE", "/api/v1/health", "")
	expect(t, r, 405)
	if eb := r.errorBody(t); eb.Code != codeMethodNotAllowed || !strings.Contains(eb.Error, "GET") {
		t.Fatalf("405 body %+v", eb)
	}
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") {
		t.Fatalf("Allow %q", allow)
	}
	r = e.do(t, "GET", "/api/v1/tenants/alice/claim", "")
	expect(t, r, 405)
	r.errorBody(t)
	r = e.do(t, "PATCH", "/api/v1/workloads/x", "{}")
	expect(t, r, 405)
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "PUT") || !strings.Contains(allow, "DELETE") {
		t.Fatalf("Allow %q", allow)
	}
}

func TestAPIKey(t *testing.T) {
	e := startEdge(t, func(c *Config) { c.APIKey = "s3cret-key" })
	r := e.do(t, "POST", "/api/v1/tenants/alice/claim", `{"workload":"pooled"}`)
	expect(t, r, 401)
	if eb := r.errorBody(t); eb.Code != codeUnauthenticated || r.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("401 %+v", eb)
	}
	expect(t, e.do(t, "POST", "/api/v1/tenants/alice/claim", `{"workload":"pooled"}`, "Authorization", "Bearer wrong"), 401)
	expect(t, e.do(t, "GET", "/api/v1/stats", ""), 401)
	expect(t, e.do(t, "GET", "/api/v1/workloads", "", "Authorization", "s3cret-key"), 401)
	expect(t, e.do(t, "POST", "/api/v1/tenants/alice/claim", `{"workload":"pooled"}`, "Authorization", "Bearer s3cret-key"), 201)
	expect(t, e.do(t, "GET", "/api/v1/health", ""), 200)
	expect(t, e.do(t, "GET", "/api/v1/nope", ""), 404)
}

func TestMetricsEndpoint(t *testing.T) {
	e := startEdge(t)
	expect(t, e.do(t, "POST", "/api/v1/tenants/metrics/claim", `{"workload":"pooled"}`), 201)
	expect(t, e.do(t, "GET", "/api/v1/nope/"+strings.Repeat("x", 10), ""), 404)
	r := e.do(t, "GET", "/metrics", "")
	expect(t, r, 200)
	body := string(r.body)
	for _, want := range []string{
		`boilerhouse_http_requests_total{code="201",method="POST",route="/api/v1/tenants/{id}/claim"} 1`,
		`boilerhouse_http_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`boilerhouse_http_request_duration_seconds_bucket{method="POST",route="/api/v1/tenants/{id}/claim",le="0.005"}`,
		`boilerhouse_http_requests_in_flight`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestServeAndDrain runs the real server: it answers, and on shutdown a claim
// still waiting is answered 503 (retry) within the drain time.
func TestServeAndDrain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{NATS: nc, Client: plane.Client, Namespace: testNamespace, Logger: testLogger(t), DrainTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- e.Serve(ctx, ln) }()
	url := "http://" + ln.Addr().String()
	resp, err := http.Post(url+"/api/v1/tenants/runner/claim", "application/json", strings.NewReader(`{"workload":"pooled"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("status %d", resp.StatusCode)
	}

	waiting := make(chan *http.Response, 1)
	go func() {
		resp, err := http.Post(url+"/api/v1/tenants/runner/claim?wait=60", "application/json", strings.NewReader(`{"workload":"stuck"}`))
		if err != nil {
			t.Error(err)
			waiting <- nil
			return
		}
		resp.Body.Close()
		waiting <- resp
	}()
	time.Sleep(200 * time.Millisecond) // let the claim reach the router
	start := time.Now()
	cancel()
	select {
	case resp := <-waiting:
		if resp != nil && (resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "") {
			t.Fatalf("waiting claim answered %d (Retry-After %q) on shutdown, want 503", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting claim was not answered during the drain")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve returned %v after shutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	if _, err := http.Get(url + "/api/v1/health"); err == nil {
		t.Fatal("the server still answers after shutdown")
	}

	// Run fails cleanly when the address is taken.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	e2, err := New(Config{NATS: nc, Addr: busy.Addr().String(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Run on a busy address: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without NATS must fail")
	}
	e, err := New(Config{NATS: nc, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if e.cfg.Addr != ":3000" || e.cfg.Namespace != "boilerhouse" {
		t.Fatalf("defaults %+v", e.cfg)
	}
	// Without a Kubernetes client the claim routes work and the CRUD routes say 503.
	te := &testEdge{Edge: e, srv: httptest.NewServer(e.Handler())}
	t.Cleanup(te.srv.Close)
	expect(t, te.do(t, "POST", "/api/v1/tenants/nokube/claim", `{"workload":"pooled"}`), 201)
	r := te.do(t, "GET", "/api/v1/workloads", "")
	expect(t, r, 503)
	r.errorBody(t)
	expect(t, te.do(t, "GET", "/api/v1/stats", ""), 503)
}
