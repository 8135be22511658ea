package messages

import (
	"encoding/json"
	"time"
)

// Endpoint is where a claimed instance can be reached.
type Endpoint struct {
	Host string `json:"host,omitempty"`
	Port int32  `json:"port,omitempty"`
}

// ClaimPhase is the phase of a claim; the same values as the
// BoilerhouseClaim CRD status, so cr-sync can copy it verbatim.
type ClaimPhase string

// Claim phases:
//
//	Pending --> Active --> Releasing --> Released
//	   |                       |
//	   +--> Error              +--> ReleaseFailed --(retry)--> Releasing
const (
	PhasePending       ClaimPhase = "Pending"
	PhaseActive        ClaimPhase = "Active"
	PhaseReleasing     ClaimPhase = "Releasing"
	PhaseReleased      ClaimPhase = "Released"
	PhaseReleaseFailed ClaimPhase = "ReleaseFailed"
	PhaseError         ClaimPhase = "Error"
)

// Terminal reports whether a claim in this phase is over and a new claim
// for the same (tenant, workload) may start. ReleaseFailed is not terminal:
// the Pod and its unsaved data are kept until a retry succeeds.
func (p ClaimPhase) Terminal() bool {
	return p == PhaseReleased || p == PhaseError
}

// ClaimSource says how a claim got its instance, fastest first.
type ClaimSource string

// Claim sources.
const (
	SourceExisting ClaimSource = "existing"  // the pair already had an active claim
	SourcePool     ClaimSource = "pool"      // a warm pool instance, nothing to restore
	SourcePoolData ClaimSource = "pool+data" // a warm pool instance plus the tenant's overlay
	SourceCold     ClaimSource = "cold"      // a freshly booted instance
	SourceColdData ClaimSource = "cold+data" // a freshly booted instance plus the tenant's overlay
)

// ClaimRequest asks for an instance of a workload for a tenant (subject
// [SubjectClaimsClaim], reply [ClaimView]). Claiming is idempotent: an
// active claim for the pair is returned as it is.
//
// When decoding, "workloadRef" is accepted as an alias of "workload" (the
// CRD's name for it); "workload" wins if both are set.
type ClaimRequest struct {
	TenantID string `json:"tenantId"`
	Workload string `json:"workload"`
	// Resume restores the tenant's stored overlay when one exists; nil
	// means true. false starts clean but keeps the stored versions.
	Resume *bool `json:"resume,omitempty"`
	// RequestID is an optional caller-chosen id for tracing and logs.
	RequestID string `json:"requestId,omitempty"`
	// WaitMillis bounds how long the reply may wait for the claim to
	// become Active; 0 means the server's default.
	WaitMillis int64 `json:"waitMillis,omitempty"`
}

// ResumeOrDefault is Resume, defaulting to true.
func (r ClaimRequest) ResumeOrDefault() bool {
	return r.Resume == nil || *r.Resume
}

// Validate checks the tenant id and workload name.
func (r ClaimRequest) Validate() error {
	return validatePair(r.TenantID, r.Workload)
}

// UnmarshalJSON decodes a ClaimRequest, accepting "workloadRef" as an alias.
func (r *ClaimRequest) UnmarshalJSON(b []byte) error {
	type plain ClaimRequest
	var v struct {
		plain
		WorkloadRef string `json:"workloadRef"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*r = ClaimRequest(v.plain)
	if r.Workload == "" {
		r.Workload = v.WorkloadRef
	}
	return nil
}

// ClaimView is the state of one claim as shown to callers: the reply of the
// claims subjects and the element of [TenantView]. Same shape as the REST
// API's claim response. Callers must look at Phase: a reply may carry a
// Pending or Error claim.
type ClaimView struct {
	TenantID   string      `json:"tenantId"`
	Workload   string      `json:"workloadRef,omitempty"`
	Phase      ClaimPhase  `json:"phase"`
	InstanceID string      `json:"instanceId,omitempty"`
	Endpoint   *Endpoint   `json:"endpoint,omitempty"`
	Source     ClaimSource `json:"source,omitempty"`
	// ClaimedAt is when the claim became Active; use [Timestamp] to set it
	// so it serialises as RFC 3339 UTC seconds (2026-04-20T10:30:00Z).
	ClaimedAt *time.Time `json:"claimedAt,omitempty"`
	// Detail explains an Error or ReleaseFailed phase, or what a Pending
	// claim is waiting for.
	Detail string `json:"detail,omitempty"`
	// LastActivity and IdleDeadline are set on an Active claim whose
	// workload has an idle timeout: the last activity idle-reaper recorded
	// and when the claim will be released unless used again.
	LastActivity *time.Time `json:"lastActivity,omitempty"`
	IdleDeadline *time.Time `json:"idleDeadline,omitempty"`
}

// Timestamp returns t in UTC truncated to whole seconds, the form used for
// times shown to callers.
func Timestamp(t time.Time) *time.Time {
	u := t.UTC().Truncate(time.Second)
	return &u
}

// ReleaseReason says why a claim is released; it is recorded and shown in
// events.
type ReleaseReason string

// Release reasons.
const (
	ReasonAPI          ReleaseReason = "api"           // a caller asked (REST or NATS)
	ReasonIdle         ReleaseReason = "idle"          // idle-reaper's deadline passed
	ReasonClaimDeleted ReleaseReason = "claim-deleted" // the BoilerhouseClaim CR was deleted (kubectl)
	ReasonForce        ReleaseReason = "force"         // release without saving the overlay
	ReasonRetry        ReleaseReason = "retry"         // retry of a ReleaseFailed claim
)

// Valid reports whether r is one of the defined reasons.
func (r ReleaseReason) Valid() bool {
	switch r {
	case ReasonAPI, ReasonIdle, ReasonClaimDeleted, ReasonForce, ReasonRetry:
		return true
	}
	return false
}

// ReleaseRequest ends a claim (subject [SubjectClaimsRelease], reply
// [ClaimView]): the tenant's overlay is saved and the instance retired.
// "workloadRef" is accepted as an alias of "workload" when decoding.
type ReleaseRequest struct {
	TenantID string `json:"tenantId"`
	Workload string `json:"workload"`
	// Reason defaults to [ReasonAPI] when empty.
	Reason ReleaseReason `json:"reason,omitempty"`
	// Force releases without saving the overlay; the stored versions are
	// kept.
	Force bool `json:"force,omitempty"`
	// WaitMillis bounds how long the reply may wait for the release to
	// end; 0 means the server's default.
	WaitMillis int64 `json:"waitMillis,omitempty"`
}

// Validate checks the tenant id, the workload name and the reason, if set.
func (r ReleaseRequest) Validate() error {
	if err := validatePair(r.TenantID, r.Workload); err != nil {
		return err
	}
	if r.Reason != "" && !r.Reason.Valid() {
		return Errorf(CodeInvalidArgument, "release reason %s must be one of api, idle, claim-deleted, force, retry", quote(string(r.Reason)))
	}
	return nil
}

// UnmarshalJSON decodes a ReleaseRequest, accepting "workloadRef" as an
// alias.
func (r *ReleaseRequest) UnmarshalJSON(b []byte) error {
	type plain ReleaseRequest
	var v struct {
		plain
		WorkloadRef string `json:"workloadRef"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*r = ReleaseRequest(v.plain)
	if r.Workload == "" {
		r.Workload = v.WorkloadRef
	}
	return nil
}

// ClaimGetRequest reads one claim (subject [SubjectClaimsGet], reply
// [ClaimView], or [CodeNotFound]).
type ClaimGetRequest struct {
	TenantID string `json:"tenantId"`
	Workload string `json:"workload"`
}

// Validate checks the tenant id and workload name.
func (r ClaimGetRequest) Validate() error {
	return validatePair(r.TenantID, r.Workload)
}

// TenantGetRequest reads one tenant's claims (subject [SubjectTenantsGet],
// reply [TenantView]).
type TenantGetRequest struct {
	TenantID string `json:"tenantId"`
}

// Validate checks the tenant id.
func (r TenantGetRequest) Validate() error {
	return ValidateTenantID(r.TenantID)
}

// TenantView is a tenant with its claims.
type TenantView struct {
	TenantID string      `json:"tenantId"`
	Claims   []ClaimView `json:"claims"`
}

// MarshalJSON writes a nil Claims as [] so clients never see null.
func (v TenantView) MarshalJSON() ([]byte, error) {
	type plain TenantView
	if v.Claims == nil {
		v.Claims = []ClaimView{}
	}
	return json.Marshal(plain(v))
}

// TenantListRequest lists every tenant with claims (subject
// [SubjectTenantsList], reply [TenantList]).
type TenantListRequest struct{}

// TenantList is the reply of [SubjectTenantsList].
type TenantList struct {
	Tenants []TenantView `json:"tenants"`
}

// MarshalJSON writes a nil Tenants as [] so clients never see null.
func (l TenantList) MarshalJSON() ([]byte, error) {
	type plain TenantList
	if l.Tenants == nil {
		l.Tenants = []TenantView{}
	}
	return json.Marshal(plain(l))
}

func validatePair(tenant, workload string) error {
	if err := ValidateTenantID(tenant); err != nil {
		return err
	}
	return ValidateWorkloadName(workload)
}
