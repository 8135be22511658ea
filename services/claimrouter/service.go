// Package claimrouter is the claim-router service: the claim state machine
// kept in the KV bucket "claims" (one record per (tenant, workload)), the
// claim and release sagas that drive pool-manager over NATS, and the
// recovery of sagas whose router died. docs/claim-path.md is the protocol.
//
// The package has three layers:
//
//   - service.go: the pure state machine. Decide* functions say what a
//     request or the sweeper does with the record it read; transition
//     functions (Activate, Fail, BeginRelease, ...) compute the next record
//     or refuse with [ErrSuperseded]. No I/O, table-tested.
//   - store.go: the claims bucket. Every write is a compare-and-set on the
//     key's revision; [Store.Transition] re-reads and re-applies a pure
//     transition when it loses one.
//   - router.go: [New], [Router.Run], the NATS endpoints (Claim, Release,
//     Get, Tenant, Tenants), the waiting of requests and the claim events.
//   - saga.go: the claim and release sagas with their heartbeat, the
//     sweeper (takeover, expiry) and the instance event listener.
//
// # Waiting
//
// A request that finds its claim in flight (Pending, Releasing), or starts
// it, waits for it to settle. Each router keeps one watch on the whole
// bucket (updates only) and wakes the requests waiting on the changed key;
// its own writes wake them directly. A woken request re-reads the key (one
// KV get) and decides again; a one-second poll covers a watch that missed
// an update. So requests of any replica wait on a claim driven by any
// other, and 50 concurrent claims of one pair make one Pending record (the
// first Create wins, the others lose the compare-and-set and wait on it),
// one saga and one instance.
//
// # Ownership and takeover
//
// The replica that writes a Pending or Releasing record is its Owner and
// runs its saga; the saga refreshes UpdatedAt every StaleAfter/3. A record
// whose UpdatedAt is older than StaleAfter belongs to a dead (or cut off)
// owner: the sweeper of any replica (every SweepInterval), or a request
// that finds it, takes it over with a compare-and-set of Owner and reruns
// the saga from the top. The steps are idempotent per claim ID at
// pool-manager; a claim that already fell back to a cold boot is marked
// (Source cold while Pending) so the new owner goes straight to boot. A
// saga whose record was taken over, expired or replaced notices on its
// next write (or heartbeat) and stops; an instance it obtained for a life
// that ended Error (or vanished) is retired. A Pending record past its
// Deadline turns Error "timeout" whoever owns it.
//
// # Release of a Pending claim
//
// Releasing a Pending claim records the release on it (ReleaseReason) and
// waits: the saga, once it has the instance, goes from Pending straight to
// Releasing and retires it. The release is as durable as the claim, and
// callers (idle-reaper, cr-sync on kubectl delete) never get a 409 for a
// claim that is still starting.
//
// # Instance events
//
// pool-manager's events on bh.v1.events.instance.<tenant>.<workload>
// ([messages.Event] with Instance set) end the Active claim holding the
// instance when Instance.Phase is "deleted" (or "gone", "retired",
// "terminated": Released, "backing pod no longer exists") or "failed"
// (Error, "instance failed: <Instance.Detail>"). An event without a tenant
// is matched by instance id over the bucket.
package claimrouter

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"boilerhouse.dev/messages"
)

// ErrSuperseded is returned by a transition when the record is no longer
// the one the step was meant for: another life of the claim (a different
// ID), another phase, or another owner. The caller stops the step; it must
// not retry it.
var ErrSuperseded = errors.New("claim record superseded")

// InFlight reports whether a claim in phase p has a saga driving it
// (Pending or Releasing): callers wait for it to settle.
func InFlight(p messages.ClaimPhase) bool {
	return p == messages.PhasePending || p == messages.PhaseReleasing
}

// Stale reports whether rec's owner stopped refreshing it: an in-flight
// record whose UpdatedAt is older than staleAfter. Its owner refreshes it
// every staleAfter/3 while its saga runs, so a stale record's owner is dead
// (or cut off) and any replica may take it over.
func Stale(rec *messages.ClaimRecord, now time.Time, staleAfter time.Duration) bool {
	return rec != nil && InFlight(rec.Phase) && now.Sub(rec.UpdatedAt) > staleAfter
}

// Expired reports whether rec is a Pending claim past its Deadline.
func Expired(rec *messages.ClaimRecord, now time.Time) bool {
	return rec != nil && rec.Phase == messages.PhasePending && !rec.Deadline.IsZero() && !now.Before(rec.Deadline)
}

// Recovery is what the sweeper does with a record.
type Recovery int

// Recoveries.
const (
	// RecoverNone: the record is settled or its owner is alive.
	RecoverNone Recovery = iota
	// RecoverExpire: a Pending record past its Deadline turns Error
	// "timeout" (invariant 6: no claim stays Pending forever).
	RecoverExpire
	// RecoverTakeOver: an in-flight record with a stale owner is taken over
	// (compare-and-set of Owner) and its saga rerun; every step is
	// idempotent per claim ID.
	RecoverTakeOver
)

func (r Recovery) String() string {
	switch r {
	case RecoverNone:
		return "none"
	case RecoverExpire:
		return "expire"
	case RecoverTakeOver:
		return "take-over"
	}
	return fmt.Sprintf("Recovery(%d)", int(r))
}

// DecideRecovery says whether rec needs the sweeper. Expiry wins over
// takeover: a dead claim past its deadline is not restarted.
func DecideRecovery(rec *messages.ClaimRecord, now time.Time, staleAfter time.Duration) Recovery {
	switch {
	case Expired(rec, now):
		return RecoverExpire
	case Stale(rec, now, staleAfter):
		return RecoverTakeOver
	}
	return RecoverNone
}

// ClaimAction is what a claim request does with the record it read.
type ClaimAction int

// Claim actions.
const (
	// ClaimStart: no record, or a terminal one (Released, Error): write a
	// new Pending record (Create, or Update at the read revision) and start
	// its saga.
	ClaimStart ClaimAction = iota
	// ClaimExisting: Active; answer its view with source existing and write
	// nothing.
	ClaimExisting
	// ClaimWait: Pending or Releasing with a live owner: wait until it
	// settles (or the caller's wait ends).
	ClaimWait
	// ClaimTakeOver: Pending or Releasing with a stale owner: take it over,
	// rerun its saga, then wait.
	ClaimTakeOver
	// ClaimExpire: Pending past its Deadline: turn it Error "timeout", then
	// decide again (which starts a new claim).
	ClaimExpire
	// ClaimConflict: ReleaseFailed: the Pod and its unsaved data are kept
	// until the release is retried or forced.
	ClaimConflict
)

func (a ClaimAction) String() string {
	switch a {
	case ClaimStart:
		return "start"
	case ClaimExisting:
		return "existing"
	case ClaimWait:
		return "wait"
	case ClaimTakeOver:
		return "take-over"
	case ClaimExpire:
		return "expire"
	case ClaimConflict:
		return "conflict"
	}
	return fmt.Sprintf("ClaimAction(%d)", int(a))
}

// DecideClaim says what a claim request does with rec (nil: absent).
func DecideClaim(rec *messages.ClaimRecord, now time.Time, staleAfter time.Duration) ClaimAction {
	if rec == nil {
		return ClaimStart
	}
	switch rec.Phase {
	case messages.PhaseActive:
		return ClaimExisting
	case messages.PhaseReleaseFailed:
		return ClaimConflict
	case messages.PhasePending, messages.PhaseReleasing:
		switch DecideRecovery(rec, now, staleAfter) {
		case RecoverExpire:
			return ClaimExpire
		case RecoverTakeOver:
			return ClaimTakeOver
		}
		return ClaimWait
	}
	// Released, Error, and any phase this version does not know (written
	// by a newer one): a new life of the claim.
	if rec.Phase.Terminal() {
		return ClaimStart
	}
	return ClaimConflict
}

// ClaimSettled says how a claim request that waited on the life waited
// (as it was when the wait began) goes on once the record is cur (nil:
// deleted). It returns answer=true when cur's view is the reply, and
// notFound=true when the claim was withdrawn because its workload is
// unknown; otherwise the request decides again on cur (e.g. a Releasing
// claim became Released, so a new claim starts).
func ClaimSettled(waited messages.ClaimRecord, cur *messages.ClaimRecord) (answer, notFound bool) {
	if cur == nil {
		// A Pending record is deleted only when pool-manager does not
		// know its workload (docs/claim-path.md).
		return false, waited.Phase == messages.PhasePending && waited.ReleaseReason == ""
	}
	if cur.ID != waited.ID {
		return false, false
	}
	if InFlight(cur.Phase) {
		// The caller's wait ended first: the reply is the Pending view.
		return true, false
	}
	// A plain Pending claim ended Active or Error: everyone who waited on it
	// gets the same final view. A claim that was being released, or whose
	// release was requested, is decided again.
	plain := waited.Phase == messages.PhasePending && waited.ReleaseReason == ""
	return plain && (cur.Phase == messages.PhaseActive || cur.Phase == messages.PhaseError), false
}

// ReleaseAction is what a release request does with the record it read.
type ReleaseAction int

// Release actions.
const (
	// ReleaseNotFound: there never was a claim for the pair.
	ReleaseNotFound ReleaseAction = iota
	// ReleaseAnswer: Released, Error or ReleaseFailed: answer the view as
	// it is (release is idempotent; ReleaseFailed waits for retry/force).
	ReleaseAnswer
	// ReleaseBegin: Active: compare-and-set to Releasing and run the
	// release saga.
	ReleaseBegin
	// ReleaseMark: Pending: record the release request on the claim
	// (ReleaseReason); its saga goes from Pending straight to Releasing
	// once it has an instance, so the release is as durable as the claim.
	ReleaseMark
	// ReleaseWait: Releasing, or Pending with the release already
	// requested: wait until it settles.
	ReleaseWait
	// ReleaseTakeOver: in flight with a stale owner: take it over, rerun
	// its saga, then wait.
	ReleaseTakeOver
	// ReleaseExpire: Pending past its Deadline: turn it Error, then answer.
	ReleaseExpire
)

func (a ReleaseAction) String() string {
	switch a {
	case ReleaseNotFound:
		return "not-found"
	case ReleaseAnswer:
		return "answer"
	case ReleaseBegin:
		return "begin"
	case ReleaseMark:
		return "mark"
	case ReleaseWait:
		return "wait"
	case ReleaseTakeOver:
		return "take-over"
	case ReleaseExpire:
		return "expire"
	}
	return fmt.Sprintf("ReleaseAction(%d)", int(a))
}

// DecideRelease says what a release request does with rec (nil: absent).
func DecideRelease(rec *messages.ClaimRecord, now time.Time, staleAfter time.Duration) ReleaseAction {
	if rec == nil {
		return ReleaseNotFound
	}
	switch rec.Phase {
	case messages.PhaseActive:
		return ReleaseBegin
	case messages.PhasePending, messages.PhaseReleasing:
		switch DecideRecovery(rec, now, staleAfter) {
		case RecoverExpire:
			return ReleaseExpire
		case RecoverTakeOver:
			return ReleaseTakeOver
		}
		if rec.Phase == messages.PhasePending && rec.ReleaseReason == "" {
			return ReleaseMark
		}
		return ReleaseWait
	}
	return ReleaseAnswer
}

// NewPending is the record of a new life of the claim asked for by req:
// Pending, with a fresh id, owned by owner, due by now+timeout.
func NewPending(req messages.ClaimRequest, id, owner string, now time.Time, timeout time.Duration) messages.ClaimRecord {
	return messages.ClaimRecord{
		TenantID:  req.TenantID,
		Workload:  req.Workload,
		ID:        id,
		Phase:     messages.PhasePending,
		Resume:    req.ResumeOrDefault(),
		Detail:    DetailAcquiring,
		CreatedAt: now.UTC(),
		UpdatedAt: now.UTC(),
		Deadline:  now.Add(timeout).UTC(),
		Owner:     owner,
	}
}

// Details shown on claims.
const (
	DetailAcquiring  = "acquiring an instance from the pool"
	DetailBooting    = "booting an instance"
	DetailReleasing  = "retiring the instance"
	DetailPodGone    = "backing pod no longer exists"
	DetailTimeout    = "timeout"
	detailNoInstance = "no instance to retire"
)

// owned reports whether rec is the life id, in phase, driven by owner.
func owned(rec *messages.ClaimRecord, id, owner string, phases ...messages.ClaimPhase) bool {
	if rec == nil || rec.ID != id || rec.Owner != owner {
		return false
	}
	for _, p := range phases {
		if rec.Phase == p {
			return true
		}
	}
	return false
}

// TakeOver makes owner the driver of rec, an in-flight record whose owner
// is stale. It refuses (ErrSuperseded) once the record is settled, was
// refreshed in the meantime, or is Pending past its deadline (that one
// expires instead). A Releasing record gets a new deadline, now +
// releaseTimeout, for the retried release; a Pending deadline is the
// caller's and stays.
func TakeOver(rec *messages.ClaimRecord, owner string, now time.Time, staleAfter, releaseTimeout time.Duration) (messages.ClaimRecord, error) {
	if !Stale(rec, now, staleAfter) || Expired(rec, now) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Owner = owner
	next.UpdatedAt = now.UTC()
	if next.Phase == messages.PhaseReleasing {
		next.Deadline = now.Add(releaseTimeout).UTC()
	}
	return next, nil
}

// Refresh is the owner's heartbeat: UpdatedAt = now, and detail when set.
func Refresh(rec *messages.ClaimRecord, id, owner, detail string, now time.Time) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhasePending, messages.PhaseReleasing) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.UpdatedAt = now.UTC()
	if detail != "" {
		next.Detail = detail
	}
	return next, nil
}

// MarkBooting records that the pool had no instance and the claim boots
// one cold, so an owner that takes the claim over goes straight to boot
// (boot is idempotent per claim ID; acquire could hand out a second
// instance).
func MarkBooting(rec *messages.ClaimRecord, id, owner string, now time.Time) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhasePending) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Source = messages.SourceCold
	next.Detail = DetailBooting
	next.UpdatedAt = now.UTC()
	return next, nil
}

// Booting reports whether the claim already fell back to a cold boot.
func Booting(rec messages.ClaimRecord) bool {
	return rec.Phase == messages.PhasePending && rec.Source == messages.SourceCold
}

// Activate turns the Pending life id, driven by owner, Active on inst.
// When a release was requested while it was Pending, it goes to Releasing
// instead (with the instance recorded, so the release saga retires it).
func Activate(rec *messages.ClaimRecord, id, owner string, inst messages.Instance, source messages.ClaimSource, now time.Time, releaseTimeout time.Duration) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhasePending) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.InstanceID = inst.InstanceID
	next.Endpoint = inst.Endpoint
	next.Source = source
	next.ClaimedAt = messages.Timestamp(now)
	next.Detail = ""
	next.UpdatedAt = now.UTC()
	if rec.ReleaseReason != "" {
		next.Phase = messages.PhaseReleasing
		next.Detail = DetailReleasing
		next.Deadline = now.Add(releaseTimeout).UTC()
		return next, nil
	}
	next.Phase = messages.PhaseActive
	next.Deadline = time.Time{}
	return next, nil
}

// Fail turns the Pending life id, driven by owner, Error with detail.
func Fail(rec *messages.ClaimRecord, id, owner, detail string, now time.Time) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhasePending) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Phase = messages.PhaseError
	next.Detail = detail
	next.UpdatedAt = now.UTC()
	return next, nil
}

// Expire turns a Pending record past its Deadline Error "timeout",
// whoever owns it.
func Expire(rec *messages.ClaimRecord, now time.Time) (messages.ClaimRecord, error) {
	if !Expired(rec, now) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Phase = messages.PhaseError
	next.Detail = DetailTimeout + ": no ready instance by the claim deadline " + rec.Deadline.UTC().Format(time.RFC3339)
	next.UpdatedAt = now.UTC()
	return next, nil
}

// Withdrawable reports whether the Pending life id may be deleted because
// its workload is unknown.
func Withdrawable(rec *messages.ClaimRecord, id string) bool {
	return rec != nil && rec.ID == id && rec.Phase == messages.PhasePending
}

// RequestRelease records on a Pending claim that a release was asked for.
func RequestRelease(rec *messages.ClaimRecord, reason messages.ReleaseReason, now time.Time) (messages.ClaimRecord, error) {
	if rec == nil || rec.Phase != messages.PhasePending || rec.ReleaseReason != "" {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.ReleaseReason = reason
	next.Detail = "release requested (" + string(reason) + "); waiting for the claim to finish"
	next.UpdatedAt = now.UTC()
	return next, nil
}

// BeginRelease turns an Active claim Releasing, driven by owner, due by
// now+timeout.
func BeginRelease(rec *messages.ClaimRecord, reason messages.ReleaseReason, owner string, now time.Time, timeout time.Duration) (messages.ClaimRecord, error) {
	if rec == nil || rec.Phase != messages.PhaseActive {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Phase = messages.PhaseReleasing
	next.ReleaseReason = reason
	next.Detail = DetailReleasing
	next.Owner = owner
	next.UpdatedAt = now.UTC()
	next.Deadline = now.Add(timeout).UTC()
	return next, nil
}

// FinishRelease turns the Releasing life id, driven by owner, Released:
// the endpoint is cleared and detail says why.
func FinishRelease(rec *messages.ClaimRecord, id, owner, detail string, now time.Time) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhaseReleasing) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Phase = messages.PhaseReleased
	next.Endpoint = nil
	next.Detail = detail
	next.UpdatedAt = now.UTC()
	next.Deadline = time.Time{}
	return next, nil
}

// FailRelease turns the Releasing life id, driven by owner, ReleaseFailed;
// the instance is kept.
func FailRelease(rec *messages.ClaimRecord, id, owner, detail string, now time.Time) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhaseReleasing) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Phase = messages.PhaseReleaseFailed
	next.Detail = detail
	next.UpdatedAt = now.UTC()
	return next, nil
}

// ReleasedDetail is the detail of a Released claim.
func ReleasedDetail(reason messages.ReleaseReason, instanceExisted bool) string {
	if reason == "" {
		reason = messages.ReasonAPI
	}
	d := "released (" + string(reason) + ")"
	if !instanceExisted {
		d += "; the instance was already gone"
	}
	return d
}

// InstanceFate is what an instance event means for the claim holding the
// instance.
type InstanceFate int

// Instance fates.
const (
	// InstanceFine: the event does not end a claim (warming, ready,
	// acquired, ...).
	InstanceFine InstanceFate = iota
	// InstanceDeleted: the Pod is gone; the claim becomes Released.
	InstanceDeleted
	// InstanceFailed: the Pod failed; the claim becomes Error.
	InstanceFailed
)

// Instance phases (messages.Instance.Phase, compared case-insensitively)
// that end the claim holding the instance. pool-manager publishes them on
// bh.v1.events.instance.<tenant>.<workload>.
var (
	deletedPhases = []string{"deleted", "gone", "retired", "terminated"}
	failedPhases  = []string{"failed", "error"}
)

// ClassifyInstanceEvent says what ev (an [messages.EventInstance] event)
// means for a claim.
func ClassifyInstanceEvent(ev messages.Event) InstanceFate {
	if ev.Instance == nil || ev.Instance.InstanceID == "" {
		return InstanceFine
	}
	phase := strings.ToLower(strings.TrimSpace(ev.Instance.Phase))
	for _, p := range deletedPhases {
		if phase == p {
			return InstanceDeleted
		}
	}
	for _, p := range failedPhases {
		if phase == p {
			return InstanceFailed
		}
	}
	return InstanceFine
}

// InstanceGone ends the Active claim rec whose instance instanceID was
// deleted (Released, "backing pod no longer exists") or failed (Error,
// "instance failed: <why>"), so the next claim gets a new instance. Any
// other record (another instance, not Active) is left alone.
func InstanceGone(rec *messages.ClaimRecord, instanceID string, fate InstanceFate, why string, now time.Time) (messages.ClaimRecord, error) {
	if rec == nil || rec.Phase != messages.PhaseActive || rec.InstanceID == "" || rec.InstanceID != instanceID || fate == InstanceFine {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Endpoint = nil
	next.UpdatedAt = now.UTC()
	if fate == InstanceDeleted {
		next.Phase = messages.PhaseReleased
		next.Detail = DetailPodGone
		return next, nil
	}
	next.Phase = messages.PhaseError
	if why == "" {
		why = "pod failed"
	}
	next.Detail = "instance failed: " + why
	return next, nil
}

// OrphanedInstance reports whether an instance obtained for the life id
// must be retired because the life can no longer use it: the record is
// gone, belongs to another life, or that life ended Error without it.
// When the life is Pending (another owner took it over: it gets the same
// instance, acquire and boot being idempotent per claim ID), Active or
// being released, the instance is someone else's business.
func OrphanedInstance(cur *messages.ClaimRecord, id string) bool {
	if cur == nil || cur.ID != id {
		return true
	}
	return cur.Phase == messages.PhaseError
}

// TransientCode reports whether a pool-manager error may go away by
// itself, so the step is retried until the claim's deadline.
func TransientCode(c messages.Code) bool {
	return c == messages.CodeUnavailable || c == messages.CodeDeadlineExceeded
}
