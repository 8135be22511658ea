package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/translate"
)

// This file holds the edge's decisions: request validation, the HTTP status
// of every answer and the shape of response bodies. Nothing here does I/O, so
// all of it is table-tested in service_test.go.

// Waiting for a claim or a release.
const (
	// DefaultWait is how long a claim request waits for the claim to
	// become Active, and a release for the release to end, when the caller
	// does not say (?wait=).
	DefaultWait = 30 * time.Second
	// MaxWait caps ?wait=; longer values are cut to it.
	MaxWait = 5 * time.Minute
	// replyMargin is added to the wait to get the NATS request timeout,
	// so the claim-router's answer at the end of the wait (Pending,
	// Releasing) still arrives before the edge gives up; a claim-router
	// that died holding the request costs no more than that.
	replyMargin = 3 * time.Second
)

// Retry-After values (seconds) for answers that are worth retrying.
const (
	retryAfterUnavailable = 2
	retryAfterCapacity    = 5
)

// maxBodyBytes bounds every request body.
const maxBodyBytes = 1 << 20

// Error codes of the edge's own failures, besides the contract's codes
// (messages.Code) which are used verbatim.
const (
	codeMethodNotAllowed = "method_not_allowed"
	codePayloadTooLarge  = "payload_too_large"
	codeUnauthenticated  = "unauthenticated"
	codeCanceled         = "canceled"
)

// statusClientClosedRequest is logged (and counted) when the caller went away
// before the answer was ready; nothing is written to it.
const statusClientClosedRequest = 499

// apiError is a failure as the edge answers it: the HTTP status, the body
// {"error": Message, "code": Code} and, when set, a Retry-After header.
type apiError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter int
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: string(messages.CodeInvalidArgument), Message: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusNotFound, Code: string(messages.CodeNotFound), Message: fmt.Sprintf(format, args...)}
}

func unavailable(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Code: string(messages.CodeUnavailable),
		Message: fmt.Sprintf(format, args...), RetryAfter: retryAfterUnavailable}
}

// errorBody is the JSON body of every failed request.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// classify turns any error into the answer the caller gets. Contract errors
// (*messages.Error, from the claim-router) keep their code and take its
// HTTP status; context errors become 504 (deadline) or 499 (the caller left);
// network errors reaching a dependency are 503; anything else is 500.
func classify(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var me *messages.Error
	if errors.As(err, &me) && me != nil {
		a := &apiError{Status: me.Code.HTTPStatus(), Code: string(me.Code), Message: me.Message}
		switch me.Code {
		case messages.CodeCapacityExhausted:
			a.RetryAfter = retryAfterCapacity
		case messages.CodeUnavailable:
			a.RetryAfter = retryAfterUnavailable
		case messages.CodeInvalidArgument, messages.CodeNotFound, messages.CodeConflict,
			messages.CodeDeadlineExceeded, messages.CodeInternal:
		default:
			// A code this edge does not know yet: keep it, answer 500.
			a.Status = http.StatusInternalServerError
		}
		return a
	}
	switch {
	case errors.Is(err, context.Canceled):
		return &apiError{Status: statusClientClosedRequest, Code: codeCanceled, Message: "the client closed the request"}
	case errors.Is(err, context.DeadlineExceeded):
		return &apiError{Status: http.StatusGatewayTimeout, Code: string(messages.CodeDeadlineExceeded), Message: err.Error()}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		if ne.Timeout() {
			return &apiError{Status: http.StatusGatewayTimeout, Code: string(messages.CodeDeadlineExceeded), Message: err.Error()}
		}
		return unavailable("%v", err)
	}
	return &apiError{Status: http.StatusInternalServerError, Code: string(messages.CodeInternal), Message: err.Error()}
}

// kubeError maps an error of the Kubernetes API about object `kind` `name`
// (for example "workload", "my-agent") to the caller's answer: NotFound 404,
// AlreadyExists and Conflict 409, Invalid and BadRequest 400 with the API
// server's own message (it names the field), throttling and unavailability
// 503, timeouts 504. Authorization failures are the edge's misconfiguration,
// so they are 500, never blamed on the caller.
func kubeError(kind, name string, err error) error {
	if err == nil {
		return nil
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return classify(err)
	}
	s := status.Status()
	msg := s.Message
	if msg == "" {
		msg = err.Error()
	}
	switch s.Reason {
	case metav1.StatusReasonNotFound:
		return notFound("%s %q not found", kind, name)
	case metav1.StatusReasonAlreadyExists:
		return &apiError{Status: http.StatusConflict, Code: string(messages.CodeConflict), Message: fmt.Sprintf("%s %q already exists", kind, name)}
	case metav1.StatusReasonConflict:
		return &apiError{Status: http.StatusConflict, Code: string(messages.CodeConflict), Message: msg}
	case metav1.StatusReasonInvalid, metav1.StatusReasonBadRequest:
		return badRequest("%s", msg)
	case metav1.StatusReasonRequestEntityTooLarge:
		return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codePayloadTooLarge, Message: msg}
	case metav1.StatusReasonTimeout, metav1.StatusReasonServerTimeout:
		return &apiError{Status: http.StatusGatewayTimeout, Code: string(messages.CodeDeadlineExceeded), Message: msg}
	case metav1.StatusReasonTooManyRequests, metav1.StatusReasonServiceUnavailable:
		return unavailable("kubernetes API: %s", msg)
	case metav1.StatusReasonUnauthorized, metav1.StatusReasonForbidden:
		return &apiError{Status: http.StatusInternalServerError, Code: string(messages.CodeInternal),
			Message: "the edge is not allowed to do this in the Kubernetes API (check its RBAC): " + msg}
	}
	return &apiError{Status: http.StatusInternalServerError, Code: string(messages.CodeInternal), Message: msg}
}

// describeJSONError explains why a request body did not decode, naming the
// offset or the field at fault.
func describeJSONError(err error) *apiError {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return badRequest("invalid JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.As(err, &typ):
		if typ.Field == "" {
			return badRequest("invalid JSON: the body must be a JSON object, not %s", typ.Value)
		}
		return badRequest("invalid JSON: field %q must be %s, not %s", typ.Field, jsonTypeName(typ.Type.Kind().String()), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return badRequest("invalid JSON: unexpected end of input")
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return badRequest("invalid JSON: unknown field %s", rest)
	}
	return badRequest("invalid JSON: %s", strings.TrimPrefix(msg, "json: "))
}

func jsonTypeName(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "slice", "array":
		return "an array"
	case "struct", "map", "ptr", "pointer":
		return "an object"
	}
	return goKind
}

// parseWait reads ?wait=: a Go duration ("10s", "1m30s", "500ms") or a
// number of seconds ("10", "2.5"). Empty means [DefaultWait]; longer
// than [MaxWait] is cut to it; negative or malformed is a 400.
func parseWait(raw string) (time.Duration, error) {
	if raw == "" {
		return DefaultWait, nil
	}
	var d time.Duration
	if secs, err := strconv.ParseFloat(raw, 64); err == nil {
		if math.IsNaN(secs) || math.IsInf(secs, 0) {
			return 0, badRequest("wait %q must be a duration like \"10s\" or a number of seconds", raw)
		}
		if secs > MaxWait.Seconds() {
			secs = MaxWait.Seconds()
		}
		d = time.Duration(secs * float64(time.Second))
	} else {
		d, err = time.ParseDuration(raw)
		if err != nil {
			return 0, badRequest("wait %q must be a duration like \"10s\" or a number of seconds", truncate(raw))
		}
	}
	if d < 0 {
		return 0, badRequest("wait %q must not be negative", raw)
	}
	return min(d, MaxWait), nil
}

// waitMillis is the contract's WaitMillis for a wait. 0 means "the server's
// default" in the contract, so a wait of 0 ("answer at once") is sent as 1 ms;
// a fraction of a millisecond rounds up.
func waitMillis(d time.Duration) int64 {
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	return max(ms, 1)
}

// claimBody is the JSON body of POST /api/v1/tenants/{id}/claim and
// /release. "workloadRef" is an alias of "workload"; "workload" wins.
type claimBody struct {
	Workload    string `json:"workload"`
	WorkloadRef string `json:"workloadRef"`
	Resume      *bool  `json:"resume"`
	RequestID   string `json:"requestId"`
	// Force (release only) releases without saving the overlay.
	Force bool `json:"force"`
}

func (b *claimBody) workload() string {
	if b.Workload != "" {
		return b.Workload
	}
	return b.WorkloadRef
}

// validateWorkloadRef checks the workload a claim or release names.
func validateWorkloadRef(name string) error {
	if name == "" {
		return badRequest("workload is required")
	}
	return messages.ValidateWorkloadName(name)
}

// newClaimRequest builds the claim-router request from the validated path,
// body and wait.
func newClaimRequest(tenant string, body *claimBody, wait time.Duration, requestID string) (messages.ClaimRequest, error) {
	w := body.workload()
	if err := validateWorkloadRef(w); err != nil {
		return messages.ClaimRequest{}, err
	}
	if body.RequestID != "" {
		requestID = body.RequestID
	}
	return messages.ClaimRequest{
		TenantID:   tenant,
		Workload:   w,
		Resume:     body.Resume,
		RequestID:  truncate(requestID),
		WaitMillis: waitMillis(wait),
	}, nil
}

// newReleaseRequest builds the claim-router release request.
func newReleaseRequest(tenant string, body *claimBody, wait time.Duration) (releaseRequest, error) {
	reason := messages.ReasonAPI
	if body.Force {
		reason = messages.ReasonForce
	}
	return newReasonReleaseRequest(tenant, body, reason, wait)
}

// releaseRequest is a decoded release: the contract's request and the wait
// that bounds the NATS request.
type releaseRequest struct {
	msg  messages.ReleaseRequest
	wait time.Duration
}

// reply is a successful (or view-carrying) answer: status, JSON body and
// optional headers.
type reply struct {
	Status     int
	Body       any
	RetryAfter int
	Location   string
}

// claimStatus decides the status of a claim answer from the view:
//
//   - 200 OK: the tenant already had the claim (source "existing");
//   - 201 Created: the claim became Active during this request;
//   - 202 Accepted: still Pending (or a previous claim still Releasing) when
//     the wait ended; poll the claim or claim again;
//   - phase Error: see [errorPhaseStatus];
//   - 409 Conflict: the claim is ReleaseFailed or Released, so the state moved
//     under the request;
//   - 502 Bad Gateway: a phase this edge does not know.
//
// The body is always the view, so callers see phase and detail.
func claimStatus(v *messages.ClaimView) (status, retryAfter int) {
	if v.Source == messages.SourceExisting {
		return http.StatusOK, 0
	}
	switch v.Phase {
	case messages.PhaseActive:
		return http.StatusCreated, 0
	case messages.PhasePending, messages.PhaseReleasing:
		return http.StatusAccepted, 0
	case messages.PhaseError:
		return errorPhaseStatus(v.Detail)
	case messages.PhaseReleaseFailed, messages.PhaseReleased:
		return http.StatusConflict, 0
	}
	return http.StatusBadGateway, 0
}

// errorPhaseStatus maps the detail of a claim in phase Error. The claim
// failed in the backend, not because of the request, so it is never 500 or
// another "your fault" 4xx, except an unknown workload:
//
//   - unknown workload (normally a not_found error before any record, but a
//     record may carry it too): 404;
//   - no capacity (unschedulable, insufficient cpu/memory, pool exhausted):
//     503 with Retry-After, a retry may find room;
//   - timeout (the instance was not Ready before the claim's deadline): 504;
//   - anything else (the Pod failed, image pull errors, restore failed): 502,
//     the upstream instance is broken.
func errorPhaseStatus(detail string) (status, retryAfter int) {
	d := strings.ToLower(detail)
	switch {
	case containsAny(d, "unknown workload", "workload not found", "no such workload"):
		return http.StatusNotFound, 0
	case containsAny(d, "capacity", "unschedulable", "insufficient", "exhausted"):
		return http.StatusServiceUnavailable, retryAfterCapacity
	case containsAny(d, "timeout", "timed out", "deadline"):
		return http.StatusGatewayTimeout, 0
	}
	return http.StatusBadGateway, 0
}

// releaseStatus decides the status of a release answer: 200 once Released
// (or when the claim had already ended in Error, release being idempotent),
// 202 while Releasing, 502 for ReleaseFailed (saving the overlay or retiring
// the instance failed; the instance and its data are kept for a retry), 409
// for a claim that is Active or Pending after the release.
func releaseStatus(v *messages.ClaimView) int {
	switch v.Phase {
	case messages.PhaseReleased, messages.PhaseError:
		return http.StatusOK
	case messages.PhaseReleasing:
		return http.StatusAccepted
	case messages.PhaseReleaseFailed:
		return http.StatusBadGateway
	case messages.PhaseActive, messages.PhasePending:
		return http.StatusConflict
	}
	return http.StatusBadGateway
}

// failedView is the body of a claim or release answered with a failure
// status: the claim view, plus "error" and "code" like every failure.
type failedView struct {
	messages.ClaimView
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Codes of failed views besides the contract's.
const (
	codeClaimFailed   = "claim_failed"
	codeReleaseFailed = "release_failed"
)

// viewReply builds the answer carrying a claim view: the view itself on
// success, a [failedView] for a failure status. op is "claim" or "release".
func viewReply(v *messages.ClaimView, status, retryAfter int, op string) reply {
	r := reply{Status: status, Body: v, RetryAfter: retryAfter}
	if status < 400 {
		if status == http.StatusAccepted {
			r.Location = claimPath(v.TenantID, v.Workload)
		}
		return r
	}
	f := failedView{ClaimView: *v}
	switch status {
	case http.StatusNotFound:
		f.Code = string(messages.CodeNotFound)
	case http.StatusConflict:
		f.Code = string(messages.CodeConflict)
	case http.StatusServiceUnavailable:
		f.Code = string(messages.CodeCapacityExhausted)
	case http.StatusGatewayTimeout:
		f.Code = string(messages.CodeDeadlineExceeded)
	default:
		f.Code = codeClaimFailed
		if op == "release" {
			f.Code = codeReleaseFailed
		}
	}
	switch {
	case status == http.StatusConflict:
		f.Error = fmt.Sprintf("the claim is %s", v.Phase)
	case v.Detail != "":
		f.Error = op + " failed: " + v.Detail
	default:
		f.Error = fmt.Sprintf("%s failed: the claim is %s", op, v.Phase)
	}
	r.Body = &f
	return r
}

// claimPath is where one claim can be read (GET), the Location of a 202.
// Valid tenant ids ([A-Za-z0-9._-]) and workload names never need escaping.
func claimPath(tenant, workload string) string {
	return "/api/v1/tenants/" + tenant + "/claims/" + workload
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// truncate cuts caller-supplied strings that end up in messages or logs.
func truncate(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// ---- health and stats ----------------------------------------------------

// healthBody is the body of GET /api/v1/health and /readyz.
type healthBody struct {
	Status string `json:"status"`
	NATS   string `json:"nats"`
	// Error and Code are set when unhealthy, like every failure's body.
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
}

// health decides the health answer from the NATS connection state: 200
// while connected; 503 otherwise, since the edge cannot claim without NATS.
func health(natsState string) (int, healthBody) {
	if natsState == "connected" {
		return http.StatusOK, healthBody{Status: "ok", NATS: natsState}
	}
	return http.StatusServiceUnavailable, healthBody{Status: "unavailable", NATS: natsState,
		Error: "NATS connection is " + natsState, Code: string(messages.CodeUnavailable)}
}

// phaseCounts is one half of the stats body.
type phaseCounts struct {
	Total   int            `json:"total"`
	ByPhase map[string]int `json:"byPhase"`
}

// statsBody is the body of GET /api/v1/stats.
type statsBody struct {
	Instances phaseCounts `json:"instances"`
	Claims    phaseCounts `json:"claims"`
}

// countPhases counts phases, naming the empty phase `empty`.
func countPhases(phases []string, empty string) phaseCounts {
	c := phaseCounts{Total: len(phases), ByPhase: map[string]int{}}
	for _, p := range phases {
		if p == "" {
			p = empty
		}
		c.ByPhase[p]++
	}
	return c
}

// claimPhases lists the phase of every claim of every tenant.
func claimPhases(tenants []messages.TenantView) []string {
	var out []string
	for _, t := range tenants {
		for _, c := range t.Claims {
			out = append(out, string(c.Phase))
		}
	}
	return out
}

// ---- workloads and pools --------------------------------------------------

// resourceBody is the JSON body of POST and PUT on workloads and pools:
// {"name": ..., "spec": {...}}. Other top-level fields (status, createdAt of
// a GET answer sent back) are ignored; the spec is decoded strictly.
type resourceBody struct {
	Name string          `json:"name"`
	Spec json.RawMessage `json:"spec"`
}

// validateResourceName checks a workload or pool name (a DNS-1123 label, the
// rule for workload names; pools follow it too since pool names become label
// values).
func validateResourceName(kind, name string) error {
	if name == "" {
		return badRequest("name is required")
	}
	if err := messages.ValidateWorkloadName(name); err != nil {
		if kind != "workload" {
			var me *messages.Error
			if errors.As(err, &me) {
				return badRequest("%s", strings.Replace(me.Message, "workload name", kind+" name", 1))
			}
		}
		return err
	}
	return nil
}

// validateWorkloadSpec checks what the CRD schema cannot express, so that the
// caller gets a 400 at once rather than a workload in phase Error later.
// Everything else (vcpus >= 1, required fields, enums) is left to the API
// server's schema, whose message is passed on.
func validateWorkloadSpec(s *v1alpha1.WorkloadSpec) error {
	if (s.Image.Ref == "") == (s.Image.Dockerfile == "") {
		return badRequest("spec.image must set exactly one of ref and dockerfile")
	}
	return nil
}

// validatePoolSpec checks a pool spec's workload reference; sizes are left to
// the API server's schema.
func validatePoolSpec(s *v1alpha1.PoolSpec) error {
	if s.WorkloadRef == "" {
		return badRequest("spec.workloadRef is required")
	}
	if err := messages.ValidateWorkloadName(s.WorkloadRef); err != nil {
		return badRequest("spec.workloadRef: %s", messages.AsError(err).Message)
	}
	return nil
}

// workloadView is a workload as the REST API shows it.
type workloadView struct {
	Name       string                  `json:"name"`
	Spec       v1alpha1.WorkloadSpec   `json:"spec"`
	Status     v1alpha1.WorkloadStatus `json:"status"`
	Generation int64                   `json:"generation,omitempty"`
	CreatedAt  *time.Time              `json:"createdAt,omitempty"`
}

func newWorkloadView(w *v1alpha1.BoilerhouseWorkload) workloadView {
	return workloadView{Name: w.Name, Spec: w.Spec, Status: w.Status, Generation: w.Generation, CreatedAt: createdAt(w.CreationTimestamp)}
}

// poolView is a pool as the REST API shows it.
type poolView struct {
	Name       string              `json:"name"`
	Spec       v1alpha1.PoolSpec   `json:"spec"`
	Status     v1alpha1.PoolStatus `json:"status"`
	Generation int64               `json:"generation,omitempty"`
	CreatedAt  *time.Time          `json:"createdAt,omitempty"`
}

func newPoolView(p *v1alpha1.BoilerhousePool) poolView {
	return poolView{Name: p.Name, Spec: p.Spec, Status: p.Status, Generation: p.Generation, CreatedAt: createdAt(p.CreationTimestamp)}
}

func createdAt(t metav1.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return messages.Timestamp(t.Time)
}

// deletedBody is the answer to a DELETE.
type deletedBody struct {
	Status string `json:"status"`
	Name   string `json:"name"`
}

// ---- releases with a reason ------------------------------------------------

// newReasonReleaseRequest builds the release request of POST
// /api/v1/tenants/{id}/release/retry (reason retry: a ReleaseFailed claim
// runs its release again) and /release/force (reason force: release without
// saving the overlay; the stored versions are kept).
func newReasonReleaseRequest(tenant string, body *claimBody, reason messages.ReleaseReason, wait time.Duration) (releaseRequest, error) {
	w := body.workload()
	if err := validateWorkloadRef(w); err != nil {
		return releaseRequest{}, err
	}
	return releaseRequest{wait: wait, msg: messages.ReleaseRequest{TenantID: tenant, Workload: w, Reason: reason,
		Force: reason == messages.ReasonForce, WaitMillis: waitMillis(wait)}}, nil
}

// ---- instances (managed Pods) ----------------------------------------------

// Instance routes.
const (
	// DefaultExecTimeout bounds one POST /api/v1/instances/{id}/exec.
	DefaultExecTimeout = 30 * time.Second
	// maxExecOutput bounds each of stdout and stderr of an exec answer; the
	// rest is dropped and the answer says "truncated".
	maxExecOutput = 1 << 20
	// maxLogBytes bounds a logs answer (the last bytes are dropped).
	maxLogBytes int64 = 4 << 20
)

// instanceView is a managed Pod as the REST API shows it.
type instanceView struct {
	Name string `json:"name"`
	// Phase is the Pod's phase ("Unknown" when it has none yet).
	Phase     string            `json:"phase"`
	TenantID  string            `json:"tenantId,omitempty"`
	Workload  string            `json:"workloadRef,omitempty"`
	IP        string            `json:"ip,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt *time.Time        `json:"createdAt"`
	// ClaimedAt is when the claim holding the instance became Active, when
	// the claim-router knows one.
	ClaimedAt *time.Time `json:"claimedAt,omitempty"`
}

// managed reports whether a Pod is one of Boilerhouse's: only those are
// shown, read, exec'd into or destroyed by the instance routes.
func managed(p *corev1.Pod) bool {
	return p.Labels[v1alpha1.LabelManaged] == "true"
}

// newInstanceView describes a managed Pod; claimedAt maps instance ids to
// the time their claim became Active.
func newInstanceView(p *corev1.Pod, claimedAt map[string]*time.Time) instanceView {
	phase := string(p.Status.Phase)
	if phase == "" {
		phase = "Unknown"
	}
	v := instanceView{
		Name:      p.Name,
		Phase:     phase,
		TenantID:  p.Labels[v1alpha1.LabelTenant],
		Workload:  p.Labels[v1alpha1.LabelWorkload],
		IP:        p.Status.PodIP,
		CreatedAt: createdAt(p.CreationTimestamp),
		ClaimedAt: claimedAt[p.Name],
	}
	if len(p.Labels) > 0 {
		v.Labels = p.Labels
	}
	return v
}

// claimTimes maps the instance of every Active claim to its claimedAt.
func claimTimes(tenants []messages.TenantView) map[string]*time.Time {
	out := map[string]*time.Time{}
	for _, t := range tenants {
		for _, c := range t.Claims {
			if c.InstanceID != "" && c.ClaimedAt != nil {
				out[c.InstanceID] = c.ClaimedAt
			}
		}
	}
	return out
}

// validateInstanceID checks the {id} of an instance route: a Pod name.
func validateInstanceID(id string) error {
	if id == "" {
		return badRequest("instance id is required")
	}
	if errs := validation.IsDNS1123Subdomain(id); len(errs) > 0 {
		return badRequest("instance id %q is not a Pod name: %s", truncate(id), errs[0])
	}
	return nil
}

// parseTail reads ?tail=: the number of last lines of the log, a
// non-negative integer; empty means the whole log (up to maxLogBytes).
func parseTail(raw string) (*int64, error) {
	if raw == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < 0 {
		return nil, badRequest("tail %q must be a non-negative integer", truncate(raw))
	}
	return &n, nil
}

// podContainer checks that the Pod has the container (main when empty),
// among its containers and init containers.
func podContainer(p *corev1.Pod, name string) (string, error) {
	if name == "" {
		name = translate.ContainerName
	}
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, c := range cs {
			if c.Name == name {
				return name, nil
			}
		}
	}
	return "", badRequest("instance %q has no container %q", p.Name, truncate(name))
}

// containerReady checks, from the Pod's status, that a container can be
// exec'd into (running) or has logs (running or ended): otherwise 409, since
// the state of the instance, not the request, is at fault (a Pod still
// waiting for its restore, say).
func containerReady(p *corev1.Pod, name string, forExec bool) error {
	var state *corev1.ContainerState
	for _, list := range [][]corev1.ContainerStatus{p.Status.ContainerStatuses, p.Status.InitContainerStatuses} {
		for i := range list {
			if list[i].Name == name {
				state = &list[i].State
			}
		}
	}
	switch {
	case state != nil && state.Running != nil:
		return nil
	case state != nil && state.Terminated != nil && !forExec:
		return nil
	case state != nil && state.Terminated != nil:
		return &apiError{Status: http.StatusConflict, Code: string(messages.CodeConflict),
			Message: fmt.Sprintf("container %q of instance %q is not running (it ended)", name, p.Name)}
	}
	why := "it has not started"
	if state != nil && state.Waiting != nil && state.Waiting.Reason != "" {
		why += ": " + state.Waiting.Reason
	}
	return &apiError{Status: http.StatusConflict, Code: string(messages.CodeConflict),
		Message: fmt.Sprintf("container %q of instance %q is not running (%s)", name, p.Name, why)}
}

// execBody is the JSON body of POST /api/v1/instances/{id}/exec.
type execBody struct {
	Command []string `json:"command"`
	// Container defaults to main.
	Container string `json:"container"`
}

// validateExec checks an exec request's command.
func validateExec(b *execBody) error {
	if len(b.Command) == 0 {
		return badRequest("command is required")
	}
	if b.Command[0] == "" {
		return badRequest("command[0] must not be empty")
	}
	return nil
}

// execReply is the answer of an exec: the output (trailing newlines
// trimmed) and the exit code, 200 whatever the code.
type execReply struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exitCode"`
	// Truncated is set when stdout or stderr was longer than 1 MiB.
	Truncated bool `json:"truncated,omitempty"`
}

// newExecReply trims the trailing newlines of the output.
func newExecReply(stdout, stderr *cappedBuffer, code int) execReply {
	return execReply{
		Stdout:    strings.TrimRight(stdout.String(), "\r\n"),
		Stderr:    strings.TrimRight(stderr.String(), "\r\n"),
		ExitCode:  code,
		Truncated: stdout.truncated || stderr.truncated,
	}
}

// cappedBuffer keeps the first limit bytes written to it and drops the rest
// (still reporting them written, so the stream goes on).
type cappedBuffer struct {
	buf       bytes.Buffer
	limit     int
	truncated bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if room := c.limit - c.buf.Len(); room < len(p) {
		c.truncated = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

func (c *cappedBuffer) String() string { return c.buf.String() }

// destroyedBody is the answer of POST /api/v1/instances/{id}/destroy.
type destroyedBody struct {
	Status   string `json:"status"`
	Instance string `json:"instance"`
}

// plainText is a reply body written as text/plain (logs).
type plainText []byte
