package poolmanager

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/translate"
)

func acquireReq(workload, tenant, claimID string) messages.AcquireRequest {
	return messages.AcquireRequest{Workload: workload, TenantID: tenant, ClaimKey: messages.ClaimKey(tenant, workload), ClaimID: claimID}
}

func bootReq(workload, tenant, claimID string) messages.BootRequest {
	return messages.BootRequest{Workload: workload, TenantID: tenant, ClaimKey: messages.ClaimKey(tenant, workload), ClaimID: claimID}
}

func retireReq(inst messages.Instance) messages.RetireRequest {
	return messages.RetireRequest{InstanceID: inst.InstanceID, Workload: inst.Workload, TenantID: inst.TenantID, Reason: "released"}
}

func ledgerEntry(t *testing.T, key string) (LedgerEntry, bool) {
	t.Helper()
	e, err := kv.Get(context.Background(), key)
	if err != nil {
		return LedgerEntry{}, false
	}
	var entry LedgerEntry
	if err := json.Unmarshal(e.Value(), &entry); err != nil {
		t.Fatalf("ledger entry %s: %v", key, err)
	}
	return entry, true
}

func TestAcquireHandsOutEachPodOnce(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "acq", nil)
	five := int32(5)
	createPool(t, "acq-pool", "acq", 5, &five)
	waitPoolFull(t, "acq-pool", 5)
	holdRefills(t, "acq")

	const n = 20
	type result struct {
		req  messages.AcquireRequest
		inst messages.Instance
		err  error
	}
	results := make([]result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		req := acquireReq("acq", fmt.Sprintf("org.t%d", i), fmt.Sprintf("claim-%d", i))
		wg.Go(func() {
			<-start
			inst, err := acquire(ctx, req)
			results[i] = result{req, inst, err}
		})
	}
	close(start)
	wg.Wait()

	var won []result
	seen := map[string]string{}
	for _, r := range results {
		if r.err != nil {
			if c := messages.CodeOf(r.err); c != messages.CodeCapacityExhausted {
				t.Errorf("acquire %s: %v, want capacity_exhausted", r.req.ClaimID, r.err)
			}
			continue
		}
		if prev, dup := seen[r.inst.InstanceID]; dup {
			t.Errorf("instance %s handed to both %s and %s", r.inst.InstanceID, prev, r.req.ClaimID)
		}
		seen[r.inst.InstanceID] = r.req.ClaimID
		won = append(won, r)
	}
	if len(won) != 5 {
		t.Fatalf("%d acquisitions succeeded, want exactly 5 (the pool's ready Pods)", len(won))
	}
	for _, r := range won {
		if !r.inst.Ready || r.inst.Workload != "acq" || r.inst.Pool != "acq-pool" || r.inst.TenantID != r.req.TenantID || r.inst.Phase != PhaseAcquired {
			t.Errorf("instance = %+v", r.inst)
		}
		checkEndpoint(t, r.inst.Endpoint)
		e, ok := ledgerEntry(t, r.inst.InstanceID)
		if !ok || e.ClaimID != r.req.ClaimID || e.TenantID != r.req.TenantID || e.State != StateAcquired || e.ClaimKey != r.req.ClaimKey {
			t.Errorf("ledger entry of %s = %+v, %v", r.inst.InstanceID, e, ok)
		}
	}

	// A retried acquire of the same claim returns the same Pod.
	again, err := acquire(ctx, won[0].req)
	if err != nil || again.InstanceID != won[0].inst.InstanceID {
		t.Fatalf("retried acquire = %+v, %v; want %s", again, err, won[0].inst.InstanceID)
	}
	// The same claim id for another tenant is refused.
	other := won[0].req
	other.TenantID = "intruder"
	if _, err := acquire(ctx, other); messages.CodeOf(err) != messages.CodeConflict {
		t.Errorf("acquire of another tenant's claim id: %v, want conflict", err)
	}

	// Labels follow; the pool refills.
	waitFor(t, 10*time.Second, "acquired pods labelled", func() (bool, string) {
		for _, r := range won {
			p, ok := getPod(t, r.inst.InstanceID)
			if !ok {
				return false, r.inst.InstanceID + " gone"
			}
			if p.Labels[v1alpha1.LabelTenant] != r.req.TenantID || p.Labels[v1alpha1.LabelPoolStatus] != v1alpha1.PoolStatusAcquired {
				return false, fmt.Sprintf("%s labels %v", p.Name, p.Labels)
			}
		}
		return true, ""
	})
	// The pool refills to its size at once (warming: held back by holdRefills), then Ready.
	waitFor(t, 10*time.Second, "pool refilled", func() (bool, string) {
		ready, warming := unheldPoolPods(t, "acq-pool")
		return len(ready)+len(warming) == 5, fmt.Sprintf("ready %d warming %d", len(ready), len(warming))
	})
	releaseRefills(t, "acq")
	waitPoolFull(t, "acq-pool", 5)

	// Label drift is repaired from the ledger.
	victim := won[1]
	p, _ := getPod(t, victim.inst.InstanceID)
	drift := []byte(`{"metadata":{"labels":{"` + v1alpha1.LabelTenant + `":null}}}`)
	if err := plane.Client.Patch(ctx, p, client.RawPatch(types.MergePatchType, drift)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "tenant label restored", func() (bool, string) {
		p, ok := getPod(t, victim.inst.InstanceID)
		return ok && p.Labels[v1alpha1.LabelTenant] == victim.req.TenantID, fmt.Sprint(p.Labels)
	})

	// Retire: Pod and ledger entry go, an instance event is published; retiring again is fine.
	sub, err := nc.SubscribeSync(messages.EventSubject(messages.EventInstance, victim.req.TenantID, "acq"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	reply, err := retire(ctx, retireReq(victim.inst))
	if err != nil || !reply.Retired {
		t.Fatalf("retire = %+v, %v", reply, err)
	}
	if _, ok := ledgerEntry(t, victim.inst.InstanceID); ok {
		t.Errorf("ledger entry of %s survived retire", victim.inst.InstanceID)
	}
	waitFor(t, 20*time.Second, "retired pod gone", func() (bool, string) {
		_, ok := getPod(t, victim.inst.InstanceID)
		return !ok, "still there"
	})
	msg, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no instance event: %v", err)
	}
	var ev messages.Event
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != messages.EventInstance || ev.TenantID != victim.req.TenantID || ev.Workload != "acq" || ev.Instance == nil ||
		ev.Instance.InstanceID != victim.inst.InstanceID || ev.Instance.Phase != PhaseDeleted {
		t.Errorf("event = %+v (instance %+v)", ev, ev.Instance)
	}
	reply, err = retire(ctx, retireReq(victim.inst))
	if err != nil || reply.Retired {
		t.Errorf("second retire = %+v, %v; want retired false", reply, err)
	}
	// Another tenant cannot retire someone's instance.
	stolen := retireReq(won[2].inst)
	stolen.TenantID = "intruder"
	if _, err := retire(ctx, stolen); messages.CodeOf(err) != messages.CodeConflict {
		t.Errorf("retire by another tenant: %v, want conflict", err)
	}
	for _, r := range won[2:] {
		if _, err := retire(ctx, retireReq(r.inst)); err != nil {
			t.Errorf("retire %s: %v", r.inst.InstanceID, err)
		}
	}
	if _, err := retire(ctx, retireReq(won[0].inst)); err != nil {
		t.Errorf("retire %s: %v", won[0].inst.InstanceID, err)
	}
}

func TestAcquireErrors(t *testing.T) {
	ctx := testContext(t)
	if _, err := acquire(ctx, acquireReq("no-such-workload", "alice", "c1")); messages.CodeOf(err) != messages.CodeNotFound {
		t.Errorf("unknown workload: %v, want not_found", err)
	}
	createWorkload(t, "empty", nil)
	if _, err := acquire(ctx, acquireReq("empty", "alice", "c1")); messages.CodeOf(err) != messages.CodeCapacityExhausted {
		t.Errorf("workload without pool: %v, want capacity_exhausted", err)
	}
	createWorkload(t, "docker", func(w *v1alpha1.BoilerhouseWorkload) { w.Spec.Image = v1alpha1.ImageSpec{Dockerfile: "Dockerfile"} })
	_, err := acquire(ctx, acquireReq("docker", "alice", "c1"))
	if messages.CodeOf(err) != messages.CodeInvalidArgument || !strings.Contains(err.Error(), "image.dockerfile is not supported") {
		t.Errorf("invalid workload: %v, want invalid_argument with the detail", err)
	}
	for _, req := range []messages.AcquireRequest{
		acquireReq("empty", "", "c1"),
		acquireReq("empty", "bad tenant", "c1"),
		acquireReq("Bad_Workload", "alice", "c1"),
		acquireReq("empty", "alice", ""),
	} {
		if _, err := acquire(ctx, req); messages.CodeOf(err) != messages.CodeInvalidArgument {
			t.Errorf("acquire %+v: %v, want invalid_argument", req, err)
		}
	}
}

func TestBootIsIdempotentAndReady(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "cold", nil)
	req := bootReq("cold", "org.acme", "boot-claim-1")
	var wg sync.WaitGroup
	insts := make([]messages.Instance, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() { insts[i], errs[i] = boot(ctx, req) })
	}
	wg.Wait()
	want := translate.ClaimInstanceID("cold", "boot-claim-1")
	for i := range 2 {
		if errs[i] != nil {
			t.Fatalf("boot %d: %v", i, errs[i])
		}
		if insts[i].InstanceID != want || !insts[i].Ready || insts[i].TenantID != "org.acme" || insts[i].Workload != "cold" {
			t.Errorf("boot %d = %+v", i, insts[i])
		}
		checkEndpoint(t, insts[i].Endpoint)
	}
	pods := listPods(t, map[string]string{v1alpha1.LabelWorkload: "cold"})
	if len(pods) != 1 {
		t.Fatalf("%d pods for two identical boots, want 1", len(pods))
	}
	if p := pods[0]; p.Labels[v1alpha1.LabelTenant] != "org.acme" || p.Labels[v1alpha1.LabelPool] != "" {
		t.Errorf("boot pod labels = %v", p.Labels)
	}
	if e, ok := ledgerEntry(t, want); !ok || e.ClaimID != "boot-claim-1" || e.State != StateAcquired || e.TenantID != "org.acme" {
		t.Errorf("ledger entry = %+v, %v", e, ok)
	}
	// A later retry answers at once with the same instance.
	again, err := boot(ctx, req)
	if err != nil || again.InstanceID != want {
		t.Errorf("boot retry = %+v, %v", again, err)
	}

	reply, err := retire(ctx, retireReq(insts[0]))
	if err != nil || !reply.Retired {
		t.Fatalf("retire = %+v, %v", reply, err)
	}
	waitFor(t, 20*time.Second, "booted pod gone", func() (bool, string) {
		_, ok := getPod(t, want)
		return !ok, "still there"
	})
	if _, ok := ledgerEntry(t, want); ok {
		t.Error("ledger entry survived retire")
	}
	if reply, err := retire(ctx, retireReq(insts[0])); err != nil || reply.Retired {
		t.Errorf("retire again = %+v, %v", reply, err)
	}
}

func TestBootFailingPod(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "crash", failing)
	sub, err := nc.SubscribeSync(messages.EventSubject(messages.EventInstance, "bob", "crash"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_, err = boot(ctx, bootReq("crash", "bob", "crash-claim"))
	if err == nil || !strings.HasPrefix(messages.AsError(err).Message, "pod failed:") {
		t.Fatalf("boot of a failing pod: %v, want a message starting \"pod failed:\"", err)
	}
	msg, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no instance event for the failed pod: %v", err)
	}
	var ev messages.Event
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Instance == nil || ev.Instance.Phase != PhaseFailed || ev.TenantID != "bob" {
		t.Errorf("event = %+v", ev)
	}
	if _, err := retire(ctx, messages.RetireRequest{InstanceID: translate.ClaimInstanceID("crash", "crash-claim"), TenantID: "bob", Workload: "crash"}); err != nil {
		t.Errorf("retire failed pod: %v", err)
	}
}

func TestBootErrors(t *testing.T) {
	ctx := testContext(t)
	if _, err := boot(ctx, bootReq("no-such-workload", "alice", "c1")); messages.CodeOf(err) != messages.CodeNotFound {
		t.Errorf("unknown workload: %v, want not_found", err)
	}
	createWorkload(t, "badenv", func(w *v1alpha1.BoilerhouseWorkload) {
		w.Spec.Entrypoint = &v1alpha1.EntrypointSpec{Env: envJSON(`{"A":["x"]}`)}
	})
	if _, err := boot(ctx, bootReq("badenv", "alice", "c1")); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Errorf("invalid workload: %v, want invalid_argument", err)
	}
	if _, err := boot(ctx, bootReq("badenv", "alice", "")); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Errorf("no claim id: %v, want invalid_argument", err)
	}
	// A boot that cannot become Ready in time answers deadline_exceeded.
	createWorkload(t, "slow", func(w *v1alpha1.BoilerhouseWorkload) {
		w.Annotations = map[string]string{translate.AnnotationPodAnnotations: `{"devnode.boilerhouse.dev/behavior":"never-ready"}`}
	})
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := bus.Client[messages.BootRequest, messages.Instance](nc, messages.SubjectInstancesBoot, 2*time.Second)(short, bootReq("slow", "alice", "slow-1"))
	if messages.CodeOf(err) != messages.CodeDeadlineExceeded {
		t.Errorf("never-ready boot: %v, want deadline_exceeded", err)
	}
	if _, err := retire(ctx, messages.RetireRequest{InstanceID: translate.ClaimInstanceID("slow", "slow-1"), TenantID: "alice"}); err != nil {
		t.Errorf("retire: %v", err)
	}
	if _, err := retire(ctx, messages.RetireRequest{InstanceID: "Not A Name"}); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Errorf("retire of a malformed id: %v, want invalid_argument", err)
	}
}

func TestWorkloadStatusReconciled(t *testing.T) {
	w := createWorkload(t, "status-check", func(w *v1alpha1.BoilerhouseWorkload) {
		w.Spec.Image = v1alpha1.ImageSpec{}
		w.Spec.Entrypoint = &v1alpha1.EntrypointSpec{Env: envJSON(`{"A":1}`)}
	})
	get := func() *v1alpha1.BoilerhouseWorkload {
		var got v1alpha1.BoilerhouseWorkload
		if err := plane.Client.Get(context.Background(), client.ObjectKeyFromObject(w), &got); err != nil {
			t.Fatal(err)
		}
		return &got
	}
	waitFor(t, 20*time.Second, "workload Error", func() (bool, string) {
		g := get()
		c := meta.FindStatusCondition(g.Status.Conditions, v1alpha1.ConditionReady)
		return g.Status.Phase == v1alpha1.WorkloadError && g.Status.ObservedGeneration == g.Generation &&
			g.Status.Detail == `either image.ref or image.dockerfile must be set; entrypoint.env["A"] must be a string, got 1` &&
			c != nil && c.Status == metav1.ConditionFalse && c.Reason == "Invalid" && c.Message == g.Status.Detail, fmt.Sprintf("%+v", g.Status)
	})
	g := get()
	patch := client.MergeFrom(g.DeepCopy())
	g.Spec.Image.Ref = "boilerhouse/echo:dev"
	g.Spec.Entrypoint = nil
	if err := plane.Client.Patch(context.Background(), g, patch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "workload Ready", func() (bool, string) {
		g := get()
		c := meta.FindStatusCondition(g.Status.Conditions, v1alpha1.ConditionReady)
		return g.Status.Phase == v1alpha1.WorkloadReady && g.Status.Detail == "" && g.Status.ObservedGeneration == g.Generation && g.Generation > 1 &&
				c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == g.Generation,
			fmt.Sprintf("generation %d, %+v", g.Generation, g.Status)
	})
}
