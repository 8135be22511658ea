package tracing_test

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"boilerhouse.dev/pkg/tracing"
)

// otlpCollector is an OTLP/HTTP trace receiver: it keeps every export request it is sent.
type otlpCollector struct {
	mu       sync.Mutex
	requests []*collectortrace.ExportTraceServiceRequest
}

func (c *otlpCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "not an OTLP/HTTP trace export", http.StatusBadRequest)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := &collectortrace.ExportTraceServiceRequest{}
	if err := proto.Unmarshal(b, req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.requests = append(c.requests, req)
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	resp, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	_, _ = w.Write(resp)
}

// With an OTLP endpoint configured, spans reach it over HTTP, named, with their attributes and
// the service's name.
func TestSetupExportsOverOTLPHTTP(t *testing.T) {
	col := &otlpCollector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	shutdown, err := tracing.Setup(ctx, "claim-router")
	if err != nil {
		t.Fatal(err)
	}
	if !tracing.Enabled() {
		t.Fatal("tracing off after Setup with an endpoint")
	}
	_, span := tracing.Start(ctx, "bh.v1.claims.claim", trace.SpanKindServer, attribute.String("tenant.id", "alice"))
	tracing.End(span, nil)
	if err := shutdown(); err != nil { // flushes the batch
		t.Fatal(err)
	}
	if tracing.Enabled() {
		t.Error("tracing still on after shutdown")
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	var found bool
	for _, req := range col.requests {
		for _, rs := range req.ResourceSpans {
			service := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					if s.Name != "bh.v1.claims.claim" {
						continue
					}
					found = true
					if service != "claim-router" {
						t.Errorf("service.name %q, want claim-router", service)
					}
					if len(s.Attributes) != 1 || s.Attributes[0].Key != "tenant.id" || s.Attributes[0].GetValue().GetStringValue() != "alice" {
						t.Errorf("span attributes %v", s.Attributes)
					}
				}
			}
		}
	}
	if !found {
		t.Fatalf("the span never reached the collector (%d export requests)", len(col.requests))
	}
}

// Without an endpoint, Setup leaves tracing off.
func TestSetupWithoutEndpoint(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	shutdown, err := tracing.Setup(context.Background(), "edge")
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown()
	if tracing.Enabled() {
		t.Error("tracing on without an endpoint")
	}
	ctx := context.Background()
	if got, _ := tracing.Start(ctx, "x", trace.SpanKindInternal); got != ctx {
		t.Error("Start changed the context while tracing is off")
	}
}
