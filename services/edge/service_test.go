package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

func TestParseWait(t *testing.T) {
	for _, tc := range []struct {
		raw     string
		want    time.Duration
		wantErr string
	}{
		{"", DefaultWait, ""},
		{"10s", 10 * time.Second, ""},
		{"500ms", 500 * time.Millisecond, ""},
		{"1m30s", 90 * time.Second, ""},
		{"10", 10 * time.Second, ""},
		{"2.5", 2500 * time.Millisecond, ""},
		{"0", 0, ""},
		{"0s", 0, ""},
		{"10m", MaxWait, ""},
		{"100000", MaxWait, ""},
		{"1e300", MaxWait, ""},
		{"-1", 0, "must not be negative"},
		{"-5s", 0, "must not be negative"},
		{"soon", 0, `wait "soon" must be a duration`},
		{"NaN", 0, "must be a duration"},
		{"Inf", 0, "must be a duration"},
	} {
		got, err := parseWait(tc.raw)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || classify(err).Status != http.StatusBadRequest {
				t.Errorf("parseWait(%q) = %v, %v; want 400 containing %q", tc.raw, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseWait(%q) = %v, %v; want %v", tc.raw, got, err, tc.want)
		}
	}
}

func TestWaitMillis(t *testing.T) {
	for d, want := range map[time.Duration]int64{
		0:                       1,
		time.Microsecond:        1,
		time.Millisecond:        1,
		1500 * time.Microsecond: 2,
		30 * time.Second:        30000,
		MaxWait:                 300000,
	} {
		if got := waitMillis(d); got != want {
			t.Errorf("waitMillis(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestClaimStatus(t *testing.T) {
	for _, tc := range []struct {
		view       messages.ClaimView
		want       int
		retryAfter bool
	}{
		{messages.ClaimView{Phase: messages.PhaseActive, Source: messages.SourceExisting}, 200, false},
		{messages.ClaimView{Phase: messages.PhaseActive, Source: messages.SourcePool}, 201, false},
		{messages.ClaimView{Phase: messages.PhaseActive, Source: messages.SourceColdData}, 201, false},
		{messages.ClaimView{Phase: messages.PhasePending}, 202, false},
		{messages.ClaimView{Phase: messages.PhaseReleasing}, 202, false},
		{messages.ClaimView{Phase: messages.PhaseError, Detail: "unknown workload \"x\""}, 404, false},
		{messages.ClaimView{Phase: messages.PhaseError, Detail: "Unschedulable: 0/1 nodes: Insufficient cpu"}, 503, true},
		{messages.ClaimView{Phase: messages.PhaseError, Detail: "capacity exhausted"}, 503, true},
		{messages.ClaimView{Phase: messages.PhaseError, Detail: "timeout: not Ready before the deadline"}, 504, false},
		{messages.ClaimView{Phase: messages.PhaseError, Detail: "pod failed: ImagePullBackOff"}, 502, false},
		{messages.ClaimView{Phase: messages.PhaseError}, 502, false},
		{messages.ClaimView{Phase: messages.PhaseReleaseFailed}, 409, false},
		{messages.ClaimView{Phase: messages.PhaseReleased}, 409, false},
		{messages.ClaimView{Phase: "Weird"}, 502, false},
	} {
		got, ra := claimStatus(&tc.view)
		if got != tc.want || (ra > 0) != tc.retryAfter {
			t.Errorf("claimStatus(%s, %q, %q) = %d (retry-after %d), want %d (retry-after %v)",
				tc.view.Phase, tc.view.Source, tc.view.Detail, got, ra, tc.want, tc.retryAfter)
		}
	}
}

func TestViewReply(t *testing.T) {
	v := &messages.ClaimView{TenantID: "org.acme", Workload: "agent", Phase: messages.PhasePending}
	r := viewReply(v, 202, 0, "claim")
	if r.Body != v || r.Location != "/api/v1/tenants/org.acme/claims/agent" {
		t.Fatalf("202 reply %+v", r)
	}
	for _, tc := range []struct {
		phase  messages.ClaimPhase
		detail string
		status int
		op     string
		code   string
		msg    string
	}{
		{messages.PhaseError, "pod failed: OOMKilled", 502, "claim", codeClaimFailed, "claim failed: pod failed: OOMKilled"},
		{messages.PhaseError, "unschedulable", 503, "claim", "capacity_exhausted", "claim failed: unschedulable"},
		{messages.PhaseError, "timeout", 504, "claim", "deadline_exceeded", "claim failed: timeout"},
		{messages.PhaseError, "unknown workload", 404, "claim", "not_found", "claim failed: unknown workload"},
		{messages.PhaseReleaseFailed, "", 409, "claim", "conflict", "the claim is ReleaseFailed"},
		{messages.PhaseReleaseFailed, "", 502, "release", codeReleaseFailed, "release failed: the claim is ReleaseFailed"},
	} {
		v := &messages.ClaimView{TenantID: "t", Workload: "w", Phase: tc.phase, Detail: tc.detail}
		r := viewReply(v, tc.status, 0, tc.op)
		f, ok := r.Body.(*failedView)
		if !ok || r.Status != tc.status || f.Code != tc.code || f.Error != tc.msg || f.Phase != tc.phase || r.Location != "" {
			t.Errorf("viewReply(%s, %d, %s) = %+v %+v", tc.phase, tc.status, tc.op, r, f)
		}
		b, _ := json.Marshal(r.Body)
		if !strings.Contains(string(b), `"tenantId":"t"`) || !strings.Contains(string(b), `"code":"`+tc.code+`"`) {
			t.Errorf("failed view JSON %s", b)
		}
	}
}

func TestReleaseStatus(t *testing.T) {
	for phase, want := range map[messages.ClaimPhase]int{
		messages.PhaseReleased:      200,
		messages.PhaseError:         200,
		messages.PhaseReleasing:     202,
		messages.PhaseReleaseFailed: 502,
		messages.PhaseActive:        409,
		messages.PhasePending:       409,
		"":                          502,
	} {
		if got := releaseStatus(&messages.ClaimView{Phase: phase}); got != want {
			t.Errorf("releaseStatus(%q) = %d, want %d", phase, got, want)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err        error
		status     int
		code       string
		retryAfter bool
	}{
		{messages.Errorf(messages.CodeInvalidArgument, "x"), 400, "invalid_argument", false},
		{messages.Errorf(messages.CodeNotFound, "x"), 404, "not_found", false},
		{messages.Errorf(messages.CodeConflict, "x"), 409, "conflict", false},
		{messages.Errorf(messages.CodeCapacityExhausted, "x"), 429, "capacity_exhausted", true},
		{messages.Errorf(messages.CodeUnavailable, "x"), 503, "unavailable", true},
		{messages.Errorf(messages.CodeDeadlineExceeded, "x"), 504, "deadline_exceeded", false},
		{messages.Errorf(messages.CodeInternal, "x"), 500, "internal", false},
		{messages.Errorf("brand_new", "x"), 500, "brand_new", false},
		{fmt.Errorf("wrapped: %w", messages.Errorf(messages.CodeNotFound, "x")), 404, "not_found", false},
		{context.DeadlineExceeded, 504, "deadline_exceeded", false},
		{context.Canceled, statusClientClosedRequest, codeCanceled, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, 503, "unavailable", true},
		{errors.New("boom"), 500, "internal", false},
		{badRequest("bad"), 400, "invalid_argument", false},
	} {
		a := classify(tc.err)
		if a.Status != tc.status || a.Code != tc.code || (a.RetryAfter > 0) != tc.retryAfter {
			t.Errorf("classify(%v) = %d %s retry-after %d; want %d %s %v", tc.err, a.Status, a.Code, a.RetryAfter, tc.status, tc.code, tc.retryAfter)
		}
	}
}

func TestKubeError(t *testing.T) {
	gr := schema.GroupResource{Group: "boilerhouse.dev", Resource: "boilerhouseworkloads"}
	gk := schema.GroupKind{Group: "boilerhouse.dev", Kind: "BoilerhouseWorkload"}
	invalid := apierrors.NewInvalid(gk, "w", field.ErrorList{field.Invalid(field.NewPath("spec", "resources", "vcpus"), 0, "should be greater than or equal to 1")})
	for _, tc := range []struct {
		err    error
		status int
		msg    string
	}{
		{apierrors.NewNotFound(gr, "w"), 404, `workload "w" not found`},
		{apierrors.NewAlreadyExists(gr, "w"), 409, `workload "w" already exists`},
		{apierrors.NewConflict(gr, "w", errors.New("changed")), 409, "changed"},
		{invalid, 400, "spec.resources.vcpus"},
		{apierrors.NewBadRequest("nope"), 400, "nope"},
		{apierrors.NewTooManyRequests("slow down", 1), 503, "slow down"},
		{apierrors.NewServiceUnavailable("down"), 503, "down"},
		{apierrors.NewTimeoutError("slow", 1), 504, "slow"},
		{apierrors.NewForbidden(gr, "w", errors.New("rbac")), 500, "RBAC"},
		{apierrors.NewInternalError(errors.New("etcd")), 500, "etcd"},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, 503, "connection refused"},
		{context.DeadlineExceeded, 504, "deadline"},
	} {
		a := classify(kubeError("workload", "w", tc.err))
		if a.Status != tc.status || !strings.Contains(a.Message, tc.msg) {
			t.Errorf("kubeError(%v) = %d %q; want %d containing %q", tc.err, a.Status, a.Message, tc.status, tc.msg)
		}
	}
	if kubeError("workload", "w", nil) != nil {
		t.Error("kubeError(nil) must be nil")
	}
}

func TestDescribeJSONError(t *testing.T) {
	for _, tc := range []struct {
		body string
		into any
		want string
	}{
		{`{"workload": `, &claimBody{}, "unexpected end of JSON input"},
		{`{"workload": "a",}`, &claimBody{}, "invalid JSON at byte"},
		{`{"workload": 5}`, &claimBody{}, `field "workload" must be a string, not number`},
		{`{"resume": "yes"}`, &claimBody{}, `field "resume" must be a boolean, not string`},
		{`[1, 2]`, &claimBody{}, "must be a JSON object, not array"},
		{`{"a":1} {"b":2}`, &claimBody{}, "invalid JSON at byte"},
		{`{"resources": {"vcpus": "two"}}`, &v1alpha1.WorkloadSpec{}, `field "resources.vcpus" must be an integer, not string`},
	} {
		err := json.Unmarshal([]byte(tc.body), tc.into)
		if err == nil {
			t.Fatalf("%s decoded without error", tc.body)
		}
		a := describeJSONError(err)
		if a.Status != 400 || !strings.Contains(a.Message, tc.want) {
			t.Errorf("describeJSONError(%s) = %d %q; want 400 containing %q", tc.body, a.Status, a.Message, tc.want)
		}
	}
}

func TestNewClaimRequest(t *testing.T) {
	no := false
	req, err := newClaimRequest("org.acme", &claimBody{WorkloadRef: "agent", Resume: &no}, 0, "req-1")
	if err != nil || req.Workload != "agent" || req.TenantID != "org.acme" || req.ResumeOrDefault() || req.WaitMillis != 1 || req.RequestID != "req-1" {
		t.Fatalf("alias: %+v, %v", req, err)
	}
	req, _ = newClaimRequest("t", &claimBody{Workload: "a", WorkloadRef: "b", RequestID: "body"}, time.Second, "header")
	if req.Workload != "a" || req.RequestID != "body" || req.WaitMillis != 1000 {
		t.Fatalf("workload must win over workloadRef, body id over header: %+v", req)
	}
	if _, err := newClaimRequest("t", &claimBody{}, 0, ""); err == nil || classify(err).Message != "workload is required" {
		t.Fatalf("missing workload: %v", err)
	}
	if _, err := newClaimRequest("t", &claimBody{Workload: "Bad_Name"}, 0, ""); classify(err).Status != 400 || !strings.Contains(err.Error(), "DNS-1123") {
		t.Fatalf("bad workload: %v", err)
	}
	rel, err := newReleaseRequest("t", &claimBody{Workload: "a", Force: true}, DefaultWait)
	if err != nil || rel.msg.Reason != messages.ReasonForce || !rel.msg.Force || rel.wait != DefaultWait || rel.msg.WaitMillis != 30000 {
		t.Fatalf("force release: %+v %v", rel, err)
	}
	rel, _ = newReleaseRequest("t", &claimBody{Workload: "a"}, time.Second)
	if rel.msg.Reason != messages.ReasonAPI || rel.msg.Validate() != nil || rel.msg.WaitMillis != 1000 {
		t.Fatalf("release: %+v", rel)
	}
}

func TestValidateResources(t *testing.T) {
	if err := validateResourceName("pool", "Bad_Pool"); err == nil || !strings.Contains(err.Error(), `pool name "Bad_Pool"`) {
		t.Errorf("pool name: %v", err)
	}
	if err := validateResourceName("workload", ""); err == nil || !strings.Contains(err.Error(), "name is required") {
		t.Errorf("empty name: %v", err)
	}
	if err := validateResourceName("workload", strings.Repeat("a", 64)); classify(err).Status != 400 {
		t.Errorf("long name: %v", err)
	}
	if err := validateWorkloadSpec(&v1alpha1.WorkloadSpec{}); err == nil {
		t.Error("a spec without an image must be rejected")
	}
	if err := validateWorkloadSpec(&v1alpha1.WorkloadSpec{Image: v1alpha1.ImageSpec{Ref: "a", Dockerfile: "b"}}); err == nil {
		t.Error("a spec with ref and dockerfile must be rejected")
	}
	if err := validatePoolSpec(&v1alpha1.PoolSpec{}); err == nil || !strings.Contains(err.Error(), "workloadRef is required") {
		t.Errorf("pool without workloadRef: %v", err)
	}
	if err := validatePoolSpec(&v1alpha1.PoolSpec{WorkloadRef: "UP"}); err == nil || !strings.Contains(err.Error(), "spec.workloadRef") {
		t.Errorf("pool with a bad workloadRef: %v", err)
	}
}

func TestCountPhasesAndHealth(t *testing.T) {
	c := countPhases([]string{"Running", "", "Running", "Pending"}, "Unknown")
	if c.Total != 4 || c.ByPhase["Running"] != 2 || c.ByPhase["Unknown"] != 1 || c.ByPhase["Pending"] != 1 {
		t.Errorf("countPhases = %+v", c)
	}
	if c := countPhases(nil, "x"); c.Total != 0 || c.ByPhase == nil {
		t.Errorf("empty counts must have a non-nil map: %+v", c)
	}
	if s, b := health("connected"); s != 200 || b.Status != "ok" {
		t.Errorf("health(connected) = %d %+v", s, b)
	}
	if s, b := health("reconnecting"); s != 503 || b.Code != "unavailable" {
		t.Errorf("health(reconnecting) = %d %+v", s, b)
	}
}

func TestRouteLabels(t *testing.T) {
	if got := routeOf("POST /api/v1/tenants/{id}/claim"); got != "/api/v1/tenants/{id}/claim" {
		t.Errorf("routeOf = %q", got)
	}
	if routeOf("") != "unmatched" || methodLabel("BREW") != "OTHER" || statusLabel(201) != "201" || statusLabel(1000) != "1000" {
		t.Error("labels")
	}
}
