// Package edge is Boilerhouse's REST API. Claims, releases and tenant reads go
// to the claim-router over NATS (bh.v1.claims.*, bh.v1.tenants.*), one
// request each, through clients built once; workloads and pools are
// BoilerhouseWorkload and BoilerhousePool objects read and written in the
// Kubernetes API. The claim path makes no Kubernetes call.
//
// Layout: service.go holds the decisions (validation, status codes, response
// shapes) and does no I/O; endpoints.go holds the go-kit endpoints and their
// I/O; transport_http.go the HTTP decoding, encoding and routing (ServeMux
// method patterns); middleware.go the security headers, logging, metrics and
// the JSON answers for unknown routes and methods; edge.go New, Run and Serve.
//
// # Routes
//
//	POST   /api/v1/tenants/{id}/claim?wait=   {"workload"|"workloadRef", "resume"?, "requestId"?}
//	         200 existing Active claim, 201 became Active, 202 still Pending (Location: the claim),
//	         phase Error: 404 unknown workload, 503 + Retry-After no capacity, 504 timed out,
//	         502 instance failed (pod failed, image pull); the body is the claim view in all these.
//	         Errors: 400 bad tenant/workload/JSON/wait, 404 not_found, 409 conflict (ReleaseFailed),
//	         429 + Retry-After capacity_exhausted, 503 + Retry-After no claim-router/NATS down,
//	         504 no answer within wait + 3 s.
//	POST   /api/v1/tenants/{id}/release?wait=   {"workload"|"workloadRef", "force"?}
//	         200 Released (or already ended in Error), 202 Releasing when the wait (as for a
//	         claim) ended first, 502 ReleaseFailed (view), 404 no such claim, 400, 503,
//	         504 no answer within wait + 3 s.
//	POST   /api/v1/tenants/{id}/release/retry?wait=  {"workload"|"workloadRef"}  release again a
//	         ReleaseFailed claim (reason retry); answered like release.
//	POST   /api/v1/tenants/{id}/release/force?wait=  {"workload"|"workloadRef"}  release without
//	         saving the overlay (reason force; stored versions kept); answered like release.
//	GET    /api/v1/tenants/{id}/claims/{workload}   200 claim view, 404
//	GET    /api/v1/tenants/{id}               200 {"tenantId","claims":[...]}, 404 when no claims
//	GET    /api/v1/tenants                    200 [{"tenantId","claims"}]
//	GET    /api/v1/stats                      200 {"instances":{"total","byPhase"},"claims":{...}}
//	POST   /api/v1/workloads                  {"name","spec"} 201, 400, 409
//	GET    /api/v1/workloads                  200 [workload]
//	GET    /api/v1/workloads/{name}           200, 404
//	PUT    /api/v1/workloads/{name}           {"spec"} 200 (spec replaced), 400, 404
//	DELETE /api/v1/workloads/{name}           200 {"status":"deleted","name"}, 404
//	POST|GET|PUT|DELETE /api/v1/pools[/{name}]   the same for pools
//	GET    /api/v1/snapshots?tenant=          200 [{"tenantId","workloadRef","path","size","sha256",
//	         "generation","createdAt"}] from the overlay-store (bh.v1.overlays.list);
//	         503 when no overlay-store answers
//	GET    /api/v1/workloads/{name}/snapshots?tenant=   the same for one workload
//	GET    /api/v1/instances                  200 [{"name","phase","tenantId"?,"workloadRef"?,"ip"?,
//	         "labels"?,"createdAt","claimedAt"?}]: Pods labelled boilerhouse.dev/managed=true
//	GET    /api/v1/instances/{id}             200 instance, 404 (also for a Pod that is not managed)
//	GET    /api/v1/instances/{id}/logs?tail=N&container=   200 text/plain (pods/log; container
//	         default main, at most 4 MiB), 400 bad tail or container, 404
//	POST   /api/v1/instances/{id}/exec        {"command":[...],"container"?} 200
//	         {"stdout","stderr","exitCode","truncated"?} whatever the exit code (pods/exec over
//	         SPDY, ExecTimeout, 1 MiB per stream, trailing newlines trimmed), 400 no command,
//	         404, 504 timed out, 502 the exec stream failed
//	POST   /api/v1/instances/{id}/destroy     200 {"status":"destroyed","instance"}: deletes the
//	         Pod (no save, the claim is untouched), 404
//	GET    /api/v1/health, /readyz            200 {"status":"ok","nats":"connected"}, 503 otherwise
//	GET    /healthz                           200 while the process serves (liveness)
//	GET    /metrics                           Prometheus
//
// Every failure has the body {"error": "<message>", "code": "<code>"}: the
// contract's codes (invalid_argument, not_found, conflict,
// capacity_exhausted, unavailable, deadline_exceeded, internal) plus
// method_not_allowed, payload_too_large and unauthenticated. Unknown routes
// are a JSON 404, wrong methods a JSON 405 with Allow. A client mistake is
// never a 500: Kubernetes Invalid/BadRequest become 400 with the API
// server's message, an unreachable API server or NATS 503.
//
// # Decisions
//
//   - ?wait= takes a Go duration or seconds, default 30s, capped (not
//     rejected) at 5m. wait=0 means "answer at once" and is sent as
//     WaitMillis 1, because 0 means "server default" in the contract.
//   - A claim in phase Error is answered with its view, the status chosen by
//     its detail: the failure is the backend's, so 502/503/504 rather than
//     500, and 404 only for an unknown workload. capacity_exhausted *errors*
//     keep the contract's 429, with Retry-After.
//   - Claims are idempotent, so on shutdown the requests still waiting
//     half-way through the drain are answered 503 + Retry-After rather than
//     cut off.
//   - Resource specs are decoded strictly (unknown fields are a 400 naming
//     them); top-level extra fields are ignored so that a GET answer can be
//     sent back in a PUT. A name in a PUT body must match the path.
//   - Workload and pool names follow the workload rule (DNS-1123 label);
//     "exactly one of image.ref and image.dockerfile" is checked here because
//     the CRD schema cannot; the rest is left to the API server's schema.
//   - The instance routes act only on Pods labelled boilerhouse.dev/managed=true:
//     any other Pod of the namespace is a 404, exactly like a missing one.
//     logs and exec need Config.RestConfig (client-go, no kubectl); without it
//     they answer 503.
//   - Config.APIKey enables "Authorization: Bearer" on every /api/v1 route
//     but health; the edge binary refuses to start without one unless
//     -insecure-dev.
package edge
