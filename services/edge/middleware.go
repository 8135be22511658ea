package edge

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/metrics"
	"boilerhouse.dev/pkg/tracing"
)

// httpMetrics are the Prometheus metrics of the REST API.
type httpMetrics struct {
	requests *prometheus.CounterVec   // method, route, code
	duration *prometheus.HistogramVec // method, route
	inFlight prometheus.Gauge
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	return &httpMetrics{
		requests: metrics.Must(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "boilerhouse_http_requests_total",
			Help: "HTTP requests answered by the edge, by method, route pattern and status code.",
		}, []string{"method", "route", "code"})),
		duration: metrics.Must(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "boilerhouse_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by method and route pattern.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"method", "route"})),
		inFlight: metrics.Must(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "boilerhouse_http_requests_in_flight",
			Help: "HTTP requests being answered by the edge.",
		})),
	}
}

// Shared header values: assigning these slices costs no allocation per
// request. Nobody appends to them (Header.Set replaces).
var (
	nosniff = []string{"nosniff"}
	deny    = []string{"DENY"}
	noStore = []string{"no-store"}
)

var statusWriters = sync.Pool{New: func() any { return new(statusWriter) }}

// middleware wraps the routes: security headers, panic recovery, JSON
// answers for unknown routes and methods, the request log line and the
// metrics, labelled by route pattern (never by raw path).
func (e *Edge) middleware(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var span trace.Span // nil while tracing is off
		if tracing.Enabled() {
			r, span = traceRequest(r)
		}
		h := w.Header()
		h["X-Content-Type-Options"] = nosniff
		h["X-Frame-Options"] = deny
		h["Cache-Control"] = noStore

		sw := statusWriters.Get().(*statusWriter)
		*sw = statusWriter{ResponseWriter: w, req: r, status: http.StatusOK}
		e.metrics.inFlight.Inc()
		defer func() {
			p := recover()
			if p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				e.log.Error("panic while serving a request", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				if !sw.wroteHeader {
					writeError(sw, &apiError{Status: http.StatusInternalServerError, Code: string(messages.CodeInternal), Message: "internal error"})
				}
				sw.status = http.StatusInternalServerError
			}
			e.metrics.inFlight.Dec()
			e.observe(r, sw, time.Since(start))
			if span != nil {
				endTrace(r, span, sw.status)
			}
			*sw = statusWriter{}
			statusWriters.Put(sw)
		}()
		mux.ServeHTTP(sw, r)
	})
}

// traceRequest starts the request's server span, a child of the caller's span when the request
// carries trace context. Its name gets the route once the mux has matched one.
func traceRequest(r *http.Request) (*http.Request, trace.Span) {
	ctx, span := tracing.Start(tracing.ExtractHTTP(r.Context(), r.Header), "HTTP "+methodLabel(r.Method), trace.SpanKindServer,
		attribute.String("http.request.method", methodLabel(r.Method)))
	return r.WithContext(ctx), span
}

func endTrace(r *http.Request, span trace.Span, status int) {
	route := routeOf(r.Pattern)
	span.SetName("HTTP " + methodLabel(r.Method) + " " + route)
	span.SetAttributes(attribute.String("http.route", route), attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	span.End()
}

// observe records one answered request in the metrics and the log.
func (e *Edge) observe(r *http.Request, sw *statusWriter, d time.Duration) {
	route := routeOf(r.Pattern)
	method := methodLabel(r.Method)
	e.metrics.requests.WithLabelValues(method, route, statusLabel(sw.status)).Inc()
	e.metrics.duration.WithLabelValues(method, route).Observe(d.Seconds())

	level := slog.LevelInfo
	switch {
	case sw.status >= 500 && sw.status != http.StatusServiceUnavailable && sw.status != http.StatusGatewayTimeout:
		level = slog.LevelError
	case sw.status >= 500:
		level = slog.LevelWarn
	case route == "/metrics" || route == "/healthz" || route == "/readyz" || route == "/api/v1/health":
		level = slog.LevelDebug
	}
	ctx := r.Context()
	if !e.log.Enabled(ctx, level) {
		return
	}
	attrs := [...]slog.Attr{
		slog.String("method", r.Method),
		slog.String("route", route),
		slog.String("path", truncate(r.URL.Path)),
		slog.Int("status", sw.status),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.Int64("bytes", sw.bytes),
		{},
	}
	n := len(attrs) - 1
	if sw.err != nil && sw.status >= 400 {
		attrs[n] = slog.String("err", sw.err.Error())
		n++
	}
	e.log.LogAttrs(ctx, level, "http request", attrs[:n]...)
}

// routeOf turns a ServeMux pattern ("POST /api/v1/tenants/{id}/claim") into
// the route label ("/api/v1/tenants/{id}/claim"); unmatched requests share
// one label so that scanners cannot blow up the metric's cardinality.
func routeOf(pattern string) string {
	if pattern == "" {
		return "unmatched"
	}
	if i := strings.IndexByte(pattern, ' '); i >= 0 {
		return pattern[i+1:]
	}
	return pattern
}

// methodLabel bounds the method label to the methods HTTP defines.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "OTHER"
}

var statusLabels = func() (l [600]string) {
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func statusLabel(code int) string {
	if code >= 0 && code < len(statusLabels) {
		return statusLabels[code]
	}
	return strconv.Itoa(code)
}

// statusWriter records the status and size of an answer, and replaces the
// plain-text 404 and 405 of ServeMux (no route matched: the request has no
// pattern) with the JSON error body every other failure has.
type statusWriter struct {
	http.ResponseWriter
	req         *http.Request
	status      int
	bytes       int64
	err         error // the failure, for the log line
	wroteHeader bool
	discard     bool // swallow ServeMux's own body
}

func (w *statusWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	w.status = code
	if w.req.Pattern == "" && (code == http.StatusNotFound || code == http.StatusMethodNotAllowed) {
		w.discard = true
		a := &apiError{Status: code, Code: string(messages.CodeNotFound),
			Message: "no route " + truncate(w.req.Method) + " " + truncate(w.req.URL.Path)}
		if code == http.StatusMethodNotAllowed {
			a.Code = codeMethodNotAllowed
			a.Message = "method " + truncate(w.req.Method) + " is not allowed on " + truncate(w.req.URL.Path) +
				"; allowed: " + w.Header().Get("Allow")
		}
		h := w.Header()
		h.Del("Content-Length")
		w.err = errors.New(a.Message)
		b, _ := json.Marshal(errorBody{Error: a.Message, Code: a.Code})
		h["Content-Type"] = jsonContentType
		w.ResponseWriter.WriteHeader(code)
		n, _ := w.ResponseWriter.Write(b)
		w.bytes += int64(n)
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.discard {
		return len(b), nil
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes flushes through (promhttp and streaming answers).
func (w *statusWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
