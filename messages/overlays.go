package messages

import (
	"encoding/json"
	"time"
)

// Snapshot describes one stored version of a tenant's overlay for a
// workload.
type Snapshot struct {
	TenantID string `json:"tenantId"`
	Workload string `json:"workloadRef"`
	// Path locates the archive in the storage backend.
	Path string `json:"path"`
	Size int64  `json:"size"`
	// SHA256 is the hex digest of the archive, checked on restore.
	SHA256 string `json:"sha256"`
	// Generation increases by one with every stored version of the pair.
	Generation int64     `json:"generation"`
	CreatedAt  time.Time `json:"createdAt"`
}

// ExtractRequest saves the overlay directories of an instance as a new
// version (subject [SubjectOverlaysExtract], reply [Snapshot]).
type ExtractRequest struct {
	TenantID   string `json:"tenantId"`
	Workload   string `json:"workload"`
	InstanceID string `json:"instanceId"`
	// RestoredGeneration is the generation the instance was restored from
	// (0 for a clean start). The store refuses with [CodeConflict] to save
	// over a newer stored version than this one, so an instance that
	// skipped its restore cannot replace good data.
	RestoredGeneration int64 `json:"restoredGeneration"`
	// Force saves even when RestoredGeneration is stale (the new version
	// is added; older versions are kept).
	Force bool `json:"force,omitempty"`
}

// RestoreRequest copies a stored overlay into an instance (subject
// [SubjectOverlaysRestore], reply [RestoreReply]).
type RestoreRequest struct {
	TenantID   string `json:"tenantId"`
	Workload   string `json:"workload"`
	InstanceID string `json:"instanceId"`
	// Generation selects a version; 0 means the latest.
	Generation int64 `json:"generation,omitempty"`
}

// RestoreReply is the reply of [SubjectOverlaysRestore].
type RestoreReply struct {
	// Generation is the version restored, 0 when nothing was.
	Generation int64 `json:"generation"`
	// Restored is false when the tenant had no stored overlay.
	Restored bool `json:"restored"`
}

// OverlayListRequest lists stored versions (subject [SubjectOverlaysList],
// reply [SnapshotList]); empty fields match everything.
type OverlayListRequest struct {
	TenantID string `json:"tenantId,omitempty"`
	Workload string `json:"workload,omitempty"`
}

// SnapshotList is the reply of [SubjectOverlaysList].
type SnapshotList struct {
	Snapshots []Snapshot `json:"snapshots"`
}

// MarshalJSON writes a nil Snapshots as [] so clients never see null.
func (l SnapshotList) MarshalJSON() ([]byte, error) {
	type plain SnapshotList
	if l.Snapshots == nil {
		l.Snapshots = []Snapshot{}
	}
	return json.Marshal(plain(l))
}

// OverlayDeleteRequest deletes every stored version of a tenant's overlay
// for a workload (subject [SubjectOverlaysDelete], reply
// [OverlayDeleteReply]).
type OverlayDeleteRequest struct {
	TenantID string `json:"tenantId"`
	Workload string `json:"workload"`
}

// OverlayDeleteReply is the reply of [SubjectOverlaysDelete].
type OverlayDeleteReply struct {
	// Deleted is the number of versions removed.
	Deleted int `json:"deleted"`
}
