package edge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-kit/kit/endpoint"
	httptransport "github.com/go-kit/kit/transport/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

// routes builds the ServeMux: one go-kit server per route, method patterns,
// /metrics and the health probes. Everything under /api/v1 except health is
// behind the API key when one is configured.
func (e *Edge) routes(eps endpoints, gatherer prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	opts := []httptransport.ServerOption{
		httptransport.ServerErrorEncoder(e.encodeError),
		httptransport.ServerErrorHandler(noopErrorHandler{}),
	}
	server := func(ep endpoint.Endpoint, dec httptransport.DecodeRequestFunc) http.Handler {
		return httptransport.NewServer(ep, dec, encodeReply, opts...)
	}
	api := func(pattern string, h http.Handler) { mux.Handle(pattern, e.authenticate(h)) }

	api("POST /api/v1/tenants/{id}/claim", server(eps.Claim, decodeClaim))
	api("POST /api/v1/tenants/{id}/release", server(eps.Release, decodeRelease))
	api("POST /api/v1/tenants/{id}/release/retry", server(eps.Release, decodeReasonRelease(messages.ReasonRetry)))
	api("POST /api/v1/tenants/{id}/release/force", server(eps.Release, decodeReasonRelease(messages.ReasonForce)))
	api("GET /api/v1/tenants/{id}/claims/{workload}", server(eps.GetClaim, decodeClaimGet))
	api("GET /api/v1/tenants/{id}", server(eps.GetTenant, decodeTenant))
	api("POST /api/v1/tenants/{id}/activity", server(eps.Activity, decodeActivity))
	api("GET /api/v1/tenants", server(eps.ListTenants, decodeNothing))
	api("GET /api/v1/stats", server(eps.Stats, decodeNothing))

	api("POST /api/v1/workloads", server(eps.CreateWorkload, decodeWorkloadCreate))
	api("GET /api/v1/workloads", server(eps.ListWorkloads, decodeNothing))
	api("GET /api/v1/workloads/{name}", server(eps.GetWorkload, decodeName("workload")))
	api("PUT /api/v1/workloads/{name}", server(eps.UpdateWorkload, decodeWorkloadUpdate))
	api("DELETE /api/v1/workloads/{name}", server(eps.DeleteWorkload, decodeName("workload")))
	api("GET /api/v1/workloads/{name}/snapshots", server(eps.ListSnapshots, decodeWorkloadSnapshots))
	api("GET /api/v1/snapshots", server(eps.ListSnapshots, decodeSnapshots))

	api("GET /api/v1/instances", server(eps.ListInstances, decodeNothing))
	api("GET /api/v1/instances/{id}", server(eps.GetInstance, decodeInstance))
	api("GET /api/v1/instances/{id}/logs", server(eps.InstanceLogs, decodeInstanceLogs))
	api("POST /api/v1/instances/{id}/exec", server(eps.InstanceExec, decodeInstanceExec))
	api("POST /api/v1/instances/{id}/destroy", server(eps.DestroyInstance, decodeInstance))

	api("POST /api/v1/pools", server(eps.CreatePool, decodePoolCreate))
	api("GET /api/v1/pools", server(eps.ListPools, decodeNothing))
	api("GET /api/v1/pools/{name}", server(eps.GetPool, decodeName("pool")))
	api("PUT /api/v1/pools/{name}", server(eps.UpdatePool, decodePoolUpdate))
	api("DELETE /api/v1/pools/{name}", server(eps.DeletePool, decodeName("pool")))

	healthz := server(eps.Health, decodeNothing)
	mux.Handle("GET /api/v1/health", healthz)
	mux.Handle("GET /readyz", healthz)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			Status string `json:"status"`
		}{"ok"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return mux
}

// authenticate requires "Authorization: Bearer <APIKey>" when an API key is
// configured. Keys are compared as SHA-256 digests in constant time, so
// neither their content nor their length leaks through timing.
func (e *Edge) authenticate(h http.Handler) http.Handler {
	if e.apiKeyDigest == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="boilerhouse"`)
			writeError(w, &apiError{Status: http.StatusUnauthorized, Code: codeUnauthenticated, Message: "missing Authorization: Bearer <token> header"})
			return
		}
		sum := sha256.Sum256([]byte(token))
		if subtle.ConstantTimeCompare(sum[:], e.apiKeyDigest) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="boilerhouse", error="invalid_token"`)
			writeError(w, &apiError{Status: http.StatusUnauthorized, Code: codeUnauthenticated, Message: "invalid API key"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

type noopErrorHandler struct{}

func (noopErrorHandler) Handle(context.Context, error) {}

// ---- decoders --------------------------------------------------------------

func decodeNothing(context.Context, *http.Request) (any, error) { return nil, nil }

// pathTenant is the validated tenant id of the path.
func pathTenant(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if err := messages.ValidateTenantID(id); err != nil {
		return "", err
	}
	return id, nil
}

// decodeClaim reads POST /api/v1/tenants/{id}/claim?wait=: the tenant is
// checked first, then the wait, then the body.
func decodeClaim(_ context.Context, r *http.Request) (any, error) {
	tenant, err := pathTenant(r)
	if err != nil {
		return nil, err
	}
	wait, err := queryWait(r)
	if err != nil {
		return nil, err
	}
	var body claimBody
	if err := readJSON(r, &body); err != nil {
		return nil, err
	}
	msg, err := newClaimRequest(tenant, &body, wait, r.Header.Get("X-Request-Id"))
	if err != nil {
		return nil, err
	}
	return claimRequest{msg: msg, wait: wait}, nil
}

// queryWait reads ?wait= (DefaultWait when absent).
func queryWait(r *http.Request) (time.Duration, error) {
	var raw string
	if r.URL.RawQuery != "" {
		raw = r.URL.Query().Get("wait")
	}
	return parseWait(raw)
}

// decodeRelease reads POST /api/v1/tenants/{id}/release?wait=, checked in
// the order of decodeClaim.
func decodeRelease(_ context.Context, r *http.Request) (any, error) {
	tenant, err := pathTenant(r)
	if err != nil {
		return nil, err
	}
	wait, err := queryWait(r)
	if err != nil {
		return nil, err
	}
	var body claimBody
	if err := readJSON(r, &body); err != nil {
		return nil, err
	}
	return newReleaseRequest(tenant, &body, wait)
}

// decodeReasonRelease reads POST /api/v1/tenants/{id}/release/retry?wait=
// and /release/force?wait=: {"workload"|"workloadRef"}.
func decodeReasonRelease(reason messages.ReleaseReason) httptransport.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		tenant, err := pathTenant(r)
		if err != nil {
			return nil, err
		}
		wait, err := queryWait(r)
		if err != nil {
			return nil, err
		}
		var body claimBody
		if err := readJSON(r, &body); err != nil {
			return nil, err
		}
		return newReasonReleaseRequest(tenant, &body, reason, wait)
	}
}

// decodeSnapshots reads GET /api/v1/snapshots?tenant=.
func decodeSnapshots(_ context.Context, r *http.Request) (any, error) {
	var req messages.OverlayListRequest
	if r.URL.RawQuery != "" {
		if t := r.URL.Query().Get("tenant"); t != "" {
			if err := messages.ValidateTenantID(t); err != nil {
				return nil, err
			}
			req.TenantID = t
		}
	}
	return req, nil
}

// decodeWorkloadSnapshots reads GET /api/v1/workloads/{name}/snapshots?tenant=.
func decodeWorkloadSnapshots(ctx context.Context, r *http.Request) (any, error) {
	name := r.PathValue("name")
	if err := validateResourceName("workload", name); err != nil {
		return nil, err
	}
	req, err := decodeSnapshots(ctx, r)
	if err != nil {
		return nil, err
	}
	list := req.(messages.OverlayListRequest)
	list.Workload = name
	return list, nil
}

func decodeInstance(_ context.Context, r *http.Request) (any, error) {
	id := r.PathValue("id")
	if err := validateInstanceID(id); err != nil {
		return nil, err
	}
	return instanceRequest{id: id}, nil
}

// decodeInstanceLogs reads GET /api/v1/instances/{id}/logs?tail=&container=.
func decodeInstanceLogs(_ context.Context, r *http.Request) (any, error) {
	id := r.PathValue("id")
	if err := validateInstanceID(id); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	tail, err := parseTail(q.Get("tail"))
	if err != nil {
		return nil, err
	}
	return logsRequest{id: id, container: q.Get("container"), tail: tail}, nil
}

// decodeInstanceExec reads POST /api/v1/instances/{id}/exec:
// {"command": [...], "container"?}.
func decodeInstanceExec(_ context.Context, r *http.Request) (any, error) {
	id := r.PathValue("id")
	if err := validateInstanceID(id); err != nil {
		return nil, err
	}
	var body execBody
	if err := readJSON(r, &body); err != nil {
		return nil, err
	}
	if err := validateExec(&body); err != nil {
		return nil, err
	}
	return execRequest{id: id, body: body}, nil
}

func decodeClaimGet(_ context.Context, r *http.Request) (any, error) {
	tenant, err := pathTenant(r)
	if err != nil {
		return nil, err
	}
	w := r.PathValue("workload")
	if err := messages.ValidateWorkloadName(w); err != nil {
		return nil, err
	}
	return messages.ClaimGetRequest{TenantID: tenant, Workload: w}, nil
}

func decodeTenant(_ context.Context, r *http.Request) (any, error) {
	tenant, err := pathTenant(r)
	if err != nil {
		return nil, err
	}
	return tenantRequest{tenant: tenant}, nil
}

func decodeName(kind string) httptransport.DecodeRequestFunc {
	return func(_ context.Context, r *http.Request) (any, error) {
		name := r.PathValue("name")
		if err := validateResourceName(kind, name); err != nil {
			return nil, err
		}
		return nameRequest{name: name}, nil
	}
}

// readResource reads {"name", "spec"} and decodes the spec strictly into
// spec. For an update, name comes from the path and the body's name, if
// any, must match it.
func readResource(r *http.Request, kind, pathName string, spec any) (string, error) {
	var body resourceBody
	if err := readJSON(r, &body); err != nil {
		return "", err
	}
	name := body.Name
	if pathName != "" {
		if name != "" && name != pathName {
			return "", badRequest("name %q in the body does not match %q in the path", truncate(name), pathName)
		}
		name = pathName
	}
	if err := validateResourceName(kind, name); err != nil {
		return "", err
	}
	if len(body.Spec) == 0 || string(body.Spec) == "null" {
		return "", badRequest("spec is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(spec); err != nil {
		a := describeJSONError(err)
		a.Message = strings.Replace(a.Message, "invalid JSON: ", "invalid JSON in spec: ", 1)
		return "", a
	}
	return name, nil
}

func decodeWorkload(r *http.Request, pathName string) (any, error) {
	var spec v1alpha1.WorkloadSpec
	name, err := readResource(r, "workload", pathName, &spec)
	if err != nil {
		return nil, err
	}
	if err := validateWorkloadSpec(&spec); err != nil {
		return nil, err
	}
	return workloadWrite{name: name, spec: spec}, nil
}

func decodeWorkloadCreate(_ context.Context, r *http.Request) (any, error) {
	return decodeWorkload(r, "")
}

func decodeWorkloadUpdate(_ context.Context, r *http.Request) (any, error) {
	name := r.PathValue("name")
	if err := validateResourceName("workload", name); err != nil {
		return nil, err
	}
	return decodeWorkload(r, name)
}

func decodePool(r *http.Request, pathName string) (any, error) {
	var spec v1alpha1.PoolSpec
	name, err := readResource(r, "pool", pathName, &spec)
	if err != nil {
		return nil, err
	}
	if err := validatePoolSpec(&spec); err != nil {
		return nil, err
	}
	return poolWrite{name: name, spec: spec}, nil
}

func decodePoolCreate(_ context.Context, r *http.Request) (any, error) {
	return decodePool(r, "")
}

func decodePoolUpdate(_ context.Context, r *http.Request) (any, error) {
	name := r.PathValue("name")
	if err := validateResourceName("pool", name); err != nil {
		return nil, err
	}
	return decodePool(r, name)
}

// bodyReader is a pooled buffer and limit for reading request bodies.
type bodyReader struct {
	buf   bytes.Buffer
	limit io.LimitedReader
}

var bodyReaders = sync.Pool{New: func() any { return new(bodyReader) }}

// readJSON decodes the request body into v. An empty body decodes as {}
// (the handler then names the missing field); a body over maxBodyBytes is
// 413; malformed JSON is 400 naming the problem.
func readJSON(r *http.Request, v any) error {
	if r.ContentLength > maxBodyBytes {
		return tooLarge()
	}
	br := bodyReaders.Get().(*bodyReader)
	defer func() {
		br.limit.R = nil
		if br.buf.Cap() <= 64<<10 {
			br.buf.Reset()
			bodyReaders.Put(br)
		}
	}()
	br.buf.Reset()
	br.limit = io.LimitedReader{R: r.Body, N: maxBodyBytes + 1}
	if _, err := br.buf.ReadFrom(&br.limit); err != nil {
		return badRequest("reading the request body: %v", err)
	}
	if br.buf.Len() > maxBodyBytes {
		return tooLarge()
	}
	data := bytes.TrimSpace(br.buf.Bytes())
	if len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return describeJSONError(err)
	}
	return nil
}

func tooLarge() *apiError {
	return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codePayloadTooLarge,
		Message: "the request body is larger than " + strconv.Itoa(maxBodyBytes) + " bytes"}
}

// ---- encoders --------------------------------------------------------------

// encodeReply writes an endpoint's reply with its status and headers.
func encodeReply(_ context.Context, w http.ResponseWriter, response any) error {
	r := response.(reply)
	h := w.Header()
	if r.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(r.RetryAfter))
	}
	if r.Location != "" {
		h.Set("Location", r.Location)
	}
	if text, ok := r.Body.(plainText); ok {
		h["Content-Type"] = textContentType
		w.WriteHeader(r.Status)
		_, _ = w.Write(text)
		return nil
	}
	writeJSON(w, r.Status, r.Body)
	return nil
}

var textContentType = []string{"text/plain; charset=utf-8"}

// encodeError answers a failed request with {"error", "code"}, its status
// and, for retryable failures, Retry-After. When the request's context is
// done the caller has gone: only the status (499) is recorded for the log and
// nothing is written, unless the edge is shutting down, which cancels waiting
// requests so that they answer 503 (claims are idempotent, retrying is safe).
func (e *Edge) encodeError(ctx context.Context, err error, w http.ResponseWriter) {
	a := classify(err)
	if ctx.Err() != nil {
		if e.draining.Load() {
			a = unavailable("the edge is shutting down; retry")
		} else {
			a = &apiError{Status: statusClientClosedRequest, Code: codeCanceled, Message: "the client closed the request"}
		}
	}
	sw, _ := w.(*statusWriter)
	if sw != nil {
		sw.err = err
	}
	if a.Status == statusClientClosedRequest {
		if sw != nil {
			sw.status = statusClientClosedRequest
		}
		return
	}
	writeError(w, a)
}

func writeError(w http.ResponseWriter, a *apiError) {
	if a.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(a.RetryAfter))
	}
	writeJSON(w, a.Status, errorBody{Error: a.Message, Code: a.Code})
}

var jsonContentType = []string{"application/json"}

// writeJSON writes v as the JSON body with the status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encoding the response: " + err.Error(), Code: string(messages.CodeInternal)})
	}
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
