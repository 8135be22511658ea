package loadgen

import (
	"encoding/json"
	"testing"
	"time"

	"boilerhouse.dev/messages"
)

func TestIdleTracker(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const timeout = 10 * time.Second
	rec := func(tenant, id string, phase messages.ClaimPhase, reason messages.ReleaseReason) []byte {
		b, _ := json.Marshal(messages.ClaimRecord{TenantID: tenant, Workload: "w", ID: id, Phase: phase,
			ReleaseReason: reason, IdleTimeoutSeconds: int32(timeout / time.Second), UpdatedAt: t0})
		return b
	}
	idle := func(id string, last time.Time, fired bool) []byte {
		b, _ := json.Marshal(messages.IdleValue{ClaimID: id, LastActivity: last, TimeoutSeconds: int32(timeout / time.Second), Fired: fired})
		return b
	}
	key := func(tenant string) string { return messages.ClaimKey(tenant, "w") }
	deadline := t0.Add(timeout)

	tr := newIdleTracker("run-")
	// on time: the idle value arrives before the Active record (two watches, no order between them).
	tr.idleEntry(key("run-0"), idle("a", t0, false))
	tr.claimEntry(key("run-0"), true, rec("run-0", "a", messages.PhaseActive, ""), t0)
	tr.idleEntry(key("run-0"), idle("a", t0, true))
	tr.claimEntry(key("run-0"), true, rec("run-0", "a", messages.PhaseReleasing, messages.ReasonIdle), deadline.Add(300*time.Millisecond))
	tr.claimEntry(key("run-0"), true, rec("run-0", "a", messages.PhaseReleasing, messages.ReasonIdle), deadline.Add(400*time.Millisecond))
	tr.claimEntry(key("run-0"), true, rec("run-0", "a", messages.PhaseReleased, messages.ReasonIdle), deadline.Add(time.Second))
	// early
	tr.claimEntry(key("run-1"), true, rec("run-1", "b", messages.PhaseActive, ""), t0)
	tr.idleEntry(key("run-1"), idle("b", t0, false))
	tr.claimEntry(key("run-1"), true, rec("run-1", "b", messages.PhaseReleasing, messages.ReasonIdle), deadline.Add(-time.Millisecond))
	// twice
	tr.claimEntry(key("run-2"), true, rec("run-2", "c", messages.PhaseActive, ""), t0)
	tr.claimEntry(key("run-2"), true, rec("run-2", "c", messages.PhaseReleasing, messages.ReasonIdle), deadline)
	tr.claimEntry(key("run-2"), true, rec("run-2", "c", messages.PhaseReleaseFailed, messages.ReasonIdle), deadline.Add(time.Second))
	tr.claimEntry(key("run-2"), true, rec("run-2", "c", messages.PhaseReleasing, messages.ReasonIdle), deadline.Add(2*time.Second))
	// fired twice (asked twice), released once
	tr.claimEntry(key("run-5"), true, rec("run-5", "g", messages.PhaseActive, ""), t0)
	tr.idleEntry(key("run-5"), idle("g", t0, true))
	tr.idleEntry(key("run-5"), idle("g", t0, false))
	tr.idleEntry(key("run-5"), idle("g", t0, true))
	tr.claimEntry(key("run-5"), true, rec("run-5", "g", messages.PhaseReleasing, messages.ReasonIdle), deadline)
	// never
	tr.claimEntry(key("run-3"), true, rec("run-3", "d", messages.PhaseActive, ""), t0)
	// another reason
	tr.claimEntry(key("run-4"), true, rec("run-4", "e", messages.PhaseActive, ""), t0)
	tr.claimEntry(key("run-4"), true, rec("run-4", "e", messages.PhaseReleasing, messages.ReasonAPI), deadline)
	// not ours
	tr.claimEntry(key("other-0"), true, rec("other-0", "f", messages.PhaseActive, ""), t0)

	if tr.allReleased() {
		t.Error("allReleased with claims still Active")
	}
	res := tr.result(t0.Add(-time.Second))
	res.Claims = 6
	if res.Active != 6 || res.Released != 1 || res.Early != 1 || res.Twice != 2 || res.Never != 1 || res.NotIdle != 1 {
		t.Errorf("counts: %+v", res)
	}
	if !res.Failed() {
		t.Error("not failed")
	}
	if res.ClaimPhase != time.Second || res.Timeout != timeout || res.DeadlineSkew != 0 {
		t.Errorf("phase %v timeout %v skew %v", res.ClaimPhase, res.Timeout, res.DeadlineSkew)
	}
	if len(res.Groups) != 2 || res.Groups[0].Group != "deadline to Releasing" || res.Groups[0].Count != 5 ||
		res.Groups[0].Max != 300*time.Millisecond || res.Groups[1].Count != 1 || res.Groups[1].Max != time.Second {
		t.Errorf("groups %+v", res.Groups)
	}
}
