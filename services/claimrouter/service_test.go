package claimrouter

import (
	"errors"
	"strings"
	"testing"
	"time"

	"boilerhouse.dev/messages"
)

var t0 = time.Date(2026, 4, 20, 10, 30, 0, 0, time.UTC)

const stale = 15 * time.Second

// rec builds a record in phase p, last refreshed age ago, due in due
// (relative to t0), owned by "r1".
func rec(p messages.ClaimPhase, age, due time.Duration) *messages.ClaimRecord {
	r := &messages.ClaimRecord{
		TenantID: "org.acme", Workload: "demo", ID: "c1", Phase: p, Owner: "r1",
		CreatedAt: t0.Add(-time.Minute), UpdatedAt: t0.Add(-age),
	}
	if due != 0 {
		r.Deadline = t0.Add(due)
	}
	if p == messages.PhaseActive || p == messages.PhaseReleasing {
		r.InstanceID = "demo-1"
		r.Endpoint = &messages.Endpoint{Host: "10.0.0.1", Port: 8080}
		r.Source = messages.SourcePool
	}
	return r
}

func withReason(r *messages.ClaimRecord, reason messages.ReleaseReason) *messages.ClaimRecord {
	r.ReleaseReason = reason
	return r
}

func TestDecideClaim(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  *messages.ClaimRecord
		want ClaimAction
	}{
		{"absent", nil, ClaimStart},
		{"active", rec(messages.PhaseActive, time.Hour, 0), ClaimExisting},
		{"pending fresh", rec(messages.PhasePending, time.Second, time.Minute), ClaimWait},
		{"pending just under stale", rec(messages.PhasePending, stale, time.Minute), ClaimWait},
		{"pending stale", rec(messages.PhasePending, stale+time.Millisecond, time.Minute), ClaimTakeOver},
		{"pending past deadline, fresh owner", rec(messages.PhasePending, time.Second, -time.Second), ClaimExpire},
		{"pending at deadline", rec(messages.PhasePending, time.Second, time.Nanosecond), ClaimWait},
		{"pending past deadline, stale owner", rec(messages.PhasePending, time.Hour, -time.Second), ClaimExpire},
		{"releasing fresh", rec(messages.PhaseReleasing, time.Second, time.Minute), ClaimWait},
		{"releasing stale", rec(messages.PhaseReleasing, time.Minute, time.Minute), ClaimTakeOver},
		{"releasing past its deadline is not expired", rec(messages.PhaseReleasing, time.Second, -time.Minute), ClaimWait},
		{"released", rec(messages.PhaseReleased, time.Hour, 0), ClaimStart},
		{"error", rec(messages.PhaseError, time.Hour, 0), ClaimStart},
		{"release failed", rec(messages.PhaseReleaseFailed, time.Hour, 0), ClaimConflict},
		{"unknown phase", rec("Hibernated", time.Hour, 0), ClaimConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DecideClaim(tc.rec, t0, stale); got != tc.want {
				t.Fatalf("DecideClaim = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDecideRelease(t *testing.T) {
	failed := func() *messages.ClaimRecord { return rec(messages.PhaseReleaseFailed, time.Hour, 0) }
	for _, tc := range []struct {
		name   string
		rec    *messages.ClaimRecord
		reason messages.ReleaseReason
		want   ReleaseAction
	}{
		{"absent", nil, messages.ReasonAPI, ReleaseNotFound},
		{"absent, retry", nil, messages.ReasonRetry, ReleaseNotFound},
		{"active", rec(messages.PhaseActive, time.Hour, 0), messages.ReasonAPI, ReleaseBegin},
		{"active, idle", rec(messages.PhaseActive, time.Hour, 0), messages.ReasonIdle, ReleaseBegin},
		{"active, force", rec(messages.PhaseActive, time.Hour, 0), messages.ReasonForce, ReleaseBegin},
		{"active, retry: nothing failed", rec(messages.PhaseActive, time.Hour, 0), messages.ReasonRetry, ReleaseConflict},
		{"pending", rec(messages.PhasePending, time.Second, time.Minute), messages.ReasonAPI, ReleaseMark},
		{"pending, force", rec(messages.PhasePending, time.Second, time.Minute), messages.ReasonForce, ReleaseMark},
		{"pending, retry", rec(messages.PhasePending, time.Second, time.Minute), messages.ReasonRetry, ReleaseConflict},
		{"pending, release requested", withReason(rec(messages.PhasePending, time.Second, time.Minute), messages.ReasonIdle), messages.ReasonAPI, ReleaseWait},
		{"pending, release requested, retry", withReason(rec(messages.PhasePending, time.Second, time.Minute), messages.ReasonIdle), messages.ReasonRetry, ReleaseConflict},
		{"pending stale", rec(messages.PhasePending, time.Hour, time.Minute), messages.ReasonAPI, ReleaseTakeOver},
		{"pending stale, retry", rec(messages.PhasePending, time.Hour, time.Minute), messages.ReasonRetry, ReleaseTakeOver},
		{"pending expired", rec(messages.PhasePending, time.Second, -time.Second), messages.ReasonAPI, ReleaseExpire},
		{"releasing", rec(messages.PhaseReleasing, time.Second, time.Minute), messages.ReasonAPI, ReleaseWait},
		{"releasing, retry: another retry got there first", rec(messages.PhaseReleasing, time.Second, time.Minute), messages.ReasonRetry, ReleaseWait},
		{"releasing, force waits for the running release", rec(messages.PhaseReleasing, time.Second, time.Minute), messages.ReasonForce, ReleaseWait},
		{"releasing stale", rec(messages.PhaseReleasing, time.Hour, time.Minute), messages.ReasonAPI, ReleaseTakeOver},
		{"released", rec(messages.PhaseReleased, time.Hour, 0), messages.ReasonAPI, ReleaseAnswer},
		{"released, retry answers the view", rec(messages.PhaseReleased, time.Hour, 0), messages.ReasonRetry, ReleaseAnswer},
		{"released, force", rec(messages.PhaseReleased, time.Hour, 0), messages.ReasonForce, ReleaseAnswer},
		{"error", rec(messages.PhaseError, time.Hour, 0), messages.ReasonAPI, ReleaseAnswer},
		{"error, retry", rec(messages.PhaseError, time.Hour, 0), messages.ReasonRetry, ReleaseAnswer},
		{"release failed", failed(), messages.ReasonAPI, ReleaseAnswer},
		{"release failed, idle", failed(), messages.ReasonIdle, ReleaseAnswer},
		{"release failed, claim deleted", failed(), messages.ReasonClaimDeleted, ReleaseAnswer},
		{"release failed, retry", failed(), messages.ReasonRetry, ReleaseBegin},
		{"release failed, force", failed(), messages.ReasonForce, ReleaseBegin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DecideRelease(tc.rec, tc.reason, t0, stale); got != tc.want {
				t.Fatalf("DecideRelease = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDecideRecovery(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  *messages.ClaimRecord
		want Recovery
	}{
		{"absent", nil, RecoverNone},
		{"active long ago", rec(messages.PhaseActive, 24*time.Hour, 0), RecoverNone},
		{"released", rec(messages.PhaseReleased, 24*time.Hour, 0), RecoverNone},
		{"release failed", rec(messages.PhaseReleaseFailed, 24*time.Hour, 0), RecoverNone},
		{"pending fresh", rec(messages.PhasePending, time.Second, time.Minute), RecoverNone},
		{"pending stale", rec(messages.PhasePending, time.Minute, time.Minute), RecoverTakeOver},
		{"pending expired", rec(messages.PhasePending, time.Second, -time.Millisecond), RecoverExpire},
		{"pending expired and stale", rec(messages.PhasePending, time.Hour, -time.Hour), RecoverExpire},
		{"pending without deadline never expires", rec(messages.PhasePending, time.Second, 0), RecoverNone},
		{"releasing stale", rec(messages.PhaseReleasing, time.Minute, -time.Hour), RecoverTakeOver},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DecideRecovery(tc.rec, t0, stale); got != tc.want {
				t.Fatalf("DecideRecovery = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestClaimSettled(t *testing.T) {
	pending := *rec(messages.PhasePending, 0, time.Minute)
	marked := *withReason(rec(messages.PhasePending, 0, time.Minute), messages.ReasonAPI)
	releasing := *rec(messages.PhaseReleasing, 0, time.Minute)
	other := func(p messages.ClaimPhase) *messages.ClaimRecord {
		r := rec(p, 0, time.Minute)
		r.ID = "c2"
		return r
	}
	for _, tc := range []struct {
		name             string
		waited           messages.ClaimRecord
		cur              *messages.ClaimRecord
		answer, notFound bool
	}{
		{"pending became active", pending, rec(messages.PhaseActive, 0, 0), true, false},
		{"pending became error", pending, rec(messages.PhaseError, 0, 0), true, false},
		{"pending still pending (wait over)", pending, rec(messages.PhasePending, 0, time.Minute), true, false},
		{"pending deleted: unknown workload", pending, nil, false, true},
		{"pending replaced by another life", pending, other(messages.PhasePending), false, false},
		{"pending released meanwhile: decide again", pending, rec(messages.PhaseReleased, 0, 0), false, false},
		{"marked pending became released: decide again", marked, rec(messages.PhaseReleased, 0, 0), false, false},
		{"marked pending deleted: decide again", marked, nil, false, false},
		{"releasing became released: decide again", releasing, rec(messages.PhaseReleased, 0, 0), false, false},
		{"releasing became release failed: decide again", releasing, rec(messages.PhaseReleaseFailed, 0, 0), false, false},
		{"releasing still releasing (wait over)", releasing, rec(messages.PhaseReleasing, 0, time.Minute), true, false},
		{"releasing deleted", releasing, nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer, notFound := ClaimSettled(tc.waited, tc.cur)
			if answer != tc.answer || notFound != tc.notFound {
				t.Fatalf("ClaimSettled = (answer %v, notFound %v), want (%v, %v)", answer, notFound, tc.answer, tc.notFound)
			}
		})
	}
}

func TestNewPending(t *testing.T) {
	no := false
	r := NewPending(messages.ClaimRequest{TenantID: "org.acme", Workload: "demo", Resume: &no}, "c9", "r1", t0, 2*time.Minute)
	if r.Phase != messages.PhasePending || r.ID != "c9" || r.Owner != "r1" || r.Resume ||
		!r.Deadline.Equal(t0.Add(2*time.Minute)) || !r.UpdatedAt.Equal(t0) || !r.CreatedAt.Equal(t0) {
		t.Fatalf("NewPending = %+v", r)
	}
	if r := NewPending(messages.ClaimRequest{TenantID: "a", Workload: "w"}, "c", "r", t0, time.Minute); !r.Resume {
		t.Fatal("resume must default to true")
	}
}

func TestTransitions(t *testing.T) {
	inst := messages.Instance{InstanceID: "demo-7", Endpoint: &messages.Endpoint{Host: "10.0.0.7", Port: 8080}, Ready: true}
	now := t0.Add(1500 * time.Millisecond)

	t.Run("activate", func(t *testing.T) {
		got, err := Activate(rec(messages.PhasePending, 0, time.Minute), "c1", "r1", Obtained{Instance: inst, Source: messages.SourceCold}, now, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if got.Phase != messages.PhaseActive || got.InstanceID != "demo-7" || got.Endpoint.Host != "10.0.0.7" ||
			got.Source != messages.SourceCold || !got.ClaimedAt.Equal(t0.Add(time.Second)) || got.Detail != "" || !got.Deadline.IsZero() {
			t.Fatalf("Activate = %+v", got)
		}
	})
	t.Run("activate with a release requested goes to releasing", func(t *testing.T) {
		got, err := Activate(withReason(rec(messages.PhasePending, 0, time.Minute), messages.ReasonIdle), "c1", "r1", Obtained{Instance: inst, Source: messages.SourcePool}, now, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if got.Phase != messages.PhaseReleasing || got.InstanceID != "demo-7" || got.ReleaseReason != messages.ReasonIdle || !got.Deadline.Equal(now.Add(time.Minute)) {
			t.Fatalf("Activate = %+v", got)
		}
	})
	superseded := []struct {
		name string
		f    func() (messages.ClaimRecord, error)
	}{
		{"activate absent", func() (messages.ClaimRecord, error) {
			return Activate(nil, "c1", "r1", Obtained{Instance: inst, Source: messages.SourcePool}, now, time.Minute)
		}},
		{"activate another life", func() (messages.ClaimRecord, error) {
			return Activate(rec(messages.PhasePending, 0, time.Minute), "c0", "r1", Obtained{Instance: inst, Source: messages.SourcePool}, now, time.Minute)
		}},
		{"activate taken over", func() (messages.ClaimRecord, error) {
			return Activate(rec(messages.PhasePending, 0, time.Minute), "c1", "r2", Obtained{Instance: inst, Source: messages.SourcePool}, now, time.Minute)
		}},
		{"activate expired", func() (messages.ClaimRecord, error) {
			return Activate(rec(messages.PhaseError, 0, 0), "c1", "r1", Obtained{Instance: inst, Source: messages.SourcePool}, now, time.Minute)
		}},
		{"fail active", func() (messages.ClaimRecord, error) {
			return Fail(rec(messages.PhaseActive, 0, 0), "c1", "r1", "x", now)
		}},
		{"refresh settled", func() (messages.ClaimRecord, error) {
			return Refresh(rec(messages.PhaseActive, 0, 0), "c1", "r1", "", now)
		}},
		{"refresh by a former owner", func() (messages.ClaimRecord, error) {
			return Refresh(rec(messages.PhasePending, 0, time.Minute), "c1", "r2", "", now)
		}},
		{"take over a fresh record", func() (messages.ClaimRecord, error) {
			return TakeOver(rec(messages.PhasePending, time.Second, time.Minute), "r2", t0, stale, time.Minute)
		}},
		{"take over an expired record", func() (messages.ClaimRecord, error) {
			return TakeOver(rec(messages.PhasePending, time.Hour, -time.Second), "r2", t0, stale, time.Minute)
		}},
		{"take over an active record", func() (messages.ClaimRecord, error) {
			return TakeOver(rec(messages.PhaseActive, time.Hour, 0), "r2", t0, stale, time.Minute)
		}},
		{"expire a pending record before its deadline", func() (messages.ClaimRecord, error) {
			return Expire(rec(messages.PhasePending, 0, time.Second), t0)
		}},
		{"expire an active record", func() (messages.ClaimRecord, error) {
			return Expire(rec(messages.PhaseActive, 0, -time.Second), t0)
		}},
		{"request release twice", func() (messages.ClaimRecord, error) {
			return RequestRelease(withReason(rec(messages.PhasePending, 0, time.Minute), messages.ReasonAPI), messages.ReasonIdle, now)
		}},
		{"begin release of a pending claim", func() (messages.ClaimRecord, error) {
			return BeginRelease(rec(messages.PhasePending, 0, time.Minute), messages.ReasonAPI, "r1", now, time.Minute)
		}},
		{"finish a release owned by another", func() (messages.ClaimRecord, error) {
			return FinishRelease(rec(messages.PhaseReleasing, 0, time.Minute), "c1", "r2", "x", now)
		}},
		{"fail a release of an active claim", func() (messages.ClaimRecord, error) {
			return FailRelease(rec(messages.PhaseActive, 0, 0), "c1", "r1", "x", now)
		}},
		{"mark booting of a releasing claim", func() (messages.ClaimRecord, error) {
			return MarkBooting(rec(messages.PhaseReleasing, 0, time.Minute), "c1", "r1", 0, now)
		}},
		{"instance gone: other instance", func() (messages.ClaimRecord, error) {
			return InstanceGone(rec(messages.PhaseActive, 0, 0), "demo-2", InstanceDeleted, "", now)
		}},
		{"instance gone: releasing", func() (messages.ClaimRecord, error) {
			return InstanceGone(rec(messages.PhaseReleasing, 0, time.Minute), "demo-1", InstanceDeleted, "", now)
		}},
		{"instance gone: fine", func() (messages.ClaimRecord, error) {
			return InstanceGone(rec(messages.PhaseActive, 0, 0), "demo-1", InstanceFine, "", now)
		}},
	}
	for _, tc := range superseded {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.f(); !errors.Is(err, ErrSuperseded) {
				t.Fatalf("err = %v, want ErrSuperseded", err)
			}
		})
	}
	t.Run("take over", func(t *testing.T) {
		got, err := TakeOver(rec(messages.PhasePending, time.Minute, time.Minute), "r2", t0, stale, time.Minute)
		if err != nil || got.Owner != "r2" || !got.UpdatedAt.Equal(t0) || !got.Deadline.Equal(t0.Add(time.Minute)) || got.ID != "c1" {
			t.Fatalf("TakeOver = %+v, %v", got, err)
		}
		got, err = TakeOver(rec(messages.PhaseReleasing, time.Minute, -time.Hour), "r2", t0, stale, 2*time.Minute)
		if err != nil || got.Owner != "r2" || !got.Deadline.Equal(t0.Add(2*time.Minute)) {
			t.Fatalf("TakeOver releasing = %+v, %v", got, err)
		}
	})
	t.Run("refresh", func(t *testing.T) {
		got, err := Refresh(rec(messages.PhasePending, time.Second, time.Minute), "c1", "r1", DetailBooting, now)
		if err != nil || !got.UpdatedAt.Equal(now) || got.Detail != DetailBooting {
			t.Fatalf("Refresh = %+v, %v", got, err)
		}
	})
	t.Run("expire", func(t *testing.T) {
		got, err := Expire(rec(messages.PhasePending, 0, -time.Second), t0)
		if err != nil || got.Phase != messages.PhaseError || !strings.HasPrefix(got.Detail, DetailTimeout) {
			t.Fatalf("Expire = %+v, %v", got, err)
		}
	})
	t.Run("fail", func(t *testing.T) {
		got, err := Fail(rec(messages.PhasePending, 0, time.Minute), "c1", "r1", "pod failed: ImagePullBackOff", now)
		if err != nil || got.Phase != messages.PhaseError || got.Detail != "pod failed: ImagePullBackOff" {
			t.Fatalf("Fail = %+v, %v", got, err)
		}
	})
	t.Run("release", func(t *testing.T) {
		r, err := BeginRelease(rec(messages.PhaseActive, 0, 0), messages.ReasonIdle, "r2", now, time.Minute)
		if err != nil || r.Phase != messages.PhaseReleasing || r.Owner != "r2" || r.ReleaseReason != messages.ReasonIdle || !r.Deadline.Equal(now.Add(time.Minute)) {
			t.Fatalf("BeginRelease = %+v, %v", r, err)
		}
		done, err := FinishRelease(&r, "c1", "r2", ReleasedDetail(r.ReleaseReason, true), now)
		if err != nil || done.Phase != messages.PhaseReleased || done.Endpoint != nil || done.Detail != "released (idle)" || done.InstanceID != "demo-1" {
			t.Fatalf("FinishRelease = %+v, %v", done, err)
		}
		failed, err := FailRelease(&r, "c1", "r2", "retire failed: x", now)
		if err != nil || failed.Phase != messages.PhaseReleaseFailed || failed.Endpoint == nil {
			t.Fatalf("FailRelease = %+v, %v (the instance and endpoint are kept)", failed, err)
		}
		if d := ReleasedDetail("", false); d != "released (api); the instance was already gone" {
			t.Fatalf("ReleasedDetail = %q", d)
		}
	})
	t.Run("request release", func(t *testing.T) {
		got, err := RequestRelease(rec(messages.PhasePending, 0, time.Minute), messages.ReasonAPI, now)
		if err != nil || got.Phase != messages.PhasePending || got.ReleaseReason != messages.ReasonAPI {
			t.Fatalf("RequestRelease = %+v, %v", got, err)
		}
	})
	t.Run("mark booting", func(t *testing.T) {
		got, err := MarkBooting(rec(messages.PhasePending, 0, time.Minute), "c1", "r1", 4, now)
		if err != nil || !Booting(got) || got.Detail != DetailBooting || got.RestoredGeneration != 4 {
			t.Fatalf("MarkBooting = %+v, %v", got, err)
		}
	})
	t.Run("instance deleted", func(t *testing.T) {
		got, err := InstanceGone(rec(messages.PhaseActive, 0, 0), "demo-1", InstanceDeleted, "", now)
		if err != nil || got.Phase != messages.PhaseReleased || got.Detail != DetailPodGone || got.Endpoint != nil {
			t.Fatalf("InstanceGone = %+v, %v", got, err)
		}
	})
	t.Run("instance failed", func(t *testing.T) {
		got, err := InstanceGone(rec(messages.PhaseActive, 0, 0), "demo-1", InstanceFailed, "OOMKilled", now)
		if err != nil || got.Phase != messages.PhaseError || got.Detail != "instance failed: OOMKilled" {
			t.Fatalf("InstanceGone = %+v, %v", got, err)
		}
	})
}

func TestClassifyInstanceEvent(t *testing.T) {
	ev := func(phase string) messages.Event {
		return messages.Event{Kind: messages.EventInstance, Instance: &messages.Instance{InstanceID: "demo-1", Phase: phase}}
	}
	for phase, want := range map[string]InstanceFate{
		"deleted": InstanceDeleted, "Deleted": InstanceDeleted, "gone": InstanceDeleted, "retired": InstanceDeleted,
		"failed": InstanceFailed, "Failed": InstanceFailed,
		"ready": InstanceFine, "warming": InstanceFine, "acquired": InstanceFine, "": InstanceFine,
	} {
		if got := ClassifyInstanceEvent(ev(phase)); got != want {
			t.Errorf("phase %q: fate %d, want %d", phase, got, want)
		}
	}
	if got := ClassifyInstanceEvent(messages.Event{Kind: messages.EventInstance}); got != InstanceFine {
		t.Errorf("event without instance: fate %d", got)
	}
}

func TestOrphanedInstance(t *testing.T) {
	other := rec(messages.PhasePending, 0, time.Minute)
	other.ID = "c2"
	for _, tc := range []struct {
		name string
		cur  *messages.ClaimRecord
		want bool
	}{
		{"deleted", nil, true},
		{"another life", other, true},
		{"expired", rec(messages.PhaseError, 0, 0), true},
		{"taken over, still pending", rec(messages.PhasePending, 0, time.Minute), false},
		{"activated by another owner", rec(messages.PhaseActive, 0, 0), false},
		{"being released", rec(messages.PhaseReleasing, 0, time.Minute), false},
		{"released", rec(messages.PhaseReleased, 0, 0), false},
	} {
		if got := OrphanedInstance(tc.cur, "c1"); got != tc.want {
			t.Errorf("%s: OrphanedInstance = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	if backoff(0) != 50*time.Millisecond || backoff(1) != 100*time.Millisecond || backoff(10) != 2*time.Second {
		t.Fatalf("backoff: %s %s %s", backoff(0), backoff(1), backoff(10))
	}
}

func TestActivateRecordsOverlays(t *testing.T) {
	inst := messages.Instance{InstanceID: "demo-7", Endpoint: &messages.Endpoint{Host: "10.0.0.7", Port: 8080}, Ready: true, Overlays: true, ReleaseAction: "destroy"}
	pending := rec(messages.PhasePending, 0, time.Minute)
	pending.RestoredGeneration = 9 // the generation a cold boot planned to restore
	got, err := Activate(pending, "c1", "r1", Obtained{Instance: inst, Source: messages.SourceColdData, RestoredGeneration: 4}, t0, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got.Phase != messages.PhaseActive || got.Source != messages.SourceColdData || got.RestoredGeneration != 4 || !got.Overlays || got.ReleaseAction != "destroy" {
		t.Fatalf("Activate = %+v", got)
	}
	got, err = Activate(pending, "c1", "r1", Obtained{Instance: messages.Instance{InstanceID: "demo-8"}, Source: messages.SourcePool}, t0, time.Minute)
	if err != nil || got.RestoredGeneration != 0 || got.Overlays || got.ReleaseAction != "" {
		t.Fatalf("Activate without overlays = %+v, %v", got, err)
	}
}

func TestBeginReleaseRestarts(t *testing.T) {
	failed := rec(messages.PhaseReleaseFailed, time.Hour, 0)
	failed.Detail = "overlay extract failed: boom"
	failed.InstanceID, failed.Endpoint = "demo-1", &messages.Endpoint{Host: "10.0.0.1", Port: 8080}
	for _, reason := range []messages.ReleaseReason{messages.ReasonRetry, messages.ReasonForce} {
		got, err := BeginRelease(failed, reason, "r2", t0, time.Minute)
		if err != nil || got.Phase != messages.PhaseReleasing || got.ReleaseReason != reason || got.Owner != "r2" ||
			got.Detail != DetailReleasing || !got.Deadline.Equal(t0.Add(time.Minute)) || got.InstanceID != failed.InstanceID || got.Endpoint == nil {
			t.Fatalf("BeginRelease(ReleaseFailed, %s) = %+v, %v", reason, got, err)
		}
	}
	for _, tc := range []struct {
		name   string
		rec    *messages.ClaimRecord
		reason messages.ReleaseReason
	}{
		{"retry of an active claim", rec(messages.PhaseActive, 0, 0), messages.ReasonRetry},
		{"api release of a failed release", failed, messages.ReasonAPI},
		{"idle release of a failed release", failed, messages.ReasonIdle},
		{"retry of a released claim", rec(messages.PhaseReleased, 0, 0), messages.ReasonRetry},
		{"force of a releasing claim", rec(messages.PhaseReleasing, 0, time.Minute), messages.ReasonForce},
		{"absent", nil, messages.ReasonForce},
	} {
		if _, err := BeginRelease(tc.rec, tc.reason, "r2", t0, time.Minute); !errors.Is(err, ErrSuperseded) {
			t.Errorf("%s: err = %v, want ErrSuperseded", tc.name, err)
		}
	}
}

func TestRestoredSource(t *testing.T) {
	for _, tc := range []struct {
		base  messages.ClaimSource
		reply messages.RestoreReply
		want  messages.ClaimSource
		gen   int64
	}{
		{messages.SourcePool, messages.RestoreReply{Restored: true, Generation: 3}, messages.SourcePoolData, 3},
		{messages.SourcePool, messages.RestoreReply{}, messages.SourcePool, 0},
		{messages.SourceCold, messages.RestoreReply{Restored: true, Generation: 1}, messages.SourceColdData, 1},
		{messages.SourceCold, messages.RestoreReply{Generation: 7}, messages.SourceCold, 0},
	} {
		if got, gen := RestoredSource(tc.base, tc.reply); got != tc.want || gen != tc.gen {
			t.Errorf("RestoredSource(%s, %+v) = %s, %d; want %s, %d", tc.base, tc.reply, got, gen, tc.want, tc.gen)
		}
	}
	if g := NewestGeneration(messages.SnapshotList{}); g != 0 {
		t.Errorf("NewestGeneration(empty) = %d", g)
	}
	if g := NewestGeneration(messages.SnapshotList{Snapshots: []messages.Snapshot{{Generation: 5}, {Generation: 4}, {Generation: 6}}}); g != 6 {
		t.Errorf("NewestGeneration = %d, want 6", g)
	}
	resume := *rec(messages.PhasePending, 0, time.Minute)
	resume.Resume = true
	clean := resume
	clean.Resume = false
	if !RestoreDue(resume, messages.Instance{Overlays: true}) || RestoreDue(resume, messages.Instance{}) || RestoreDue(clean, messages.Instance{Overlays: true}) {
		t.Error("RestoreDue must need both resume and overlays")
	}
}

func TestDecideBoot(t *testing.T) {
	awaiting := messages.Instance{InstanceID: "demo-1", Phase: messages.InstancePhaseAwaitingRestore}
	ready := messages.Instance{InstanceID: "demo-1", Ready: true, Phase: "acquired"}
	noOverlays := messages.Errorf(messages.CodeInvalidArgument, `workload "demo" has no overlay directories to restore into`)
	for _, tc := range []struct {
		name       string
		inst       messages.Instance
		err        error
		restoreGen int64
		restored   bool
		want       BootStep
	}{
		{"ready", ready, nil, 0, false, BootReady},
		{"ready after a restore", ready, nil, 3, true, BootReady},
		{"awaiting restore", awaiting, nil, 3, false, BootRestore},
		{"awaiting restore, other case", messages.Instance{Phase: " Awaiting-Restore"}, nil, 3, false, BootRestore},
		{"awaiting restore without a generation asked", awaiting, nil, 0, false, BootRestore},
		{"still awaiting after this run restored", awaiting, nil, 3, true, BootRestoreAgain},
		{"restore generation refused", messages.Instance{}, noOverlays, 3, false, BootWithoutRestore},
		{"invalid without a restore generation", messages.Instance{}, noOverlays, 0, false, BootFailed},
		{"not ready yet", messages.Instance{}, messages.Errorf(messages.CodeDeadlineExceeded, "not ready"), 3, false, BootFailed},
		{"pod failed", messages.Instance{}, messages.Errorf(messages.CodeInternal, "pod failed: OOMKilled"), 3, true, BootFailed},
	} {
		if got := DecideBoot(tc.inst, tc.err, tc.restoreGen, tc.restored); got != tc.want {
			t.Errorf("%s: DecideBoot = %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestColdOutcome(t *testing.T) {
	resume := *rec(messages.PhasePending, 0, time.Minute)
	resume.Resume = true
	clean := resume
	clean.Resume = false
	overlays := messages.Instance{InstanceID: "demo-1", Ready: true, Overlays: true}
	plain := messages.Instance{InstanceID: "demo-1", Ready: true}
	for _, tc := range []struct {
		name       string
		rec        messages.ClaimRecord
		inst       messages.Instance
		restoreGen int64
		restore    *messages.RestoreReply
		knownEmpty bool
		source     messages.ClaimSource
		gen        int64
		restoreNow bool
	}{
		{"no overlays", resume, plain, 0, nil, false, messages.SourceCold, 0, false},
		{"no overlays although a generation was planned", resume, plain, 3, nil, false, messages.SourceCold, 0, false},
		{"restored through the init container", resume, overlays, 3, &messages.RestoreReply{Restored: true, Generation: 3}, false, messages.SourceColdData, 3, false},
		{"restore found nothing", resume, overlays, 3, &messages.RestoreReply{}, false, messages.SourceCold, 0, false},
		{"restored, although the Ready answer omits overlays", resume, plain, 3, &messages.RestoreReply{Restored: true, Generation: 3}, false, messages.SourceColdData, 3, false},
		{"ready with a planned generation: an earlier owner restored", resume, overlays, 3, nil, false, messages.SourceColdData, 3, false},
		{"nothing stored, known", resume, overlays, 0, nil, true, messages.SourceCold, 0, false},
		{"list failed or taken over: restore into the running instance", resume, overlays, 0, nil, false, messages.SourceCold, 0, true},
		{"resume false", clean, overlays, 0, nil, false, messages.SourceCold, 0, false},
	} {
		source, gen, now := ColdOutcome(tc.rec, tc.inst, tc.restoreGen, tc.restore, tc.knownEmpty)
		if source != tc.source || gen != tc.gen || now != tc.restoreNow {
			t.Errorf("%s: ColdOutcome = %s, %d, %v; want %s, %d, %v", tc.name, source, gen, now, tc.source, tc.gen, tc.restoreNow)
		}
	}
}

func TestPlanRelease(t *testing.T) {
	r := func(overlays bool, action string, reason messages.ReleaseReason, instance string) messages.ClaimRecord {
		c := *rec(messages.PhaseReleasing, 0, time.Minute)
		c.Overlays, c.ReleaseAction, c.ReleaseReason, c.InstanceID = overlays, action, reason, instance
		return c
	}
	for _, tc := range []struct {
		name string
		rec  messages.ClaimRecord
		want ReleasePlan
	}{
		{"hibernate by default", r(true, "", messages.ReasonAPI, "demo-1"), ReleasePlan{Mode: ReleaseHibernate, Extract: true}},
		{"hibernate", r(true, "hibernate", messages.ReasonIdle, "demo-1"), ReleasePlan{Mode: ReleaseHibernate, Extract: true}},
		{"hibernate without overlays", r(false, "hibernate", messages.ReasonAPI, "demo-1"), ReleasePlan{Mode: ReleaseHibernate}},
		{"hibernate without an instance", r(true, "hibernate", messages.ReasonAPI, ""), ReleasePlan{Mode: ReleaseHibernate}},
		{"unknown action keeps data", r(true, "archive", messages.ReasonAPI, "demo-1"), ReleasePlan{Mode: ReleaseHibernate, Extract: true}},
		{"retry hibernates again", r(true, "", messages.ReasonRetry, "demo-1"), ReleasePlan{Mode: ReleaseHibernate, Extract: true}},
		{"destroy", r(true, "destroy", messages.ReasonIdle, "demo-1"), ReleasePlan{Mode: ReleaseDestroy, DeleteOverlay: true}},
		{"destroy, other case", r(true, "Destroy", messages.ReasonIdle, "demo-1"), ReleasePlan{Mode: ReleaseDestroy, DeleteOverlay: true}},
		{"destroy without overlays", r(false, "destroy", messages.ReasonAPI, "demo-1"), ReleasePlan{Mode: ReleaseDestroy}},
		{"force", r(true, "", messages.ReasonForce, "demo-1"), ReleasePlan{Mode: ReleaseForced}},
		{"force of a destroy keeps the stored overlay", r(true, "destroy", messages.ReasonForce, "demo-1"), ReleasePlan{Mode: ReleaseForced}},
	} {
		if got := PlanRelease(tc.rec); got != tc.want {
			t.Errorf("%s: PlanRelease = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestExtractRequestFor(t *testing.T) {
	c := *rec(messages.PhaseReleasing, 0, time.Minute)
	c.Resume, c.RestoredGeneration = true, 4
	if got := ExtractRequestFor(c); got != (messages.ExtractRequest{TenantID: "org.acme", Workload: "demo", InstanceID: "demo-1", RestoredGeneration: 4}) {
		t.Fatalf("ExtractRequestFor = %+v", got)
	}
	c.Resume, c.RestoredGeneration = false, 0
	if got := ExtractRequestFor(c); !got.Force || got.RestoredGeneration != 0 {
		t.Fatalf("ExtractRequestFor(resume false) = %+v, want force", got)
	}
}

func TestClassifyOverlayError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want OverlayFate
	}{
		{messages.Errorf(messages.CodeConflict, "stored generation 5 is newer than 4"), OverlayConflict},
		{messages.Errorf(messages.CodeInvalidArgument, "overlay too large"), OverlayRefused},
		{messages.Errorf(messages.CodeNotFound, "instance demo-1 not found"), OverlayGone},
		{messages.Errorf(messages.CodeUnavailable, "no service answers"), OverlayRetry},
		{messages.Errorf(messages.CodeDeadlineExceeded, "no reply in time"), OverlayRetry},
		{messages.Errorf(messages.CodeInternal, "exec failed"), OverlayRetry},
		{errors.New("plain"), OverlayRetry},
	} {
		if got := ClassifyOverlayError(tc.err); got != tc.want {
			t.Errorf("ClassifyOverlayError(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestRecordSaved(t *testing.T) {
	releasing := rec(messages.PhaseReleasing, time.Second, time.Second)
	releasing.RestoredGeneration = 3
	got, err := RecordSaved(releasing, "c1", "r1", messages.Snapshot{Generation: 4}, t0, time.Minute)
	if err != nil || got.RestoredGeneration != 4 || got.Phase != messages.PhaseReleasing || !got.Deadline.Equal(t0.Add(time.Minute)) || !got.UpdatedAt.Equal(t0) {
		t.Fatalf("RecordSaved = %+v, %v", got, err)
	}
	if g, ok := SavedGeneration(got.Detail); !ok || g != 4 {
		t.Fatalf("SavedGeneration(%q) = %d, %v", got.Detail, g, ok)
	}
	// A rerun extracts with the generation this release saved.
	if req := ExtractRequestFor(got); req.RestoredGeneration != 4 {
		t.Fatalf("rerun extract restoredGeneration %d, want 4", req.RestoredGeneration)
	}
	// Nothing to save: no generation change.
	got, err = RecordSaved(releasing, "c1", "r1", messages.Snapshot{}, t0, time.Minute)
	if err != nil || got.RestoredGeneration != 3 {
		t.Fatalf("RecordSaved(nothing) = %+v, %v", got, err)
	}
	for _, tc := range []struct {
		name string
		rec  *messages.ClaimRecord
		id   string
		by   string
	}{
		{"absent", nil, "c1", "r1"},
		{"taken over", releasing, "c1", "r2"},
		{"another life", releasing, "c0", "r1"},
		{"released", rec(messages.PhaseReleased, 0, 0), "c1", "r1"},
		{"release failed", rec(messages.PhaseReleaseFailed, 0, 0), "c1", "r1"},
	} {
		if _, err := RecordSaved(tc.rec, tc.id, tc.by, messages.Snapshot{Generation: 1}, t0, time.Minute); !errors.Is(err, ErrSuperseded) {
			t.Errorf("%s: err = %v, want ErrSuperseded", tc.name, err)
		}
	}
	for _, d := range []string{"", DetailReleasing, "overlay saved (generation x); retiring the instance", "overlay saved (generation 4); retiring the instance, really"} {
		if _, ok := SavedGeneration(d); ok {
			t.Errorf("SavedGeneration(%q) ok", d)
		}
	}
}

func TestFinishedDetail(t *testing.T) {
	r := func(reason messages.ReleaseReason, instance string) messages.ClaimRecord {
		c := *rec(messages.PhaseReleasing, 0, time.Minute)
		c.ReleaseReason, c.InstanceID = reason, instance
		return c
	}
	hib := ReleasePlan{Mode: ReleaseHibernate, Extract: true}
	for _, tc := range []struct {
		name string
		rec  messages.ClaimRecord
		plan ReleasePlan
		res  ReleaseResult
		want string
	}{
		{"no overlays", r(messages.ReasonIdle, "demo-1"), ReleasePlan{}, ReleaseResult{Existed: true}, "released (idle)"},
		{"no overlays, gone", r(messages.ReasonAPI, "demo-1"), ReleasePlan{}, ReleaseResult{}, "released (api); the instance was already gone"},
		{"no instance", r(messages.ReasonAPI, ""), ReleasePlan{}, ReleaseResult{Existed: true}, "released (api); no instance to retire"},
		{"hibernated", r(messages.ReasonIdle, "demo-1"), hib, ReleaseResult{Existed: true, Saved: true, Generation: 4}, "released (idle): hibernated (generation 4)"},
		{"hibernated on retry", r(messages.ReasonRetry, "demo-1"), hib, ReleaseResult{Existed: true, Saved: true, Generation: 5}, "released (retry): hibernated (generation 5)"},
		{"nothing to save", r(messages.ReasonAPI, "demo-1"), hib, ReleaseResult{Existed: true, Saved: true}, "released (api): hibernated (nothing to save)"},
		{"instance gone before the extract", r(messages.ReasonAPI, "demo-1"), hib, ReleaseResult{}, "released (api): overlay not saved; the instance was already gone"},
		{"destroyed", r(messages.ReasonAPI, "demo-1"), ReleasePlan{Mode: ReleaseDestroy, DeleteOverlay: true}, ReleaseResult{Existed: true}, "released (api): destroyed"},
		{"forced", r(messages.ReasonForce, "demo-1"), ReleasePlan{Mode: ReleaseForced}, ReleaseResult{Existed: true}, "forced: overlay not saved"},
		{"forced, gone", r(messages.ReasonForce, "demo-1"), ReleasePlan{Mode: ReleaseForced}, ReleaseResult{}, "forced: overlay not saved; the instance was already gone"},
	} {
		if got := FinishedDetail(tc.rec, tc.plan, tc.res); got != tc.want {
			t.Errorf("%s: FinishedDetail = %q, want %q", tc.name, got, tc.want)
		}
	}
	boom := messages.Errorf(messages.CodeInternal, "boom")
	if d := ExtractFailedDetail(boom, 4); !strings.HasPrefix(d, "overlay extract failed: boom (4 attempts)") || !strings.Contains(d, "instance is kept") {
		t.Errorf("ExtractFailedDetail = %q", d)
	}
	if d := ExtractConflictDetail(messages.Errorf(messages.CodeConflict, "generation 5 is stored"), 4); !strings.HasPrefix(d, "overlay extract refused") || !strings.Contains(d, "generation 4") || !strings.Contains(d, "force") {
		t.Errorf("ExtractConflictDetail = %q", d)
	}
	if d := DeleteFailedDetail(boom, 1); !strings.HasPrefix(d, "overlay delete failed: boom (1 attempt)") {
		t.Errorf("DeleteFailedDetail = %q", d)
	}
	if d := RestoreFailedDetail("checksum mismatch"); d != "restore failed: checksum mismatch" {
		t.Errorf("RestoreFailedDetail = %q", d)
	}
}
