package messages

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// HeaderError is the NATS message header carried by the reply to a failed
// request. Its value is the [Code]; the body is the JSON-encoded [Error].
// A reply without this header is a success and its body is the reply type
// of the subject. (This package has no NATS dependency: services and
// callers set and read the header with their own client.)
const HeaderError = "Bh-Error"

// HeaderProgress marks a progress message: a service answering a long
// request (overlay extract and restore) sends one, with an empty body, to the
// request's reply subject every [ProgressInterval] until its reply, so that
// a caller notices a service that died mid-request long before its timeout.
// Callers skip such messages and wait for the reply.
const HeaderProgress = "Bh-Progress"

// ProgressInterval is how often progress messages are sent.
const ProgressInterval = 2 * time.Second

// Code classifies an error so that callers can react to it without parsing
// messages, and so that the edge can map it to an HTTP status.
type Code string

// Error codes. Anything unexpected is [CodeInternal].
const (
	CodeInvalidArgument   Code = "invalid_argument"   // the request is wrong; retrying will not help
	CodeNotFound          Code = "not_found"          // no such claim, tenant, instance or snapshot
	CodeConflict          Code = "conflict"           // the state changed underneath, or a claim is in a phase that forbids the request
	CodeCapacityExhausted Code = "capacity_exhausted" // no pool instance or node capacity; retry later
	CodeUnavailable       Code = "unavailable"        // a dependency (NATS, Kubernetes, a service) is not reachable
	CodeDeadlineExceeded  Code = "deadline_exceeded"  // the operation did not finish in time; it may still complete
	CodeInternal          Code = "internal"           // a bug or an unclassified failure
)

// HTTPStatus is the HTTP status the edge answers with for this code.
// Unknown codes map to 500. (Plain numbers: importing net/http would
// pull a large dependency tree into every publisher.)
func (c Code) HTTPStatus() int {
	switch c {
	case CodeInvalidArgument:
		return 400
	case CodeNotFound:
		return 404
	case CodeConflict:
		return 409
	case CodeCapacityExhausted:
		return 429
	case CodeUnavailable:
		return 503
	case CodeDeadlineExceeded:
		return 504
	default:
		return 500
	}
}

// Error is the typed error of the contract, and the JSON body of a failed
// reply.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Error returns "<code>: <message>".
func (e *Error) Error() string {
	return string(e.Code) + ": " + e.Message
}

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// AsError returns the *Error in err's chain. Otherwise it wraps err:
// context.DeadlineExceeded becomes [CodeDeadlineExceeded] and anything else
// [CodeInternal], with err's text as the message. It returns nil for nil.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) && e != nil {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: CodeDeadlineExceeded, Message: err.Error()}
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}

// CodeOf is the [Code] of err as classified by [AsError], or "" for nil.
func CodeOf(err error) Code {
	if e := AsError(err); e != nil {
		return e.Code
	}
	return ""
}
