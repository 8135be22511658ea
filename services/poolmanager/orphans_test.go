package poolmanager

import (
	"encoding/json"
	"testing"
	"time"

	"boilerhouse.dev/messages"
)

// TestOrphanSweep: holds whose claim life has no record, another life or an Error record are
// retired once older than the grace; holds of Pending and Active lives are kept.
func TestOrphanSweep(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "orph", nil)
	five := int32(5)
	createPool(t, "orph-pool", "orph", 5, &five)
	waitPoolFull(t, "orph-pool", 5)
	holdRefills(t, "orph")
	claims, err := pm.js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatal(err)
	}
	// tenant -> the phase of the record written for it ("" none, "other" another life).
	cases := map[string]messages.ClaimPhase{
		"none": "", "other": "other", "failed": messages.PhaseError,
		"waiting": messages.PhasePending, "active": messages.PhaseActive,
	}
	insts := map[string]messages.Instance{}
	for tenant, phase := range cases {
		inst, err := acquire(ctx, acquireReq("orph", tenant, "life-"+tenant))
		if err != nil {
			t.Fatalf("acquire for %s: %v", tenant, err)
		}
		insts[tenant] = inst
		if phase == "" {
			continue
		}
		rec := messages.ClaimRecord{TenantID: tenant, Workload: "orph", ID: "life-" + tenant, Phase: phase}
		if phase == "other" {
			rec.ID, rec.Phase = "a-later-life", messages.PhaseActive
		}
		if phase == messages.PhaseActive {
			rec.InstanceID = inst.InstanceID
		}
		b, _ := json.Marshal(rec)
		if _, err := claims.Put(ctx, messages.ClaimKey(tenant, "orph"), b); err != nil {
			t.Fatal(err)
		}
	}
	held := func(tenant string) bool {
		_, ok := ledgerEntry(t, insts[tenant].InstanceID)
		return ok
	}

	settled := map[string]string{}
	pm.sweepOrphansOnce(ctx, claims, settled, time.Now())
	for tenant := range cases {
		if !held(tenant) {
			t.Fatalf("the hold of %s was retired within the grace", tenant)
		}
	}
	later := time.Now().Add(DefaultOrphanGrace + time.Second)
	pm.sweepOrphansOnce(ctx, claims, settled, later)
	for tenant, phase := range cases {
		want := phase == messages.PhasePending || phase == messages.PhaseActive
		if held(tenant) != want {
			t.Errorf("%s (record %q): held %v, want %v", tenant, phase, held(tenant), want)
		}
		if _, exists := getPod(t, insts[tenant].InstanceID); !want && exists {
			waitFor(t, 30*time.Second, "orphan pod of "+tenant+" deleted", func() (bool, string) {
				_, exists := getPod(t, insts[tenant].InstanceID)
				return !exists, ""
			})
		}
	}
	if settled[insts["active"].InstanceID] != "life-active" || len(settled) != 1 {
		t.Errorf("settled = %v; want only the active hold", settled)
	}
}
