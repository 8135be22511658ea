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
//
// # Overlays (docs/overlays.md)
//
// A claim whose instance has overlay directories (Instance.Overlays) and
// that resumes (ClaimRecord.Resume) gets the tenant's stored overlay before
// it turns Active: a pool instance is restored into (pool+data); a cold
// boot first asks overlay-store for the newest generation, records it on
// the Pending record (so an owner that takes over boots the same way),
// boots with BootRequest.RestoreGeneration, restores when pool-manager
// answers awaiting-restore and boots again until Ready (cold+data). A cold
// boot that could not learn the generation (overlay-store unreachable, or
// a takeover that does not know whether the list was empty) restores the
// newest generation into the running instance instead, as the pool path
// does. The generation restored is recorded (RestoredGeneration), with
// Overlays and ReleaseAction, on the Active record. A restore that was due
// and failed retires the instance and turns the claim Error "restore
// failed: ...": the tenant never runs on an empty workspace that a later
// release would save over good data (invariant 3).
//
// Release (Active -> Releasing -> Released | ReleaseFailed) follows
// [PlanRelease]: hibernate extracts the overlay (retried on the
// ExtractBackoff schedule; a conflict, the stored overlay being newer than
// the one this claim restored, is not retried), records the generation it
// saved on the Releasing record ([RecordSaved], so a rerun after a crash
// passes overlay-store's generation check), retires the instance and ends
// Released; when the extract fails for good the claim is ReleaseFailed and
// the instance is kept. destroy retires the instance, then deletes the
// stored overlay. Release reason "retry" restarts the release of a
// ReleaseFailed claim; "force" (or ReleaseRequest.Force) releases an
// Active or ReleaseFailed claim without saving the overlay.
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
	// ReleaseAnswer: Released, Error, or ReleaseFailed asked for without
	// retry or force: answer the view as it is (release is idempotent; a
	// retry of a claim already Released answers Released too).
	ReleaseAnswer
	// ReleaseBegin: Active (any reason but retry), or ReleaseFailed with
	// reason retry or force: compare-and-set to Releasing and run the
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
	// ReleaseConflict: reason retry on a claim whose release did not fail
	// (Active, Pending): there is nothing to retry.
	ReleaseConflict
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
	case ReleaseConflict:
		return "conflict"
	}
	return fmt.Sprintf("ReleaseAction(%d)", int(a))
}

// RestartsRelease reports whether a release with reason moves a
// ReleaseFailed claim back to Releasing: retry (the same saga again) and
// force (retire without saving the overlay).
func RestartsRelease(reason messages.ReleaseReason) bool {
	return reason == messages.ReasonRetry || reason == messages.ReasonForce
}

// DecideRelease says what a release request with reason does with rec
// (nil: absent).
//
// Retry is for ReleaseFailed claims: on an Active or Pending claim it is a
// conflict; on a Releasing claim it waits (another retry got there first);
// on a Released or Error claim it answers the view (the release is over,
// nothing to retry). Force releases Active and ReleaseFailed claims, and
// is recorded on a Pending claim like any reason; on a claim whose release
// is already running (Releasing, or Pending with a release recorded) it
// waits for that release instead of replacing it.
func DecideRelease(rec *messages.ClaimRecord, reason messages.ReleaseReason, now time.Time, staleAfter time.Duration) ReleaseAction {
	if rec == nil {
		return ReleaseNotFound
	}
	switch rec.Phase {
	case messages.PhaseActive:
		if reason == messages.ReasonRetry {
			return ReleaseConflict
		}
		return ReleaseBegin
	case messages.PhaseReleaseFailed:
		if RestartsRelease(reason) {
			return ReleaseBegin
		}
		return ReleaseAnswer
	case messages.PhasePending, messages.PhaseReleasing:
		switch DecideRecovery(rec, now, staleAfter) {
		case RecoverExpire:
			return ReleaseExpire
		case RecoverTakeOver:
			return ReleaseTakeOver
		}
		if rec.Phase == messages.PhasePending && reason == messages.ReasonRetry {
			return ReleaseConflict
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

	DetailRestoring       = "restoring the tenant's overlay"
	DetailSavingOverlay   = "saving the overlay"
	DetailDeletingOverlay = "deleting the stored overlay"
	// DetailForced is the detail of a claim released with force.
	DetailForced = "forced: overlay not saved"
	// detailGone is added when the instance no longer existed.
	detailGone = "; the instance was already gone"
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
// instance), and the overlay generation the boot restores (0: none or
// unknown), kept in RestoredGeneration while the claim is Pending, so that
// owner boots with the same BootRequest.RestoreGeneration. [Activate]
// replaces it with the generation actually restored.
func MarkBooting(rec *messages.ClaimRecord, id, owner string, restoreGeneration int64, now time.Time) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhasePending) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	next.Source = messages.SourceCold
	next.Detail = DetailBooting
	next.RestoredGeneration = max(restoreGeneration, 0)
	next.UpdatedAt = now.UTC()
	return next, nil
}

// Booting reports whether the claim already fell back to a cold boot.
func Booting(rec messages.ClaimRecord) bool {
	return rec.Phase == messages.PhasePending && rec.Source == messages.SourceCold
}

// Obtained is what a claim saga got for its Pending claim: the instance,
// how ([messages.ClaimSource]), and the overlay generation restored into
// it (0: none).
type Obtained struct {
	Instance           messages.Instance
	Source             messages.ClaimSource
	RestoredGeneration int64
}

// Activate turns the Pending life id, driven by owner, Active on got: the
// instance, its endpoint, the source, the generation restored, and the
// instance's Overlays and ReleaseAction (what its release will do). When a
// release was requested while it was Pending, it goes to Releasing
// instead (with the instance recorded, so the release saga retires it).
func Activate(rec *messages.ClaimRecord, id, owner string, got Obtained, now time.Time, releaseTimeout time.Duration) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhasePending) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	inst := got.Instance
	next := *rec
	next.InstanceID = inst.InstanceID
	next.Endpoint = inst.Endpoint
	next.Source = got.Source
	next.RestoredGeneration = got.RestoredGeneration
	next.Overlays = inst.Overlays
	next.ReleaseAction = inst.ReleaseAction
	next.IdleTimeoutSeconds = inst.IdleTimeoutSeconds
	next.WatchDirs = inst.WatchDirs
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

// BeginRelease turns an Active claim (for any reason but retry), or a
// ReleaseFailed one (for retry or force, [RestartsRelease]), Releasing
// with reason, driven by owner, due by now+timeout.
func BeginRelease(rec *messages.ClaimRecord, reason messages.ReleaseReason, owner string, now time.Time, timeout time.Duration) (messages.ClaimRecord, error) {
	if rec == nil {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	switch {
	case rec.Phase == messages.PhaseActive && reason != messages.ReasonRetry:
	case rec.Phase == messages.PhaseReleaseFailed && RestartsRelease(reason):
	default:
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
		d += detailGone
	}
	return d
}

// RestoreDue reports whether the tenant's overlay must be restored into
// the pool instance inst before the claim rec turns Active: the workload
// has overlay directories and the claim resumes. (Cold boots decide with
// [DecideBoot] and [ColdOutcome].)
func RestoreDue(rec messages.ClaimRecord, inst messages.Instance) bool {
	return rec.Resume && inst.Overlays
}

// RestoredSource is the source and restored generation of a claim whose
// instance came from base (pool or cold) once a restore answered reply:
// base+data and the generation when something was restored; base and 0
// when the tenant had nothing stored.
func RestoredSource(base messages.ClaimSource, reply messages.RestoreReply) (messages.ClaimSource, int64) {
	if !reply.Restored {
		return base, 0
	}
	switch base {
	case messages.SourcePool:
		return messages.SourcePoolData, reply.Generation
	case messages.SourceCold:
		return messages.SourceColdData, reply.Generation
	}
	return base, reply.Generation
}

// NewestGeneration is the newest generation in list, 0 when it is empty
// (overlay-store lists newest first; the maximum is taken regardless).
func NewestGeneration(list messages.SnapshotList) int64 {
	var g int64
	for _, s := range list.Snapshots {
		g = max(g, s.Generation)
	}
	return g
}

// AwaitingRestore reports whether pool-manager answered a boot with an
// instance whose restore init container waits for its overlay.
func AwaitingRestore(inst messages.Instance) bool {
	return strings.EqualFold(strings.TrimSpace(inst.Phase), messages.InstancePhaseAwaitingRestore)
}

// BootStep is what a cold claim saga does with a successful boot reply.
type BootStep int

// Boot steps.
const (
	// BootReady: the instance is Ready; go on to activate.
	BootReady BootStep = iota
	// BootRestore: the instance's restore init container waits: restore
	// the overlay, then boot again (idempotent) to wait for Ready.
	BootRestore
	// BootRestoreAgain: this saga run restored already, yet pool-manager
	// answers awaiting-restore again (it does so once the init container
	// still waits a grace period after its earlier answer: the restore did
	// not release it). Pause, then restore again.
	BootRestoreAgain
	// BootWithoutRestore: pool-manager refused the restore generation
	// (invalid_argument: the workload has no overlay directories, although
	// the tenant has overlays stored from when it had): boot again without
	// one. Should the workload have overlays after all, [ColdOutcome]
	// restores into the running instance.
	BootWithoutRestore
	// BootFailed: the boot failed; the saga retries transient errors until
	// the claim's deadline, otherwise the claim fails.
	BootFailed
)

func (s BootStep) String() string {
	switch s {
	case BootReady:
		return "ready"
	case BootRestore:
		return "restore"
	case BootRestoreAgain:
		return "restore-again"
	case BootWithoutRestore:
		return "without-restore"
	case BootFailed:
		return "failed"
	}
	return fmt.Sprintf("BootStep(%d)", int(s))
}

// DecideBoot says what to do with the answer (inst, err) to a boot with
// BootRequest.RestoreGeneration restoreGen; restored says whether this saga
// run restored into the instance already.
func DecideBoot(inst messages.Instance, err error, restoreGen int64, restored bool) BootStep {
	switch {
	case err != nil && restoreGen > 0 && messages.CodeOf(err) == messages.CodeInvalidArgument:
		return BootWithoutRestore
	case err != nil:
		return BootFailed
	case !AwaitingRestore(inst):
		return BootReady
	case restored:
		return BootRestoreAgain
	}
	return BootRestore
}

// ColdOutcome is the source and restored generation of the cold claim rec
// once its boot (with BootRequest.RestoreGeneration restoreGen) answered
// Ready with inst. restore is the reply of the restore this saga run made
// through the restore init container (nil: none); knownEmpty says this run
// asked overlay-store and it had nothing stored. restoreNow asks for a
// restore of the newest generation into the running instance before the
// claim turns Active (as for a pool instance): the claim resumes, the
// workload has overlays, the boot restored nothing, and nobody knows that
// nothing is stored (the list failed, or an owner that took over does not
// know what it said).
func ColdOutcome(rec messages.ClaimRecord, inst messages.Instance, restoreGen int64, restore *messages.RestoreReply, knownEmpty bool) (source messages.ClaimSource, generation int64, restoreNow bool) {
	switch {
	case restore != nil:
		source, generation = RestoredSource(messages.SourceCold, *restore)
		return source, generation, false
	case !inst.Overlays:
		return messages.SourceCold, 0, false
	case restoreGen > 0:
		// Ready although it waited for generation restoreGen: its restore
		// init container ended, which overlay-store allows only after
		// restoring that generation (an earlier owner of the claim did).
		return messages.SourceColdData, restoreGen, false
	case rec.Resume && !knownEmpty:
		return messages.SourceCold, 0, true
	}
	return messages.SourceCold, 0, false
}

// RestoreFailedDetail is the Error detail of a claim whose due restore
// failed.
func RestoreFailedDetail(why string) string {
	return "restore failed: " + why
}

// ReleaseMode is how a claim is released.
type ReleaseMode int

// Release modes.
const (
	// ReleaseHibernate saves the overlay (when the workload has one), then
	// retires the instance. The default action.
	ReleaseHibernate ReleaseMode = iota
	// ReleaseDestroy retires the instance, then deletes the stored overlay.
	ReleaseDestroy
	// ReleaseForced retires the instance without saving the overlay (reason
	// force); the stored versions are kept.
	ReleaseForced
)

func (m ReleaseMode) String() string {
	switch m {
	case ReleaseHibernate:
		return "hibernate"
	case ReleaseDestroy:
		return "destroy"
	case ReleaseForced:
		return "force"
	}
	return fmt.Sprintf("ReleaseMode(%d)", int(m))
}

// ReleaseModeOf is the mode of rec's release: forced for reason force,
// otherwise the workload's idle action recorded at activation ("destroy",
// or "hibernate"; empty and unknown actions hibernate, which keeps data).
func ReleaseModeOf(rec messages.ClaimRecord) ReleaseMode {
	if rec.ReleaseReason == messages.ReasonForce {
		return ReleaseForced
	}
	if strings.EqualFold(strings.TrimSpace(rec.ReleaseAction), "destroy") {
		return ReleaseDestroy
	}
	return ReleaseHibernate
}

// ReleasePlan is what the release saga of a Releasing record does, in this
// order: extract, retire, delete the stored overlay.
type ReleasePlan struct {
	Mode ReleaseMode
	// Extract saves the overlay before retiring: hibernate of an instance
	// with overlays.
	Extract bool
	// DeleteOverlay deletes the stored overlay after retiring: destroy of
	// a workload with overlays.
	DeleteOverlay bool
}

// PlanRelease is the plan of rec's release saga.
func PlanRelease(rec messages.ClaimRecord) ReleasePlan {
	mode := ReleaseModeOf(rec)
	return ReleasePlan{
		Mode:          mode,
		Extract:       mode == ReleaseHibernate && rec.Overlays && rec.InstanceID != "",
		DeleteOverlay: mode == ReleaseDestroy && rec.Overlays,
	}
}

// ExtractRequestFor is the extract of rec's release: RestoredGeneration is
// the generation the instance was restored from (or, on a rerun, the one
// this release saved already, see [RecordSaved]), so overlay-store refuses
// to replace a newer stored version (invariant 3); Force is set for a claim
// that started clean (resume false): its state becomes a new generation,
// the older ones are kept.
func ExtractRequestFor(rec messages.ClaimRecord) messages.ExtractRequest {
	return messages.ExtractRequest{
		TenantID:           rec.TenantID,
		Workload:           rec.Workload,
		InstanceID:         rec.InstanceID,
		RestoredGeneration: rec.RestoredGeneration,
		Force:              !rec.Resume,
	}
}

// OverlayFate classifies an overlay-store error on the release path.
type OverlayFate int

// Overlay fates.
const (
	// OverlayRetry: transient or unclassified; retried on the
	// ExtractBackoff schedule.
	OverlayRetry OverlayFate = iota
	// OverlayConflict: the stored overlay is newer than the one this claim
	// restored (invariant 3). Not retried and not overwritten: the release
	// fails with the instance kept; force resolves it.
	OverlayConflict
	// OverlayRefused: the request is refused for good (invalid argument,
	// e.g. the overlay is over the size limits); retrying will not help.
	OverlayRefused
	// OverlayGone: the instance no longer exists; there is nothing left to
	// save.
	OverlayGone
)

func (f OverlayFate) String() string {
	switch f {
	case OverlayRetry:
		return "retry"
	case OverlayConflict:
		return "conflict"
	case OverlayRefused:
		return "refused"
	case OverlayGone:
		return "gone"
	}
	return fmt.Sprintf("OverlayFate(%d)", int(f))
}

// ClassifyOverlayError says what the release saga does with err from
// overlay-store.
func ClassifyOverlayError(err error) OverlayFate {
	switch messages.CodeOf(err) {
	case messages.CodeConflict:
		return OverlayConflict
	case messages.CodeInvalidArgument:
		return OverlayRefused
	case messages.CodeNotFound:
		return OverlayGone
	}
	return OverlayRetry
}

// savedFormat is the detail of a Releasing record whose overlay is saved.
const savedFormat = "overlay saved (generation %d); retiring the instance"

// RecordSaved records on the Releasing life id, driven by owner, that its
// extract committed snap: RestoredGeneration becomes snap.Generation, so a
// rerun of the saga (its owner crashed before the release ended) passes
// overlay-store's generation check instead of conflicting with the
// version this very release stored. The deadline is renewed for the steps
// that follow. A snapshot of generation 0 (nothing to save) changes no
// generation.
func RecordSaved(rec *messages.ClaimRecord, id, owner string, snap messages.Snapshot, now time.Time, timeout time.Duration) (messages.ClaimRecord, error) {
	if !owned(rec, id, owner, messages.PhaseReleasing) {
		return messages.ClaimRecord{}, ErrSuperseded
	}
	next := *rec
	if snap.Generation > 0 {
		next.RestoredGeneration = snap.Generation
	}
	next.Detail = SavedDetail(snap.Generation)
	next.UpdatedAt = now.UTC()
	next.Deadline = now.Add(timeout).UTC()
	return next, nil
}

// SavedDetail is the detail of a Releasing record once its overlay was
// saved as generation (0: nothing to save).
func SavedDetail(generation int64) string {
	return fmt.Sprintf(savedFormat, generation)
}

// SavedGeneration reads back the generation of a [SavedDetail]: a rerun
// whose extract finds the instance gone (retired by the previous run)
// still reports what was saved. Cosmetic only: the saga's decisions rest
// on RestoredGeneration.
func SavedGeneration(detail string) (int64, bool) {
	var g int64
	if n, err := fmt.Sscanf(detail, savedFormat, &g); err != nil || n != 1 || SavedDetail(g) != detail {
		return 0, false
	}
	return g, true
}

// ExtractFailedDetail is the ReleaseFailed detail of a hibernation whose
// extract failed attempts times (the last with err).
func ExtractFailedDetail(err error, attempts int) string {
	return fmt.Sprintf("overlay extract failed: %s (%d attempt%s); the instance is kept: retry the release, or force it to retire the instance without saving",
		messages.AsError(err).Message, attempts, plural(attempts))
}

// ExtractConflictDetail is the ReleaseFailed detail of a hibernation that
// overlay-store refused because a newer overlay is stored than the
// generation the claim restored (invariant 3).
func ExtractConflictDetail(err error, restored int64) string {
	return fmt.Sprintf("overlay extract refused: the stored overlay is newer than generation %d, which this claim restored, and is not overwritten (%s); the instance is kept: force the release to retire it without saving",
		restored, messages.AsError(err).Message)
}

// DeleteFailedDetail is the ReleaseFailed detail of a destroy whose delete
// of the stored overlay failed (the instance is retired already).
func DeleteFailedDetail(err error, attempts int) string {
	return fmt.Sprintf("overlay delete failed: %s (%d attempt%s); the instance is retired: retry the release to delete the stored overlay",
		messages.AsError(err).Message, attempts, plural(attempts))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// ReleaseResult is what a release saga did, for the Released detail.
type ReleaseResult struct {
	// Existed: the instance still existed when it was retired.
	Existed bool
	// Saved: the overlay was saved as Generation (0: nothing to save).
	Saved      bool
	Generation int64
}

// FinishedDetail is the detail of rec's Released record: the reason, then
// what became of the overlay, e.g. "released (idle): hibernated
// (generation 4)", "released (api): destroyed", "forced: overlay not
// saved", "released (api): overlay not saved; the instance was already
// gone".
func FinishedDetail(rec messages.ClaimRecord, plan ReleasePlan, res ReleaseResult) string {
	d := ReleasedDetail(rec.ReleaseReason, true)
	switch {
	case plan.Mode == ReleaseForced:
		d = DetailForced
	case plan.Mode == ReleaseDestroy:
		d += ": destroyed"
	case plan.Extract && res.Saved && res.Generation > 0:
		d += fmt.Sprintf(": hibernated (generation %d)", res.Generation)
	case plan.Extract && res.Saved:
		d += ": hibernated (nothing to save)"
	case plan.Extract:
		d += ": overlay not saved"
	}
	switch {
	case rec.InstanceID == "":
		d += "; " + detailNoInstance
	case !res.Existed:
		d += detailGone
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
