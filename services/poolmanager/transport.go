package poolmanager

import (
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
)

// ServeOptions tune the NATS subscriptions.
type ServeOptions struct {
	Logger *slog.Logger
	// Workers bounds concurrent handlers per subject (default: bus's).
	Workers int
	// BootTimeout is how long a boot may wait for its Pod; the boot handler's own bound is a
	// little longer so that the service answers deadline_exceeded itself.
	BootTimeout time.Duration
}

// requestTimeout bounds acquire and retire handlers.
const requestTimeout = 30 * time.Second

// Serve subscribes the endpoints to their subjects in queue group messages.QueuePoolManager,
// so that replicas share the requests. Unsubscribe the returned subscriptions to stop.
func Serve(nc *nats.Conn, e Endpoints, opts ServeOptions) ([]*nats.Subscription, error) {
	boot := opts.BootTimeout
	if boot <= 0 {
		boot = DefaultBootTimeout
	}
	o := func(timeout time.Duration) bus.ServeOptions {
		return bus.ServeOptions{Queue: messages.QueuePoolManager, Workers: opts.Workers, Timeout: timeout, Logger: opts.Logger}
	}
	var out []*nats.Subscription
	fail := func(err error) ([]*nats.Subscription, error) {
		for _, s := range out {
			_ = s.Unsubscribe()
		}
		return nil, err
	}
	s, err := bus.Serve[messages.AcquireRequest](nc, messages.SubjectPoolAcquire, e.Acquire, o(requestTimeout))
	if err != nil {
		return fail(err)
	}
	out = append(out, s)
	if s, err = bus.Serve[messages.BootRequest](nc, messages.SubjectInstancesBoot, e.Boot, o(boot+5*time.Second)); err != nil {
		return fail(err)
	}
	out = append(out, s)
	if s, err = bus.Serve[messages.RetireRequest](nc, messages.SubjectInstancesRetire, e.Retire, o(requestTimeout)); err != nil {
		return fail(err)
	}
	out = append(out, s)
	return out, nil
}
