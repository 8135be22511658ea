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
	for _, tc := range []struct {
		name string
		rec  *messages.ClaimRecord
		want ReleaseAction
	}{
		{"absent", nil, ReleaseNotFound},
		{"active", rec(messages.PhaseActive, time.Hour, 0), ReleaseBegin},
		{"pending", rec(messages.PhasePending, time.Second, time.Minute), ReleaseMark},
		{"pending, release requested", withReason(rec(messages.PhasePending, time.Second, time.Minute), messages.ReasonIdle), ReleaseWait},
		{"pending stale", rec(messages.PhasePending, time.Hour, time.Minute), ReleaseTakeOver},
		{"pending expired", rec(messages.PhasePending, time.Second, -time.Second), ReleaseExpire},
		{"releasing", rec(messages.PhaseReleasing, time.Second, time.Minute), ReleaseWait},
		{"releasing stale", rec(messages.PhaseReleasing, time.Hour, time.Minute), ReleaseTakeOver},
		{"released", rec(messages.PhaseReleased, time.Hour, 0), ReleaseAnswer},
		{"error", rec(messages.PhaseError, time.Hour, 0), ReleaseAnswer},
		{"release failed", rec(messages.PhaseReleaseFailed, time.Hour, 0), ReleaseAnswer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DecideRelease(tc.rec, t0, stale); got != tc.want {
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
		got, err := Activate(rec(messages.PhasePending, 0, time.Minute), "c1", "r1", inst, messages.SourceCold, now, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if got.Phase != messages.PhaseActive || got.InstanceID != "demo-7" || got.Endpoint.Host != "10.0.0.7" ||
			got.Source != messages.SourceCold || !got.ClaimedAt.Equal(t0.Add(time.Second)) || got.Detail != "" || !got.Deadline.IsZero() {
			t.Fatalf("Activate = %+v", got)
		}
	})
	t.Run("activate with a release requested goes to releasing", func(t *testing.T) {
		got, err := Activate(withReason(rec(messages.PhasePending, 0, time.Minute), messages.ReasonIdle), "c1", "r1", inst, messages.SourcePool, now, time.Minute)
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
			return Activate(nil, "c1", "r1", inst, messages.SourcePool, now, time.Minute)
		}},
		{"activate another life", func() (messages.ClaimRecord, error) {
			return Activate(rec(messages.PhasePending, 0, time.Minute), "c0", "r1", inst, messages.SourcePool, now, time.Minute)
		}},
		{"activate taken over", func() (messages.ClaimRecord, error) {
			return Activate(rec(messages.PhasePending, 0, time.Minute), "c1", "r2", inst, messages.SourcePool, now, time.Minute)
		}},
		{"activate expired", func() (messages.ClaimRecord, error) {
			return Activate(rec(messages.PhaseError, 0, 0), "c1", "r1", inst, messages.SourcePool, now, time.Minute)
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
			return MarkBooting(rec(messages.PhaseReleasing, 0, time.Minute), "c1", "r1", now)
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
		got, err := MarkBooting(rec(messages.PhasePending, 0, time.Minute), "c1", "r1", now)
		if err != nil || !Booting(got) || got.Detail != DetailBooting {
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
