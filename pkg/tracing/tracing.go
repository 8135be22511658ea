// Package tracing follows a claim across processes with OpenTelemetry: spans for HTTP requests
// and NATS request/reply hops, W3C trace context in HTTP and NATS message headers, export over
// OTLP/HTTP.
//
// Tracing is off unless the process is configured to export ([Setup] reads the standard
// OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). While it is off, [Start]
// returns the context unchanged and no header is written or read, so the claim path pays
// nothing for it. Every service is configured the same way, so a trace is either recorded by
// every hop or by none.
package tracing

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Instrumentation is the name of Boilerhouse's tracer.
const Instrumentation = "boilerhouse.dev"

var (
	enabled    atomic.Bool
	tracer     atomic.Pointer[trace.Tracer]
	propagator = propagation.TraceContext{}
)

// Enabled reports whether spans are recorded.
func Enabled() bool { return enabled.Load() }

// configured reports whether the environment asks for export: an OTLP endpoint is set and the
// SDK is not disabled.
func configured() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// shutdownTimeout bounds the flush of pending spans at shutdown.
const shutdownTimeout = 5 * time.Second

// Setup turns tracing on when the environment configures an OTLP endpoint: spans are batched
// and sent over OTLP/HTTP to it, as service (OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES,
// when set, take precedence). The returned function flushes what is pending (for at most
// shutdownTimeout) and stops; it is a no-op when tracing stayed off.
func Setup(ctx context.Context, service string) (shutdown func() error, err error) {
	if !configured() {
		return func() error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, err
	}
	// Later detectors win. A malformed OTEL_RESOURCE_ATTRIBUTES only loses its own attributes.
	res, _ := resource.New(ctx, resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", service)), resource.WithFromEnv())
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	stop := Use(tp)
	return func() error {
		stop()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		return tp.Shutdown(ctx)
	}, nil
}

// Use records spans with tp from now on (Setup's provider, or a test's). stop turns recording
// off again.
func Use(tp trace.TracerProvider) (stop func()) {
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagator)
	t := tp.Tracer(Instrumentation)
	tracer.Store(&t)
	enabled.Store(true)
	return func() { enabled.Store(false) }
}

// Start starts a span named name as a child of the span in ctx. While tracing is off it
// returns ctx and a span that records nothing, at no cost.
func Start(ctx context.Context, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if !enabled.Load() {
		return ctx, noop.Span{}
	}
	return (*tracer.Load()).Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// End ends span, recording err (nil: success) as its status.
func End(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Annotate adds attributes to the span in ctx (nothing while tracing is off).
func Annotate(ctx context.Context, attrs ...attribute.KeyValue) {
	if enabled.Load() {
		trace.SpanFromContext(ctx).SetAttributes(attrs...)
	}
}

// The attributes of Boilerhouse's spans, named as SPEC.md documents them.

// Tenant is the tenant.id attribute.
func Tenant(id string) attribute.KeyValue { return attribute.String("tenant.id", id) }

// Workload is the workload.id attribute.
func Workload(name string) attribute.KeyValue { return attribute.String("workload.id", name) }

// Instance is the instance.id attribute (a Pod name).
func Instance(id string) attribute.KeyValue { return attribute.String("instance.id", id) }

// Source is the claim.source attribute (existing, pool, cold, ...).
func Source(s string) attribute.KeyValue { return attribute.String("claim.source", s) }

// Phase is the claim.phase attribute.
func Phase(p string) attribute.KeyValue { return attribute.String("claim.phase", p) }

// InjectNATS writes the trace context of ctx into msg's headers.
func InjectNATS(ctx context.Context, msg *nats.Msg) {
	if !enabled.Load() || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	propagator.Inject(ctx, propagation.HeaderCarrier(msg.Header))
}

// ExtractNATS returns ctx with the remote trace context of msg's headers, if any.
func ExtractNATS(ctx context.Context, msg *nats.Msg) context.Context {
	if !enabled.Load() || msg.Header == nil {
		return ctx
	}
	return propagator.Extract(ctx, propagation.HeaderCarrier(msg.Header))
}

// ExtractHTTP returns ctx with the remote trace context of an HTTP request's headers, if any.
func ExtractHTTP(ctx context.Context, h http.Header) context.Context {
	if !enabled.Load() {
		return ctx
	}
	return propagator.Extract(ctx, propagation.HeaderCarrier(h))
}
