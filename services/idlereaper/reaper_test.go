package idlereaper

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

// env is an embedded NATS server with the buckets provisioned and a fake
// claim-router that does the Active -> Releasing compare-and-set on release.
type env struct {
	t      testing.TB
	ctx    context.Context
	srv    *server.Server
	dir    string
	nc     *nats.Conn
	claims jetstream.KeyValue

	mu       sync.Mutex
	calls    map[string]int       // release requests per key
	released map[string]time.Time // first winning Active -> Releasing per key
	wins     map[string]int
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, dir: t.TempDir(), calls: map[string]int{}, released: map[string]time.Time{}, wins: map[string]int{}}
	e.start()
	return e
}

func (e *env) start() {
	t := e.t
	srv, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: e.dir})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	t.Cleanup(func() { natsx.Shutdown(srv) })
	nc := e.conn()
	js, _ := jetstream.New(nc)
	if err := natsx.Provision(e.ctx, js, natsx.ProvisionConfig{}); err != nil {
		t.Fatal(err)
	}
	if e.claims, err = js.KeyValue(e.ctx, messages.BucketClaims); err != nil {
		t.Fatal(err)
	}
	e.nc = nc
	_, err = nc.Subscribe(messages.SubjectClaimsRelease, func(m *nats.Msg) {
		var req messages.ReleaseRequest
		_ = json.Unmarshal(m.Data, &req)
		key := messages.ClaimKey(req.TenantID, req.Workload)
		e.mu.Lock()
		e.calls[key]++
		e.mu.Unlock()
		if req.Reason != messages.ReasonIdle {
			t.Errorf("release reason %q, want idle", req.Reason)
		}
		ent, err := e.claims.Get(e.ctx, key)
		if err == nil {
			var rec messages.ClaimRecord
			_ = json.Unmarshal(ent.Value(), &rec)
			if rec.Phase == messages.PhaseActive {
				rec.Phase = messages.PhaseReleasing
				rec.ReleaseReason = req.Reason
				b, _ := json.Marshal(rec)
				if _, err := e.claims.Update(e.ctx, key, b, ent.Revision()); err == nil {
					e.mu.Lock()
					e.wins[key]++
					if _, ok := e.released[key]; !ok {
						e.released[key] = time.Now()
					}
					e.mu.Unlock()
				}
			}
		}
		b, _ := json.Marshal(messages.ClaimView{TenantID: req.TenantID, Workload: req.Workload, Phase: messages.PhaseReleasing})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) conn() *nats.Conn {
	nc, err := natsx.ConnectInProcess(e.srv)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

// reaper starts a replica; the returned function stops it.
func (e *env) reaper(cfg Config, hook ...func(string)) (*Reaper, func()) {
	e.t.Helper()
	cfg.Conn = e.conn()
	r, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(hook) > 0 {
		r.fired = hook[0]
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil && ctx.Err() == nil {
			e.t.Errorf("reaper: %v", err)
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); cfg.Conn.Close(); <-done }) }
	e.t.Cleanup(stop)
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		e.t.Fatal("reaper not ready")
	}
	return r, stop
}

// activate writes an Active claim with an idle timeout, as claim-router does.
func (e *env) activate(tenant, workload string, timeoutSeconds int32) time.Time {
	now := time.Now()
	rec := messages.ClaimRecord{TenantID: tenant, Workload: workload, ID: "c-" + tenant + "-" + now.Format("150405.000000"),
		Phase: messages.PhaseActive, InstanceID: "i-" + tenant, ClaimedAt: messages.Timestamp(now),
		IdleTimeoutSeconds: timeoutSeconds, CreatedAt: now.UTC(), UpdatedAt: now.UTC()}
	b, _ := json.Marshal(rec)
	if _, err := e.claims.Put(e.ctx, messages.ClaimKey(tenant, workload), b); err != nil {
		e.t.Fatal(err)
	}
	return now
}

func (e *env) activity(tenant, workload string) time.Time {
	now := time.Now()
	b, _ := json.Marshal(messages.Activity{TenantID: tenant, Workload: workload, At: now.UTC()})
	if err := e.nc.Publish(messages.ActivitySubject(tenant, workload), b); err != nil {
		e.t.Fatal(err)
	}
	return now
}

func (e *env) releasedAt(key string) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	at, ok := e.released[key]
	return at, ok
}

func (e *env) waitReleased(key string, within time.Duration) time.Time {
	e.t.Helper()
	end := time.Now().Add(within)
	for time.Now().Before(end) {
		if at, ok := e.releasedAt(key); ok {
			return at
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("%s not released within %s", key, within)
	return time.Time{}
}

func TestIdleReleaseAfterTimeoutNotBefore(t *testing.T) {
	e := newEnv(t)
	e.reaper(Config{})
	start := e.activate("org.acme", "w", 2)
	key := messages.ClaimKey("org.acme", "w")
	at := e.waitReleased(key, 5*time.Second)
	if d := at.Sub(start); d < 2*time.Second || d > 3*time.Second {
		t.Fatalf("released %s after activation, want 2s..3s", d)
	}
}

func TestActivityKeepsClaimActive(t *testing.T) {
	e := newEnv(t)
	e.reaper(Config{})
	e.activate("alice", "w", 2)
	key := messages.ClaimKey("alice", "w")
	var last time.Time
	for range 5 { // 5 s of use, one activity a second, longer than the timeout
		time.Sleep(time.Second)
		if _, ok := e.releasedAt(key); ok {
			t.Fatal("released while in use")
		}
		last = e.activity("alice", "w")
	}
	at := e.waitReleased(key, 5*time.Second)
	if d := at.Sub(last); d < 2*time.Second || d > 3*time.Second {
		t.Fatalf("released %s after the last activity, want 2s..3s", d)
	}
}

func TestDebounceLimitsWrites(t *testing.T) {
	e := newEnv(t)
	e.reaper(Config{})
	e.activate("bob", "w", 10) // debounce interval 1 s
	key := messages.ClaimKey("bob", "w")
	js, _ := jetstream.New(e.nc)
	idle, _ := js.KeyValue(e.ctx, messages.BucketIdle)
	time.Sleep(300 * time.Millisecond)
	first, err := idle.Get(e.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	// 1000 activity messages in ~1 s.
	for range 100 {
		for range 10 {
			e.activity("bob", "w")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	last, err := idle.Get(e.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(e.ctx, "KV_"+messages.BucketIdle)
	info, _ := st.Info(e.ctx)
	writes := last.Revision() - first.Revision()
	t.Logf("idle key writes for 1000 activities: %d (stream last seq %d)", writes, info.State.LastSeq)
	if writes < 1 || writes > 4 {
		t.Fatalf("%d writes for 1000 activities in 1 s with a 10 s timeout, want 1..4", writes)
	}
	var v messages.IdleValue
	_ = json.Unmarshal(last.Value(), &v)
	if time.Since(v.LastActivity) > 2*time.Second {
		t.Fatalf("last activity %s not recorded", v.LastActivity)
	}
}

func TestRestartWhileDeadlinePending(t *testing.T) {
	e := newEnv(t)
	_, stop := e.reaper(Config{})
	start := e.activate("carol", "w", 2)
	key := messages.ClaimKey("carol", "w")
	time.Sleep(500 * time.Millisecond)
	stop()
	time.Sleep(3 * time.Second) // the deadline passes while no reaper runs
	if _, ok := e.releasedAt(key); ok {
		t.Fatal("released without a reaper")
	}
	e.reaper(Config{})
	at := e.waitReleased(key, 3*time.Second)
	t.Logf("released %s after activation", at.Sub(start))
	time.Sleep(500 * time.Millisecond)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.calls[key] != 1 {
		t.Fatalf("%d release calls, want 1", e.calls[key])
	}
}

func TestRestartBeforeDeadline(t *testing.T) {
	e := newEnv(t)
	_, stop := e.reaper(Config{})
	start := e.activate("dave", "w", 3)
	key := messages.ClaimKey("dave", "w")
	time.Sleep(time.Second)
	stop()
	e.reaper(Config{})
	at := e.waitReleased(key, 5*time.Second)
	if d := at.Sub(start); d < 3*time.Second || d > 4*time.Second {
		t.Fatalf("released %s after activation, want 3s..4s", d)
	}
}

func TestNATSRestartKeepsDeadline(t *testing.T) {
	e := newEnv(t)
	_, stop := e.reaper(Config{})
	start := e.activate("erin", "w", 3)
	key := messages.ClaimKey("erin", "w")
	time.Sleep(500 * time.Millisecond)
	stop()
	natsx.Shutdown(e.srv)
	e.start() // same store dir: buckets and the pending TTL come back
	e.reaper(Config{})
	at := e.waitReleased(key, 5*time.Second)
	if d := at.Sub(start); d < 3*time.Second || d > 4*time.Second {
		t.Fatalf("released %s after activation, want 3s..4s", d)
	}
}

func TestReplicasReleaseOnce(t *testing.T) {
	e := newEnv(t)
	var fired atomic.Int32
	reg := prometheus.NewRegistry()
	for range 3 {
		e.reaper(Config{Metrics: reg}, func(string) { fired.Add(1) })
	}
	const n = 20
	for i := range n {
		e.activate("t"+string(rune('a'+i)), "w", 1)
	}
	time.Sleep(3 * time.Second)
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := range n {
		key := messages.ClaimKey("t"+string(rune('a'+i)), "w")
		if e.calls[key] != 1 || e.wins[key] != 1 {
			t.Errorf("%s: %d release calls, %d transitions, want 1 and 1", key, e.calls[key], e.wins[key])
		}
	}
	if fired.Load() != n {
		t.Errorf("%d fires over 3 replicas, want %d", fired.Load(), n)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var counted float64
	for _, f := range families {
		if f.GetName() == "boilerhouse_idle_releases_total" {
			for _, m := range f.GetMetric() {
				counted += m.GetCounter().GetValue()
			}
		}
	}
	if counted != n {
		t.Errorf("boilerhouse_idle_releases_total = %v over 3 replicas, want %d", counted, n)
	}
}

func TestNoTimeoutNoRelease(t *testing.T) {
	e := newEnv(t)
	e.reaper(Config{})
	e.activate("frank", "w", 0)
	time.Sleep(1500 * time.Millisecond)
	if _, ok := e.releasedAt(messages.ClaimKey("frank", "w")); ok {
		t.Fatal("a claim without idle timeout was released")
	}
}
