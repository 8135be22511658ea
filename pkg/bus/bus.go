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

	"boilerhouse.dev/messages"
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
	serve := natstransport.NewSubscriber(withTimeout(e, opts.Timeout), DecodeJSON[Req], encodeJSONResponse,
		natstransport.SubscriberErrorEncoder(encodeError),
		natstransport.SubscriberErrorHandler(errorLogger{logger: logger, subject: subject}),
	).ServeMsg(nc)
	slots := make(chan struct{}, opts.Workers)
	handle := func(msg *nats.Msg) {
		slots <- struct{}{}
		go func() {
			defer func() { <-slots }()
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
	e := natstransport.NewPublisher(nc, subject, natstransport.EncodeJSONRequest, decodeResponse[Resp],
		natstransport.PublisherTimeout(timeout)).Endpoint()
	return func(ctx context.Context, req Req) (Resp, error) {
		var zero Resp
		resp, err := e(ctx, req)
		if err != nil {
			return zero, transportError(subject, err)
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
