package messages

// AcquireRequest takes a ready instance from the workload's warm pool for a
// claim (subject [SubjectPoolAcquire], reply [Instance]). It fails with
// [CodeCapacityExhausted] when the pool has no ready instance, and the
// claim-router then boots one cold.
type AcquireRequest struct {
	Workload string `json:"workload"`
	TenantID string `json:"tenantId"`
	// ClaimKey is the [ClaimKey] of the claim the instance is for.
	ClaimKey string `json:"claimKey"`
	// ClaimID identifies one life of that claim, so that a retried acquire
	// returns the same instance instead of a second one.
	ClaimID string `json:"claimId"`
}

// Instance is one managed Pod as known to pool-manager's inventory.
type Instance struct {
	// InstanceID is the Pod name.
	InstanceID string `json:"instanceId"`
	Workload   string `json:"workloadRef"`
	// Pool is the BoilerhousePool the instance was warmed for, if any.
	Pool string `json:"pool,omitempty"`
	// TenantID is set once the instance is bound to a tenant.
	TenantID string    `json:"tenantId,omitempty"`
	Endpoint *Endpoint `json:"endpoint,omitempty"`
	// Ready is true when the Pod passes its readiness checks.
	Ready bool `json:"ready"`
	// Phase is pool-manager's inventory phase (e.g. warming, ready,
	// acquired); free-form so it can evolve without a contract change.
	Phase  string `json:"phase,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Overlays is true when the workload declares overlay directories, so the claim-router
	// knows whether to restore and extract.
	Overlays bool `json:"overlays,omitempty"`
	// ReleaseAction is the workload's idle.action ("hibernate" or "destroy"), applied on release.
	ReleaseAction string `json:"releaseAction,omitempty"`
	// IdleTimeoutSeconds is the workload's idle.timeoutSeconds (0: never idle-released).
	IdleTimeoutSeconds int32 `json:"idleTimeoutSeconds,omitempty"`
	// WatchDirs is the workload's idle.watchDirs: directories of container main whose
	// modification times count as activity.
	WatchDirs []string `json:"watchDirs,omitempty"`
}

// BootRequest boots a new instance for a claim when no pool instance is
// available (subject [SubjectInstancesBoot], reply [Instance]).
type BootRequest struct {
	TenantID string `json:"tenantId"`
	Workload string `json:"workload"`
	ClaimKey string `json:"claimKey"`
	// ClaimID names the instance deterministically, so a retried boot finds
	// the Pod it created before instead of creating a second one.
	ClaimID string `json:"claimId"`
	// RestoreGeneration is the overlay generation that will be restored
	// into the instance, 0 for none; recorded on the instance so that a
	// later extract knows what it was restored from.
	RestoreGeneration int64 `json:"restoreGeneration,omitempty"`
}

// RetireRequest removes an instance after its claim is released (subject
// [SubjectInstancesRetire], reply [RetireReply]). Retiring an instance that
// is already gone succeeds with Retired false.
type RetireRequest struct {
	InstanceID string `json:"instanceId"`
	Workload   string `json:"workload"`
	TenantID   string `json:"tenantId"`
	Reason     string `json:"reason,omitempty"`
}

// RetireReply is the reply of [SubjectInstancesRetire].
type RetireReply struct {
	// Retired is false when the instance no longer existed.
	Retired bool `json:"retired"`
}

// InstancePhaseAwaitingRestore is the Phase of a cold-booted instance whose restore init
// container is waiting: restore into it, then boot again to wait for Ready.
const InstancePhaseAwaitingRestore = "awaiting-restore"
