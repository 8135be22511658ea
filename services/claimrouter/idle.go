package claimrouter

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
)

// activity tells idle-reaper that an existing claim was used again (a claim
// call for it). A core NATS publish: no reply, no JetStream write on the
// claim path. Only claims with an idle timeout are reported.
func (r *Router) activity(rec messages.ClaimRecord, now time.Time) {
	if rec.IdleTimeoutSeconds <= 0 {
		return
	}
	b, err := json.Marshal(messages.Activity{TenantID: rec.TenantID, Workload: rec.Workload, At: now.UTC()})
	if err != nil {
		return
	}
	if err := r.nc.Publish(messages.ActivitySubject(rec.TenantID, rec.Workload), b); err != nil {
		r.logger.Debug("activity publish failed", "tenant", rec.TenantID, "workload", rec.Workload, "err", err)
	}
}

// idleView fills v.LastActivity and v.IdleDeadline of an Active claim with
// an idle timeout. idle-reaper records the last activity in the idle bucket
// (not in the claim record, to keep claim-bucket writes off the activity
// path); when it has no live key for this claim life yet, the claim's
// activation time stands in. Best effort: a read failure leaves them unset.
func (r *Router) idleView(ctx context.Context, rec messages.ClaimRecord, v *messages.ClaimView) {
	if rec.Phase != messages.PhaseActive || rec.IdleTimeoutSeconds <= 0 {
		return
	}
	last := rec.LastActivity
	if last == nil {
		last = rec.ClaimedAt
	}
	if kv := r.idleBucket(ctx); kv != nil {
		if e, err := kv.Get(ctx, messages.ClaimKey(rec.TenantID, rec.Workload)); err == nil {
			var iv messages.IdleValue
			if json.Unmarshal(e.Value(), &iv) == nil && iv.ClaimID == rec.ID && !iv.LastActivity.IsZero() {
				last = &iv.LastActivity
			}
		}
	}
	if last == nil {
		return
	}
	l := last.UTC()
	d := l.Add(time.Duration(rec.IdleTimeoutSeconds) * time.Second)
	v.LastActivity = &l
	v.IdleDeadline = &d
}

func (r *Router) idleBucket(ctx context.Context) jetstream.KeyValue {
	r.mu.Lock()
	kv := r.idleKV
	r.mu.Unlock()
	if kv != nil {
		return kv
	}
	kv, err := r.js.KeyValue(ctx, messages.BucketIdle)
	if err != nil {
		return nil
	}
	r.mu.Lock()
	r.idleKV = kv
	r.mu.Unlock()
	return kv
}
