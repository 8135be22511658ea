package claimrouter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
)

// These tests cover claims with data (pool+data, cold+data, restore
// failures) and the release lifecycle (hibernate, destroy, retries,
// ReleaseFailed, retry, force, conflicts, takeover mid-release) against the
// stand-in pool-manager and overlay-store on the real bus.

// fastBackoff is the extract retry schedule of these tests.
var fastBackoff = []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond}

func noResume() *bool { b := false; return &b }

// readRecord reads a record without failing the test (for hooks running on
// the stand-ins' goroutines).
func (e *testEnv) readRecord(tenant, workload string) *messages.ClaimRecord {
	got, err := NewStore(e.kv, nil).Get(context.Background(), messages.ClaimKey(tenant, workload))
	if err != nil || got == nil {
		return nil
	}
	return &got.Record
}

func mustPhase(t testing.TB, what string, v messages.ClaimView, err error, phase messages.ClaimPhase) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if v.Phase != phase {
		t.Fatalf("%s = %+v, want %s", what, v, phase)
	}
}

func TestClaimPoolWithData(t *testing.T) {
	env := newEnv(t, map[string]int{"notes": 3})
	env.pool.setOverlays("notes", "")
	env.startRouter(Config{ExtractBackoff: fastBackoff})
	if g := env.ov.seed("alice", "notes", "alice v1"); g != 1 {
		t.Fatalf("seeded generation %d", g)
	}
	// The restore runs while the claim is still Pending.
	var phaseAtRestore sync.Map
	env.ov.set(func(o *testOverlays) {
		o.onRestore = func(req messages.RestoreRequest) error {
			if r := env.readRecord(req.TenantID, req.Workload); r != nil {
				phaseAtRestore.Store(req.TenantID, r.Phase)
			}
			return nil
		}
	})

	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePoolData)
	rec := env.record("alice", "notes").Record
	if rec.RestoredGeneration != 1 || !rec.Overlays || rec.ReleaseAction != "" || !rec.Resume {
		t.Fatalf("record %+v; want restored generation 1, overlays", rec)
	}
	if got := env.ov.read(v.InstanceID); got != "alice v1" {
		t.Fatalf("instance holds %q, want alice's data", got)
	}
	if p, _ := phaseAtRestore.Load("alice"); p != messages.PhasePending {
		t.Fatalf("restored while the claim was %v, want Pending (before Active)", p)
	}
	if rs := env.ov.restoreRequests(); len(rs) != 1 || rs[0] != (messages.RestoreRequest{TenantID: "alice", Workload: "notes", InstanceID: v.InstanceID}) {
		t.Fatalf("restore requests %+v", rs)
	}

	// Nothing stored: a plain pool claim (the restore said so).
	v2, err := env.claim(messages.ClaimRequest{TenantID: "bob", Workload: "notes"})
	mustActive(t, v2, err, messages.SourcePool)
	if rec := env.record("bob", "notes").Record; rec.RestoredGeneration != 0 || !rec.Overlays {
		t.Fatalf("bob's record %+v", rec)
	}

	// resume: false starts clean, no restore; its release stores a new
	// generation with force and keeps the old one.
	env.ov.seed("carol", "notes", "carol v1")
	v3, err := env.claim(messages.ClaimRequest{TenantID: "carol", Workload: "notes", Resume: noResume()})
	mustActive(t, v3, err, messages.SourcePool)
	for _, r := range env.ov.restoreRequests() {
		if r.TenantID == "carol" {
			t.Fatalf("resume false restored: %+v", r)
		}
	}
	if rec := env.record("carol", "notes").Record; rec.Resume || rec.RestoredGeneration != 0 {
		t.Fatalf("carol's record %+v", rec)
	}
	env.ov.write(v3.InstanceID, "carol fresh")
	rel, err := env.release(messages.ReleaseRequest{TenantID: "carol", Workload: "notes"})
	mustPhase(t, "release carol", rel, err, messages.PhaseReleased)
	if rel.Detail != "released (api): hibernated (generation 2)" {
		t.Fatalf("release detail %q", rel.Detail)
	}
	ex := env.ov.extractRequests()
	if len(ex) != 1 || ex[0] != (messages.ExtractRequest{TenantID: "carol", Workload: "notes", InstanceID: v3.InstanceID, RestoredGeneration: 0, Force: true}) {
		t.Fatalf("extract requests %+v; want one forced from generation 0", ex)
	}
	if vs := env.ov.versions("carol", "notes"); len(vs) != 2 || vs[0].data != "carol v1" || vs[1].data != "carol fresh" {
		t.Fatalf("carol's versions %+v; want the old one kept", vs)
	}
}

func TestClaimColdWithData(t *testing.T) {
	env := newEnv(t, map[string]int{"notes": 0})
	env.pool.setOverlays("notes", "hibernate")
	for _, d := range []string{"v1", "v2", "v3"} {
		env.ov.seed("alice", "notes", d)
	}
	var mu sync.Mutex
	var pendingAtBoot []messages.ClaimRecord
	env.pool.setBoot(func(_ context.Context, req messages.BootRequest) error {
		if r := env.readRecord(req.TenantID, req.Workload); r != nil {
			mu.Lock()
			pendingAtBoot = append(pendingAtBoot, *r)
			mu.Unlock()
		}
		return nil
	})
	env.startRouter(Config{ExtractBackoff: fastBackoff})

	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, v, err, messages.SourceColdData)
	rec := env.record("alice", "notes").Record
	if rec.RestoredGeneration != 3 || !rec.Overlays || rec.ReleaseAction != "hibernate" {
		t.Fatalf("record %+v; want restored generation 3", rec)
	}
	if got := env.ov.read(v.InstanceID); got != "v3" {
		t.Fatalf("instance holds %q, want the newest generation", got)
	}
	boots := env.pool.bootRequests()
	if len(boots) != 2 || boots[0].RestoreGeneration != 3 || boots[0] != boots[1] {
		t.Fatalf("boots %+v; want two identical boots with restore generation 3", boots)
	}
	mu.Lock()
	first := pendingAtBoot[0]
	mu.Unlock()
	if first.Phase != messages.PhasePending || first.Source != messages.SourceCold || first.RestoredGeneration != 3 {
		t.Fatalf("record at the first boot %+v; want Pending, cold, restore generation 3 recorded", first)
	}
	if rs := env.ov.restoreRequests(); len(rs) != 1 || rs[0].Generation != 3 || rs[0].InstanceID != v.InstanceID {
		t.Fatalf("restore requests %+v", rs)
	}
	if ls := env.ov.listRequests(); len(ls) != 1 || ls[0] != (messages.OverlayListRequest{TenantID: "alice", Workload: "notes"}) {
		t.Fatalf("list requests %+v", ls)
	}
	ops := env.pool.ops.list("boot-awaiting:", "restore:")
	if !slices.Equal(ops, []string{"boot-awaiting:" + v.InstanceID, "restore:" + v.InstanceID}) {
		t.Fatalf("ops %v", ops)
	}

	// Nothing stored: cold, one boot without a restore generation, no
	// restore call.
	v2, err := env.claim(messages.ClaimRequest{TenantID: "bob", Workload: "notes"})
	mustActive(t, v2, err, messages.SourceCold)
	if boots := env.pool.bootRequests(); len(boots) != 3 || boots[2].TenantID != "bob" || boots[2].RestoreGeneration != 0 {
		t.Fatalf("boots %+v", boots)
	}
	if n := env.ov.restoreCalls.Load(); n != 1 {
		t.Fatalf("restore calls %d, want 1 (bob has nothing stored)", n)
	}
	// resume: false: no list, no restore.
	env.ov.seed("carol", "notes", "carol v1")
	v3, err := env.claim(messages.ClaimRequest{TenantID: "carol", Workload: "notes", Resume: noResume()})
	mustActive(t, v3, err, messages.SourceCold)
	if ls := env.ov.listRequests(); len(ls) != 2 {
		t.Fatalf("list requests %+v; resume false must not list", ls)
	}
	if n := env.ov.restoreCalls.Load(); n != 1 {
		t.Fatalf("restore calls %d; resume false must not restore", n)
	}

	// Hibernate and resume: the next claim gets the saved state.
	env.ov.write(v.InstanceID, "v4 edited")
	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes", Reason: messages.ReasonIdle})
	mustPhase(t, "release", rel, err, messages.PhaseReleased)
	if rel.Detail != "released (idle): hibernated (generation 4)" {
		t.Fatalf("release detail %q", rel.Detail)
	}
	if ex := env.ov.extractRequests(); len(ex) != 1 || ex[0].RestoredGeneration != 3 || ex[0].Force {
		t.Fatalf("extract requests %+v; want one from generation 3", ex)
	}
	// pool-manager's Ready answer omits the overlays this time: the record
	// still has them (from the awaiting-restore answer), so the release
	// still saves.
	env.pool.mu.Lock()
	env.pool.terseReady = true
	env.pool.mu.Unlock()
	again, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, again, err, messages.SourceColdData)
	if got := env.ov.read(again.InstanceID); got != "v4 edited" {
		t.Fatalf("resumed instance holds %q", got)
	}
	if rec := env.record("alice", "notes").Record; rec.RestoredGeneration != 4 || !rec.Overlays || rec.ReleaseAction != "hibernate" {
		t.Fatalf("record %+v; want generation 4 with overlays", rec)
	}
	env.ov.write(again.InstanceID, "v5")
	rel, err = env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes"})
	mustPhase(t, "release", rel, err, messages.PhaseReleased)
	if g, data := env.ov.newestData("alice", "notes"); g != 5 || data != "v5" {
		t.Fatalf("newest stored %d %q", g, data)
	}
}

func TestRestoreFailure(t *testing.T) {
	t.Run("pool, checksum mismatch", func(t *testing.T) {
		env := newEnv(t, map[string]int{"notes": 1})
		env.pool.setOverlays("notes", "")
		env.ov.seed("alice", "notes", "alice v1")
		env.ov.set(func(o *testOverlays) {
			o.restoreErr = messages.Errorf(messages.CodeInternal, "stored overlay generation 1 refused, nothing restored: sha256 mismatch")
		})
		env.startRouter(Config{})
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
		mustPhase(t, "claim", v, err, messages.PhaseError)
		if !strings.HasPrefix(v.Detail, "restore failed: ") || !strings.Contains(v.Detail, "sha256 mismatch") || v.Endpoint != nil {
			t.Fatalf("claim = %+v; want Error restore failed", v)
		}
		rs := env.ov.restoreRequests()
		if len(rs) != 1 {
			t.Fatalf("restore requests %+v; a checksum error is not retried", rs)
		}
		if n := env.pool.retiredCount(rs[0].InstanceID); n != 1 {
			t.Fatalf("instance retired %d times, want 1", n)
		}
		// The next claim starts a new life; the restore works again.
		env.ov.set(func(o *testOverlays) { o.restoreErr = nil })
		v, err = env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
		mustActive(t, v, err, messages.SourceColdData)
		if got := env.ov.read(v.InstanceID); got != "alice v1" {
			t.Fatalf("instance holds %q", got)
		}
	})
	t.Run("cold, hostile archive", func(t *testing.T) {
		env := newEnv(t, map[string]int{"notes": 0})
		env.pool.setOverlays("notes", "")
		env.ov.seed("alice", "notes", "alice v1")
		env.ov.set(func(o *testOverlays) {
			o.restoreErr = messages.Errorf(messages.CodeInternal, "stored overlay generation 1 refused, nothing restored: entry ../../etc/passwd leaves its overlay dir")
		})
		env.startRouter(Config{})
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
		mustPhase(t, "claim", v, err, messages.PhaseError)
		if !strings.HasPrefix(v.Detail, "restore failed: ") || !strings.Contains(v.Detail, "leaves its overlay dir") {
			t.Fatalf("claim = %+v", v)
		}
		rs := env.ov.restoreRequests()
		if len(rs) != 1 || rs[0].Generation != 1 {
			t.Fatalf("restore requests %+v", rs)
		}
		if n := env.pool.retiredCount(rs[0].InstanceID); n != 1 {
			t.Fatalf("instance retired %d times, want 1", n)
		}
	})
	t.Run("transient errors are retried", func(t *testing.T) {
		env := newEnv(t, map[string]int{"notes": 1})
		env.pool.setOverlays("notes", "")
		env.ov.seed("alice", "notes", "alice v1")
		env.ov.set(func(o *testOverlays) { o.failRestore = 2 })
		env.startRouter(Config{})
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
		mustActive(t, v, err, messages.SourcePoolData)
		if n := env.ov.restoreCalls.Load(); n != 3 {
			t.Fatalf("restore calls %d, want 3", n)
		}
	})
	t.Run("restore never possible before the deadline", func(t *testing.T) {
		env := newEnv(t, map[string]int{"notes": 1})
		env.pool.setOverlays("notes", "")
		env.ov.seed("alice", "notes", "alice v1")
		env.ov.set(func(o *testOverlays) {
			o.restoreErr = messages.Errorf(messages.CodeUnavailable, "no service answers bh.v1.overlays.restore")
		})
		env.startRouter(Config{ClaimTimeout: time.Second})
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes", WaitMillis: 10000})
		mustPhase(t, "claim", v, err, messages.PhaseError)
		if !strings.HasPrefix(v.Detail, "restore failed: timeout") || !strings.Contains(v.Detail, "no service answers") {
			t.Fatalf("claim = %+v", v)
		}
		rs := env.ov.restoreRequests()
		if len(rs) < 2 || env.pool.retiredCount(rs[0].InstanceID) != 1 {
			t.Fatalf("%d restore calls, instance retired %d times; want retries, then retired", len(rs), env.pool.retiredCount(rs[0].InstanceID))
		}
	})
	t.Run("list fails: restore into the running instance", func(t *testing.T) {
		env := newEnv(t, map[string]int{"notes": 0})
		env.pool.setOverlays("notes", "")
		env.ov.seed("alice", "notes", "alice v1")
		env.ov.set(func(o *testOverlays) {
			o.listErr = messages.Errorf(messages.CodeUnavailable, "overlay-store restarting")
		})
		env.startRouter(Config{})
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
		mustActive(t, v, err, messages.SourceColdData)
		if boots := env.pool.bootRequests(); len(boots) != 1 || boots[0].RestoreGeneration != 0 {
			t.Fatalf("boots %+v", boots)
		}
		if rs := env.ov.restoreRequests(); len(rs) != 1 || rs[0].Generation != 0 {
			t.Fatalf("restores %+v; want the newest restored into the running instance", rs)
		}
		if got := env.ov.read(v.InstanceID); got != "alice v1" || env.record("alice", "notes").Record.RestoredGeneration != 1 {
			t.Fatalf("instance holds %q", got)
		}
	})
}

func TestReleaseHibernate(t *testing.T) {
	env := newEnv(t, map[string]int{"notes": 2, "plain": 1})
	env.pool.setOverlays("notes", "hibernate")
	env.ov.seed("alice", "notes", "alice v1")
	env.startRouter(Config{ExtractBackoff: fastBackoff})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePoolData)
	env.ov.write(v.InstanceID, "alice v2")

	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes", Reason: messages.ReasonIdle})
	mustPhase(t, "release", rel, err, messages.PhaseReleased)
	if rel.Detail != "released (idle): hibernated (generation 2)" || rel.Endpoint != nil {
		t.Fatalf("release = %+v", rel)
	}
	ops := env.pool.ops.list("extract:", "commit:", "retire:")
	want := []string{"extract:" + v.InstanceID, "commit:" + v.InstanceID + ":2", "retire:" + v.InstanceID}
	if !slices.Equal(ops, want) {
		t.Fatalf("ops %v, want %v (extract, then retire)", ops, want)
	}
	if ex := env.ov.extractRequests(); len(ex) != 1 || ex[0] != (messages.ExtractRequest{TenantID: "alice", Workload: "notes", InstanceID: v.InstanceID, RestoredGeneration: 1}) {
		t.Fatalf("extract requests %+v", ex)
	}
	if rec := env.record("alice", "notes").Record; rec.RestoredGeneration != 2 || rec.ReleaseReason != messages.ReasonIdle {
		t.Fatalf("record %+v; want the saved generation recorded", rec)
	}
	if vs := env.ov.versions("alice", "notes"); len(vs) != 2 || vs[0].data != "alice v1" || vs[1].data != "alice v2" || vs[1].restoredFrom != 1 {
		t.Fatalf("versions %+v", vs)
	}
	// Resume: the next pool instance gets generation 2.
	next, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, next, err, messages.SourcePoolData)
	if got := env.ov.read(next.InstanceID); got != "alice v2" || next.InstanceID == v.InstanceID {
		t.Fatalf("resumed on %s holding %q", next.InstanceID, got)
	}
	// The claim events show the saved overlay on the Releasing record.
	eventually(t, 5*time.Second, "claim events", func() (bool, string) {
		phases := strings.Join(claimEventPhases(t, env, "alice", "notes"), ",")
		return phases == "Pending,Active,Releasing,Releasing,Released,Pending,Active", phases
	})

	// A workload without overlays extracts nothing.
	p, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "plain"})
	mustActive(t, p, err, messages.SourcePool)
	rel, err = env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "plain"})
	mustPhase(t, "release plain", rel, err, messages.PhaseReleased)
	if rel.Detail != "released (api)" || env.ov.extractCalls.Load() != 1 {
		t.Fatalf("release plain = %+v, %d extracts", rel, env.ov.extractCalls.Load())
	}
}

func TestReleaseDestroy(t *testing.T) {
	env := newEnv(t, map[string]int{"scratch": 1})
	env.pool.setOverlays("scratch", "destroy")
	env.ov.seed("alice", "scratch", "old scratch")
	env.startRouter(Config{ExtractBackoff: fastBackoff})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "scratch"})
	mustActive(t, v, err, messages.SourcePoolData)
	if rec := env.record("alice", "scratch").Record; rec.ReleaseAction != "destroy" {
		t.Fatalf("record %+v", rec)
	}
	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "scratch"})
	mustPhase(t, "release", rel, err, messages.PhaseReleased)
	if rel.Detail != "released (api): destroyed" {
		t.Fatalf("release detail %q", rel.Detail)
	}
	ops := env.pool.ops.list("extract:", "retire:", "delete:")
	if want := []string{"retire:" + v.InstanceID, "delete:alice/scratch"}; !slices.Equal(ops, want) {
		t.Fatalf("ops %v, want %v (retire, then delete; no extract)", ops, want)
	}
	if vs := env.ov.versions("alice", "scratch"); len(vs) != 0 {
		t.Fatalf("stored versions left: %+v", vs)
	}
	// The next claim starts empty.
	next, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "scratch"})
	mustActive(t, next, err, messages.SourceCold)
}

func TestExtractRetries(t *testing.T) {
	env := newEnv(t, map[string]int{"notes": 3})
	env.pool.setOverlays("notes", "")
	backoff := []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond}
	env.startRouter(Config{ExtractBackoff: backoff})

	// Failing twice, then succeeding: Released.
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePool)
	env.ov.write(v.InstanceID, "alice data")
	env.ov.set(func(o *testOverlays) { o.failExtract = 2 })
	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes"})
	mustPhase(t, "release", rel, err, messages.PhaseReleased)
	if n := env.ov.extractCalls.Load(); n != 3 || rel.Detail != "released (api): hibernated (generation 1)" {
		t.Fatalf("release = %+v after %d extracts; want Released after 3", rel, n)
	}
	if _, data := env.ov.newestData("alice", "notes"); data != "alice data" {
		t.Fatalf("stored %q", data)
	}

	// Failing always: ReleaseFailed after 4 attempts on the schedule, the
	// instance kept.
	v, err = env.claim(messages.ClaimRequest{TenantID: "bob", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePool)
	env.ov.write(v.InstanceID, "bob data")
	env.ov.set(func(o *testOverlays) {
		o.extractErr = messages.Errorf(messages.CodeInternal, "instance %s: tar: short read", v.InstanceID)
	})
	before := env.ov.extractCalls.Load()
	start := time.Now()
	rel, err = env.release(messages.ReleaseRequest{TenantID: "bob", Workload: "notes"})
	mustPhase(t, "release", rel, err, messages.PhaseReleaseFailed)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("gave up after %s; the schedule sums to 300ms", d)
	}
	if n := env.ov.extractCalls.Load() - before; n != 4 {
		t.Fatalf("%d extract attempts, want 4", n)
	}
	if !strings.HasPrefix(rel.Detail, "overlay extract failed: ") || !strings.Contains(rel.Detail, "short read") || !strings.Contains(rel.Detail, "4 attempts") || rel.Endpoint == nil || rel.InstanceID != v.InstanceID {
		t.Fatalf("release = %+v; want ReleaseFailed keeping the instance", rel)
	}
	if n := env.pool.retiredCount(v.InstanceID); n != 0 {
		t.Fatalf("instance retired %d times; it must be kept", n)
	}
	if _, err := env.claim(messages.ClaimRequest{TenantID: "bob", Workload: "notes"}); messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("claim of a ReleaseFailed pair: %v, want conflict", err)
	}
	// A plain release answers it as it is (no new attempt).
	again, err := env.release(messages.ReleaseRequest{TenantID: "bob", Workload: "notes", Reason: messages.ReasonIdle})
	mustPhase(t, "plain release of ReleaseFailed", again, err, messages.PhaseReleaseFailed)
	if n := env.ov.extractCalls.Load() - before; n != 4 {
		t.Fatalf("a plain release retried the extract (%d attempts)", n)
	}

	// Retry once the overlay-store works: Released.
	env.ov.set(func(o *testOverlays) { o.extractErr = nil })
	rel, err = env.release(messages.ReleaseRequest{TenantID: "bob", Workload: "notes", Reason: messages.ReasonRetry})
	mustPhase(t, "retry", rel, err, messages.PhaseReleased)
	if rel.Detail != "released (retry): hibernated (generation 1)" || env.pool.retiredCount(v.InstanceID) != 1 {
		t.Fatalf("retry = %+v", rel)
	}
	if _, data := env.ov.newestData("bob", "notes"); data != "bob data" {
		t.Fatalf("stored %q", data)
	}
	// Retry of a Released claim answers it; of an Active one is a conflict.
	again, err = env.release(messages.ReleaseRequest{TenantID: "bob", Workload: "notes", Reason: messages.ReasonRetry})
	mustPhase(t, "retry of a released claim", again, err, messages.PhaseReleased)
	c, err := env.claim(messages.ClaimRequest{TenantID: "carol", Workload: "notes"})
	mustActive(t, c, err, messages.SourcePool)
	if _, err := env.release(messages.ReleaseRequest{TenantID: "carol", Workload: "notes", Reason: messages.ReasonRetry}); messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("retry of an Active claim: %v, want conflict", err)
	}
	if _, err := env.release(messages.ReleaseRequest{TenantID: "nobody", Workload: "notes", Reason: messages.ReasonRetry}); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("retry of no claim: %v, want not_found", err)
	}
}

// TestReleaseWait: a release answers Releasing when its WaitMillis ends first, and goes on
// to Released.
func TestReleaseWait(t *testing.T) {
	env := newEnv(t, map[string]int{"notes": 2})
	env.pool.setOverlays("notes", "")
	env.startRouter(Config{ExtractBackoff: []time.Duration{time.Second}})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePool)
	env.ov.set(func(o *testOverlays) { o.failExtract = 1 })
	start := time.Now()
	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes", WaitMillis: 100})
	mustPhase(t, "release", rel, err, messages.PhaseReleasing)
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Fatalf("answered after %s; the wait was 100ms and the retry 1s away", d)
	}
	eventually(t, 10*time.Second, "released", func() (bool, string) {
		rec := env.record("alice", "notes").Record
		return rec.Phase == messages.PhaseReleased, string(rec.Phase)
	})
}

func TestForceRelease(t *testing.T) {
	env := newEnv(t, map[string]int{"notes": 2})
	env.pool.setOverlays("notes", "")
	env.ov.seed("alice", "notes", "alice v1")
	env.startRouter(Config{ExtractBackoff: fastBackoff})

	// ReleaseFailed, then force: Released without a new extract.
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePoolData)
	env.ov.set(func(o *testOverlays) {
		o.extractErr = messages.Errorf(messages.CodeInternal, "exec: container overlay not found")
	})
	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes"})
	mustPhase(t, "release", rel, err, messages.PhaseReleaseFailed)
	extracts := env.ov.extractCalls.Load()
	rel, err = env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes", Reason: messages.ReasonForce})
	mustPhase(t, "force", rel, err, messages.PhaseReleased)
	if rel.Detail != DetailForced || env.ov.extractCalls.Load() != extracts || env.pool.retiredCount(v.InstanceID) != 1 {
		t.Fatalf("force = %+v, extracts %d -> %d", rel, extracts, env.ov.extractCalls.Load())
	}
	if vs := env.ov.versions("alice", "notes"); len(vs) != 1 || vs[0].data != "alice v1" {
		t.Fatalf("stored versions %+v; force keeps them", vs)
	}

	// Force of an Active claim (the Force flag): no extract at all.
	env.ov.set(func(o *testOverlays) { o.extractErr = nil })
	v, err = env.claim(messages.ClaimRequest{TenantID: "bob", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePool)
	rel, err = env.release(messages.ReleaseRequest{TenantID: "bob", Workload: "notes", Force: true})
	mustPhase(t, "force active", rel, err, messages.PhaseReleased)
	if rel.Detail != DetailForced || env.ov.extractCalls.Load() != extracts || env.pool.retiredCount(v.InstanceID) != 1 {
		t.Fatalf("force = %+v", rel)
	}
	if rec := env.record("bob", "notes").Record; rec.ReleaseReason != messages.ReasonForce {
		t.Fatalf("record %+v", rec)
	}
}

func TestExtractConflict(t *testing.T) {
	env := newEnv(t, map[string]int{"notes": 1})
	env.pool.setOverlays("notes", "")
	env.ov.seed("alice", "notes", "alice v1")
	env.startRouter(Config{ExtractBackoff: fastBackoff})
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
	mustActive(t, v, err, messages.SourcePoolData)
	env.ov.write(v.InstanceID, "alice stale")
	// Something newer is stored meanwhile than what this claim restored.
	env.ov.seed("alice", "notes", "alice v2 from elsewhere")

	rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes"})
	mustPhase(t, "release", rel, err, messages.PhaseReleaseFailed)
	if !strings.HasPrefix(rel.Detail, "overlay extract refused") || !strings.Contains(rel.Detail, "generation 1") || !strings.Contains(rel.Detail, "force") || rel.Endpoint == nil {
		t.Fatalf("release = %+v", rel)
	}
	if n := env.ov.extractCalls.Load(); n != 1 {
		t.Fatalf("%d extracts; a conflict is not retried", n)
	}
	if n := env.pool.retiredCount(v.InstanceID); n != 0 {
		t.Fatalf("instance retired %d times; it must be kept", n)
	}
	if g, data := env.ov.newestData("alice", "notes"); g != 2 || data != "alice v2 from elsewhere" {
		t.Fatalf("newest stored %d %q; it must not be overwritten", g, data)
	}
	// Retry conflicts again; force releases without saving.
	rel, err = env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes", Reason: messages.ReasonRetry})
	mustPhase(t, "retry", rel, err, messages.PhaseReleaseFailed)
	rel, err = env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes", Reason: messages.ReasonForce})
	mustPhase(t, "force", rel, err, messages.PhaseReleased)
	if g, data := env.ov.newestData("alice", "notes"); g != 2 || data != "alice v2 from elsewhere" || env.ov.committed() != 0 {
		t.Fatalf("newest stored %d %q after force", g, data)
	}
}

// releaseAsync sends a release without waiting for its answer (the router
// handling it may be killed).
func (e *testEnv) releaseAsync(req messages.ReleaseRequest) {
	go func() {
		_, _ = bus.Client[messages.ReleaseRequest, messages.ClaimView](e.client, messages.SubjectClaimsRelease, 2*time.Second)(context.Background(), req)
	}()
}

func TestKillDuringRelease(t *testing.T) {
	cfg := Config{StaleAfter: 600 * time.Millisecond, SweepInterval: 100 * time.Millisecond, ExtractBackoff: fastBackoff}
	// setup claims alice's instance on router A, writes her data and starts
	// a release whose step hook blocks until A is killed.
	setup := func(t *testing.T) (*testEnv, *runningRouter, messages.ClaimView) {
		env := newEnv(t, map[string]int{"notes": 1})
		env.pool.setOverlays("notes", "")
		a := env.startRouter(cfg)
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
		mustActive(t, v, err, messages.SourcePool)
		env.ov.write(v.InstanceID, "alice work")
		return env, a, v
	}
	kill := func(t *testing.T, env *testEnv, a *runningRouter, started, killed chan struct{}) *runningRouter {
		env.releaseAsync(messages.ReleaseRequest{TenantID: "alice", Workload: "notes"})
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("release step never called")
		}
		a.stop(t)
		if rec := env.record("alice", "notes").Record; rec.Phase != messages.PhaseReleasing || rec.Owner != a.ReplicaID() {
			t.Fatalf("after the kill: %+v", rec)
		}
		close(killed)
		b := env.startRouter(cfg)
		eventually(t, 15*time.Second, "router B ends the release", func() (bool, string) {
			rec := env.record("alice", "notes").Record
			return rec.Phase != messages.PhaseReleasing, fmt.Sprintf("%s owner %s %q", rec.Phase, rec.Owner, rec.Detail)
		})
		return b
	}
	// blockFirstExtract makes the first extract wait until A is killed,
	// then fail (the caller went away) or commit anyway.
	blockFirstExtract := func(env *testEnv, commit bool) (started, killed chan struct{}) {
		started, killed = make(chan struct{}), make(chan struct{})
		var first atomic.Bool
		env.ov.set(func(o *testOverlays) {
			o.onExtract = func(_ context.Context, req messages.ExtractRequest) error {
				if first.CompareAndSwap(false, true) {
					close(started)
					<-killed
					if !commit {
						return messages.Errorf(messages.CodeUnavailable, "instance %s: exec stream closed", req.InstanceID)
					}
				}
				return nil
			}
		})
		return started, killed
	}

	t.Run("extract cut off", func(t *testing.T) {
		env, a, v := setup(t)
		started, killed := blockFirstExtract(env, false)
		b := kill(t, env, a, started, killed)
		rec := env.record("alice", "notes").Record
		if rec.Phase != messages.PhaseReleased || rec.Owner != b.ReplicaID() || rec.Detail != "released (api): hibernated (generation 1)" {
			t.Fatalf("record %+v; want Released by router B", rec)
		}
		if n := env.ov.committed(); n != 1 {
			t.Fatalf("%d extracts committed, want exactly 1", n)
		}
		if _, data := env.ov.newestData("alice", "notes"); data != "alice work" || env.pool.retiredCount(v.InstanceID) != 1 {
			t.Fatalf("stored %q, retired %d", data, env.pool.retiredCount(v.InstanceID))
		}
	})
	t.Run("extract committed after the kill", func(t *testing.T) {
		// A's extract commits although A is gone, so B's extract (from the
		// same restored generation) conflicts: ReleaseFailed with the
		// instance kept, never stuck Releasing and never a second commit.
		env, a, v := setup(t)
		started, killed := blockFirstExtract(env, true)
		kill(t, env, a, started, killed)
		rec := env.record("alice", "notes").Record
		t.Logf("outcome: %s %q", rec.Phase, rec.Detail)
		switch rec.Phase {
		case messages.PhaseReleased:
			if n := env.ov.committed(); n != 1 || env.pool.retiredCount(v.InstanceID) != 1 {
				t.Fatalf("Released with %d commits, retired %d", n, env.pool.retiredCount(v.InstanceID))
			}
		case messages.PhaseReleaseFailed:
			if rec.Endpoint == nil || env.pool.retiredCount(v.InstanceID) != 0 {
				t.Fatalf("ReleaseFailed without the instance kept: %+v, retired %d", rec, env.pool.retiredCount(v.InstanceID))
			}
			if n := env.ov.committed(); n != 1 {
				t.Fatalf("%d commits, want 1", n)
			}
			rel, err := env.release(messages.ReleaseRequest{TenantID: "alice", Workload: "notes", Reason: messages.ReasonForce})
			mustPhase(t, "force", rel, err, messages.PhaseReleased)
		default:
			t.Fatalf("record %+v", rec)
		}
		if _, data := env.ov.newestData("alice", "notes"); data != "alice work" {
			t.Fatalf("stored %q", data)
		}
	})
	t.Run("killed after saving, before retiring", func(t *testing.T) {
		// The saved generation is on the Releasing record, so B's rerun
		// extracts from it (no conflict with A's save) and retires.
		env, a, v := setup(t)
		started, killed := make(chan struct{}), make(chan struct{})
		var first atomic.Bool
		env.pool.setRetire(func(req messages.RetireRequest) error {
			if first.CompareAndSwap(false, true) {
				close(started)
				<-killed
				return messages.Errorf(messages.CodeUnavailable, "connection to pool-manager lost")
			}
			return nil
		})
		b := kill(t, env, a, started, killed)
		rec := env.record("alice", "notes").Record
		if rec.Phase != messages.PhaseReleased || rec.Owner != b.ReplicaID() || rec.Detail != "released (api): hibernated (generation 2)" || rec.RestoredGeneration != 2 {
			t.Fatalf("record %+v", rec)
		}
		ex := env.ov.extractRequests()
		if len(ex) != 2 || ex[0].RestoredGeneration != 0 || ex[1].RestoredGeneration != 1 {
			t.Fatalf("extract requests %+v; want the rerun to extract from the saved generation", ex)
		}
		if env.pool.retiredCount(v.InstanceID) != 1 {
			t.Fatalf("retired %d", env.pool.retiredCount(v.InstanceID))
		}
	})
}

func TestManyTenantsHibernateAndResume(t *testing.T) {
	const n, poolSize = 50, 20
	env := newEnv(t, map[string]int{"notes": poolSize})
	env.pool.setOverlays("notes", "")
	env.startRouter(Config{ExtractBackoff: fastBackoff})
	tenant := func(i int) string { return fmt.Sprintf("tenant-%02d", i) }
	data := func(i int) string { return fmt.Sprintf("notes of %s", tenant(i)) }

	// Round 1: claim, write, hibernate, all at once.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			v, err := env.claim(messages.ClaimRequest{TenantID: tenant(i), Workload: "notes"})
			if err != nil || v.Phase != messages.PhaseActive || (v.Source != messages.SourcePool && v.Source != messages.SourceCold) {
				errs[i] = fmt.Errorf("claim = %+v, %v", v, err)
				return
			}
			env.ov.write(v.InstanceID, data(i))
			rel, err := env.release(messages.ReleaseRequest{TenantID: tenant(i), Workload: "notes"})
			if err != nil || rel.Phase != messages.PhaseReleased || rel.Detail != "released (api): hibernated (generation 1)" {
				errs[i] = fmt.Errorf("release = %+v, %v", rel, err)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s round 1: %v", tenant(i), err)
		}
	}

	// Round 2: resume, all at once; each gets its own data back.
	env.pool.setReady("notes", poolSize)
	views := make([]messages.ClaimView, n)
	for i := range n {
		wg.Go(func() {
			views[i], errs[i] = env.claim(messages.ClaimRequest{TenantID: tenant(i), Workload: "notes"})
		})
	}
	wg.Wait()
	sources := map[messages.ClaimSource]int{}
	for i := range n {
		v := views[i]
		if errs[i] != nil || v.Phase != messages.PhaseActive {
			t.Fatalf("%s resume = %+v, %v", tenant(i), v, errs[i])
		}
		sources[v.Source]++
		if got := env.ov.read(v.InstanceID); got != data(i) {
			t.Fatalf("%s resumed on %s holding %q, want %q", tenant(i), v.InstanceID, got, data(i))
		}
		if rec := env.record(tenant(i), "notes").Record; rec.RestoredGeneration != 1 {
			t.Fatalf("%s record %+v", tenant(i), rec)
		}
	}
	if sources[messages.SourcePoolData] != poolSize || sources[messages.SourceColdData] != n-poolSize {
		t.Fatalf("sources %v; want %d pool+data and %d cold+data", sources, poolSize, n-poolSize)
	}
}

func TestColdBootRestoreEdges(t *testing.T) {
	t.Run("workload without overlays, tenant with stored ones", func(t *testing.T) {
		// pool-manager refuses a restore generation for a workload without
		// overlay dirs: boot again without one.
		env := newEnv(t, map[string]int{"plain": 0})
		env.ov.seed("alice", "plain", "from when it had overlays")
		env.startRouter(Config{})
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "plain"})
		mustActive(t, v, err, messages.SourceCold)
		boots := env.pool.bootRequests()
		if len(boots) != 2 || boots[0].RestoreGeneration != 1 || boots[1].RestoreGeneration != 0 {
			t.Fatalf("boots %+v", boots)
		}
		if rec := env.record("alice", "plain").Record; rec.Overlays || rec.RestoredGeneration != 0 {
			t.Fatalf("record %+v", rec)
		}
		if n := env.ov.restoreCalls.Load(); n != 0 {
			t.Fatalf("%d restores", n)
		}
	})
	t.Run("restore that did not release the init container", func(t *testing.T) {
		// pool-manager answers awaiting-restore again: restore again.
		env := newEnv(t, map[string]int{"notes": 0})
		env.pool.setOverlays("notes", "")
		env.ov.seed("alice", "notes", "v1")
		env.ov.set(func(o *testOverlays) { o.noMark = 1 })
		env.startRouter(Config{})
		v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes"})
		mustActive(t, v, err, messages.SourceColdData)
		if rs := env.ov.restoreRequests(); len(rs) != 2 || rs[0] != rs[1] || rs[0].Generation != 1 {
			t.Fatalf("restores %+v; want the same restore twice", rs)
		}
		if got := env.ov.read(v.InstanceID); got != "v1" {
			t.Fatalf("instance holds %q", got)
		}
	})
}

func TestKillDuringColdRestore(t *testing.T) {
	for _, completes := range []bool{true, false} {
		t.Run(fmt.Sprintf("restore completes %v", completes), func(t *testing.T) {
			testKillDuringColdRestore(t, completes)
		})
	}
}

// testKillDuringColdRestore kills router A while the restore of its cold
// boot is in flight; the overlay-store finishes that restore (completes)
// or not. Router B takes the claim over and boots with the generation
// recorded on the Pending record (no new list, no acquire): it finds the
// instance Ready, or awaiting its restore again (pool-manager says so once
// the init container still waits after a grace) and restores. Either way
// the claim ends Active cold+data with the tenant's data.
func testKillDuringColdRestore(t *testing.T, completes bool) {
	env := newEnv(t, map[string]int{"notes": 0})
	env.pool.setOverlays("notes", "")
	env.ov.seed("alice", "notes", "v1")
	env.ov.seed("alice", "notes", "v2")
	started, killed := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	env.ov.set(func(o *testOverlays) {
		o.onRestore = func(req messages.RestoreRequest) error {
			if first.CompareAndSwap(false, true) {
				close(started)
				<-killed
				if !completes {
					return messages.Errorf(messages.CodeUnavailable, "instance %s: exec stream closed", req.InstanceID)
				}
			}
			return nil
		}
	})
	cfg := Config{StaleAfter: 600 * time.Millisecond, SweepInterval: 100 * time.Millisecond}
	a := env.startRouter(cfg)
	v, err := env.claim(messages.ClaimRequest{TenantID: "alice", Workload: "notes", WaitMillis: 50})
	mustPhase(t, "claim", v, err, messages.PhasePending)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("restore never called")
	}
	a.stop(t)
	rec := env.record("alice", "notes").Record
	if rec.Phase != messages.PhasePending || !Booting(rec) || rec.RestoredGeneration != 2 {
		t.Fatalf("after the kill: %+v; want Pending, cold, restore generation 2 recorded", rec)
	}
	close(killed)
	b := env.startRouter(cfg)
	eventually(t, 15*time.Second, "router B activates the claim", func() (bool, string) {
		rec := env.record("alice", "notes").Record
		return rec.Phase == messages.PhaseActive, fmt.Sprintf("%s owner %s %q", rec.Phase, rec.Owner, rec.Detail)
	})
	rec = env.record("alice", "notes").Record
	if rec.Owner != b.ReplicaID() || rec.Source != messages.SourceColdData || rec.RestoredGeneration != 2 || !rec.Overlays {
		t.Fatalf("record %+v", rec)
	}
	if got := env.ov.read(rec.InstanceID); got != "v2" {
		t.Fatalf("instance holds %q", got)
	}
	boots := env.pool.bootRequests()
	if len(boots) < 2 || boots[len(boots)-1].RestoreGeneration != 2 || env.pool.created() != 1 {
		t.Fatalf("boots %+v, %d instances; want B's boot with generation 2, one instance", boots, env.pool.created())
	}
	if n, m := len(env.ov.listRequests()), env.pool.acquireCalls.Load(); n != 1 || m != 1 {
		t.Fatalf("%d lists, %d acquires; the new owner must go straight to boot", n, m)
	}
	if n := env.ov.restoreCalls.Load(); (completes && n != 1) || (!completes && n != 2) {
		t.Fatalf("%d restore calls", n)
	}
}
