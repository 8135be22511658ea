package bus_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
)

func connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, _ := connectServer(t)
	return nc
}

// connectServer starts an embedded server; it returns a connection and a dialer of more.
func connectServer(t *testing.T) (*nats.Conn, func() *nats.Conn) {
	t.Helper()
	s, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsx.Shutdown(s) })
	dial := func() *nats.Conn {
		nc, err := natsx.ConnectInProcess(s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	return dial(), dial
}

type echo struct{ Text string }

func TestRoundTripAndTypedErrors(t *testing.T) {
	nc := connect(t)
	h := func(_ context.Context, req echo) (echo, error) {
		switch req.Text {
		case "missing":
			return echo{}, messages.Errorf(messages.CodeNotFound, "no %s here", req.Text)
		case "boom":
			return echo{}, errors.New("plain failure")
		}
		return echo{Text: req.Text + "!"}, nil
	}
	if _, err := bus.Serve[echo](nc, "t.echo", bus.Endpoint(h), bus.ServeOptions{Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	call := bus.Client[echo, echo](nc, "t.echo", time.Second)
	ctx := context.Background()
	got, err := call(ctx, echo{Text: "hi"})
	if err != nil || got.Text != "hi!" {
		t.Fatalf("got %+v, %v", got, err)
	}
	_, err = call(ctx, echo{Text: "missing"})
	if messages.CodeOf(err) != messages.CodeNotFound || messages.AsError(err).Message != "no missing here" {
		t.Fatalf("want not_found with message, got %v", err)
	}
	_, err = call(ctx, echo{Text: "boom"})
	if messages.CodeOf(err) != messages.CodeInternal {
		t.Fatalf("want internal, got %v", err)
	}
	// A malformed body is the caller's fault.
	msg, err := nc.Request("t.echo", []byte("{not json"), time.Second)
	if err != nil || msg.Header.Get(messages.HeaderError) != string(messages.CodeInvalidArgument) {
		t.Fatalf("malformed JSON: header %q, err %v", msg.Header.Get(messages.HeaderError), err)
	}
	_, err = bus.Client[echo, echo](nc, "t.nobody", time.Second)(ctx, echo{})
	if messages.CodeOf(err) != messages.CodeUnavailable {
		t.Fatalf("no responders: want unavailable, got %v", err)
	}
}

// TestHandlersRunConcurrently proves a slow request does not hold up the others.
func TestHandlersRunConcurrently(t *testing.T) {
	nc := connect(t)
	var running, peak atomic.Int32
	h := func(_ context.Context, req echo) (echo, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
		running.Add(-1)
		return req, nil
	}
	if _, err := bus.Serve[echo](nc, "t.slow", bus.Endpoint(h), bus.ServeOptions{Workers: 8}); err != nil {
		t.Fatal(err)
	}
	call := bus.Client[echo, echo](nc, "t.slow", 5*time.Second)
	start := time.Now()
	errs := make(chan error, 8)
	for range 8 {
		go func() { _, err := call(context.Background(), echo{}); errs <- err }()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if peak.Load() < 8 {
		t.Fatalf("at most %d handlers ran at once, want 8", peak.Load())
	}
	t.Logf("8 slow requests took %v", time.Since(start))
}

func TestHandlerTimeout(t *testing.T) {
	nc := connect(t)
	h := func(ctx context.Context, req echo) (echo, error) {
		<-ctx.Done()
		return echo{}, ctx.Err()
	}
	if _, err := bus.Serve[echo](nc, "t.stuck", bus.Endpoint(h), bus.ServeOptions{Timeout: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	_, err := bus.Client[echo, echo](nc, "t.stuck", 2*time.Second)(context.Background(), echo{})
	if messages.CodeOf(err) != messages.CodeDeadlineExceeded {
		t.Fatalf("want deadline_exceeded from the handler's own timeout, got %v", err)
	}
}

// TestLongClientProgress: a slow handler served with progress answers a LongClient whose idle
// is shorter than the handler; without progress the caller gives up after idle; a server whose
// connection dies mid-request is noticed after idle, long before the timeout.
func TestLongClientProgress(t *testing.T) {
	nc, dial := connectServer(t)
	ctx := context.Background()
	slow := func(ctx context.Context, req echo) (echo, error) {
		if req.Text == "refuse" {
			return echo{}, messages.Errorf(messages.CodeConflict, "refused")
		}
		select {
		case <-time.After(600 * time.Millisecond):
			return echo{Text: req.Text + "!"}, nil
		case <-ctx.Done():
			return echo{}, ctx.Err()
		}
	}
	opts := bus.ServeOptions{Queue: "q", Progress: 50 * time.Millisecond}
	if _, err := bus.Serve[echo](nc, "t.slow", bus.Endpoint(slow), opts); err != nil {
		t.Fatal(err)
	}
	opts.Progress = 0
	if _, err := bus.Serve[echo](nc, "t.silent", bus.Endpoint(slow), opts); err != nil {
		t.Fatal(err)
	}
	const idle, timeout = 200 * time.Millisecond, 30 * time.Second

	got, err := bus.LongClient[echo, echo](nc, "t.slow", timeout, idle)(ctx, echo{Text: "hi"})
	if err != nil || got.Text != "hi!" {
		t.Fatalf("with progress: %+v, %v", got, err)
	}
	if _, err := bus.LongClient[echo, echo](nc, "t.slow", timeout, idle)(ctx, echo{Text: "refuse"}); messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("typed error: got %v, want conflict", err)
	}
	if _, err := bus.LongClient[echo, echo](nc, "t.silent", timeout, idle)(ctx, echo{Text: "hi"}); messages.CodeOf(err) != messages.CodeUnavailable {
		t.Fatalf("without progress: got %v, want unavailable after idle", err)
	}
	if _, err := bus.LongClient[echo, echo](nc, "t.nobody", timeout, idle)(ctx, echo{}); messages.CodeOf(err) != messages.CodeUnavailable {
		t.Fatalf("no responders: got %v, want unavailable", err)
	}

	// A server on a connection of its own that dies while it works.
	s := dial()
	started := make(chan struct{})
	stuck := func(ctx context.Context, _ echo) (echo, error) {
		close(started)
		<-ctx.Done()
		return echo{}, ctx.Err()
	}
	if _, err := bus.Serve[echo](s, "t.dies", bus.Endpoint(stuck), bus.ServeOptions{Queue: "q", Progress: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	go func() {
		<-started
		time.Sleep(300 * time.Millisecond) // progress flows for a while
		s.Close()
	}()
	start := time.Now()
	_, err = bus.LongClient[echo, echo](nc, "t.dies", timeout, idle)(ctx, echo{})
	if messages.CodeOf(err) != messages.CodeUnavailable || time.Since(start) > 5*time.Second {
		t.Fatalf("server died mid-request: %v after %s; want unavailable within seconds", err, time.Since(start))
	}
}
