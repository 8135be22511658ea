package devstack_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/services/claimrouter"
	"boilerhouse.dev/services/idlereaper"
)

// reaper starts an idle-reaper; the returned function kills it (killable).
func (s *system) reaper() (kill func()) {
	s.t.Helper()
	r, kill := killable(s, func(nc *nats.Conn) (*idlereaper.Reaper, error) {
		return idlereaper.New(idlereaper.Config{Conn: nc, RestConfig: plane.Config, Namespace: ns})
	})
	s.ready("idle-reaper", r.Ready())
	return kill
}

// idleWorkload creates a workload with an idle timeout, overlay dir /data, the given
// idle.watchDirs and a pool.
func (s *system) idleWorkload(name string, timeoutSeconds, pool int32, watchDirs ...string) {
	s.t.Helper()
	w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.WorkloadSpec{Version: "1", Image: v1alpha1.ImageSpec{Ref: "demo:1"},
			Resources:  v1alpha1.ResourcesSpec{VCPUs: 1, MemoryMb: 64},
			Network:    &v1alpha1.NetworkSpec{Expose: []v1alpha1.ExposeSpec{{Guest: 8080}}},
			Filesystem: &v1alpha1.FilesystemSpec{OverlayDirs: []string{"/data"}},
			Idle:       &v1alpha1.IdleSpec{TimeoutSeconds: timeoutSeconds, Action: v1alpha1.IdleActionHibernate, WatchDirs: watchDirs},
			Health: &v1alpha1.HealthSpec{IntervalSeconds: 1, UnhealthyThreshold: 3,
				HTTPGet: &v1alpha1.HTTPGetHealth{Path: "/health", Port: 8080}}}}
	if err := s.client.Create(s.ctx, w); err != nil {
		s.t.Fatal(err)
	}
	p := &v1alpha1.BoilerhousePool{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.PoolSpec{WorkloadRef: name, Size: pool, MaxFillConcurrency: ptr.To[int32](25)}}
	if err := s.client.Create(s.ctx, p); err != nil {
		s.t.Fatal(err)
	}
	s.poolReady(name, pool)
}

func (s *system) record(tenant, workload string) messages.ClaimRecord {
	s.t.Helper()
	e, err := s.kv.Get(s.ctx, messages.ClaimKey(tenant, workload))
	if err != nil {
		s.t.Fatalf("claim %s/%s: %v", tenant, workload, err)
	}
	var rec messages.ClaimRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		s.t.Fatal(err)
	}
	return rec
}

// releaseWatch records when each claim first leaves Active and how often a
// release request with reason idle was sent.
type releaseWatch struct {
	mu        sync.Mutex
	releasing map[string]time.Time
	calls     map[string]int
}

func (s *system) watchReleases() *releaseWatch {
	s.t.Helper()
	rw := &releaseWatch{releasing: map[string]time.Time{}, calls: map[string]int{}}
	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(nc.Close)
	if _, err := nc.Subscribe(messages.SubjectClaimsRelease, func(m *nats.Msg) {
		var req messages.ReleaseRequest
		if json.Unmarshal(m.Data, &req) == nil && req.Reason == messages.ReasonIdle {
			rw.mu.Lock()
			rw.calls[messages.ClaimKey(req.TenantID, req.Workload)]++
			rw.mu.Unlock()
		}
	}); err != nil {
		s.t.Fatal(err)
	}
	w, err := s.kv.WatchAll(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	go func() {
		for e := range w.Updates() {
			if e == nil || e.Operation() != 0 {
				continue
			}
			var rec messages.ClaimRecord
			if json.Unmarshal(e.Value(), &rec) == nil && rec.Phase == messages.PhaseReleasing && rec.ReleaseReason == messages.ReasonIdle {
				rw.mu.Lock()
				if _, ok := rw.releasing[e.Key()]; !ok {
					rw.releasing[e.Key()] = time.Now()
				}
				rw.mu.Unlock()
			}
		}
	}()
	s.t.Cleanup(func() { _ = w.Stop() })
	return rw
}

func (rw *releaseWatch) at(key string) (time.Time, bool) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	t, ok := rw.releasing[key]
	return t, ok
}

// TestIdleReleaseEndToEnd: a claim with a 3 s idle timeout stays Active while it is used
// (claim calls, POST activity, bh.v1.activity publishes, exec through the edge), is released
// with reason idle about 3 s after its last activity, and its next claim gets its data back.
func TestIdleReleaseEndToEnd(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.store(t.TempDir())
	s.reaper()
	rw := s.watchReleases()
	s.idleWorkload("sleepy", 3, 2)

	code, v := s.restClaim("org.acme", "sleepy")
	if code != 201 {
		t.Fatalf("claim %d %+v", code, v)
	}
	putFile(t, endpointURL(v, "/files/data/keep.txt"), []byte("still here"))
	key := messages.ClaimKey("org.acme", "sleepy")
	if rec := s.record("org.acme", "sleepy"); rec.IdleTimeoutSeconds != 3 {
		t.Fatalf("claim record idle timeout %d, want 3", rec.IdleTimeoutSeconds)
	}

	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Ten seconds of use, each second a different activity source: more than three timeouts.
	var last time.Time
	for i := range 10 {
		time.Sleep(time.Second)
		if _, ok := rw.at(key); ok {
			t.Fatalf("released while in use (after %d s)", i)
		}
		switch i % 4 {
		case 0:
			if code, _ := s.restClaim("org.acme", "sleepy"); code != 200 {
				t.Fatalf("existing claim: %d", code)
			}
		case 1:
			var a messages.Activity
			if code := postJSON(t, s.rest+"/api/v1/tenants/org.acme/activity", `{"workload":"sleepy"}`, &a); code != 202 {
				t.Fatalf("POST activity: %d", code)
			}
		case 2:
			b, _ := json.Marshal(messages.Activity{TenantID: "org.acme", Workload: "sleepy", At: time.Now().UTC()})
			if err := nc.Publish(messages.ActivitySubject("org.acme", "sleepy"), b); err != nil {
				t.Fatal(err)
			}
		case 3:
			var out map[string]any
			if code := postJSON(t, s.rest+"/api/v1/instances/"+v.InstanceID+"/exec", `{"command":["true"]}`, &out); code/100 != 2 {
				t.Logf("exec: %d %v (activity is published before the command runs)", code, out)
			}
		}
		last = time.Now()
	}
	// The tenant view shows the last activity and the idle deadline.
	var tv messages.TenantView
	if code := getJSON(t, s.rest+"/api/v1/tenants/org.acme", &tv); code != 200 || len(tv.Claims) != 1 {
		t.Fatalf("tenant view: %d %+v", code, tv)
	}
	c := tv.Claims[0]
	if c.LastActivity == nil || c.IdleDeadline == nil {
		t.Fatalf("tenant view has no lastActivity/idleDeadline: %+v", c)
	}
	if d := c.IdleDeadline.Sub(*c.LastActivity); d != 3*time.Second {
		t.Errorf("idleDeadline - lastActivity = %s, want 3s", d)
	}
	if c.LastActivity.Before(last.Add(-1500 * time.Millisecond)) {
		t.Errorf("lastActivity %s, want about %s", c.LastActivity, last)
	}

	var at time.Time
	eventually(t, "idle release", 10*time.Second, func() bool {
		var ok bool
		at, ok = rw.at(key)
		return ok
	})
	if d := at.Sub(last); d < 2500*time.Millisecond || d > 4500*time.Millisecond {
		t.Errorf("released %s after the last activity, want about 3s", d)
	}
	eventually(t, "claim Released", 30*time.Second, func() bool {
		return s.record("org.acme", "sleepy").Phase == messages.PhaseReleased
	})
	rec := s.record("org.acme", "sleepy")
	if rec.ReleaseReason != messages.ReasonIdle || !strings.Contains(rec.Detail, "idle") || !strings.Contains(rec.Detail, "hibernated") {
		t.Errorf("released record: reason %q detail %q, want idle and hibernated", rec.ReleaseReason, rec.Detail)
	}
	rw.mu.Lock()
	calls := rw.calls[key]
	rw.mu.Unlock()
	if calls != 1 {
		t.Errorf("%d idle release requests, want 1", calls)
	}

	code, again := s.restClaim("org.acme", "sleepy")
	if code != 201 || (again.Source != messages.SourcePoolData && again.Source != messages.SourceColdData) {
		t.Fatalf("claim after idle release: %d %+v, want pool+data or cold+data", code, again)
	}
	if status, body := getFile(t, endpointURL(again, "/files/data/keep.txt")); status != 200 || string(body) != "still here" {
		t.Fatalf("read back %d %q", status, body)
	}
}

// TestIdleReapersRestartAndReplicas: two reaper replicas, one of them killed and started
// again while deadlines are pending; every claim is released once, by idle.
func TestIdleReapersRestartAndReplicas(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.store(t.TempDir())
	killA := s.reaper()
	s.reaper()
	rw := s.watchReleases()
	s.idleWorkload("nap", 3, 4)

	tenants := []string{"r-1", "r-2", "r-3", "r.4"}
	for _, tenant := range tenants {
		if code, v := s.restClaim(tenant, "nap"); code != 201 {
			t.Fatalf("%s: %d %+v", tenant, code, v)
		}
	}
	time.Sleep(time.Second)
	killA()
	s.reaper() // back while the deadlines are pending
	for _, tenant := range tenants {
		eventually(t, tenant+" Released", 30*time.Second, func() bool {
			return s.record(tenant, "nap").Phase == messages.PhaseReleased
		})
	}
	time.Sleep(time.Second)
	rw.mu.Lock()
	defer rw.mu.Unlock()
	for _, tenant := range tenants {
		key := messages.ClaimKey(tenant, "nap")
		if rw.calls[key] != 1 {
			t.Errorf("%s: %d idle release requests, want 1", tenant, rw.calls[key])
		}
		if _, ok := rw.releasing[key]; !ok {
			t.Errorf("%s: never Releasing with reason idle", tenant)
		}
	}
}

// TestIdleWatchDirsKeepClaimActive: a claim with a 3 s idle timeout and idle.watchDirs
// ["/data"] stays Active while a file under /data is rewritten every second for 6 s (through
// the instance's own endpoint, so no other activity is reported), and is released with
// reason idle a few seconds after the writes stop.
func TestIdleWatchDirsKeepClaimActive(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.store(t.TempDir())
	s.reaper()
	rw := s.watchReleases()
	s.idleWorkload("watched", 3, 1, "/data")

	code, v := s.restClaim("org.acme", "watched")
	if code != 201 {
		t.Fatalf("claim %d %+v", code, v)
	}
	key := messages.ClaimKey("org.acme", "watched")
	if rec := s.record("org.acme", "watched"); rec.IdleTimeoutSeconds != 3 || len(rec.WatchDirs) != 1 || rec.WatchDirs[0] != "/data" {
		t.Fatalf("claim record idle timeout %d watchDirs %q, want 3 and [/data]", rec.IdleTimeoutSeconds, rec.WatchDirs)
	}
	start := time.Now()
	var last time.Time
	for i := range 6 {
		putFile(t, endpointURL(v, "/files/data/pulse.txt"), []byte(fmt.Sprintf("write %d", i)))
		last = time.Now()
		time.Sleep(time.Second)
		if at, ok := rw.at(key); ok {
			t.Fatalf("released %s after the claim while files under /data were being written (write %d)", at.Sub(start), i)
		}
		if p := s.record("org.acme", "watched").Phase; p != messages.PhaseActive {
			t.Fatalf("claim %s while files under /data were being written (write %d)", p, i)
		}
	}

	var at time.Time
	eventually(t, "idle release after the writes stop", 10*time.Second, func() bool {
		var ok bool
		at, ok = rw.at(key)
		return ok
	})
	// The last write is seen by a probe at most timeout/4 later; the deadline is
	// 3 s after that probe.
	if d := at.Sub(last); d < 2500*time.Millisecond || d > 5500*time.Millisecond {
		t.Errorf("released %s after the last write, want about 3-4s", d)
	}
	eventually(t, "claim Released", 30*time.Second, func() bool {
		return s.record("org.acme", "watched").Phase == messages.PhaseReleased
	})
	if rec := s.record("org.acme", "watched"); rec.ReleaseReason != messages.ReasonIdle {
		t.Errorf("release reason %q, want idle", rec.ReleaseReason)
	}
}

// TestIdleDestroy: an idle release of a destroy workload deletes the instance and the stored
// overlay, so the next claim starts without data.
func TestIdleDestroy(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.store(t.TempDir())
	s.reaper()
	s.idleWorkload("burner", 2, 2)
	var w v1alpha1.BoilerhouseWorkload
	if err := s.client.Get(s.ctx, client.ObjectKey{Namespace: ns, Name: "burner"}, &w); err != nil {
		t.Fatal(err)
	}
	w.Spec.Idle.Action = v1alpha1.IdleActionDestroy
	if err := s.client.Update(s.ctx, &w); err != nil {
		t.Fatal(err)
	}
	s.poolReady("burner", 2)

	code, v := s.restClaim("zed", "burner")
	if code != 201 {
		t.Fatalf("claim %d %+v", code, v)
	}
	putFile(t, endpointURL(v, "/files/data/tmp.txt"), []byte("scratch"))
	eventually(t, "idle destroy release", 20*time.Second, func() bool {
		rec := s.record("zed", "burner")
		return rec.Phase == messages.PhaseReleased
	})
	rec := s.record("zed", "burner")
	if rec.ReleaseReason != messages.ReasonIdle || !strings.Contains(rec.Detail, "destroy") {
		t.Fatalf("released %q with detail %q, want idle and destroy", rec.ReleaseReason, rec.Detail)
	}
	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	list := bus.Client[messages.OverlayListRequest, messages.SnapshotList](nc, messages.SubjectOverlaysList, 5*time.Second)
	if l, err := list(s.ctx, messages.OverlayListRequest{TenantID: "zed", Workload: "burner"}); err != nil || len(l.Snapshots) != 0 {
		t.Fatalf("destroy left snapshots: %+v %v", l, err)
	}
	code, next := s.restClaim("zed", "burner")
	if code != 201 || next.Source != messages.SourcePool {
		t.Fatalf("claim after idle destroy: %d %+v, want pool", code, next)
	}
	if status, _ := getFile(t, endpointURL(next, "/files/data/tmp.txt")); status != 404 {
		t.Fatalf("data survived an idle destroy: %d", status)
	}
}
