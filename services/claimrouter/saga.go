package claimrouter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/tracing"
)

// This file holds the sagas (claim, release), their heartbeat, the
// recovery of claims whose owner died (sweep, takeover, expiry) and the
// instance events that end Active claims.

// expire turns the Pending record of key Error "timeout" if it is past its
// deadline. Losing to another writer is fine.
func (r *Router) expire(key string) error {
	e, _, err := r.transition(key, "timeout", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
		return Expire(c, time.Now())
	})
	if err != nil && !errors.Is(err, ErrSuperseded) {
		return err
	}
	if e != nil {
		r.logger.Warn("claim timed out", "key", key, "claim", e.Record.ID, "owner", e.Record.Owner)
	}
	return nil
}

// takeOver makes this replica the owner of key's in-flight record if its
// owner is stale, and reruns its saga. Losing to another writer is fine.
func (r *Router) takeOver(key string) error {
	e, _, err := r.transition(key, "taken-over", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
		if c != nil && r.sagas.has(key, c.ID) {
			// Our own saga is alive but could not refresh: let it be.
			return messages.ClaimRecord{}, ErrSuperseded
		}
		return TakeOver(c, r.cfg.ReplicaID, time.Now(), r.cfg.StaleAfter, r.cfg.ClaimTimeout)
	})
	if errors.Is(err, ErrSuperseded) {
		return nil
	}
	if err != nil {
		return err
	}
	r.logger.Info("took over claim", "key", key, "claim", e.Record.ID, "phase", e.Record.Phase)
	r.startSaga(trace.SpanContext{}, *e)
	return nil
}

// sweep scans the bucket: Pending records past their deadline expire,
// in-flight records with a stale owner are taken over.
func (r *Router) sweep() {
	ctx, cancel := context.WithTimeout(r.runCtx, kvTimeout)
	defer cancel()
	entries, err := r.store.List(ctx)
	if err != nil {
		if r.runCtx.Err() == nil {
			r.logger.Warn("sweep: list claims", "err", err)
		}
		return
	}
	now := time.Now()
	for _, e := range entries {
		if r.sagas.has(e.Key, e.Record.ID) {
			continue // ours, and alive: it handles its own deadline
		}
		var err error
		switch DecideRecovery(&e.Record, now, r.cfg.StaleAfter) {
		case RecoverExpire:
			err = r.expire(e.Key)
		case RecoverTakeOver:
			err = r.takeOver(e.Key)
		}
		if err != nil && r.runCtx.Err() == nil {
			r.logger.Warn("sweep", "key", e.Key, "err", err)
		}
	}
}

// startSaga runs the saga of e (a Pending or Releasing record this replica
// owns) on its own goroutine, unless one runs already for that life or the
// router is stopping. parent is the span of the request that started it, if
// any: the saga's span goes under it, so that a cold boot or a release is part
// of the claim's trace.
func (r *Router) startSaga(parent trace.SpanContext, e Entry) {
	kind := e.Record.Phase
	if !InFlight(kind) {
		return
	}
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	added, done := r.sagas.add(e.Key, e.Record.ID, kind)
	r.wg.Add(1)
	r.mu.Unlock()
	if !added {
		// A saga of the same life and kind is returning here: a release
		// restarted (retry, force) just after its previous run wrote
		// ReleaseFailed. Start once it is gone; the new run first checks
		// that it still owns the record.
		go func() {
			defer r.wg.Done()
			select {
			case <-done:
				r.startSaga(parent, e)
			case <-r.stopping:
			}
		}()
		return
	}
	go func() {
		defer r.wg.Done()
		defer r.sagas.remove(e.Key, e.Record.ID, kind)
		r.runSaga(parent, e)
	}()
}

// runSaga refreshes the record while the saga runs (and while it waits for
// a worker slot), and stops the saga when the record is superseded (taken
// over, expired) or the router stops; the record is then left for whoever
// owns it.
func (r *Router) runSaga(parent trace.SpanContext, e Entry) {
	defer r.poolTried.Delete(e.Record.ID) // a saga stopped before obtain leaves no entry behind
	ctx, cancel := context.WithCancel(r.runCtx)
	defer cancel()
	if parent.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, parent)
	}
	ctx, span := tracing.Start(ctx, sagaSpan[e.Record.Phase], trace.SpanKindInternal,
		tracing.Tenant(e.Record.TenantID), tracing.Workload(e.Record.Workload))
	defer span.End()
	var detail atomic.Value
	detail.Store("")
	hb := make(chan struct{})
	go func() {
		defer close(hb)
		r.heartbeat(ctx, cancel, e.Key, e.Record.ID, &detail)
	}()
	defer func() { cancel(); <-hb }()

	select {
	case r.slots <- struct{}{}:
		defer func() { <-r.slots }()
	case <-ctx.Done():
		return
	}
	switch e.Record.Phase {
	case messages.PhasePending:
		r.claimSaga(ctx, e, &detail)
	case messages.PhaseReleasing:
		r.releaseSaga(ctx, e, &detail)
	}
}

// sagaSpan names a saga's span by the phase it drives.
var sagaSpan = map[messages.ClaimPhase]string{messages.PhasePending: "claim saga", messages.PhaseReleasing: "release saga"}

func (r *Router) heartbeat(ctx context.Context, stop context.CancelFunc, key, id string, detail *atomic.Value) {
	t := time.NewTicker(r.cfg.StaleAfter / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wctx, cancel := context.WithTimeout(ctx, kvTimeout)
		_, _, err := r.store.Transition(wctx, key, func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return Refresh(c, id, r.cfg.ReplicaID, detail.Load().(string), time.Now())
		})
		cancel()
		switch {
		case errors.Is(err, ErrSuperseded):
			stop()
			return
		case err != nil && ctx.Err() == nil:
			r.logger.Warn("claim heartbeat failed", "key", key, "claim", id, "err", err)
		}
	}
}

// errWorkloadNotFound ends a claim whose workload pool-manager does not
// know.
var errWorkloadNotFound = errors.New("workload not found")

// timeoutError is the claim deadline passing while a step kept failing
// transiently.
type timeoutError struct {
	last error
	// what passed; "no ready instance by the claim deadline" when empty.
	what string
}

func (e timeoutError) Error() string {
	what := e.what
	if what == "" {
		what = "no ready instance by the claim deadline"
	}
	d := DetailTimeout + ": " + what
	if e.last != nil {
		d += " (last: " + messages.AsError(e.last).Message + ")"
	}
	return d
}

// failureText is the claim detail of a failed step.
func failureText(err error) string {
	var te timeoutError
	if errors.As(err, &te) {
		return te.Error()
	}
	return messages.AsError(err).Message
}

// instanceFailure ends a claim after its saga obtained an instance (a
// restore that was due and failed, a restored cold instance that never got
// Ready): the instance is retired before the claim turns Error with
// detail.
type instanceFailure struct {
	instanceID string
	detail     string
}

func (e instanceFailure) Error() string { return e.detail }

// tries retries one step of a claim saga: transient errors (unavailable,
// deadline_exceeded) are retried with backoff until the claim's deadline.
type tries struct {
	ctx  context.Context // the saga's
	dctx context.Context // the saga's, ending at the claim's deadline
	what string          // for the timeout detail; see timeoutError
	n    int
	last error
}

// again says whether to retry the step that failed with err (after the
// backoff pause); when not, fail is what the step ends with: the saga's
// context error when it stops, a timeoutError once the deadline passed,
// err itself when it is not transient.
func (t *tries) again(err error) (retry bool, fail error) {
	if t.last == nil || t.dctx.Err() == nil {
		// Keep the service's last word, not our own cut-off call.
		t.last = err
	}
	if t.ctx.Err() != nil {
		return false, t.ctx.Err()
	}
	if !TransientCode(messages.CodeOf(err)) {
		return false, err
	}
	if !sleep(t.dctx, backoff(t.n)) {
		if t.ctx.Err() != nil {
			return false, t.ctx.Err()
		}
		return false, timeoutError{last: t.last, what: t.what}
	}
	t.n++
	return true, nil
}

// claimSaga gets an instance for the Pending life e (pool first, cold boot
// when the pool is empty), restores the tenant's overlay into it when due,
// and activates the claim, or ends it Error (retiring an instance it
// obtained), or deletes it when the workload is unknown.
func (r *Router) claimSaga(ctx context.Context, e Entry, detail *atomic.Value) {
	rec := e.Record
	log := r.logger.With("key", e.Key, "claim", rec.ID)
	got, err := r.obtain(ctx, e, detail)
	if ctx.Err() != nil || errors.Is(err, ErrSuperseded) {
		// Superseded or stopping: the record's owner (maybe a new one)
		// reruns the idempotent steps.
		return
	}
	var lost instanceFailure
	switch {
	case err == nil:
		written, cur, err := r.transition(e.Key, "activated", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return Activate(c, rec.ID, r.cfg.ReplicaID, got, time.Now(), r.cfg.ClaimTimeout)
		})
		if errors.Is(err, ErrSuperseded) {
			if OrphanedInstance(recordOf(cur), rec.ID) {
				log.Warn("claim ended before its instance was ready; retiring the instance", "instance", got.Instance.InstanceID)
				r.retireOrphan(rec, got.Instance.InstanceID, "orphaned")
			}
			return
		}
		if err != nil {
			log.Error("activate claim", "err", err)
			return
		}
		log.Debug("claim active", "instance", got.Instance.InstanceID, "source", got.Source, "restored_generation", got.RestoredGeneration)
		if written.Record.Phase == messages.PhaseReleasing {
			r.releaseSaga(ctx, *written, detail)
		}
	case errors.Is(err, errWorkloadNotFound):
		r.withdraw(e.Key, rec)
	default:
		d := failureText(err)
		if errors.As(err, &lost) {
			// Retire before the claim turns Error, so no instance of a
			// failed claim outlives it (invariant 3: an instance that
			// missed its restore is never handed to the tenant).
			d = lost.detail
			log.Warn("retiring the instance of a failed claim", "instance", lost.instanceID, "detail", d)
			r.retireOrphan(rec, lost.instanceID, "claim-failed")
		}
		if _, _, err := r.transition(e.Key, "failed", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return Fail(c, rec.ID, r.cfg.ReplicaID, d, time.Now())
		}); err != nil && !errors.Is(err, ErrSuperseded) {
			log.Error("fail claim", "err", err)
		}
		log.Warn("claim failed", "detail", d)
	}
}

// obtain acquires a pool instance or boots one, with the tenant's overlay
// restored when due. Transient errors (unavailable, deadline_exceeded: not
// ready yet) are retried until the claim's deadline.
func (r *Router) obtain(ctx context.Context, e Entry, detail *atomic.Value) (Obtained, error) {
	rec := e.Record
	dctx, cancel := context.WithDeadline(ctx, rec.Deadline)
	defer cancel()
	// A claim that fell back to a cold boot before (Booting: an owner that
	// took over) boots with the generation its record holds.
	restoreGen, knownEmpty := rec.RestoredGeneration, false
	_, poolTried := r.poolTried.LoadAndDelete(rec.ID)
	if !Booting(rec) {
		detail.Store(DetailAcquiring)
		t := &tries{ctx: ctx, dctx: dctx}
		for !poolTried {
			inst, err := r.acquire(dctx, messages.AcquireRequest{Workload: rec.Workload, TenantID: rec.TenantID, ClaimKey: e.Key, ClaimID: rec.ID})
			if err == nil {
				if inst.InstanceID == "" {
					return Obtained{}, messages.Errorf(messages.CodeInternal, "pool-manager answered acquire without an instance id")
				}
				if !RestoreDue(rec, inst) {
					return Obtained{Instance: inst, Source: messages.SourcePool}, nil
				}
				return r.restoreRunning(ctx, dctx, rec, inst, messages.SourcePool, detail)
			}
			code := messages.CodeOf(err)
			if code == messages.CodeCapacityExhausted {
				break
			}
			if code == messages.CodeNotFound {
				return Obtained{}, errWorkloadNotFound
			}
			if retry, fail := t.again(err); !retry {
				if fail == err {
					fail = messages.Errorf(code, "pool acquire failed: %s", messages.AsError(err).Message)
				}
				return Obtained{}, fail
			}
		}
		restoreGen, knownEmpty = r.restoreGeneration(dctx, rec)
		if _, _, err := r.transition(e.Key, "", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return MarkBooting(c, rec.ID, r.cfg.ReplicaID, restoreGen, time.Now())
		}); err != nil {
			if errors.Is(err, ErrSuperseded) {
				return Obtained{}, err
			}
			// Not fatal: a new owner would acquire again, which is
			// idempotent per claim ID at pool-manager, and find the Pod
			// booted with its restore generation (awaiting-restore).
			r.logger.Warn("record cold boot", "key", e.Key, "err", err)
		}
	}
	return r.bootCold(ctx, dctx, e, restoreGen, knownEmpty, detail)
}

// restoreGeneration is the overlay generation a cold boot of rec restores:
// the newest stored one when the claim resumes. knownEmpty reports that
// overlay-store answered and has nothing stored. When it does not answer,
// the boot restores nothing and the newest generation, if any, is restored
// into the running instance instead ([ColdOutcome]): a claim never runs on
// an empty workspace because the list failed.
func (r *Router) restoreGeneration(dctx context.Context, rec messages.ClaimRecord) (generation int64, knownEmpty bool) {
	if !rec.Resume {
		return 0, true
	}
	list, err := r.listOverlays(dctx, messages.OverlayListRequest{TenantID: rec.TenantID, Workload: rec.Workload})
	if err != nil {
		r.logger.Warn("list stored overlays failed; booting without a restore generation (a stored overlay is restored once the instance runs)",
			"tenant", rec.TenantID, "workload", rec.Workload, "claim", rec.ID, "err", err)
		return 0, false
	}
	g := NewestGeneration(list)
	return g, g == 0
}

// bootCold boots the cold instance of e with BootRequest.RestoreGeneration
// restoreGen. pool-manager answers awaiting-restore once the instance's
// restore init container runs: the overlay is restored through it and the
// same boot asked again (idempotent), until Ready.
func (r *Router) bootCold(ctx, dctx context.Context, e Entry, restoreGen int64, knownEmpty bool, detail *atomic.Value) (Obtained, error) {
	rec := e.Record
	detail.Store(DetailBooting)
	req := messages.BootRequest{TenantID: rec.TenantID, Workload: rec.Workload, ClaimKey: e.Key, ClaimID: rec.ID, RestoreGeneration: restoreGen}
	t := &tries{ctx: ctx, dctx: dctx}
	var restored *messages.RestoreReply
	var awaited messages.Instance // pool-manager's awaiting-restore answer
	instanceID := ""              // known once pool-manager answered
	repeats := 0                  // restores repeated in this run
	for {
		inst, err := r.boot(dctx, req)
		if err == nil && inst.InstanceID == "" {
			return Obtained{}, messages.Errorf(messages.CodeInternal, "pool-manager answered boot without an instance id")
		}
		if err == nil {
			instanceID = inst.InstanceID
		}
		switch DecideBoot(inst, err, req.RestoreGeneration, restored != nil) {
		case BootReady:
			if restored != nil {
				// It waited for its overlay, so it has one: never lose that
				// to a terser Ready answer (the release would skip the
				// extract).
				inst.Overlays = true
				inst.ReleaseAction = firstOf(inst.ReleaseAction, awaited.ReleaseAction)
				if inst.IdleTimeoutSeconds == 0 {
					inst.IdleTimeoutSeconds = awaited.IdleTimeoutSeconds
				}
				if len(inst.WatchDirs) == 0 {
					inst.WatchDirs = awaited.WatchDirs
				}
			}
			source, gen, restoreNow := ColdOutcome(rec, inst, req.RestoreGeneration, restored, knownEmpty)
			if restoreNow {
				return r.restoreRunning(ctx, dctx, rec, inst, messages.SourceCold, detail)
			}
			return Obtained{Instance: inst, Source: source, RestoredGeneration: gen}, nil
		case BootWithoutRestore:
			r.logger.Warn("boot refused the restore generation; booting without one", "key", e.Key, "claim", rec.ID,
				"restore_generation", req.RestoreGeneration, "err", err)
			req.RestoreGeneration, knownEmpty = 0, false
			// Record it, so an owner that takes over boots the same way.
			if _, _, err := r.transition(e.Key, "", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
				return MarkBooting(c, rec.ID, r.cfg.ReplicaID, 0, time.Now())
			}); errors.Is(err, ErrSuperseded) {
				return Obtained{}, err
			}
			continue
		case BootRestoreAgain:
			r.logger.Warn("instance still awaits its restore; restoring again", "key", e.Key, "claim", rec.ID, "instance", inst.InstanceID)
			if !sleep(dctx, backoff(repeats)) {
				if ctx.Err() != nil {
					return Obtained{}, ctx.Err()
				}
				return Obtained{}, instanceFailure{instanceID: inst.InstanceID,
					detail: RestoreFailedDetail(timeoutError{what: "the instance still awaited its restore at the claim deadline"}.Error())}
			}
			repeats++
			fallthrough
		case BootRestore:
			awaited = inst
			detail.Store(DetailRestoring)
			reply, err := r.restoreInto(ctx, dctx, rec, inst.InstanceID, req.RestoreGeneration)
			if err != nil {
				return Obtained{}, r.restoreFailed(ctx, inst.InstanceID, err)
			}
			restored = &reply
			detail.Store(DetailBooting)
			continue // boot again: wait for Ready
		}
		// BootFailed.
		if messages.CodeOf(err) == messages.CodeNotFound {
			return Obtained{}, errWorkloadNotFound
		}
		if retry, fail := t.again(err); !retry {
			if instanceID != "" && ctx.Err() == nil {
				return Obtained{}, instanceFailure{instanceID: instanceID, detail: failureText(fail)}
			}
			return Obtained{}, fail
		}
	}
}

// restoreRunning restores the newest stored overlay into a running
// instance obtained from base: a pool instance (pool+data), or a cold one
// that could not restore through its init container.
func (r *Router) restoreRunning(ctx, dctx context.Context, rec messages.ClaimRecord, inst messages.Instance, base messages.ClaimSource, detail *atomic.Value) (Obtained, error) {
	detail.Store(DetailRestoring)
	reply, err := r.restoreInto(ctx, dctx, rec, inst.InstanceID, 0)
	if err != nil {
		return Obtained{}, r.restoreFailed(ctx, inst.InstanceID, err)
	}
	source, gen := RestoredSource(base, reply)
	return Obtained{Instance: inst, Source: source, RestoredGeneration: gen}, nil
}

// restoreInto asks overlay-store to restore generation (0: the newest)
// into the instance, retrying transient errors until the claim's deadline.
func (r *Router) restoreInto(ctx, dctx context.Context, rec messages.ClaimRecord, instanceID string, generation int64) (messages.RestoreReply, error) {
	t := &tries{ctx: ctx, dctx: dctx, what: "the claim deadline passed"}
	req := messages.RestoreRequest{TenantID: rec.TenantID, Workload: rec.Workload, InstanceID: instanceID, Generation: generation}
	for {
		reply, err := r.restore(dctx, req)
		if err == nil {
			return reply, nil
		}
		retry, fail := t.again(err)
		if !retry {
			return messages.RestoreReply{}, fail
		}
		r.logger.Debug("restore not possible yet; retrying", "key", messages.ClaimKey(rec.TenantID, rec.Workload), "claim", rec.ID, "instance", instanceID, "err", err)
	}
}

// restoreFailed is the claim failure of a restore that was due and failed
// with err; the saga's context error when it stops instead.
func (r *Router) restoreFailed(ctx context.Context, instanceID string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return instanceFailure{instanceID: instanceID, detail: RestoreFailedDetail(failureText(err))}
}

// withdraw deletes the Pending life rec because its workload is unknown;
// the callers waiting on it answer not_found.
func (r *Router) withdraw(key string, rec messages.ClaimRecord) {
	ctx, cancel := context.WithTimeout(r.runCtx, kvTimeout)
	defer cancel()
	for range maxTransitionAttempts {
		cur, err := r.store.Get(ctx, key)
		if err != nil {
			r.logger.Error("withdraw claim", "key", key, "err", err)
			return
		}
		if !Withdrawable(recordOf(cur), rec.ID) {
			return
		}
		err = r.store.Delete(ctx, key, cur.Revision)
		if err == nil {
			r.hub.notify(key)
			gone := cur.Record
			gone.Phase = messages.PhaseError
			gone.Detail = fmt.Sprintf("workload %q not found; claim withdrawn", rec.Workload)
			r.publish(gone, "workload-not-found", fmt.Sprintf("%s@%d-deleted", key, cur.Revision))
			return
		}
		if !natsx.IsConflict(err) {
			r.logger.Error("withdraw claim", "key", key, "err", err)
			return
		}
	}
}

// releaseSaga drives the Releasing life e to Released, or ReleaseFailed
// (instance kept when the overlay could not be saved), following
// [PlanRelease]: hibernate extracts the overlay (retried on the
// ExtractBackoff schedule), records the generation saved, retires the
// instance; destroy retires, then deletes the stored overlay; force only
// retires. Every step is idempotent, so an owner that takes the record
// over reruns the saga from the top.
func (r *Router) releaseSaga(ctx context.Context, e Entry, detail *atomic.Value) {
	rec := e.Record
	plan := PlanRelease(rec)
	log := r.logger.With("key", e.Key, "claim", rec.ID, "instance", rec.InstanceID, "mode", plan.Mode.String())
	finish := func(reason string, step func(*messages.ClaimRecord) (messages.ClaimRecord, error)) {
		if _, _, err := r.transition(e.Key, reason, step); err != nil && !errors.Is(err, ErrSuperseded) && ctx.Err() == nil {
			log.Error("end release", "err", err)
		}
	}
	fail := func(d string) {
		finish("release-failed", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return FailRelease(c, rec.ID, r.cfg.ReplicaID, d, time.Now())
		})
		log.Error("release failed", "detail", d)
	}

	// Check that the record is still this saga's before acting: a restarted
	// release may have waited for the previous run of its life (startSaga).
	first := DetailReleasing
	if plan.Extract {
		first = DetailSavingOverlay
	}
	if _, saved := SavedGeneration(rec.Detail); saved {
		first = rec.Detail // keep what an earlier run saved visible
	}
	detail.Store(first)
	cur, _, err := r.transition(e.Key, "", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
		return Refresh(c, rec.ID, r.cfg.ReplicaID, first, time.Now())
	})
	if err != nil {
		if !errors.Is(err, ErrSuperseded) && ctx.Err() == nil {
			// The record stays Releasing; once stale it is taken over and
			// the saga reruns.
			log.Error("start release", "err", err)
		}
		return
	}
	rec = cur.Record

	res := ReleaseResult{Existed: true}
	if plan.Extract {
		var snap messages.Snapshot
		req := ExtractRequestFor(rec)
		attempts, err := r.overlayCall(ctx, "overlay extract", log, func() error {
			var err error
			snap, err = r.extract(ctx, req)
			return err
		})
		if ctx.Err() != nil {
			return // superseded or stopping: the owner reruns the saga
		}
		switch fate := ClassifyOverlayError(err); {
		case err == nil:
			saved, ok := r.recordSaved(ctx, e.Key, rec, snap, detail, log)
			if !ok {
				return
			}
			rec = saved
			res.Saved, res.Generation = true, snap.Generation
			log.Info("overlay saved", "generation", snap.Generation, "restored_from", req.RestoredGeneration, "force", req.Force)
		case fate == OverlayGone:
			// Nothing left to save. A rerun whose previous run saved and
			// retired already still says what was saved.
			res.Existed = false
			if g, ok := SavedGeneration(rec.Detail); ok {
				res.Saved, res.Generation = true, g
			} else {
				log.Warn("instance gone before its overlay was saved", "err", err)
			}
		case fate == OverlayConflict:
			fail(ExtractConflictDetail(err, req.RestoredGeneration))
			return
		default:
			fail(ExtractFailedDetail(err, attempts))
			return
		}
	}

	if rec.InstanceID != "" {
		if !res.Saved {
			detail.Store(DetailReleasing)
		}
		existed, failed := r.retireFor(ctx, rec)
		if ctx.Err() != nil {
			return
		}
		if failed != "" {
			fail(failed)
			return
		}
		res.Existed = existed
	}

	if plan.DeleteOverlay {
		detail.Store(DetailDeletingOverlay)
		attempts, err := r.overlayCall(ctx, "overlay delete", log, func() error {
			_, err := r.deleteOverlays(ctx, messages.OverlayDeleteRequest{TenantID: rec.TenantID, Workload: rec.Workload})
			if messages.CodeOf(err) == messages.CodeNotFound {
				return nil // nothing stored
			}
			return err
		})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			fail(DeleteFailedDetail(err, attempts))
			return
		}
	}

	d := FinishedDetail(rec, plan, res)
	finish(string(rec.ReleaseReason), func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
		return FinishRelease(c, rec.ID, r.cfg.ReplicaID, d, time.Now())
	})
}

// overlayCall runs call, retrying it on the ExtractBackoff schedule while
// it fails with a retryable error ([OverlayRetry]). It returns the number
// of attempts made and the last error (nil: success).
func (r *Router) overlayCall(ctx context.Context, what string, log *slog.Logger, call func() error) (int, error) {
	for attempt := 1; ; attempt++ {
		err := call()
		if err == nil || ctx.Err() != nil || ClassifyOverlayError(err) != OverlayRetry || attempt > len(r.cfg.ExtractBackoff) {
			return attempt, err
		}
		pause := r.cfg.ExtractBackoff[attempt-1]
		log.Warn(what+" failed; retrying", "attempt", attempt, "retry_in", pause.String(), "err", err)
		if !sleep(ctx, pause) {
			return attempt, err
		}
	}
}

// recordSaved writes [RecordSaved] for snap on the Releasing record before
// the instance is retired, retrying while the bucket fails; it reports
// false when the saga must stop (superseded or stopping).
func (r *Router) recordSaved(ctx context.Context, key string, rec messages.ClaimRecord, snap messages.Snapshot, detail *atomic.Value, log *slog.Logger) (messages.ClaimRecord, bool) {
	detail.Store(SavedDetail(snap.Generation))
	for attempt := 0; ; attempt++ {
		w, _, err := r.transition(key, "overlay-saved", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return RecordSaved(c, rec.ID, r.cfg.ReplicaID, snap, time.Now(), r.cfg.ClaimTimeout)
		})
		if err == nil {
			return w.Record, true
		}
		if errors.Is(err, ErrSuperseded) || ctx.Err() != nil {
			return rec, false
		}
		log.Warn("record the saved overlay", "generation", snap.Generation, "err", err)
		if !sleep(ctx, backoff(attempt)) {
			return rec, false
		}
	}
}

// retireFor retires rec's instance, retrying transient errors until the
// release deadline. existed reports whether the instance still existed;
// failed is the ReleaseFailed detail when retiring failed for good (empty
// on success, and when the saga stops).
func (r *Router) retireFor(ctx context.Context, rec messages.ClaimRecord) (existed bool, failed string) {
	deadline := rec.Deadline
	if deadline.IsZero() {
		deadline = time.Now().Add(r.cfg.ClaimTimeout)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	for attempt := 0; ; attempt++ {
		reply, err := r.retire(dctx, messages.RetireRequest{InstanceID: rec.InstanceID, Workload: rec.Workload, TenantID: rec.TenantID, Reason: string(rec.ReleaseReason)})
		if err == nil {
			return reply.Retired, ""
		}
		code := messages.CodeOf(err)
		if code == messages.CodeNotFound {
			return false, ""
		}
		if ctx.Err() != nil {
			return false, "" // superseded or stopping: the owner retries
		}
		if TransientCode(code) && sleep(dctx, backoff(attempt)) {
			continue
		}
		if dctx.Err() != nil {
			return false, "retire failed: " + DetailTimeout + " (last: " + messages.AsError(err).Message + ")"
		}
		return false, "retire failed: " + messages.AsError(err).Message
	}
}

// retireOrphan retires an instance obtained for a claim life that ended
// without it (best effort: pool-manager's ledger knows the claim ID too).
func (r *Router) retireOrphan(rec messages.ClaimRecord, instanceID, reason string) {
	ctx, cancel := context.WithTimeout(r.runCtx, r.cfg.CallTimeout)
	defer cancel()
	if _, err := r.retire(ctx, messages.RetireRequest{InstanceID: instanceID, Workload: rec.Workload, TenantID: rec.TenantID, Reason: reason}); err != nil && messages.CodeOf(err) != messages.CodeNotFound {
		r.logger.Warn("retire instance", "instance", instanceID, "reason", reason, "err", err)
	}
}

// onInstanceEvent ends the Active claim whose instance pool-manager reports
// deleted or failed. It runs on the subscription's goroutine, so the work
// is handed to a tracked goroutine.
func (r *Router) onInstanceEvent(msg *nats.Msg) {
	var ev messages.Event
	if err := json.Unmarshal(msg.Data, &ev); err != nil {
		r.logger.Debug("undecodable instance event", "subject", msg.Subject, "err", err)
		return
	}
	fate := ClassifyInstanceEvent(ev)
	if fate == InstanceFine {
		return
	}
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		r.instanceGone(ev, fate)
	}()
}

func (r *Router) instanceGone(ev messages.Event, fate InstanceFate) {
	inst := ev.Instance
	tenant, workload := firstOf(ev.TenantID, inst.TenantID), firstOf(ev.Workload, inst.Workload)
	var keys []string
	if messages.ValidateTenantID(tenant) == nil && messages.ValidateWorkloadName(workload) == nil {
		keys = []string{messages.ClaimKey(tenant, workload)}
	} else {
		// No tenant in the event: find the claim holding the instance.
		ctx, cancel := context.WithTimeout(r.runCtx, kvTimeout)
		entries, err := r.store.List(ctx)
		cancel()
		if err != nil {
			r.logger.Warn("instance event: list claims", "instance", inst.InstanceID, "err", err)
			return
		}
		for _, e := range entries {
			if e.Record.InstanceID == inst.InstanceID && e.Record.Phase == messages.PhaseActive {
				keys = append(keys, e.Key)
			}
		}
	}
	why := firstOf(inst.Detail, ev.Reason)
	reason := "instance-deleted"
	if fate == InstanceFailed {
		reason = "instance-failed"
	}
	for _, key := range keys {
		e, _, err := r.transition(key, reason, func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return InstanceGone(c, inst.InstanceID, fate, why, time.Now())
		})
		switch {
		case err == nil:
			r.logger.Info("claim ended by its instance", "key", key, "instance", inst.InstanceID, "phase", e.Record.Phase, "detail", e.Record.Detail)
		case !errors.Is(err, ErrSuperseded) && r.runCtx.Err() == nil:
			r.logger.Warn("instance event", "key", key, "instance", inst.InstanceID, "err", err)
		}
	}
}
