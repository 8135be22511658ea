package messages

// Version is the contract version. It is part of every subject, so a
// breaking change gets new subjects and old and new services can run side by
// side during a rollout.
const Version = "v1"

// prefix is the common subject prefix: "bh.v1.".
const prefix = "bh." + Version + "."

// Request/reply subjects served by claim-router. These are the subjects other
// systems publish to.
const (
	// SubjectClaimsClaim takes a [ClaimRequest] and replies with a [ClaimView].
	SubjectClaimsClaim = prefix + "claims.claim"
	// SubjectClaimsRelease takes a [ReleaseRequest] and replies with a [ClaimView].
	SubjectClaimsRelease = prefix + "claims.release"
	// SubjectClaimsGet takes a [ClaimGetRequest] and replies with a [ClaimView].
	SubjectClaimsGet = prefix + "claims.get"
	// SubjectTenantsGet takes a [TenantGetRequest] and replies with a [TenantView].
	SubjectTenantsGet = prefix + "tenants.get"
	// SubjectTenantsList takes a [TenantListRequest] and replies with a [TenantList].
	SubjectTenantsList = prefix + "tenants.list"
)

// Request/reply subjects served by pool-manager (internal to Boilerhouse).
const (
	// SubjectPoolAcquire takes an [AcquireRequest] and replies with an
	// [Instance] taken from the workload's warm pool.
	SubjectPoolAcquire = prefix + "pool.acquire"
	// SubjectInstancesBoot takes a [BootRequest] and replies with a
	// cold-booted [Instance].
	SubjectInstancesBoot = prefix + "instances.boot"
	// SubjectInstancesRetire takes a [RetireRequest] and replies with a
	// [RetireReply].
	SubjectInstancesRetire = prefix + "instances.retire"
)

// Request/reply subjects served by overlay-store (internal to Boilerhouse).
const (
	// SubjectOverlaysRestore takes a [RestoreRequest] and replies with a
	// [RestoreReply].
	SubjectOverlaysRestore = prefix + "overlays.restore"
	// SubjectOverlaysExtract takes an [ExtractRequest] and replies with the
	// stored [Snapshot].
	SubjectOverlaysExtract = prefix + "overlays.extract"
	// SubjectOverlaysList takes an [OverlayListRequest] and replies with a
	// [SnapshotList].
	SubjectOverlaysList = prefix + "overlays.list"
	// SubjectOverlaysDelete takes an [OverlayDeleteRequest] and replies with
	// an [OverlayDeleteReply].
	SubjectOverlaysDelete = prefix + "overlays.delete"
)

// Activity and events.
const (
	// ActivityWildcard matches every subject built by [ActivitySubject].
	ActivityWildcard = prefix + "activity.>"
	// EventsWildcard matches every subject built by [EventSubject]; it is the
	// subject filter of the [StreamEvents] stream.
	EventsWildcard = prefix + "events.>"
	// StreamEvents is the JetStream stream that stores [Event]s.
	StreamEvents = "BH_EVENTS"
)

// NoneToken stands in for an empty tenant or workload in a subject (for
// example a pool event, which has no tenant). It never comes out of
// [EncodeToken] and [DecodeToken] rejects it, so it cannot be mistaken for a
// real id.
const NoneToken = "_"

// ActivitySubject is the subject on which activity for one claim is
// published ([Activity] payload): bh.v1.activity.<tenant>.<workload>, both
// parts encoded with [EncodeToken].
func ActivitySubject(tenant, workload string) string {
	return prefix + "activity." + subjectToken(tenant) + "." + subjectToken(workload)
}

// EventSubject is the subject of an [Event]:
// bh.v1.events.<kind>.<tenant>.<workload>, tenant and workload encoded with
// [EncodeToken] ([NoneToken] when empty), so that consumers can filter by
// kind, tenant or workload with ordinary wildcards.
func EventSubject(kind EventKind, tenant, workload string) string {
	return prefix + "events." + subjectToken(string(kind)) + "." + subjectToken(tenant) + "." + subjectToken(workload)
}

func subjectToken(s string) string {
	if s == "" {
		return NoneToken
	}
	return EncodeToken(s)
}

// JetStream KV bucket names.
const (
	// BucketClaims holds one claim record per (tenant, workload), keyed by
	// [ClaimKey]. It is the source of truth for claim state.
	BucketClaims = "claims"
	// BucketInstances is pool-manager's instance inventory (warm and
	// claimed Pods).
	BucketInstances = "instances"
	// BucketLeases holds the leases that guard single-writer work across
	// replicas.
	BucketLeases = "leases"
	// BucketIdle holds idle-reaper's durable idle deadlines.
	BucketIdle = "idle"
)

// NATS queue groups, one per service, so that N replicas share the requests
// of a subject instead of each answering it.
const (
	QueueClaimRouter  = "claim-router"
	QueuePoolManager  = "pool-manager"
	QueueOverlayStore = "overlay-store"
)
