package claimrouter

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
)

// testEnv is an embedded NATS server with the buckets provisioned, a test
// pool-manager, a test overlay-store and a client connection.
type testEnv struct {
	t      testing.TB
	srv    *server.Server
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	pool   *testPool
	ov     *testOverlays
	client *nats.Conn
}

func testLogger() *slog.Logger {
	level := slog.LevelError + 1
	if os.Getenv("CLAIMROUTER_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func newEnv(t testing.TB, workloads map[string]int) *testEnv {
	t.Helper()
	return newEnvSync(t, workloads, false)
}

// newEnvSync is newEnv with the server fsyncing every JetStream write
// before acknowledging it (the durable setting for the claims bucket).
func newEnvSync(t testing.TB, workloads map[string]int, syncAlways bool) *testEnv {
	t.Helper()
	s, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir(), ServerName: "claimrouter-test", SyncAlways: syncAlways})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsx.Shutdown(s) })
	client, err := natsx.ConnectInProcess(s, nats.Name("test-client"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	js, err := jetstream.New(client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatal(err)
	}
	pool := startTestPool(t, s, workloads)
	return &testEnv{t: t, srv: s, js: js, kv: kv, pool: pool, ov: startTestOverlays(t, s, pool), client: client}
}

// runningRouter is a Router started on its own connection.
type runningRouter struct {
	*Router
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop cancels Run, closes the router's connection and waits for Run to
// return.
func (rr *runningRouter) stop(t testing.TB) {
	rr.once.Do(func() {
		rr.cancel()
		rr.nc.Close()
		select {
		case err := <-rr.done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return within 15s of being stopped")
		}
	})
}

func (e *testEnv) startRouter(cfg Config) *runningRouter {
	e.t.Helper()
	nc, err := natsx.ConnectInProcess(e.srv, nats.Name("claim-router"))
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Conn = nc
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	r, err := New(cfg)
	if err != nil {
		nc.Close()
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &runningRouter{Router: r, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	select {
	case <-r.ready:
	case err := <-rr.done:
		e.t.Fatalf("Run returned before it was ready: %v", err)
	case <-time.After(10 * time.Second):
		e.t.Fatal("router not ready within 10s")
	}
	e.t.Cleanup(func() { rr.stop(e.t) })
	return rr
}

func (e *testEnv) claim(req messages.ClaimRequest) (messages.ClaimView, error) {
	return bus.Client[messages.ClaimRequest, messages.ClaimView](e.client, messages.SubjectClaimsClaim, time.Minute)(context.Background(), req)
}

func (e *testEnv) release(req messages.ReleaseRequest) (messages.ClaimView, error) {
	return bus.Client[messages.ReleaseRequest, messages.ClaimView](e.client, messages.SubjectClaimsRelease, time.Minute)(context.Background(), req)
}

func (e *testEnv) get(tenant, workload string) (messages.ClaimView, error) {
	return bus.Client[messages.ClaimGetRequest, messages.ClaimView](e.client, messages.SubjectClaimsGet, 10*time.Second)(context.Background(), messages.ClaimGetRequest{TenantID: tenant, Workload: workload})
}

// record reads the KV record of the pair directly (nil when absent).
func (e *testEnv) record(tenant, workload string) *Entry {
	e.t.Helper()
	got, err := NewStore(e.kv, nil).Get(context.Background(), messages.ClaimKey(tenant, workload))
	if err != nil {
		e.t.Fatal(err)
	}
	return got
}

// put writes a record directly, as another (maybe dead) replica would.
func (e *testEnv) put(rec messages.ClaimRecord) {
	e.t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.kv.Put(context.Background(), messages.ClaimKey(rec.TenantID, rec.Workload), b); err != nil {
		e.t.Fatal(err)
	}
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last state: %s", what, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustActive(t testing.TB, v messages.ClaimView, err error, source messages.ClaimSource) {
	t.Helper()
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if v.Phase != messages.PhaseActive || v.Source != source || v.InstanceID == "" || v.Endpoint == nil || v.Endpoint.Host == "" || v.ClaimedAt == nil {
		t.Fatalf("claim = %+v, want Active from %s with instance, endpoint and claimedAt", v, source)
	}
}

func TestClaimSources(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ready  int
		source messages.ClaimSource
		boots  int64
	}{
		{"pool", 1, messages.SourcePool, 0},
		{"cold", 0, messages.SourceCold, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, map[string]int{"demo": tc.ready})
			env.startRouter(Config{})
			v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
			mustActive(t, v, err, tc.source)
			if v.TenantID != "alice" || v.Workload != "demo" || v.Detail != "" {
				t.Fatalf("claim = %+v", v)
			}
			if !v.ClaimedAt.Equal(v.ClaimedAt.Truncate(time.Second)) || v.ClaimedAt.Location() != time.UTC {
				t.Fatalf("claimedAt %v is not UTC whole seconds", v.ClaimedAt)
			}
			if n := env.pool.acquireCalls.Load(); n != 1 {
				t.Fatalf("acquire calls = %d, want 1", n)
			}
			if n := env.pool.bootCalls.Load(); n != tc.boots {
				t.Fatalf("boot calls = %d, want %d", n, tc.boots)
			}
			rec := env.record("alice", "demo")
			if rec == nil || rec.Record.Phase != messages.PhaseActive || rec.Record.InstanceID != v.InstanceID || !rec.Record.Resume {
				t.Fatalf("record = %+v", rec)
			}

			// The second claim is the existing one: same instance, nothing
			// written, no pool-manager call.
			again, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
			mustActive(t, again, err, messages.SourceExisting)
			if again.InstanceID != v.InstanceID || *again.Endpoint != *v.Endpoint || !again.ClaimedAt.Equal(*v.ClaimedAt) {
				t.Fatalf("second claim = %+v, want the instance of %+v", again, v)
			}
			if after := env.record("alice", "demo"); after.Revision != rec.Revision {
				t.Fatalf("existing claim wrote the record: revision %d -> %d", rec.Revision, after.Revision)
			}
			if n := env.pool.acquireCalls.Load() + env.pool.bootCalls.Load(); n != 1+tc.boots {
				t.Fatalf("pool-manager calls after the existing claim = %d, want %d", n, 1+tc.boots)
			}
		})
	}
}

// claimAtOnce sends n copies of req concurrently.
func claimAtOnce(env *testEnv, n int, req messages.ClaimRequest) ([]messages.ClaimView, []error) {
	views := make([]messages.ClaimView, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { views[i], errs[i] = env.claim(req) })
	}
	wg.Wait()
	return views, errs
}

// TestConcurrentPoolClaimsOnePair: concurrent pool claims of a new pair on
// two replicas all get one instance; an instance acquired by a request that
// lost the record's create is retired, never left held.
func TestConcurrentPoolClaimsOnePair(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 100})
	env.startRouter(Config{})
	env.startRouter(Config{})
	views, errs := claimAtOnce(env, 50, messages.ClaimRequest{TenantID: "carol", Workload: "demo"})
	for i := range views {
		if errs[i] != nil || views[i].Phase != messages.PhaseActive || views[i].InstanceID != views[0].InstanceID {
			t.Fatalf("claim %d = %+v, %v; claim 0 got %s", i, views[i], errs[i], views[0].InstanceID)
		}
	}
	env.pool.mu.Lock()
	defer env.pool.mu.Unlock()
	for id := range env.pool.instances {
		if id != views[0].InstanceID && env.pool.retired[id] == 0 {
			t.Errorf("instance %s was acquired for carol and never retired", id)
		}
	}
	if env.pool.retired[views[0].InstanceID] != 0 {
		t.Errorf("the claimed instance %s was retired", views[0].InstanceID)
	}
}

func TestConcurrentClaimsOnePair(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 0})
	env.pool.setBoot(func(ctx context.Context, _ messages.BootRequest) error {
		time.Sleep(300 * time.Millisecond) // the others arrive while it is Pending
		return nil
	})
	// Two replicas share the requests (queue group), so waiting works across
	// replicas too.
	env.startRouter(Config{})
	env.startRouter(Config{})
	views, errs := claimAtOnce(env, 50, messages.ClaimRequest{TenantID: "bob", Workload: "demo"})
	for i := range views {
		if errs[i] != nil || views[i].Phase != messages.PhaseActive {
			t.Fatalf("claim %d = %+v, %v", i, views[i], errs[i])
		}
		if views[i].InstanceID != views[0].InstanceID {
			t.Fatalf("claim %d got instance %s, claim 0 got %s", i, views[i].InstanceID, views[0].InstanceID)
		}
		if views[i].Source != messages.SourceCold && views[i].Source != messages.SourceExisting {
			t.Fatalf("claim %d source %s", i, views[i].Source)
		}
	}
	// One acquire per replica at most: the requests of a replica wait for
	// the one that starts the claim, and the other replica's loses the
	// record's create.
	if a, b, c := env.pool.acquireCalls.Load(), env.pool.bootCalls.Load(), env.pool.created(); a < 1 || a > 2 || b != 1 || c != 1 {
		t.Fatalf("acquire calls %d, boot calls %d, instances %d; want 1-2, 1, 1", a, b, c)
	}
}

func TestClaimsForManyTenants(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 50})
	env.startRouter(Config{})
	const n = 200
	views := make([]messages.ClaimView, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			views[i], errs[i] = env.claim(messages.ClaimRequest{TenantID: fmt.Sprintf("tenant-%03d", i), Workload: "demo"})
		})
	}
	wg.Wait()
	sources := map[messages.ClaimSource]int{}
	seen := map[string]int{}
	for i := range n {
		if errs[i] != nil || views[i].Phase != messages.PhaseActive {
			t.Fatalf("claim %d = %+v, %v", i, views[i], errs[i])
		}
		sources[views[i].Source]++
		if j, dup := seen[views[i].InstanceID]; dup {
			t.Fatalf("tenants %d and %d share instance %s", i, j, views[i].InstanceID)
		}
		seen[views[i].InstanceID] = i
	}
	if sources[messages.SourcePool] != 50 || sources[messages.SourceCold] != 150 {
		t.Fatalf("sources %v, want 50 pool and 150 cold", sources)
	}
	if c := env.pool.created(); c != n {
		t.Fatalf("%d instances created, want %d", c, n)
	}
	list, err := bus.Client[messages.TenantListRequest, messages.TenantList](env.client, messages.SubjectTenantsList, 10*time.Second)(context.Background(), messages.TenantListRequest{})
	if err != nil || len(list.Tenants) != n || list.Tenants[0].TenantID != "tenant-000" || list.Tenants[n-1].TenantID != "tenant-199" {
		t.Fatalf("tenants list: %d tenants, %v", len(list.Tenants), err)
	}
}

func TestTenantWithDots(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 1, "other": 0})
	env.startRouter(Config{})
	v, err := env.claim(messages.ClaimRequest{TenantID: "org.acme", Workload: "demo"})
	mustActive(t, v, err, messages.SourcePool)
	if v.TenantID != "org.acme" {
		t.Fatalf("tenant %q", v.TenantID)
	}
	v2, err := env.claim(messages.ClaimRequest{TenantID: "org.acme", Workload: "other"})
	mustActive(t, v2, err, messages.SourceCold)
	// "org_acme" is a different tenant, even though '.' and '_' look alike.
	v3, err := env.claim(messages.ClaimRequest{TenantID: "org_acme", Workload: "other"})
	mustActive(t, v3, err, messages.SourceCold)
	if v3.InstanceID == v2.InstanceID {
		t.Fatal("org.acme and org_acme share an instance")
	}

	if e, err := env.kv.Get(context.Background(), "org_2eacme.demo"); err != nil || !strings.Contains(string(e.Value()), `"tenantId":"org.acme"`) {
		t.Fatalf("KV key org_2eacme.demo: %v", err)
	}
	got, err := env.get("org.acme", "demo")
	if err != nil || got.InstanceID != v.InstanceID {
		t.Fatalf("get = %+v, %v", got, err)
	}
	tv, err := bus.Client[messages.TenantGetRequest, messages.TenantView](env.client, messages.SubjectTenantsGet, 10*time.Second)(context.Background(), messages.TenantGetRequest{TenantID: "org.acme"})
	if err != nil || tv.TenantID != "org.acme" || len(tv.Claims) != 2 || tv.Claims[0].Workload != "demo" || tv.Claims[1].Workload != "other" {
		t.Fatalf("tenants get = %+v, %v", tv, err)
	}
	rel, err := env.release(messages.ReleaseRequest{TenantID: "org.acme", Workload: "demo"})
	if err != nil || rel.Phase != messages.PhaseReleased {
		t.Fatalf("release = %+v, %v", rel, err)
	}
	list, err := bus.Client[messages.TenantListRequest, messages.TenantList](env.client, messages.SubjectTenantsList, 10*time.Second)(context.Background(), messages.TenantListRequest{})
	if err != nil || len(list.Tenants) != 2 || list.Tenants[0].TenantID != "org.acme" || len(list.Tenants[0].Claims) != 2 || list.Tenants[1].TenantID != "org_acme" {
		t.Fatalf("tenants list = %+v, %v", list, err)
	}
	// The claim events went to the encoded subject.
	eventually(t, 5*time.Second, "claim events of org.acme", func() (bool, string) {
		phases := claimEventPhases(t, env, "org.acme", "demo")
		// A pool claim is written once, Active: no Pending.
		return strings.Join(phases, ",") == "Active,Releasing,Released", strings.Join(phases, ",")
	})
}

// claimEventPhases reads the phases of the claim events stored for a pair.
func claimEventPhases(t testing.TB, env *testEnv, tenant, workload string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subject := messages.EventSubject(messages.EventClaim, tenant, workload)
	cons, err := env.js.OrderedConsumer(ctx, messages.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var phases []string
	for {
		batch, err := cons.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var ev messages.Event
			if err := json.Unmarshal(m.Data(), &ev); err != nil || ev.Kind != messages.EventClaim || ev.Claim == nil || ev.TenantID != tenant {
				t.Fatalf("bad claim event %s: %v", m.Data(), err)
			}
			phases = append(phases, string(ev.Claim.Phase))
		}
		if n == 0 {
			return phases
		}
	}
}

func TestInvalidRequests(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 1})
	env.startRouter(Config{})
	for _, req := range []messages.ClaimRequest{
		{TenantID: "", Workload: "demo"},
		{TenantID: "bad tenant", Workload: "demo"},
		{TenantID: ".acme", Workload: "demo"},
		{TenantID: strings.Repeat("a", 64), Workload: "demo"},
		{TenantID: "alice", Workload: "Demo"},
		{TenantID: "alice", Workload: ""},
		{TenantID: "alice", Workload: "de.mo"},
	} {
		if _, err := env.claim(req); messages.CodeOf(err) != messages.CodeInvalidArgument {
			t.Errorf("claim %+v: err = %v, want invalid_argument", req, err)
		}
	}
	if _, err := env.release(messages.ReleaseRequest{TenantID: "a b", Workload: "demo"}); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Errorf("release with a bad tenant: %v", err)
	}
	if _, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "demo", Reason: "bored"}); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Errorf("release with a bad reason: %v", err)
	}
	if _, err := env.get("alice", "Demo"); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Errorf("get with a bad workload: %v", err)
	}
	msg, err := env.client.Request(messages.SubjectClaimsClaim, []byte(`{"tenantId":`), 5*time.Second)
	if err != nil || msg.Header.Get(messages.HeaderError) != string(messages.CodeInvalidArgument) {
		t.Errorf("malformed JSON: %v, header %q", err, msg.Header.Get(messages.HeaderError))
	}
	keys, err := env.kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		t.Errorf("invalid requests left key %q", k)
	}
	if n := env.pool.acquireCalls.Load(); n != 0 {
		t.Errorf("invalid requests called acquire %d times", n)
	}
}

func TestUnknownWorkload(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 1})
	env.startRouter(Config{})
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "nope"})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if messages.CodeOf(err) != messages.CodeNotFound {
			t.Fatalf("claim %d of an unknown workload: err = %v, want not_found", i, err)
		}
	}
	if e := env.record("alice", "nope"); e != nil {
		t.Fatalf("a record was left: %+v", e.Record)
	}
	if _, err := env.get("alice", "nope"); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("get: %v, want not_found", err)
	}
	// The workload exists now: claiming works on the same key.
	env.pool.mu.Lock()
	env.pool.ready["nope"] = 1
	env.pool.mu.Unlock()
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "nope"})
	mustActive(t, v, err, messages.SourcePool)
}

func TestBootFailure(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 0})
	env.pool.setBoot(func(context.Context, messages.BootRequest) error {
		return messages.Errorf(messages.CodeInternal, "pod failed: ImagePullBackOff")
	})
	env.startRouter(Config{})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
	if err != nil || v.Phase != messages.PhaseError || v.Detail != "pod failed: ImagePullBackOff" {
		t.Fatalf("claim = %+v, %v; want Error with the pod failure", v, err)
	}
	if rec := env.record("alice", "demo"); rec.Record.Phase != messages.PhaseError {
		t.Fatalf("record %+v", rec.Record)
	}
	env.pool.setBoot(func(context.Context, messages.BootRequest) error {
		return messages.Errorf(messages.CodeCapacityExhausted, "unschedulable: 0/1 nodes are available: insufficient memory")
	})
	v, err = env.claim(messages.ClaimRequest{TenantID: "bob", Workload: "demo"})
	if err != nil || v.Phase != messages.PhaseError || !strings.HasPrefix(v.Detail, "unschedulable: ") {
		t.Fatalf("claim = %+v, %v; want Error unschedulable", v, err)
	}
	// Error is terminal but retryable: the next claim starts a new life.
	env.pool.setBoot(nil)
	before := env.record("alice", "demo").Record.ID
	v, err = env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
	mustActive(t, v, err, messages.SourceCold)
	if id := env.record("alice", "demo").Record.ID; id == before {
		t.Fatalf("the retried claim kept claim ID %s", id)
	}
}

func TestPendingTimeout(t *testing.T) {
	t.Run("saga", func(t *testing.T) {
		env := newEnv(t, map[string]int{"demo": 0})
		env.pool.setBoot(func(ctx context.Context, _ messages.BootRequest) error {
			time.Sleep(50 * time.Millisecond)
			return messages.Errorf(messages.CodeDeadlineExceeded, "instance demo-x not ready yet")
		})
		env.startRouter(Config{ClaimTimeout: time.Second})
		start := time.Now()
		// A short wait answers Pending first.
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo", WaitMillis: 100})
		if err != nil || v.Phase != messages.PhasePending {
			t.Fatalf("claim with a short wait = %+v, %v; want Pending", v, err)
		}
		v, err = env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo", WaitMillis: 10000})
		if err != nil || v.Phase != messages.PhaseError || !strings.HasPrefix(v.Detail, "timeout") || !strings.Contains(v.Detail, "not ready yet") {
			t.Fatalf("claim = %+v, %v; want Error timeout", v, err)
		}
		if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
			t.Fatalf("timed out after %s, want about 1s", d)
		}
		if n := env.pool.bootCalls.Load(); n < 2 {
			t.Fatalf("boot called %d times, want retries until the deadline", n)
		}
		n := env.pool.bootCalls.Load()
		time.Sleep(300 * time.Millisecond)
		if m := env.pool.bootCalls.Load(); m != n {
			t.Fatalf("boot still called after the timeout: %d -> %d", n, m)
		}
	})
	t.Run("sweeper", func(t *testing.T) {
		// A Pending record whose owner is alive elsewhere but never
		// finishes: the sweeper turns it Error at its deadline.
		env := newEnv(t, map[string]int{"demo": 0})
		env.startRouter(Config{SweepInterval: 50 * time.Millisecond, StaleAfter: time.Hour})
		now := time.Now().UTC()
		env.put(messages.ClaimRecord{TenantID: "alice", Workload: "demo", ID: "c-remote", Phase: messages.PhasePending,
			CreatedAt: now, UpdatedAt: now, Deadline: now.Add(300 * time.Millisecond), Owner: "elsewhere"})
		eventually(t, 5*time.Second, "pending record past its deadline turns Error", func() (bool, string) {
			rec := env.record("alice", "demo").Record
			return rec.Phase == messages.PhaseError && strings.HasPrefix(rec.Detail, "timeout"), fmt.Sprintf("%s %q", rec.Phase, rec.Detail)
		})
	})
}

func TestRelease(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 1})
	env.startRouter(Config{})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
	mustActive(t, v, err, messages.SourcePool)

	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "demo", Reason: messages.ReasonIdle})
	if err != nil || rel.Phase != messages.PhaseReleased || rel.Endpoint != nil || rel.InstanceID != v.InstanceID || rel.Detail != "released (idle)" {
		t.Fatalf("release = %+v, %v", rel, err)
	}
	if n := env.pool.retiredCount(v.InstanceID); n != 1 {
		t.Fatalf("instance retired %d times, want 1", n)
	}
	if rec := env.record("alice", "demo").Record; rec.ReleaseReason != messages.ReasonIdle {
		t.Fatalf("release reason %q", rec.ReleaseReason)
	}
	// Idempotent: the Released view again, no second retire.
	again, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "demo"})
	if err != nil || again.Phase != messages.PhaseReleased {
		t.Fatalf("second release = %+v, %v", again, err)
	}
	if n := env.pool.retireCalls.Load(); n != 1 {
		t.Fatalf("retire calls = %d, want 1", n)
	}
	if _, err := env.release(messages.ReleaseRequest{TenantID: "never", Workload: "demo"}); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("release of a never-claimed pair: %v, want not_found", err)
	}
	// The next claim gets a new instance.
	next, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
	mustActive(t, next, err, messages.SourceCold)
	if next.InstanceID == v.InstanceID {
		t.Fatal("claim after release reused the retired instance")
	}
}

func TestReleaseWhilePending(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 0})
	unblock := make(chan struct{})
	env.pool.setBoot(func(ctx context.Context, _ messages.BootRequest) error {
		select {
		case <-unblock:
			return nil
		case <-ctx.Done():
			return messages.Errorf(messages.CodeDeadlineExceeded, "not ready")
		}
	})
	env.startRouter(Config{})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo", WaitMillis: 50})
	if err != nil || v.Phase != messages.PhasePending {
		t.Fatalf("claim = %+v, %v; want Pending", v, err)
	}
	type result struct {
		v   messages.ClaimView
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "demo"})
		done <- result{v, err}
	}()
	eventually(t, 5*time.Second, "release recorded on the Pending claim", func() (bool, string) {
		rec := env.record("alice", "demo").Record
		return rec.Phase == messages.PhasePending && rec.ReleaseReason == messages.ReasonAPI, fmt.Sprintf("%+v", rec)
	})
	close(unblock)
	select {
	case res := <-done:
		if res.err != nil || res.v.Phase != messages.PhaseReleased || res.v.InstanceID == "" {
			t.Fatalf("release = %+v, %v; want Released", res.v, res.err)
		}
		if n := env.pool.retiredCount(res.v.InstanceID); n != 1 {
			t.Fatalf("instance retired %d times, want 1", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("release of a Pending claim did not answer")
	}
}

func TestReleaseFailedAndRetireErrors(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 2})
	env.startRouter(Config{ClaimTimeout: time.Second})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
	mustActive(t, v, err, messages.SourcePool)
	env.pool.setRetire(func(messages.RetireRequest) error {
		return messages.Errorf(messages.CodeInternal, "pods \"x\" is forbidden")
	})
	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "demo"})
	if err != nil || rel.Phase != messages.PhaseReleaseFailed || !strings.Contains(rel.Detail, "forbidden") || rel.Endpoint == nil {
		t.Fatalf("release = %+v, %v; want ReleaseFailed keeping the instance", rel, err)
	}
	if _, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"}); messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("claim of a ReleaseFailed pair: %v, want conflict", err)
	}
	if again, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "demo"}); err != nil || again.Phase != messages.PhaseReleaseFailed {
		t.Fatalf("release of a ReleaseFailed claim = %+v, %v; want it as is", again, err)
	}

	// Transient retire errors are retried until they pass.
	v, err = env.claim(messages.ClaimRequest{TenantID: "bob", Workload: "demo"})
	mustActive(t, v, err, messages.SourcePool)
	var mu sync.Mutex
	fails := 3
	env.pool.setRetire(func(messages.RetireRequest) error {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			return messages.Errorf(messages.CodeUnavailable, "API server unreachable")
		}
		return nil
	})
	rel, err = env.release(messages.ReleaseRequest{TenantID: "bob", Workload: "demo"})
	if err != nil || rel.Phase != messages.PhaseReleased {
		t.Fatalf("release with transient retire errors = %+v, %v", rel, err)
	}
}

func TestKillMidClaim(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 0})
	started := make(chan string, 16)
	unblock := make(chan struct{})
	env.pool.setBoot(func(ctx context.Context, req messages.BootRequest) error {
		started <- req.ClaimID
		select {
		case <-unblock:
			return nil
		case <-ctx.Done():
			return messages.Errorf(messages.CodeDeadlineExceeded, "not ready")
		}
	})
	cfg := Config{StaleAfter: 600 * time.Millisecond, SweepInterval: 100 * time.Millisecond}
	a := env.startRouter(cfg)
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo", WaitMillis: 50})
	if err != nil || v.Phase != messages.PhasePending {
		t.Fatalf("claim = %+v, %v; want Pending", v, err)
	}
	var claimID string
	select {
	case claimID = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("boot never called")
	}
	// Kill router A while its boot call is in flight.
	a.stop(t)
	rec := env.record("alice", "demo").Record
	if rec.Phase != messages.PhasePending || rec.Owner != a.ReplicaID() || rec.ID != claimID {
		t.Fatalf("after the kill: %+v", rec)
	}
	close(unblock)

	b := env.startRouter(cfg)
	eventually(t, 15*time.Second, "router B takes the claim over and ends it", func() (bool, string) {
		rec := env.record("alice", "demo").Record
		return rec.Phase == messages.PhaseActive, fmt.Sprintf("%s owner %s %q", rec.Phase, rec.Owner, rec.Detail)
	})
	rec = env.record("alice", "demo").Record
	if rec.Owner != b.ReplicaID() || rec.ID != claimID || rec.Source != messages.SourceCold {
		t.Fatalf("after takeover: %+v; want owner %s, claim %s, source cold", rec, b.ReplicaID(), claimID)
	}
	if c := env.pool.created(); c != 1 {
		t.Fatalf("%d instances created, want 1 (boot is idempotent per claim ID)", c)
	}
	if n := env.pool.acquireCalls.Load(); n != 1 {
		t.Fatalf("acquire called %d times; the new owner must go straight to boot", n)
	}
	v, err = env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "demo"})
	mustActive(t, v, err, messages.SourceExisting)
}

func TestTakeOverRelease(t *testing.T) {
	// A router died after writing Releasing: another one finishes the
	// release (invariant 2).
	env := newEnv(t, map[string]int{"demo": 0})
	old := time.Now().Add(-time.Minute).UTC()
	env.put(messages.ClaimRecord{TenantID: "alice", Workload: "demo", ID: "c-dead", Phase: messages.PhaseReleasing,
		InstanceID: "demo-old", Endpoint: &messages.Endpoint{Host: "10.0.0.9", Port: 80}, Source: messages.SourcePool,
		ReleaseReason: messages.ReasonIdle, CreatedAt: old, UpdatedAt: old, Deadline: old.Add(time.Second), Owner: "dead"})
	r := env.startRouter(Config{StaleAfter: 300 * time.Millisecond, SweepInterval: 50 * time.Millisecond})
	eventually(t, 10*time.Second, "the stale Releasing claim ends Released", func() (bool, string) {
		rec := env.record("alice", "demo").Record
		return rec.Phase == messages.PhaseReleased, fmt.Sprintf("%s owner %s %q", rec.Phase, rec.Owner, rec.Detail)
	})
	rec := env.record("alice", "demo").Record
	if rec.Owner != r.ReplicaID() || rec.Endpoint != nil || rec.Detail != "released (idle); the instance was already gone" {
		t.Fatalf("record %+v", rec)
	}
	if n := env.pool.retiredCount("demo-old"); n != 1 {
		t.Fatalf("retired %d times", n)
	}
}

func TestInstanceEvents(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 0})
	env.startRouter(Config{})
	publish := func(ev messages.Event) {
		t.Helper()
		b, _ := json.Marshal(ev)
		if _, err := env.js.Publish(context.Background(), messages.EventSubject(messages.EventInstance, ev.TenantID, ev.Workload), b); err != nil {
			t.Fatal(err)
		}
	}
	v, err := env.claim(messages.ClaimRequest{TenantID: "org.acme", Workload: "demo"})
	mustActive(t, v, err, messages.SourceCold)

	// Another instance's deletion and a ready event change nothing.
	publish(messages.Event{Kind: messages.EventInstance, TenantID: "org.acme", Workload: "demo", Instance: &messages.Instance{InstanceID: "demo-other", Phase: "deleted"}})
	publish(messages.Event{Kind: messages.EventInstance, TenantID: "org.acme", Workload: "demo", Instance: &messages.Instance{InstanceID: v.InstanceID, Phase: "ready"}})
	// The claim's own instance is deleted.
	publish(messages.Event{Kind: messages.EventInstance, TenantID: "org.acme", Workload: "demo", Instance: &messages.Instance{InstanceID: v.InstanceID, Workload: "demo", Phase: "deleted"}})
	eventually(t, 5*time.Second, "claim released by the instance deletion", func() (bool, string) {
		rec := env.record("org.acme", "demo").Record
		return rec.Phase == messages.PhaseReleased, fmt.Sprintf("%s %q", rec.Phase, rec.Detail)
	})
	rec := env.record("org.acme", "demo").Record
	if rec.Detail != DetailPodGone || rec.Endpoint != nil || rec.InstanceID != v.InstanceID {
		t.Fatalf("record %+v", rec)
	}

	// The next claim gets a new instance; its failure (reported without a
	// tenant) turns the claim Error.
	v2, err := env.claim(messages.ClaimRequest{TenantID: "org.acme", Workload: "demo"})
	mustActive(t, v2, err, messages.SourceCold)
	if v2.InstanceID == v.InstanceID {
		t.Fatal("the claim after the deletion got the deleted instance")
	}
	publish(messages.Event{Kind: messages.EventInstance, Workload: "demo", Instance: &messages.Instance{InstanceID: v2.InstanceID, Phase: "Failed", Detail: "OOMKilled"}})
	eventually(t, 5*time.Second, "claim Error after the instance failed", func() (bool, string) {
		rec := env.record("org.acme", "demo").Record
		return rec.Phase == messages.PhaseError && rec.Detail == "instance failed: OOMKilled", fmt.Sprintf("%s %q", rec.Phase, rec.Detail)
	})
}

func TestGetAndTenantsNotFound(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 0})
	env.startRouter(Config{})
	if _, err := env.get("alice", "demo"); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("get: %v", err)
	}
	_, err := bus.Client[messages.TenantGetRequest, messages.TenantView](env.client, messages.SubjectTenantsGet, 10*time.Second)(context.Background(), messages.TenantGetRequest{TenantID: "alice"})
	if messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("tenants get: %v", err)
	}
	msg, err := env.client.Request(messages.SubjectTenantsList, nil, 10*time.Second)
	if err != nil || string(msg.Data) != `{"tenants":[]}` {
		t.Fatalf("tenants list of nothing: %s, %v", msg.Data, err)
	}
}

func TestRouterLifecycle(t *testing.T) {
	env := newEnv(t, map[string]int{"demo": 0})
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a connection succeeded")
	}
	nc, err := natsx.ConnectInProcess(env.srv)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := New(Config{Conn: nc, StaleAfter: -time.Second}); err == nil {
		t.Fatal("New with a negative StaleAfter succeeded")
	}
	r, err := New(Config{Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.ReplicaID(), "claim-router-") || r.cfg.ClaimTimeout != DefaultClaimTimeout || r.cfg.StaleAfter != DefaultStaleAfter {
		t.Fatalf("defaults: %+v", r.cfg)
	}
	if _, err := r.Claim(context.Background(), messages.ClaimRequest{TenantID: "a", Workload: "demo"}); messages.CodeOf(err) != messages.CodeUnavailable {
		t.Fatalf("claim before Run: %v, want unavailable", err)
	}
	// A missing bucket fails Run with a clear error.
	s2, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer natsx.Shutdown(s2)
	nc2, err := natsx.ConnectInProcess(s2)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	r2, err := New(Config{Conn: nc2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r2.Run(ctx); err == nil || !strings.Contains(err.Error(), "natsx.Provision") {
		t.Fatalf("Run without the claims bucket: %v", err)
	}
	if err := r2.Run(ctx); err == nil {
		t.Fatal("second Run succeeded")
	}
}

// TestFlightsStaleRead: a request that read the record before a flight of
// its key ended must read again, not lead a second start.
func TestFlightsStaleRead(t *testing.T) {
	f := newFlights()
	before := f.epoch("bob.demo")
	if _, leader := f.join("bob.demo", before); !leader {
		t.Fatal("first join did not lead")
	}
	done, leader := f.join("bob.demo", before)
	if leader {
		t.Fatal("second join led while the first flies")
	}
	f.leave("bob.demo")
	select {
	case <-done:
	default:
		t.Fatal("leave did not wake the waiter")
	}
	done, leader = f.join("bob.demo", before)
	if leader {
		t.Fatal("a join with the epoch from before the flight led")
	}
	select {
	case <-done:
	default:
		t.Fatal("a stale join must be told to read again at once")
	}
	if _, leader := f.join("bob.demo", f.epoch("bob.demo")); !leader {
		t.Fatal("a fresh join did not lead")
	}
}
