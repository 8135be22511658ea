package poolmanager

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

// The pair's claim decides about a tenant Pod without a hold.
func TestUnheldPodOrphaned(t *testing.T) {
	rec := func(phase messages.ClaimPhase, instance string) *messages.ClaimRecord {
		return &messages.ClaimRecord{Phase: phase, InstanceID: instance}
	}
	for _, tt := range []struct {
		rec  *messages.ClaimRecord
		want bool
	}{
		{nil, true},
		{rec(messages.PhasePending, ""), false},
		{rec(messages.PhaseActive, "p"), false},
		{rec(messages.PhaseReleasing, "p"), false},
		{rec(messages.PhaseReleaseFailed, "p"), false},
		{rec(messages.PhaseActive, "other"), true},
		{rec(messages.PhaseError, ""), true},
		{rec(messages.PhaseReleased, "p"), true},
	} {
		if got := UnheldPodOrphaned(tt.rec, "p"); got != tt.want {
			t.Errorf("UnheldPodOrphaned(%+v) = %v, want %v", tt.rec, got, tt.want)
		}
	}
}

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

	// Tenant Pods with no hold: one whose claim is gone, one whose claim is still Pending.
	unheld := map[string]string{"lost": "orph-unheld-lost", "booting": "orph-unheld-booting"}
	for tenant, name := range unheld {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace, Labels: map[string]string{
			v1alpha1.LabelManaged: "true", v1alpha1.LabelWorkload: "orph", v1alpha1.LabelTenant: tenant, v1alpha1.LabelInstance: name}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "boilerhouse/echo:dev"}}}}
		if err := plane.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = plane.Client.Delete(context.Background(), pod) })
	}
	b, _ := json.Marshal(messages.ClaimRecord{TenantID: "booting", Workload: "orph", ID: "life-booting", Phase: messages.PhasePending})
	if _, err := claims.Put(ctx, messages.ClaimKey("booting", "orph"), b); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the unheld pods in the cache", func() (bool, string) {
		n := 0
		for _, name := range unheld {
			var p corev1.Pod
			if pm.client.Get(ctx, client.ObjectKey{Namespace: testNamespace, Name: name}, &p) == nil {
				n++
			}
		}
		return n == len(unheld), ""
	})

	settled := map[string]string{}
	pm.sweepOrphansOnce(ctx, claims, settled, time.Now())
	for _, name := range unheld {
		if p, exists := getPod(t, name); !exists || p.DeletionTimestamp != nil {
			t.Fatalf("unheld pod %s deleted within the grace", name)
		}
	}
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
	waitFor(t, 30*time.Second, "the unheld pod of an ended claim deleted", func() (bool, string) {
		p, exists := getPod(t, unheld["lost"])
		return !exists || p.DeletionTimestamp != nil, ""
	})
	if p, exists := getPod(t, unheld["booting"]); !exists || p.DeletionTimestamp != nil {
		t.Errorf("the unheld pod of a Pending claim was deleted")
	}
	if settled[insts["active"].InstanceID] != "life-active" || len(settled) != 1 {
		t.Errorf("settled = %v; want only the active hold", settled)
	}
}
