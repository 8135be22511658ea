package poolmanager

import (
	"context"
	"errors"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/translate"
)

// Instance phases reported in replies and events (messages.Instance.Phase).
const (
	PhaseAcquired = "acquired" // a pool Pod handed to a claim
	PhaseBooted   = "booted"   // a cold-booted Pod, Ready
	PhaseFailed   = "failed"   // the Pod failed
	PhaseDeleted  = "deleted"  // the Pod is gone
	// PhaseAwaitingRestore: a cold-booted Pod whose restore init container waits for the
	// overlay-store (messages.InstancePhaseAwaitingRestore).
	PhaseAwaitingRestore = messages.InstancePhaseAwaitingRestore
)

// Acquire hands a Ready pool Pod of the workload to a claim. It answers from the informer
// cache and the ledger view; its only write is the ledger Create that takes the Pod. Labels
// follow asynchronously, and the pool is refilled at once.
//
// Errors: invalid_argument for a malformed request, and for a workload that is not Ready (its
// spec fails validation: retrying will not help until the workload is fixed); not_found for an
// unknown workload; capacity_exhausted when no pool Pod is Ready.
func (m *Manager) Acquire(ctx context.Context, req messages.AcquireRequest) (messages.Instance, error) {
	var zero messages.Instance
	if err := validateClaimRef(req.TenantID, req.Workload, req.ClaimID); err != nil {
		return zero, err
	}
	unlock := m.lockClaim(req.ClaimID)
	defer unlock()

	// A retried acquire of the same claim gets the same instance.
	if key, e, ok := m.ledger.ByClaim(req.ClaimID); ok && e.State == StateAcquired && e.Workload == req.Workload {
		if e.TenantID != req.TenantID {
			return zero, messages.Errorf(messages.CodeConflict, "claim id %q belongs to another tenant", req.ClaimID)
		}
		pod, err := m.cachedPod(ctx, key)
		if err != nil {
			return zero, err
		}
		if pod != nil && PodReady(pod) {
			return instanceOf(pod, m.cachedWorkload(ctx, req.Workload), e.TenantID, PhaseAcquired), nil
		}
		return zero, messages.Errorf(messages.CodeCapacityExhausted, "instance %s of claim %s is no longer ready", key, req.ClaimID)
	}

	w, err := m.readyWorkload(ctx, req.Workload)
	if err != nil {
		return zero, err
	}
	// A few candidates at a time: a lost ledger create (another replica won) moves on to the next.
	tried := map[string]bool{}
	skip := func(p *corev1.Pod) bool {
		_, busy := m.inflight.Load(p.Name)
		return busy || tried[p.Name] || HeldBy(p, m.ledger.Held(p.Name))
	}
	for {
		candidates := m.pods.candidates(req.Workload, 4, skip)
		if len(candidates) == 0 {
			break
		}
		for _, p := range candidates {
			tried[p.Name] = true
			if _, busy := m.inflight.LoadOrStore(p.Name, struct{}{}); busy {
				continue
			}
			pool := p.Labels[v1alpha1.LabelPool]
			ok, err := m.ledger.Create(ctx, p.Name, LedgerEntry{
				ClaimKey: req.ClaimKey, ClaimID: req.ClaimID, TenantID: req.TenantID, Workload: req.Workload,
				Pool: pool, State: StateAcquired, At: time.Now().UTC(), By: m.cfg.ReplicaID,
			})
			m.inflight.Delete(p.Name)
			if err != nil {
				return zero, err
			}
			if !ok {
				continue // another replica took it; the ledger now holds it, so skip drops it
			}
			m.pods.taken(p.Name)
			inst := instanceOf(p, w, req.TenantID, PhaseAcquired)
			// After the answer: labels (off the request path) and the refill.
			m.labelQueue.Add(p.Name)
			m.triggerPool(pool)
			return inst, nil
		}
	}
	return zero, messages.Errorf(messages.CodeCapacityExhausted, "no ready pool instance of workload %q", req.Workload)
}

// Boot creates the Pod of a claim (named from the claim id, so a retry finds it), records it
// in the ledger and waits until it is Ready.
//
// A boot with RestoreGeneration > 0 (a cold boot with data) creates the Pod with the restore
// init container (translate.Options.Restore), which holds the workload back until the
// overlay-store has restored into it, and answers as soon as that init container runs: Ready
// false, Phase messages.InstancePhaseAwaitingRestore. The ledger entry then records that the
// answer was given (RestoreOffered), so that the boot the claim-router sends after the restore
// (same claim id, with or without RestoreGeneration) waits for Ready instead, even while the
// Pod's status still shows the init container running for a moment. Should the init container
// still run RestoreRepeatGrace into such a repeated boot (the earlier answer was lost, or the
// router restarted before restoring), it answers awaiting-restore again. A concurrent
// duplicate of the first boot answers awaiting-restore too.
//
// Errors: invalid_argument (request, workload not Ready, or a restore asked for a workload
// without overlay directories), not_found (unknown workload), conflict (the instance belongs to
// someone else, is being deleted, or was booted without the restore gate a retry now asks
// for), internal with a message starting "pod failed:" when the Pod fails (an interrupted
// restore init container included), capacity_exhausted "unschedulable: ..." when it cannot be
// scheduled, deadline_exceeded when it is not Ready (or not awaiting its restore) in time (it
// keeps booting; a retry with the same claim id waits for the same Pod).
func (m *Manager) Boot(ctx context.Context, req messages.BootRequest) (messages.Instance, error) {
	var zero messages.Instance
	if err := validateClaimRef(req.TenantID, req.Workload, req.ClaimID); err != nil {
		return zero, err
	}
	if req.RestoreGeneration < 0 {
		return zero, messages.Errorf(messages.CodeInvalidArgument, "restoreGeneration %d must not be negative", req.RestoreGeneration)
	}
	w, err := m.readyWorkload(ctx, req.Workload)
	if err != nil {
		return zero, err
	}
	restore := req.RestoreGeneration > 0
	if restore && !translate.HasOverlays(w.Spec) {
		return zero, messages.Errorf(messages.CodeInvalidArgument, "workload %q has no overlay directories to restore into", req.Workload)
	}
	name := translate.ClaimInstanceID(req.Workload, req.ClaimID)
	if e, ok := m.ledger.Get(name); ok {
		if err := sameClaim(name, e, req.ClaimID); err != nil {
			return zero, err
		}
	}
	wake, cancelWait := m.waiters.wait(name)
	defer cancelWait()

	pod, err := m.cachedPod(ctx, name)
	if err != nil {
		return zero, err
	}
	if pod != nil {
		if t := pod.Labels[v1alpha1.LabelTenant]; t != "" && t != req.TenantID {
			return zero, messages.Errorf(messages.CodeConflict, "instance %s belongs to tenant %q", name, t)
		}
		if restore && !RestoreGated(pod) && pod.DeletionTimestamp == nil {
			return zero, messages.Errorf(messages.CodeConflict,
				"instance %s of claim %s was booted without a restore; retire it before booting with restoreGeneration %d", name, req.ClaimID, req.RestoreGeneration)
		}
	} else {
		p, err := translate.Pod(w, translate.Options{Namespace: m.cfg.Namespace, InstanceID: name, TenantID: req.TenantID,
			HelperImage: m.cfg.HelperImage, Restore: restore})
		if err != nil {
			return zero, messages.Errorf(messages.CodeInvalidArgument, "workload %q: %v", req.Workload, err)
		}
		if err := m.client.Create(ctx, p); err != nil && !apierrors.IsAlreadyExists(err) {
			return zero, kubeError("create pod "+name, err)
		}
	}
	// offered: an earlier boot of this claim already answered awaiting-restore.
	offered := false
	if !m.ledger.Held(name) {
		ok, err := m.ledger.Create(ctx, name, LedgerEntry{
			ClaimKey: req.ClaimKey, ClaimID: req.ClaimID, TenantID: req.TenantID, Workload: req.Workload,
			State: StateAcquired, At: time.Now().UTC(), By: m.cfg.ReplicaID, RestoreGeneration: req.RestoreGeneration,
		})
		if err != nil {
			return zero, err
		}
		if !ok {
			e, found, err := m.ledger.Read(ctx, name)
			if err != nil {
				return zero, err
			}
			if found {
				if err := sameClaim(name, e, req.ClaimID); err != nil {
					return zero, err
				}
				offered = e.RestoreOffered
			}
		}
	} else if pod == nil || RestoreGated(pod) {
		// A repeated boot: read the entry itself, not the view, which may lag behind the
		// replica that answered the first boot.
		e, found, err := m.ledger.Read(ctx, name)
		if err != nil {
			return zero, err
		}
		if found {
			if err := sameClaim(name, e, req.ClaimID); err != nil {
				return zero, err
			}
			offered = e.RestoreOffered
		}
	}

	wctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	var graceOver <-chan time.Time
	if offered {
		t := time.NewTimer(m.cfg.RestoreRepeatGrace)
		defer t.Stop()
		graceOver = t.C
	}
	seen := false
	for {
		pod, err := m.cachedPod(wctx, name)
		if err != nil && wctx.Err() == nil {
			return zero, err
		}
		switch {
		case pod == nil && seen:
			return zero, messages.Errorf(messages.CodeConflict, "instance %s was deleted while booting", name)
		case pod == nil:
			// not in the cache yet
		case pod.DeletionTimestamp != nil:
			return zero, messages.Errorf(messages.CodeConflict, "instance %s is being deleted", name)
		case PodReady(pod):
			return instanceOf(pod, w, req.TenantID, PhaseBooted), nil
		case PodFinished(pod):
			return zero, messages.Errorf(messages.CodeInternal, "pod failed: %s", FailureReason(pod))
		case RestoreWaiting(pod) && !offered:
			if err := m.offerRestore(wctx, name, req.ClaimID); err != nil {
				return zero, err
			}
			inst := instanceOf(pod, w, req.TenantID, PhaseAwaitingRestore)
			inst.Ready = false
			return inst, nil
		default:
			if msg, ok := Unschedulable(pod); ok {
				return zero, messages.Errorf(messages.CodeCapacityExhausted, "unschedulable: %s", msg)
			}
		}
		seen = seen || pod != nil
		select {
		case <-wake:
		case <-graceOver:
			// The restore init container still waits well after the first answer: nobody
			// is restoring, so say again that it awaits its restore.
			offered, graceOver = false, nil
			m.log.Info("repeated boot: instance still awaits its restore", "instance", name, "claim", req.ClaimID)
		case <-wctx.Done():
			return zero, messages.Errorf(messages.CodeDeadlineExceeded, "instance %s is not ready yet", name)
		}
	}
}

// offerRestore records in the ledger entry of a Pod that a boot answered awaiting-restore.
func (m *Manager) offerRestore(ctx context.Context, name, claimID string) error {
	return m.ledger.Update(ctx, name, func(e *LedgerEntry) (bool, error) {
		if err := sameClaim(name, *e, claimID); err != nil {
			return false, err
		}
		if e.RestoreOffered {
			return false, nil
		}
		e.RestoreOffered = true
		return true, nil
	})
}

// Retire deletes an instance's Pod and then its ledger entry. Retiring an instance that is
// already gone succeeds with Retired false. A Pod held for another tenant, or a pool Pod nobody
// holds, is refused with conflict.
func (m *Manager) Retire(ctx context.Context, req messages.RetireRequest) (messages.RetireReply, error) {
	var zero messages.RetireReply
	if errs := validation.IsDNS1123Label(req.InstanceID); len(errs) > 0 {
		return zero, messages.Errorf(messages.CodeInvalidArgument, "instance id %q is not valid: %s", req.InstanceID, errs[0])
	}
	entry, held, err := m.ledger.Read(ctx, req.InstanceID)
	if err != nil {
		return zero, err
	}
	if held && entry.TenantID != "" && req.TenantID != "" && entry.TenantID != req.TenantID {
		return zero, messages.Errorf(messages.CodeConflict, "instance %s is held for another tenant", req.InstanceID)
	}
	pod, err := m.cachedPod(ctx, req.InstanceID)
	if err != nil {
		return zero, err
	}
	if pod != nil {
		t := pod.Labels[v1alpha1.LabelTenant]
		if req.TenantID != "" && t != "" && t != req.TenantID && !held {
			return zero, messages.Errorf(messages.CodeConflict, "instance %s belongs to another tenant", req.InstanceID)
		}
		if !held && t == "" {
			return zero, messages.Errorf(messages.CodeConflict, "instance %s is not assigned to a tenant", req.InstanceID)
		}
	}
	retired := true
	err = m.client.Delete(ctx, &corev1.Pod{ObjectMeta: objectMeta(m.cfg.Namespace, req.InstanceID)})
	switch {
	case apierrors.IsNotFound(err):
		retired = false
	case err != nil:
		return zero, kubeError("delete pod "+req.InstanceID, err)
	}
	if held {
		if err := m.ledger.Delete(ctx, req.InstanceID); err != nil {
			return zero, err
		}
	}
	m.log.Debug("retired instance", "instance", req.InstanceID, "tenant", req.TenantID, "reason", req.Reason, "existed", retired)
	return messages.RetireReply{Retired: retired}, nil
}

// readyWorkload returns the workload if Pods can be made of it. A workload is Ready exactly when
// WorkloadProblem finds nothing; the cached workload is checked directly rather than its
// status, so a just-created or just-fixed workload does not wait for the status to catch up.
func (m *Manager) readyWorkload(ctx context.Context, name string) (*v1alpha1.BoilerhouseWorkload, error) {
	var w v1alpha1.BoilerhouseWorkload
	key := types.NamespacedName{Namespace: m.cfg.Namespace, Name: name}
	err := m.client.Get(ctx, key, &w)
	if apierrors.IsNotFound(err) {
		// The cache may not have seen a workload created a moment ago: ask the API server
		// before answering not_found (a read, and only for unknown workloads).
		err = m.mgr.GetAPIReader().Get(ctx, key, &w)
	}
	switch {
	case apierrors.IsNotFound(err):
		return nil, messages.Errorf(messages.CodeNotFound, "workload %q not found", name)
	case err != nil:
		return nil, messages.Errorf(messages.CodeUnavailable, "reading workload %q: %v", name, err)
	case w.DeletionTimestamp != nil:
		return nil, messages.Errorf(messages.CodeNotFound, "workload %q is being deleted", name)
	}
	if err := WorkloadProblem(&w); err != nil {
		return nil, messages.Errorf(messages.CodeInvalidArgument, "workload %q is not ready: %v", name, err)
	}
	return &w, nil
}

// cachedPod reads a managed Pod from the informer cache; nil when absent.
func (m *Manager) cachedPod(ctx context.Context, name string) (*corev1.Pod, error) {
	var pod corev1.Pod
	err := m.client.Get(ctx, types.NamespacedName{Namespace: m.cfg.Namespace, Name: name}, &pod)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, messages.Errorf(messages.CodeDeadlineExceeded, "reading pod %s: %v", name, err)
		}
		return nil, messages.Errorf(messages.CodeUnavailable, "reading pod %s: %v", name, err)
	}
	return &pod, nil
}

func objectMeta(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// cachedWorkload reads a workload from the cache; nil when it cannot be read.
func (m *Manager) cachedWorkload(ctx context.Context, name string) *v1alpha1.BoilerhouseWorkload {
	var w v1alpha1.BoilerhouseWorkload
	if err := m.client.Get(ctx, types.NamespacedName{Namespace: m.cfg.Namespace, Name: name}, &w); err != nil {
		return nil
	}
	return &w
}

// instanceOf describes a Pod for a reply. Overlays says whether the Pod carries the overlay
// helper (what extract and restore need); ReleaseAction is w's idle.action (default
// hibernate, also when w is nil).
func instanceOf(p *corev1.Pod, w *v1alpha1.BoilerhouseWorkload, tenant, phase string) messages.Instance {
	return messages.Instance{
		InstanceID:    p.Name,
		Workload:      p.Labels[v1alpha1.LabelWorkload],
		Pool:          p.Labels[v1alpha1.LabelPool],
		TenantID:      tenant,
		Endpoint:      Endpoint(p),
		Ready:         PodReady(p),
		Phase:         phase,
		Overlays:      HasOverlayHelper(p),
		ReleaseAction: ReleaseAction(w),

		IdleTimeoutSeconds: IdleTimeoutSeconds(w),
		WatchDirs:          WatchDirs(w),
	}
}

func sameClaim(name string, e LedgerEntry, claimID string) error {
	switch {
	case e.State == StateRetiring:
		return messages.Errorf(messages.CodeConflict, "instance %s is being retired", name)
	case e.ClaimID != claimID:
		return messages.Errorf(messages.CodeConflict, "instance %s belongs to another claim", name)
	}
	return nil
}

func validateClaimRef(tenant, workload, claimID string) error {
	if err := messages.ValidateTenantID(tenant); err != nil {
		return err
	}
	if err := messages.ValidateWorkloadName(workload); err != nil {
		return err
	}
	if claimID == "" {
		return messages.Errorf(messages.CodeInvalidArgument, "claimId must not be empty")
	}
	if len(claimID) > 256 {
		return messages.Errorf(messages.CodeInvalidArgument, "claimId is %d characters long, must be at most 256", len(claimID))
	}
	return nil
}

// claimLocks serialises requests of one claim id within this replica, so two concurrent
// retries of one acquire cannot take two Pods.
type claimLocks struct {
	mu    sync.Mutex
	locks map[string]*claimLock
}

type claimLock struct {
	sync.Mutex
	refs int
}

func (m *Manager) lockClaim(id string) (unlock func()) {
	c := &m.claims
	c.mu.Lock()
	if c.locks == nil {
		c.locks = map[string]*claimLock{}
	}
	l := c.locks[id]
	if l == nil {
		l = &claimLock{}
		c.locks[id] = l
	}
	l.refs++
	c.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		c.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(c.locks, id)
		}
		c.mu.Unlock()
	}
}
