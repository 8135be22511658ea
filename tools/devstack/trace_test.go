package devstack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/tracing"
	"boilerhouse.dev/services/claimrouter"
)

var traceRuns atomic.Int32

// TestClaimTrace: a pool claim over REST, made by a caller with trace context of its own, is one
// trace across the processes' hops: the edge's HTTP span under the caller's, its request to
// claim-router, claim-router's handling of it (tenant, workload, source and instance as
// attributes), its acquire, and pool-manager's handling of that.
func TestClaimTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	defer tracing.Use(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))()
	s := startSystem(t)
	s.router(claimrouter.Config{})
	wl := fmt.Sprintf("traced-%d", traceRuns.Add(1)) // the control plane outlives a test
	s.workload(wl, 2)
	s.poolReady(wl, 2)

	const traceID, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest(http.MethodPost, s.rest+"/api/v1/tenants/tia/claim", strings.NewReader(`{"workload":"`+wl+`"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceID+"-"+callerSpan+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var v messages.ClaimView
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &v) != nil || v.Source != messages.SourcePool {
		t.Fatalf("claim: %d %s, want 201 from the pool", resp.StatusCode, b)
	}

	type key struct {
		name string
		kind trace.SpanKind
	}
	find := func() map[key]sdktrace.ReadOnlySpan {
		spans := map[key]sdktrace.ReadOnlySpan{}
		for _, sp := range rec.Ended() {
			if sp.SpanContext().TraceID().String() == traceID {
				spans[key{sp.Name(), sp.SpanKind()}] = sp
			}
		}
		return spans
	}
	httpSpan := key{"HTTP POST /api/v1/tenants/{id}/claim", trace.SpanKindServer}
	var spans map[key]sdktrace.ReadOnlySpan
	eventually(t, "the edge's span ended", 5*time.Second, func() bool { spans = find(); return spans[httpSpan] != nil })

	chain := []key{
		httpSpan,
		{messages.SubjectClaimsClaim, trace.SpanKindClient}, {messages.SubjectClaimsClaim, trace.SpanKindServer},
		{messages.SubjectPoolAcquire, trace.SpanKindClient}, {messages.SubjectPoolAcquire, trace.SpanKindServer},
	}
	parent := callerSpan
	for _, k := range chain {
		sp := spans[k]
		if sp == nil {
			names := []string{}
			for k := range spans {
				names = append(names, k.kind.String()+" "+k.name)
			}
			t.Fatalf("no %s span %q in the trace; it has %v", k.kind, k.name, names)
		}
		if got := sp.Parent().SpanID().String(); got != parent {
			t.Errorf("%s %s: parent %s, want %s", k.kind, k.name, got, parent)
		}
		parent = sp.SpanContext().SpanID().String()
	}
	attrs := func(k key) map[string]string {
		m := map[string]string{}
		for _, a := range spans[k].Attributes() {
			m[string(a.Key)] = a.Value.String()
		}
		return m
	}
	claim := attrs(key{messages.SubjectClaimsClaim, trace.SpanKindServer})
	for k, want := range map[string]string{"tenant.id": "tia", "workload.id": wl, "claim.source": "pool", "instance.id": v.InstanceID, "claim.phase": "Active"} {
		if claim[k] != want {
			t.Errorf("claim-router span %s = %q, want %q", k, claim[k], want)
		}
	}
	if got := attrs(key{messages.SubjectPoolAcquire, trace.SpanKindServer})["instance.id"]; got != v.InstanceID {
		t.Errorf("pool-manager span instance.id = %q, want %q", got, v.InstanceID)
	}
	if got := attrs(httpSpan)["http.response.status_code"]; got != "201" {
		t.Errorf("edge span status %q, want 201", got)
	}

	// A cold claim: the boot runs in claim-router's saga, after the request's span may have
	// ended; the saga's span is still in the claim's trace, under the request's.
	cold := fmt.Sprintf("traced-cold-%d", traceRuns.Add(1))
	s.workload(cold, 0)
	ctx, root := tracing.Start(context.Background(), "caller", trace.SpanKindInternal)
	cv, err := s.claim(ctx, messages.ClaimRequest{TenantID: "tia", Workload: cold})
	root.End()
	if err != nil || cv.Source != messages.SourceCold || cv.Phase != messages.PhaseActive {
		t.Fatalf("cold claim: %+v %v", cv, err)
	}
	saga := key{"claim saga", trace.SpanKindInternal}
	eventually(t, "the saga's span ended", 5*time.Second, func() bool {
		spans = map[key]sdktrace.ReadOnlySpan{}
		for _, sp := range rec.Ended() {
			if sp.SpanContext().TraceID() == root.SpanContext().TraceID() {
				spans[key{sp.Name(), sp.SpanKind()}] = sp
			}
		}
		return spans[saga] != nil
	})
	parent = root.SpanContext().SpanID().String()
	for _, k := range []key{
		{messages.SubjectClaimsClaim, trace.SpanKindClient}, {messages.SubjectClaimsClaim, trace.SpanKindServer}, saga,
		{messages.SubjectInstancesBoot, trace.SpanKindClient}, {messages.SubjectInstancesBoot, trace.SpanKindServer},
	} {
		sp := spans[k]
		if sp == nil {
			t.Fatalf("cold claim: no %s span %q in the trace", k.kind, k.name)
		}
		if got := sp.Parent().SpanID().String(); got != parent {
			t.Errorf("cold claim: %s %s: parent %s, want %s", k.kind, k.name, got, parent)
		}
		parent = sp.SpanContext().SpanID().String()
	}
}
