package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/tracing"
)

// A request's spans form one trace across two NATS hops: caller -> outer service -> inner
// service, each hop a client span and the server span under it; a typed error marks the span
// that returned it.
func TestTraceFollowsRequests(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	defer tracing.Use(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))()
	nc, dial := connectServer(t)
	other := dial()

	inner := func(_ context.Context, req echo) (echo, error) {
		if req.Text == "missing" {
			return echo{}, messages.Errorf(messages.CodeNotFound, "no %s", req.Text)
		}
		return req, nil
	}
	if _, err := bus.Serve[echo](other, "t.inner", bus.Endpoint(inner), bus.ServeOptions{}); err != nil {
		t.Fatal(err)
	}
	callInner := bus.Client[echo, echo](nc, "t.inner", time.Second)
	outer := func(ctx context.Context, req echo) (echo, error) { return callInner(ctx, req) }
	if _, err := bus.Serve[echo](nc, "t.outer", bus.Endpoint(outer), bus.ServeOptions{}); err != nil {
		t.Fatal(err)
	}
	callOuter := bus.Client[echo, echo](other, "t.outer", time.Second)
	// The subscriptions reach the server before requests from the other connection do.
	for _, c := range []*nats.Conn{nc, other} {
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}

	ctx, root := tracing.Start(context.Background(), "root", trace.SpanKindInternal)
	if _, err := callOuter(ctx, echo{Text: "missing"}); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("call: %v, want not_found", err)
	}
	root.End()

	type key struct {
		name string
		kind trace.SpanKind
	}
	spans := map[key]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[key{s.Name(), s.SpanKind()}] = s
	}
	chain := []key{
		{"root", trace.SpanKindInternal},
		{"t.outer", trace.SpanKindClient}, {"t.outer", trace.SpanKindServer},
		{"t.inner", trace.SpanKindClient}, {"t.inner", trace.SpanKindServer},
	}
	for i, k := range chain {
		s, ok := spans[k]
		if !ok {
			t.Fatalf("no %s span %q among %d", k.kind, k.name, len(rec.Ended()))
		}
		if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("%s %s: trace %s, want the root's %s", k.kind, k.name, s.SpanContext().TraceID(), root.SpanContext().TraceID())
		}
		if i > 0 {
			if want := spans[chain[i-1]].SpanContext().SpanID(); s.Parent().SpanID() != want {
				t.Errorf("%s %s: parent %s, want the %s %s span", k.kind, k.name, s.Parent().SpanID(), chain[i-1].kind, chain[i-1].name)
			}
		}
	}
	failed := spans[key{"t.inner", trace.SpanKindServer}]
	if failed.Status().Code != codes.Error {
		t.Errorf("inner server span status %v, want Error", failed.Status())
	}
	var code string
	for _, a := range failed.Attributes() {
		if a.Key == bus.AttrErrorCode {
			code = a.Value.AsString()
		}
	}
	if code != string(messages.CodeNotFound) {
		t.Errorf("inner server span error code %q, want not_found", code)
	}
}

// While tracing is off nothing is recorded and requests carry no headers.
func TestNoTraceWhenOff(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tracing.Use(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))()
	nc := connect(t)
	var headers int
	sub, err := nc.Subscribe("t.bare", func(m *nats.Msg) { headers = len(m.Header); _ = m.Respond([]byte(`{}`)) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if _, err := bus.Client[echo, echo](nc, "t.bare", time.Second)(context.Background(), echo{}); err != nil {
		t.Fatal(err)
	}
	if headers != 0 || len(rec.Ended()) != 0 {
		t.Errorf("tracing off: %d headers sent, %d spans recorded", headers, len(rec.Ended()))
	}
}
