package messages

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

func TestHTTPStatus(t *testing.T) {
	tests := []struct {
		code Code
		want int
	}{
		{CodeInvalidArgument, 400},
		{CodeNotFound, 404},
		{CodeConflict, 409},
		{CodeCapacityExhausted, 429},
		{CodeUnavailable, 503},
		{CodeDeadlineExceeded, 504},
		{CodeInternal, 500},
		{Code("bogus"), 500},
		{Code(""), 500},
	}
	for _, tt := range tests {
		if got := tt.code.HTTPStatus(); got != tt.want {
			t.Errorf("%q.HTTPStatus() = %d, want %d", tt.code, got, tt.want)
		}
	}
}

func TestErrorString(t *testing.T) {
	err := Errorf(CodeNotFound, "claim %s not found", "alice.w")
	if got, want := err.Error(), "not_found: claim alice.w not found"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	b, _ := json.Marshal(err)
	if got, want := string(b), `{"code":"not_found","message":"claim alice.w not found"}`; got != want {
		t.Errorf("json = %s, want %s", got, want)
	}
}

func TestAsErrorAndCodeOf(t *testing.T) {
	conflict := Errorf(CodeConflict, "claim is Releasing")
	tests := []struct {
		name string
		err  error
		code Code
		msg  string
	}{
		{"nil", nil, "", ""},
		{"direct", conflict, CodeConflict, "claim is Releasing"},
		{"wrapped", fmt.Errorf("claim: %w", conflict), CodeConflict, "claim is Releasing"},
		{"double wrapped", fmt.Errorf("a: %w", fmt.Errorf("b: %w", conflict)), CodeConflict, "claim is Releasing"},
		{"joined", errors.Join(errors.New("x"), conflict), CodeConflict, "claim is Releasing"},
		{"plain", errors.New("boom"), CodeInternal, "boom"},
		{"wrapped plain", fmt.Errorf("op: %w", errors.New("boom")), CodeInternal, "op: boom"},
		{"deadline", fmt.Errorf("request: %w", context.DeadlineExceeded), CodeDeadlineExceeded, "request: context deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CodeOf(tt.err); got != tt.code {
				t.Errorf("CodeOf = %q, want %q", got, tt.code)
			}
			e := AsError(tt.err)
			if tt.err == nil {
				if e != nil {
					t.Errorf("AsError(nil) = %v, want nil", e)
				}
				return
			}
			if e.Code != tt.code || e.Message != tt.msg {
				t.Errorf("AsError = %+v, want {%s %s}", *e, tt.code, tt.msg)
			}
		})
	}
}
