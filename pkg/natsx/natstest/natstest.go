// Package natstest runs an embedded NATS server that a test can stop and start again, with
// clients connected over TCP that reconnect by themselves, as they would to a real server. The
// server runs in the test's process (Start) or in a child process that stopping kills with
// SIGKILL, as a crash would (StartProcess).
package natstest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

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

	mu      sync.Mutex
	srv     *server.Server // nil while stopped (in-process server)
	process bool           // the server runs in a child process
	cmd     *exec.Cmd      // the child while it runs
	exited  chan error     // receives the child's exit
}

// childEnv carries the child's options (JSON EmbeddedOptions) to ServeIfAsked.
const childEnv = "BH_NATSTEST_SERVE"

// ServeIfAsked turns this process into the NATS server that StartProcess asked for, and never
// returns; otherwise it returns at once. Call it first in the TestMain of a package whose tests
// use StartProcess: the child is the test binary itself.
func ServeIfAsked() {
	v := os.Getenv(childEnv)
	if v == "" {
		return
	}
	var opts natsx.EmbeddedOptions
	if err := json.Unmarshal([]byte(v), &opts); err != nil {
		fmt.Fprintln(os.Stderr, "natstest:", err)
		os.Exit(2)
	}
	if _, err := natsx.StartEmbedded(opts); err != nil {
		fmt.Fprintln(os.Stderr, "natstest:", err)
		os.Exit(3)
	}
	// Until killed, or until the test that started it is gone (a test binary that crashed
	// runs no cleanup): then it has another parent.
	for parent := os.Getppid(); os.Getppid() == parent; {
		time.Sleep(time.Second)
	}
	os.Exit(0)
}

// Start starts a server with JetStream on a temporary store dir, on a free port below Linux's
// ephemeral range (32768-60999): while the server is down no outgoing connection can be given
// that port as its source port, and a client retrying it cannot connect to itself (TCP
// simultaneous open), so a restart can bind it again. It is stopped when the test ends.
func Start(t testing.TB, syncAlways bool) *Server {
	t.Helper()
	return start(t, &Server{t: t, opts: natsx.EmbeddedOptions{StoreDir: t.TempDir(), SyncAlways: syncAlways}})
}

// StartProcess is Start with the server in a child process: this test binary run again, whose
// TestMain must call ServeIfAsked first. Stop and Restart kill it with SIGKILL, without a
// shutdown or a flush.
func StartProcess(t testing.TB, syncAlways bool) *Server {
	t.Helper()
	return start(t, &Server{t: t, process: true, opts: natsx.EmbeddedOptions{StoreDir: t.TempDir(), SyncAlways: syncAlways}})
}

func start(t testing.TB, n *Server) *Server {
	t.Helper()
	var err error
	for range 20 { // a port in use fails at once; try another
		n.opts.Port = 20000 + rand.IntN(12000)
		if err = n.run(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	n.URL = fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port)
	t.Cleanup(n.Stop)
	return n
}

// run starts the server on n.opts; n.mu is held or not needed yet.
func (n *Server) run() error {
	if !n.process {
		srv, err := natsx.StartEmbedded(n.opts)
		n.srv = srv
		return err
	}
	opts, err := json.Marshal(n.opts)
	if err != nil {
		return err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(opts))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(n.opts.Port))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		select {
		case err := <-exited:
			return fmt.Errorf("natstest: server process exited: %v", err)
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return errors.New("natstest: server process not accepting connections after 30s")
		}
	}
	n.cmd = cmd
	// Reap the child when it is killed; Stop waits for that through exited.
	n.exited = exited
	return nil
}

// Stop shuts the server down (a child process is killed with SIGKILL); every client starts
// reconnecting. Stopping twice is harmless.
func (n *Server) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.exited
		n.cmd = nil
	}
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
	if err := n.run(); err != nil {
		n.t.Fatalf("NATS server start again: %v", err)
	}
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
