// Package natstest runs an embedded NATS server that a test can stop and start again, with
// clients connected over TCP that reconnect by themselves, as they would to a real server.
package natstest

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/pkg/natsx"
)

// Server is an embedded NATS server with a fixed port and store dir across restarts.
type Server struct {
	t    testing.TB
	opts natsx.EmbeddedOptions
	// URL is the client URL; it stays the same across restarts.
	URL string

	mu  sync.Mutex
	srv *server.Server // nil while stopped
}

// Start starts a server with JetStream on a temporary store dir, on a free port below Linux's
// ephemeral range (32768-60999): while the server is down no outgoing connection can be given
// that port as its source port, and a client retrying it cannot connect to itself (TCP
// simultaneous open), so a restart can bind it again. It is stopped when the test ends.
func Start(t testing.TB, syncAlways bool) *Server {
	t.Helper()
	n := &Server{t: t, opts: natsx.EmbeddedOptions{StoreDir: t.TempDir(), SyncAlways: syncAlways}}
	var err error
	for range 20 { // a port in use fails at once; try another
		n.opts.Port = 20000 + rand.IntN(12000)
		if n.srv, err = natsx.StartEmbedded(n.opts); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	n.URL = n.srv.ClientURL()
	t.Cleanup(n.Stop)
	return n
}

// Stop shuts the server down; every client starts reconnecting. Stopping twice is harmless.
func (n *Server) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	natsx.Shutdown(n.srv)
	n.srv = nil
}

// Restart starts a new server on the same port and store dir (stopping the running one
// first); JetStream recovers every bucket and stream from the store.
func (n *Server) Restart() {
	n.t.Helper()
	n.Stop()
	n.mu.Lock()
	defer n.mu.Unlock()
	s, err := natsx.StartEmbedded(n.opts)
	if err != nil {
		n.t.Fatalf("NATS server start again: %v", err)
	}
	n.srv = s
}

// Connect connects a client that reconnects by itself (natsx.Connect), closed when the test
// ends, and returns it with its JetStream context.
func (n *Server) Connect() (*nats.Conn, jetstream.JetStream) {
	n.t.Helper()
	nc, err := natsx.Connect(n.URL)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		n.t.Fatal(err)
	}
	return nc, js
}
