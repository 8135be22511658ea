package poolmanager

import (
	"context"

	"github.com/go-kit/kit/endpoint"
	"go.opentelemetry.io/otel/attribute"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/tracing"
)

// Service is what pool-manager offers over NATS. *Manager implements it.
type Service interface {
	// Acquire takes a Ready pool instance for a claim (bh.v1.pool.acquire).
	Acquire(ctx context.Context, req messages.AcquireRequest) (messages.Instance, error)
	// Boot creates an instance for a claim and waits until it is Ready (bh.v1.instances.boot).
	Boot(ctx context.Context, req messages.BootRequest) (messages.Instance, error)
	// Retire deletes an instance (bh.v1.instances.retire).
	Retire(ctx context.Context, req messages.RetireRequest) (messages.RetireReply, error)
}

var _ Service = (*Manager)(nil)

// Endpoints are the go-kit endpoints of a Service.
type Endpoints struct {
	Acquire endpoint.Endpoint
	Boot    endpoint.Endpoint
	Retire  endpoint.Endpoint
}

// MakeEndpoints wraps each method of s in a go-kit endpoint.
func MakeEndpoints(s Service) Endpoints {
	return Endpoints{
		Acquire: bus.Annotated(bus.Endpoint(s.Acquire), instanceAttrs),
		Boot:    bus.Annotated(bus.Endpoint(s.Boot), instanceAttrs),
		Retire:  bus.Endpoint(s.Retire),
	}
}

// instanceAttrs are the span attributes of an instance handed out.
func instanceAttrs(inst messages.Instance) []attribute.KeyValue {
	return []attribute.KeyValue{tracing.Tenant(inst.TenantID), tracing.Workload(inst.Workload), tracing.Instance(inst.InstanceID)}
}
