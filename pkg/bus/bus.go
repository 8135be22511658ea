// Package bus carries go-kit endpoints over NATS request/reply: JSON payloads from
// boilerhouse.dev/messages, typed errors in the Bh-Error header, and handlers run on a
// bounded set of goroutines so one slow request never serialises a subscription.
package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-kit/kit/endpoint"
	natstransport "github.com/go-kit/kit/transport/nats"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/tracing"
)

// Handler is a typed service method.
type Handler[Req, Resp any] func(ctx context.Context, req Req) (Resp, error)

// Endpoint adapts a typed handler to a go-kit endpoint.
func Endpoint[Req, Resp any](h Handler[Req, Resp]) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		return h(ctx, request.(Req))
	}
}

// DecodeJSON decodes a request body into Req; a malformed body is an invalid_argument.
func DecodeJSON[Req any](_ context.Context, msg *nats.Msg) (any, error) {
	var req Req
	if len(msg.Data) == 0 {
		return req, nil
	}
	if err := json.Unmarshal(msg.Data, &req); err != nil {
		return nil, messages.Errorf(messages.CodeInvalidArgument, "malformed JSON request: %v", err)
	}
	return req, nil
}

func encodeJSONResponse(_ context.Context, reply string, nc *nats.Conn, response any) error {
	b, err := json.Marshal(response)
	if err != nil {
		return err
	}
	return nc.Publish(reply, b)
}

// encodeError replies with the typed error: code in the header, JSON body for humans.
func encodeError(_ context.Context, err error, reply string, nc *nats.Conn) {
	e := messages.AsError(err)
	b, _ := json.Marshal(e)
	msg := &nats.Msg{Subject: reply, Data: b, Header: nats.Header{}}
	msg.Header.Set(messages.HeaderError, string(e.Code))
	_ = nc.PublishMsg(msg)
}

// ServeOptions tune a subscription.
type ServeOptions struct {
	// Queue is the queue group; replicas of a service share it.
	Queue string
	// Workers bounds concurrent handlers (default 256).
	Workers int
	// Timeout bounds one handler (default 60s).
	Timeout time.Duration
	Logger  *slog.Logger
	// Progress, when set, sends a progress message (messages.HeaderProgress) to the reply
	// subject at this interval from a request's arrival to its reply; see LongClient.
	Progress time.Duration
}

// Serve subscribes e to subject. Each message runs on its own goroutine, at most
// Workers at once; the subscription callback only waits for a free slot.
func Serve[Req any](nc *nats.Conn, subject string, e endpoint.Endpoint, opts ServeOptions) (*nats.Subscription, error) {
	if opts.Workers <= 0 {
		opts.Workers = 256
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	serve := natstransport.NewSubscriber(traced(subject, withTimeout(e, opts.Timeout)), DecodeJSON[Req], encodeJSONResponse,
		natstransport.SubscriberBefore(tracing.ExtractNATS),
		natstransport.SubscriberErrorEncoder(encodeError),
		natstransport.SubscriberErrorHandler(errorLogger{logger: logger, subject: subject}),
	).ServeMsg(nc)
	slots := make(chan struct{}, opts.Workers)
	handle := func(msg *nats.Msg) {
		done := progress(nc, msg.Reply, opts.Progress)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots }()
			defer done()
			serve(msg)
		}()
	}
	sub, err := nc.QueueSubscribe(subject, opts.Queue, handle)
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, err)
	}
	// Requests can arrive in bursts of thousands; the default pending limit drops them.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	return sub, nil
}

// progress sends progress messages to reply every interval until the returned func is called
// (a no-op without a reply subject or an interval).
func progress(nc *nats.Conn, reply string, interval time.Duration) (done func()) {
	if reply == "" || interval <= 0 {
		return func() {}
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				msg := &nats.Msg{Subject: reply, Header: nats.Header{}}
				msg.Header.Set(messages.HeaderProgress, "1")
				_ = nc.PublishMsg(msg)
			}
		}
	}()
	return func() { close(stop) }
}

// traced runs e in a server span named subject, a child of the caller's span when the request
// carries trace context (Client, LongClient).
func traced(subject string, e endpoint.Endpoint) endpoint.Endpoint {
	return func(ctx context.Context, req any) (any, error) {
		ctx, span := tracing.Start(ctx, subject, trace.SpanKindServer)
		resp, err := e(ctx, req)
		if err != nil {
			tracing.Annotate(ctx, attribute.String(AttrErrorCode, string(messages.CodeOf(err))))
		}
		tracing.End(span, err)
		return resp, err
	}
}

// Annotated adds attributes of e's successful answer to the request's span (nothing while
// tracing is off).
func Annotated[Resp any](e endpoint.Endpoint, attrs func(Resp) []attribute.KeyValue) endpoint.Endpoint {
	return func(ctx context.Context, req any) (any, error) {
		resp, err := e(ctx, req)
		if err == nil && tracing.Enabled() {
			if r, ok := resp.(Resp); ok {
				tracing.Annotate(ctx, attrs(r)...)
			}
		}
		return resp, err
	}
}

// AttrErrorCode is the span attribute holding a failed request's messages.Code.
const AttrErrorCode = "boilerhouse.error.code"

func withTimeout(e endpoint.Endpoint, d time.Duration) endpoint.Endpoint {
	return func(ctx context.Context, req any) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return e(ctx, req)
	}
}

type errorLogger struct {
	logger  *slog.Logger
	subject string
}

func (l errorLogger) Handle(ctx context.Context, err error) {
	if messages.CodeOf(err) == messages.CodeInternal {
		l.logger.ErrorContext(ctx, "request failed", "subject", l.subject, "err", err)
	}
}

// Client returns a typed caller of subject. Errors the server sent come back as
// *messages.Error; no responder is unavailable; a timeout is deadline_exceeded.
func Client[Req, Resp any](nc *nats.Conn, subject string, timeout time.Duration) Handler[Req, Resp] {
	e := publisher[Resp](nc, subject, timeout)
	return func(ctx context.Context, req Req) (resp Resp, err error) {
		ctx, span := tracing.Start(ctx, subject, trace.SpanKindClient)
		defer func() { tracing.End(span, err) }()
		r, err := e(ctx, req)
		if err != nil {
			return resp, transportError(subject, err)
		}
		return r.(Resp), nil
	}
}

// publisher is the client endpoint of subject: go-kit's NATS Publisher, except that the request
// carries headers (the trace context), which that Publisher cannot send.
func publisher[Resp any](nc *nats.Conn, subject string, timeout time.Duration) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		msg := &nats.Msg{Subject: subject}
		if err := natstransport.EncodeJSONRequest(ctx, msg, request); err != nil {
			return nil, err
		}
		tracing.InjectNATS(ctx, msg)
		resp, err := nc.RequestMsgWithContext(ctx, msg)
		if err != nil {
			return nil, err
		}
		return decodeResponse[Resp](ctx, resp)
	}
}

// LongClient is Client for long requests served with ServeOptions.Progress: it waits up to
// timeout for the reply, but answers unavailable as soon as idle passes without a progress
// message, so that a server that died mid-request is noticed in idle, not at timeout.
func LongClient[Req, Resp any](nc *nats.Conn, subject string, timeout, idle time.Duration) Handler[Req, Resp] {
	return func(ctx context.Context, req Req) (resp Resp, err error) {
		ctx, span := tracing.Start(ctx, subject, trace.SpanKindClient)
		defer func() { tracing.End(span, err) }()
		return longRequest[Req, Resp](ctx, nc, subject, timeout, idle, req)
	}
}

// longRequest is LongClient's request, inside its span.
func longRequest[Req, Resp any](ctx context.Context, nc *nats.Conn, subject string, timeout, idle time.Duration, req Req) (Resp, error) {
	var zero Resp
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := json.Marshal(req)
	if err != nil {
		return zero, messages.Errorf(messages.CodeInvalidArgument, "%s: encode request: %v", subject, err)
	}
	sub, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		return zero, transportError(subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	msg := &nats.Msg{Subject: subject, Reply: sub.Subject, Data: body}
	tracing.InjectNATS(ctx, msg)
	if err := nc.PublishMsg(msg); err != nil {
		return zero, transportError(subject, err)
	}
	for {
		wait, stop := context.WithTimeout(ctx, idle)
		msg, err := sub.NextMsgWithContext(wait)
		stop()
		switch {
		case err != nil && ctx.Err() != nil:
			return zero, transportError(subject, ctx.Err())
		case err != nil && wait.Err() != nil:
			return zero, messages.Errorf(messages.CodeUnavailable, "%s: no progress for %s; the service stopped answering", subject, idle)
		case err != nil:
			return zero, transportError(subject, err)
		case msg.Header.Get(messages.HeaderProgress) != "":
			continue
		case len(msg.Data) == 0 && msg.Header.Get("Status") == "503":
			return zero, transportError(subject, nats.ErrNoResponders)
		}
		resp, err := decodeResponse[Resp](ctx, msg)
		if err != nil {
			return zero, err
		}
		return resp.(Resp), nil
	}
}

func decodeResponse[Resp any](_ context.Context, msg *nats.Msg) (any, error) {
	if code := msg.Header.Get(messages.HeaderError); code != "" {
		e := &messages.Error{}
		if err := json.Unmarshal(msg.Data, e); err != nil || e.Code == "" {
			e = messages.Errorf(messages.Code(code), "%s", msg.Data)
		}
		return nil, e
	}
	var resp Resp
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, messages.Errorf(messages.CodeInternal, "malformed reply: %v", err)
	}
	return resp, nil
}

func transportError(subject string, err error) error {
	var typed *messages.Error
	switch {
	case errors.As(err, &typed):
		return typed
	case errors.Is(err, nats.ErrNoResponders):
		return messages.Errorf(messages.CodeUnavailable, "no service answers %s", subject)
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return messages.Errorf(messages.CodeDeadlineExceeded, "%s: no reply in time", subject)
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
		return messages.Errorf(messages.CodeUnavailable, "%s: NATS connection down: %v", subject, err)
	}
	return messages.Errorf(messages.CodeInternal, "%s: %v", subject, err)
}
