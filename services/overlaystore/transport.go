package overlaystore

import (
	"context"
	"log/slog"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/nats-io/nats.go"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
)

// ServeOptions tune the NATS subscriptions.
type ServeOptions struct {
	Logger *slog.Logger
	// Workers bounds concurrent handlers per subject (default 32).
	Workers int
	// TransferTimeout bounds extract and restore handlers (default 10m).
	TransferTimeout time.Duration

	// track wraps every request (Run's graceful shutdown).
	track func(ctx context.Context, f func(context.Context) (any, error)) (any, error)
}

// requestTimeout bounds list and delete handlers.
const requestTimeout = 30 * time.Second

// Serve subscribes the endpoints to their subjects in queue group messages.QueueOverlayStore,
// so that replicas share the requests; each subject serves up to Workers requests at once.
// Unsubscribe the returned subscriptions to stop.
func Serve(nc *nats.Conn, e Endpoints, opts ServeOptions) ([]*nats.Subscription, error) {
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.TransferTimeout <= 0 {
		opts.TransferTimeout = DefaultTransferTimeout
	}
	wrap := func(e endpoint.Endpoint) endpoint.Endpoint {
		if opts.track == nil {
			return e
		}
		return func(ctx context.Context, req any) (any, error) {
			return opts.track(ctx, func(ctx context.Context) (any, error) { return e(ctx, req) })
		}
	}
	o := func(timeout time.Duration) bus.ServeOptions {
		return bus.ServeOptions{Queue: messages.QueueOverlayStore, Workers: opts.Workers, Timeout: timeout, Logger: opts.Logger}
	}
	// Transfers send progress, so that the claim-router notices a store that died mid-transfer.
	transfer := o(opts.TransferTimeout)
	transfer.Progress = messages.ProgressInterval
	var out []*nats.Subscription
	add := func(s *nats.Subscription, err error) error {
		if err != nil {
			for _, s := range out {
				_ = s.Unsubscribe()
			}
			return err
		}
		out = append(out, s)
		return nil
	}
	if err := add(bus.Serve[messages.ExtractRequest](nc, messages.SubjectOverlaysExtract, wrap(e.Extract), transfer)); err != nil {
		return nil, err
	}
	if err := add(bus.Serve[messages.RestoreRequest](nc, messages.SubjectOverlaysRestore, wrap(e.Restore), transfer)); err != nil {
		return nil, err
	}
	if err := add(bus.Serve[messages.OverlayListRequest](nc, messages.SubjectOverlaysList, wrap(e.List), o(requestTimeout))); err != nil {
		return nil, err
	}
	if err := add(bus.Serve[messages.OverlayDeleteRequest](nc, messages.SubjectOverlaysDelete, wrap(e.Delete), o(requestTimeout))); err != nil {
		return nil, err
	}
	return out, nil
}
