package overlaystore

import (
	"context"

	"github.com/go-kit/kit/endpoint"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
)

// API is what overlay-store offers over NATS. *Service implements it.
type API interface {
	// Extract saves an instance's overlay dirs as a new generation (bh.v1.overlays.extract).
	Extract(ctx context.Context, req messages.ExtractRequest) (messages.Snapshot, error)
	// Restore copies a stored generation into an instance (bh.v1.overlays.restore).
	Restore(ctx context.Context, req messages.RestoreRequest) (messages.RestoreReply, error)
	// List lists stored generations, newest first (bh.v1.overlays.list).
	List(ctx context.Context, req messages.OverlayListRequest) (messages.SnapshotList, error)
	// Delete removes every generation of a tenant's overlay for a workload
	// (bh.v1.overlays.delete).
	Delete(ctx context.Context, req messages.OverlayDeleteRequest) (messages.OverlayDeleteReply, error)
}

var _ API = (*Service)(nil)

// Endpoints are the go-kit endpoints of an API.
type Endpoints struct {
	Extract endpoint.Endpoint
	Restore endpoint.Endpoint
	List    endpoint.Endpoint
	Delete  endpoint.Endpoint
}

// MakeEndpoints wraps each method of a in a go-kit endpoint.
func MakeEndpoints(a API) Endpoints {
	return Endpoints{
		Extract: bus.Endpoint(a.Extract),
		Restore: bus.Endpoint(a.Restore),
		List:    bus.Endpoint(a.List),
		Delete:  bus.Endpoint(a.Delete),
	}
}
