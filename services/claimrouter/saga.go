package claimrouter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
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
	r.startSaga(*e)
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
// router is stopping.
func (r *Router) startSaga(e Entry) {
	kind := e.Record.Phase
	if !InFlight(kind) {
		return
	}
	r.mu.Lock()
	if r.stopped || !r.sagas.add(e.Key, e.Record.ID, kind) {
		r.mu.Unlock()
		return
	}
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer r.sagas.remove(e.Key, e.Record.ID, kind)
		r.runSaga(e)
	}()
}

// runSaga refreshes the record while the saga runs (and while it waits for
// a worker slot), and stops the saga when the record is superseded (taken
// over, expired) or the router stops; the record is then left for whoever
// owns it.
func (r *Router) runSaga(e Entry) {
	ctx, cancel := context.WithCancel(r.runCtx)
	defer cancel()
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
type timeoutError struct{ last error }

func (e timeoutError) Error() string {
	d := DetailTimeout + ": no ready instance by the claim deadline"
	if e.last != nil {
		d += " (last: " + messages.AsError(e.last).Message + ")"
	}
	return d
}

// claimSaga gets an instance for the Pending life e (pool first, cold boot
// when the pool is empty) and activates the claim, or ends it Error, or
// deletes it when the workload is unknown.
func (r *Router) claimSaga(ctx context.Context, e Entry, detail *atomic.Value) {
	rec := e.Record
	log := r.logger.With("key", e.Key, "claim", rec.ID)
	inst, source, err := r.obtain(ctx, e, detail)
	if ctx.Err() != nil || errors.Is(err, ErrSuperseded) {
		// Superseded or stopping: the record's owner (maybe a new one)
		// reruns the idempotent steps.
		return
	}
	if err == nil && inst.InstanceID == "" {
		err = messages.Errorf(messages.CodeInternal, "pool-manager answered %s without an instance id", source)
	}
	switch {
	case err == nil:
		written, cur, err := r.transition(e.Key, "activated", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return Activate(c, rec.ID, r.cfg.ReplicaID, inst, source, time.Now(), r.cfg.ClaimTimeout)
		})
		if errors.Is(err, ErrSuperseded) {
			if OrphanedInstance(recordOf(cur), rec.ID) {
				log.Warn("claim ended before its instance was ready; retiring the instance", "instance", inst.InstanceID)
				r.retireOrphan(rec, inst.InstanceID)
			}
			return
		}
		if err != nil {
			log.Error("activate claim", "err", err)
			return
		}
		log.Debug("claim active", "instance", inst.InstanceID, "source", source)
		if written.Record.Phase == messages.PhaseReleasing {
			r.releaseSaga(ctx, *written, detail)
		}
	case errors.Is(err, errWorkloadNotFound):
		r.withdraw(e.Key, rec)
	default:
		var te timeoutError
		d := messages.AsError(err).Message
		if errors.As(err, &te) {
			d = te.Error()
		}
		if _, _, err := r.transition(e.Key, "failed", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return Fail(c, rec.ID, r.cfg.ReplicaID, d, time.Now())
		}); err != nil && !errors.Is(err, ErrSuperseded) {
			log.Error("fail claim", "err", err)
		}
		log.Warn("claim failed", "detail", d)
	}
}

// obtain acquires a pool instance or boots one. Transient errors
// (unavailable, deadline_exceeded: not ready yet) are retried until the
// claim's deadline.
func (r *Router) obtain(ctx context.Context, e Entry, detail *atomic.Value) (messages.Instance, messages.ClaimSource, error) {
	rec := e.Record
	dctx, cancel := context.WithDeadline(ctx, rec.Deadline)
	defer cancel()
	var last error
	retry := func(attempt int, err error) bool {
		if last == nil || dctx.Err() == nil {
			// Keep pool-manager's last word, not our own cut-off call.
			last = err
		}
		return sleep(dctx, backoff(attempt))
	}
	if !Booting(rec) {
		detail.Store(DetailAcquiring)
		for attempt := 0; ; attempt++ {
			inst, err := r.acquire(dctx, messages.AcquireRequest{Workload: rec.Workload, TenantID: rec.TenantID, ClaimKey: e.Key, ClaimID: rec.ID})
			if err == nil {
				return inst, messages.SourcePool, nil
			}
			code := messages.CodeOf(err)
			if code == messages.CodeCapacityExhausted {
				break
			}
			if code == messages.CodeNotFound {
				return messages.Instance{}, "", errWorkloadNotFound
			}
			if ctx.Err() != nil {
				return messages.Instance{}, "", ctx.Err()
			}
			if !TransientCode(code) {
				return messages.Instance{}, "", messages.Errorf(code, "pool acquire failed: %s", messages.AsError(err).Message)
			}
			if !retry(attempt, err) {
				return messages.Instance{}, "", r.stepTimeout(ctx, last)
			}
		}
		if _, _, err := r.transition(e.Key, "", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return MarkBooting(c, rec.ID, r.cfg.ReplicaID, time.Now())
		}); err != nil {
			if errors.Is(err, ErrSuperseded) {
				return messages.Instance{}, "", err
			}
			// Not fatal: a new owner would acquire again, which is
			// idempotent per claim ID at pool-manager.
			r.logger.Warn("record cold boot", "key", e.Key, "err", err)
		}
	}
	detail.Store(DetailBooting)
	for attempt := 0; ; attempt++ {
		inst, err := r.boot(dctx, messages.BootRequest{TenantID: rec.TenantID, Workload: rec.Workload, ClaimKey: e.Key, ClaimID: rec.ID})
		if err == nil {
			return inst, messages.SourceCold, nil
		}
		code := messages.CodeOf(err)
		if code == messages.CodeNotFound {
			return messages.Instance{}, "", errWorkloadNotFound
		}
		if ctx.Err() != nil {
			return messages.Instance{}, "", ctx.Err()
		}
		if !TransientCode(code) {
			return messages.Instance{}, "", err
		}
		if !retry(attempt, err) {
			return messages.Instance{}, "", r.stepTimeout(ctx, last)
		}
	}
}

func (r *Router) stepTimeout(ctx context.Context, last error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return timeoutError{last: last}
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

// releaseSaga retires the instance of the Releasing life e and ends it
// Released, or ReleaseFailed (instance kept) when retiring keeps failing
// until the release deadline.
func (r *Router) releaseSaga(ctx context.Context, e Entry, detail *atomic.Value) {
	rec := e.Record
	detail.Store(DetailReleasing)
	finish := func(reason string, step func(*messages.ClaimRecord) (messages.ClaimRecord, error)) {
		if _, _, err := r.transition(e.Key, reason, step); err != nil && !errors.Is(err, ErrSuperseded) && ctx.Err() == nil {
			r.logger.Error("end release", "key", e.Key, "claim", rec.ID, "err", err)
		}
	}
	released := func(existed bool) {
		d := ReleasedDetail(rec.ReleaseReason, existed)
		if rec.InstanceID == "" {
			d = ReleasedDetail(rec.ReleaseReason, true) + "; " + detailNoInstance
		}
		finish(string(rec.ReleaseReason), func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return FinishRelease(c, rec.ID, r.cfg.ReplicaID, d, time.Now())
		})
	}
	if rec.InstanceID == "" {
		released(true)
		return
	}
	dctx, cancel := context.WithDeadline(ctx, rec.Deadline)
	defer cancel()
	for attempt := 0; ; attempt++ {
		reply, err := r.retire(dctx, messages.RetireRequest{InstanceID: rec.InstanceID, Workload: rec.Workload, TenantID: rec.TenantID, Reason: string(rec.ReleaseReason)})
		if err == nil {
			released(reply.Retired)
			return
		}
		code := messages.CodeOf(err)
		if code == messages.CodeNotFound {
			released(false)
			return
		}
		if ctx.Err() != nil {
			return // superseded or stopping: the owner retries
		}
		if TransientCode(code) && sleep(dctx, backoff(attempt)) {
			continue
		}
		d := "retire failed: " + messages.AsError(err).Message
		if dctx.Err() != nil {
			d = "retire failed: " + DetailTimeout + " (last: " + messages.AsError(err).Message + ")"
		}
		finish("release-failed", func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
			return FailRelease(c, rec.ID, r.cfg.ReplicaID, d, time.Now())
		})
		r.logger.Error("release failed; instance kept", "key", e.Key, "claim", rec.ID, "instance", rec.InstanceID, "detail", d)
		return
	}
}

// retireOrphan retires an instance obtained for a claim life that ended
// without it (best effort: pool-manager's ledger knows the claim ID too).
func (r *Router) retireOrphan(rec messages.ClaimRecord, instanceID string) {
	ctx, cancel := context.WithTimeout(r.runCtx, r.cfg.CallTimeout)
	defer cancel()
	if _, err := r.retire(ctx, messages.RetireRequest{InstanceID: instanceID, Workload: rec.Workload, TenantID: rec.TenantID, Reason: "orphaned"}); err != nil && messages.CodeOf(err) != messages.CodeNotFound {
		r.logger.Warn("retire orphaned instance", "instance", instanceID, "err", err)
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
