package messages

import "time"

// Activity says a claim is in use, so idle-reaper pushes its idle deadline
// back. Published (not requested) on [ActivitySubject].
type Activity struct {
	TenantID string    `json:"tenantId"`
	Workload string    `json:"workload"`
	At       time.Time `json:"at"`
}

// EventKind is the kind of an [Event] and the first token after
// "bh.v1.events." in its subject.
type EventKind string

// Event kinds.
const (
	EventClaim    EventKind = "claim"    // a claim changed phase; Claim is set
	EventPool     EventKind = "pool"     // a pool changed (instance warmed, taken, lost)
	EventInstance EventKind = "instance" // an instance changed; Instance is set
)

// Event is a state transition published to the [StreamEvents] stream on
// [EventSubject], for cr-sync, the edge's client streams, idle-reaper and
// audit. Events are notifications: the KV buckets stay the source of truth.
type Event struct {
	Kind     EventKind  `json:"kind"`
	TenantID string     `json:"tenantId,omitempty"`
	Workload string     `json:"workload"`
	Claim    *ClaimView `json:"claim,omitempty"`
	Instance *Instance  `json:"instance,omitempty"`
	// Reason explains the transition (e.g. a [ReleaseReason]).
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}
