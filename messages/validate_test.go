package messages

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateTenantID(t *testing.T) {
	tests := []struct {
		id   string
		rule string // substring of the message; "" means valid
	}{
		{"user-123", ""},
		{"tg-jane", ""},
		{"org.acme", ""},
		{"A_b.c-1", ""},
		{"a", ""},
		{"9", ""},
		{strings.Repeat("a", 63), ""},
		{"", "empty"},
		{strings.Repeat("a", 64), "at most 63"},
		{"Bad Tenant!", "[A-Za-z0-9._-]"},
		{"a/b", "[A-Za-z0-9._-]"},
		{"ü", "[A-Za-z0-9._-]"},
		{"-abc", "alphanumeric"},
		{"abc.", "alphanumeric"},
		{"_a", "alphanumeric"},
	}
	for _, tt := range tests {
		checkRule(t, "ValidateTenantID", tt.id, ValidateTenantID(tt.id), tt.rule)
	}
}

func TestValidateWorkloadName(t *testing.T) {
	tests := []struct {
		name string
		rule string
	}{
		{"my-agent", ""},
		{"a", ""},
		{"agent2", ""},
		{"1abc", ""},
		{strings.Repeat("w", 63), ""},
		{"", "empty"},
		{strings.Repeat("w", 64), "at most 63"},
		{"My-Agent", "DNS-1123"},
		{"my.agent", "DNS-1123"},
		{"my_agent", "DNS-1123"},
		{"-agent", "alphanumeric"},
		{"agent-", "alphanumeric"},
	}
	for _, tt := range tests {
		checkRule(t, "ValidateWorkloadName", tt.name, ValidateWorkloadName(tt.name), tt.rule)
	}
}

func TestRequestValidate(t *testing.T) {
	tests := []struct {
		name string
		err  error
		rule string
	}{
		{"claim ok", ClaimRequest{TenantID: "org.acme", Workload: "my-agent"}.Validate(), ""},
		{"claim bad tenant", ClaimRequest{TenantID: "Bad Tenant!", Workload: "my-agent"}.Validate(), "tenant id"},
		{"claim bad workload", ClaimRequest{TenantID: "alice", Workload: "My_Agent"}.Validate(), "workload name"},
		{"claim no workload", ClaimRequest{TenantID: "alice"}.Validate(), "workload name must not be empty"},
		{"release ok", ReleaseRequest{TenantID: "alice", Workload: "w", Reason: ReasonIdle}.Validate(), ""},
		{"release no reason", ReleaseRequest{TenantID: "alice", Workload: "w"}.Validate(), ""},
		{"release bad reason", ReleaseRequest{TenantID: "alice", Workload: "w", Reason: "bored"}.Validate(), "release reason"},
		{"release bad tenant", ReleaseRequest{TenantID: "", Workload: "w"}.Validate(), "tenant id must not be empty"},
		{"get ok", ClaimGetRequest{TenantID: "alice", Workload: "w"}.Validate(), ""},
		{"get bad", ClaimGetRequest{TenantID: "alice", Workload: "W"}.Validate(), "DNS-1123"},
		{"tenant ok", TenantGetRequest{TenantID: "tg-jane"}.Validate(), ""},
		{"tenant bad", TenantGetRequest{TenantID: "a b"}.Validate(), "[A-Za-z0-9._-]"},
	}
	for _, tt := range tests {
		checkRule(t, "Validate", tt.name, tt.err, tt.rule)
	}
}

func checkRule(t *testing.T, fn, in string, err error, rule string) {
	t.Helper()
	if rule == "" {
		if err != nil {
			t.Errorf("%s(%q) = %v, want nil", fn, in, err)
		}
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Errorf("%s(%q) = %v (%T), want *Error", fn, in, err, err)
		return
	}
	if e.Code != CodeInvalidArgument {
		t.Errorf("%s(%q) code = %q, want %q", fn, in, e.Code, CodeInvalidArgument)
	}
	if !strings.Contains(e.Message, rule) {
		t.Errorf("%s(%q) message %q does not mention %q", fn, in, e.Message, rule)
	}
}

func TestClaimPhaseTerminal(t *testing.T) {
	want := map[ClaimPhase]bool{
		PhasePending: false, PhaseActive: false, PhaseReleasing: false,
		PhaseReleaseFailed: false, PhaseReleased: true, PhaseError: true,
	}
	for p, w := range want {
		if p.Terminal() != w {
			t.Errorf("%s.Terminal() = %v, want %v", p, !w, w)
		}
	}
}

func TestResumeOrDefault(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		resume *bool
		want   bool
	}{{nil, true}, {&yes, true}, {&no, false}}
	for _, tt := range tests {
		if got := (ClaimRequest{Resume: tt.resume}).ResumeOrDefault(); got != tt.want {
			t.Errorf("ResumeOrDefault(%v) = %v, want %v", tt.resume, got, tt.want)
		}
	}
}
