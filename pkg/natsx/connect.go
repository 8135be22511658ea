package natsx

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// DefaultClientName is the connection name used unless the caller passes
// nats.Name.
const DefaultClientName = "boilerhouse"

// ReconnectWait is the pause between reconnect attempts set by [Connect] and
// [ConnectInProcess] (nats.go adds up to 100ms of jitter).
const ReconnectWait = 250 * time.Millisecond

// defaultOptions are the connection defaults. Caller options are applied
// after them, so any of them can be overridden.
func defaultOptions() []nats.Option {
	return []nats.Option{
		nats.Name(DefaultClientName),
		// A service may start before NATS does: keep trying instead of
		// failing the first connect. Connect then returns a connection that
		// is still reconnecting; requests fail until it is up.
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(ReconnectWait),
	}
}

// Connect connects to the NATS server(s) at url (a comma-separated list is
// allowed) with Boilerhouse's defaults: name "boilerhouse", retry on a failed
// first connect, unlimited reconnects every [ReconnectWait]. opts are applied
// after the defaults and override them.
func Connect(url string, opts ...nats.Option) (*nats.Conn, error) {
	if url == "" {
		return nil, errors.New("natsx: connect: empty NATS URL")
	}
	nc, err := nats.Connect(url, append(defaultOptions(), opts...)...)
	if err != nil {
		return nil, fmt.Errorf("natsx: connect to %s: %w", url, err)
	}
	return nc, nil
}

// Ready is the readiness check of a service: nil while nc is connected, so that a replica that
// lost NATS, and can serve nothing, is taken out of rotation.
func Ready(nc *nats.Conn) error {
	if !nc.IsConnected() {
		return fmt.Errorf("natsx: NATS not connected (%s)", nc.Status())
	}
	return nil
}

// ConnectInProcess connects to an embedded server without a network socket,
// with the same defaults as [Connect].
func ConnectInProcess(s *server.Server, opts ...nats.Option) (*nats.Conn, error) {
	if s == nil {
		return nil, errors.New("natsx: connect in-process: nil server")
	}
	all := append(defaultOptions(), nats.InProcessServer(s))
	nc, err := nats.Connect("", append(all, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("natsx: connect in-process to %s: %w", s.Name(), err)
	}
	return nc, nil
}
