package messages

import "time"

// ClaimRecord is the value stored under [ClaimKey] in [BucketClaims]: the
// source of truth for one (tenant, workload) claim. claim-router writes it,
// every write a compare-and-set on the key's revision; other services
// (cr-sync, idle-reaper) watch it.
type ClaimRecord struct {
	TenantID string `json:"tenantId"`
	Workload string `json:"workload"`
	// ID is new for each life of the claim (each Pending), so that steps
	// retried after a crash (acquire, boot) stay idempotent.
	ID         string      `json:"id"`
	Phase      ClaimPhase  `json:"phase"`
	InstanceID string      `json:"instanceId,omitempty"`
	Endpoint   *Endpoint   `json:"endpoint,omitempty"`
	Source     ClaimSource `json:"source,omitempty"`
	ClaimedAt  *time.Time  `json:"claimedAt,omitempty"`
	Resume     bool        `json:"resume"`
	Detail     string      `json:"detail,omitempty"`
	// RestoredGeneration is the overlay generation restored into the
	// instance (0: none), so a release never replaces good data with a
	// state that was not restored from it.
	RestoredGeneration int64         `json:"restoredGeneration,omitempty"`
	ReleaseReason      ReleaseReason `json:"releaseReason,omitempty"`
	// Overlays and ReleaseAction come from the instance (see [Instance]).
	Overlays      bool       `json:"overlays,omitempty"`
	ReleaseAction string     `json:"releaseAction,omitempty"`
	LastActivity  *time.Time `json:"lastActivity,omitempty"`
	// IdleTimeoutSeconds is copied from the instance at activation; when
	// positive, idle-reaper releases the claim that long after its last
	// activity.
	IdleTimeoutSeconds int32 `json:"idleTimeoutSeconds,omitempty"`
	// WatchDirs is copied from the instance at activation: idle-reaper
	// counts a newer modification time under them as activity.
	WatchDirs []string  `json:"watchDirs,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Deadline is when a Pending claim turns Error, or a Releasing one is
	// retried by another router.
	Deadline time.Time `json:"deadline,omitempty"`
	// Owner is the claim-router replica driving the claim; another replica
	// takes over once UpdatedAt is stale.
	Owner string `json:"owner,omitempty"`
}

// View is the claim as clients see it.
func (r ClaimRecord) View() ClaimView {
	return ClaimView{
		TenantID:   r.TenantID,
		Workload:   r.Workload,
		Phase:      r.Phase,
		InstanceID: r.InstanceID,
		Endpoint:   r.Endpoint,
		Source:     r.Source,
		ClaimedAt:  r.ClaimedAt,
		Detail:     r.Detail,
	}
}

// IdleValue is the value idle-reaper keeps under [ClaimKey] in [BucketIdle]
// while an Active claim with an idle timeout lives. The key carries a
// per-key TTL that ends at LastActivity + TimeoutSeconds; its expiry marker
// is the idle deadline. Fired marks the key written by the one reaper
// replica that asked for the release.
type IdleValue struct {
	ClaimID        string    `json:"claimId"`
	LastActivity   time.Time `json:"lastActivity"`
	TimeoutSeconds int32     `json:"timeoutSeconds"`
	Fired          bool      `json:"fired,omitempty"`
}

// Deadline is LastActivity + TimeoutSeconds.
func (v IdleValue) Deadline() time.Time {
	return v.LastActivity.Add(time.Duration(v.TimeoutSeconds) * time.Second)
}
