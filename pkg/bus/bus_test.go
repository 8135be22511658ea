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
	s, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsx.Shutdown(s) })
	nc, err := natsx.ConnectInProcess(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
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
