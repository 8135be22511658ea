package poolmanager

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

// Holds that no claim will release. The claim-router acquires a pool instance before it writes
// the claim's record (its fast path), so a router that dies between the two leaves a hold for a
// claim life that never existed; a Pending claim that expired while its instance was being
// acquired or booted leaves one for an Error claim; a pool-manager that dies between creating a
// boot's Pod and writing its hold leaves a tenant Pod with no hold at all. The orphan sweep
// retires such instances once they are older than Config.OrphanGrace, reading (never writing)
// the claims bucket.

// Defaults of the orphan sweep.
const (
	DefaultOrphanGrace = time.Minute
	DefaultOrphanSweep = 30 * time.Second
)

// mayOwn reports whether rec, the current claim of a pair (nil: none), holds instance or may
// still come to hold one (Pending). ReleaseFailed keeps its instance on purpose; Error and
// Released ones were retired, or should have been.
func mayOwn(rec *messages.ClaimRecord, instance string) bool {
	if rec == nil {
		return false
	}
	switch rec.Phase {
	case messages.PhasePending:
		return true
	case messages.PhaseActive, messages.PhaseReleasing, messages.PhaseReleaseFailed:
		return rec.InstanceID == instance
	}
	return false
}

// OrphanedHold decides about the hold of instance by ledger entry e, given the current record
// of e's claim key (nil: none). orphan: no claim will ever release the instance (the life was
// never written, was replaced, ended, or went on with another instance). settled: the claim
// life owns it until its release, which retires it, so the hold needs no further check.
func OrphanedHold(e LedgerEntry, instance string, rec *messages.ClaimRecord) (orphan, settled bool) {
	if rec == nil || rec.ID != e.ClaimID || !mayOwn(rec, instance) {
		return true, false
	}
	return false, rec.Phase == messages.PhaseActive || rec.Phase == messages.PhaseReleasing
}

// sweepOrphans runs the orphan sweep every Config.OrphanSweep until ctx ends.
func (m *Manager) sweepOrphans(ctx context.Context) error {
	settled := map[string]string{} // instance -> claim id found owning it
	var claims jetstream.KeyValue
	t := time.NewTicker(m.cfg.OrphanSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if claims == nil {
			kv, err := m.js.KeyValue(ctx, messages.BucketClaims)
			if err != nil {
				m.log.Warn("orphan sweep: KV bucket "+messages.BucketClaims, "err", err)
				continue
			}
			claims = kv
		}
		m.sweepOrphansOnce(ctx, claims, settled, time.Now())
	}
}

// sweepOrphansOnce checks every hold older than the grace once (then again only while its
// claim is Pending or ReleaseFailed) and retires the orphans, then the tenant Pods without a
// hold.
func (m *Manager) sweepOrphansOnce(ctx context.Context, claims jetstream.KeyValue, settled map[string]string, now time.Time) {
	held := m.ledger.snapshot()
	retired := map[string]bool{} // by this sweep: the Pod cache may not show their deletion yet
	for name := range settled {
		if e, ok := held[name]; !ok || e.ClaimID != settled[name] {
			delete(settled, name)
		}
	}
	for name, e := range held {
		if e.State != StateAcquired || e.ClaimID == "" || e.ClaimKey == "" || now.Sub(e.At) < m.cfg.OrphanGrace || settled[name] == e.ClaimID {
			continue
		}
		rec, err := claimRecord(ctx, claims, e.ClaimKey)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("orphan sweep: read claim", "key", e.ClaimKey, "err", err)
			}
			return
		}
		orphan, done := OrphanedHold(e, name, rec)
		if done {
			settled[name] = e.ClaimID
		}
		if !orphan {
			continue
		}
		m.log.Warn("retiring an instance no claim will release", "instance", name, "claim", e.ClaimID, "key", e.ClaimKey, "tenant", e.TenantID)
		if _, err := m.Retire(ctx, messages.RetireRequest{InstanceID: name, Workload: e.Workload, TenantID: e.TenantID, Reason: "orphaned"}); err != nil && ctx.Err() == nil {
			m.log.Warn("orphan sweep: retire", "instance", name, "err", err)
		}
		retired[name] = true
	}
	m.sweepUnheldPods(ctx, claims, now, retired)
}

// UnheldPodOrphaned decides about a tenant's Pod that has no hold, given the current record of
// its (tenant, workload) pair: an orphan unless that claim may own it (a Pending claim's boot
// may be about to write the hold).
func UnheldPodOrphaned(rec *messages.ClaimRecord, instance string) bool {
	return !mayOwn(rec, instance)
}

// sweepUnheldPods retires tenant Pods older than the grace that no hold accounts for: a boot
// whose pool-manager died between creating the Pod and writing its hold, for a claim that then
// ended. The hold is checked in the bucket, not only in this replica's view, before anything is
// deleted.
func (m *Manager) sweepUnheldPods(ctx context.Context, claims jetstream.KeyValue, now time.Time, skip map[string]bool) {
	var list corev1.PodList
	if err := m.client.List(ctx, &list, client.InNamespace(m.cfg.Namespace), client.HasLabels{v1alpha1.LabelTenant},
		client.UnsafeDisableDeepCopy); err != nil {
		m.log.Warn("orphan sweep: list tenant pods", "err", err)
		return
	}
	for i := range list.Items {
		p := &list.Items[i]
		tenant, workload := p.Labels[v1alpha1.LabelTenant], p.Labels[v1alpha1.LabelWorkload]
		if p.DeletionTimestamp != nil || skip[p.Name] || workload == "" || now.Sub(p.CreationTimestamp.Time) < m.cfg.OrphanGrace || m.ledger.Held(p.Name) {
			continue
		}
		if _, held, err := m.ledger.Read(ctx, p.Name); err != nil || held {
			continue
		}
		rec, err := claimRecord(ctx, claims, messages.ClaimKey(tenant, workload))
		if err != nil {
			m.log.Warn("orphan sweep: read claim", "tenant", tenant, "workload", workload, "err", err)
			return
		}
		if !UnheldPodOrphaned(rec, p.Name) {
			continue
		}
		m.log.Warn("deleting a tenant pod that no hold or claim accounts for", "instance", p.Name, "tenant", tenant, "workload", workload)
		if err := m.deletePod(ctx, p.Name); err != nil && ctx.Err() == nil {
			m.log.Warn("orphan sweep: delete pod", "instance", p.Name, "err", err)
		}
	}
}

// claimRecord reads key of the claims bucket; nil when there is none.
func claimRecord(ctx context.Context, claims jetstream.KeyValue, key string) (*messages.ClaimRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e, err := claims.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec messages.ClaimRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}
