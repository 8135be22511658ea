package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
)

// Client claims and releases; Source is the claim's source, code is "" on success.
type Client interface {
	Claim(ctx context.Context, tenant, workload string) (source, code string)
	Release(ctx context.Context, tenant, workload string) (code string)
}

// Writer puts data into a claimed instance (the dev node's demo server serves PUT /files).
type Writer interface {
	ClaimWithEndpoint(ctx context.Context, tenant, workload string) (v messages.ClaimView, code string)
	Write(ctx context.Context, v messages.ClaimView, path string, data []byte) (code string)
}

// REST talks to edge.
type REST struct {
	Base string
	HTTP *http.Client
}

// NewREST returns a client with a connection pool sized for load.
func NewREST(base string) *REST {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 2048, 2048
	return &REST{Base: base, HTTP: &http.Client{Transport: t, Timeout: 60 * time.Second}}
}

func (c *REST) post(ctx context.Context, path string, body any) (int, []byte, error) {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Base+path, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

func (c *REST) Claim(ctx context.Context, tenant, workload string) (string, string) {
	v, code := c.ClaimWithEndpoint(ctx, tenant, workload)
	return string(v.Source), code
}

func (c *REST) ClaimWithEndpoint(ctx context.Context, tenant, workload string) (messages.ClaimView, string) {
	var v messages.ClaimView
	status, body, err := c.post(ctx, "/api/v1/tenants/"+url.PathEscape(tenant)+"/claim", map[string]any{"workload": workload})
	if err != nil {
		return v, "transport"
	}
	if status != http.StatusOK && status != http.StatusCreated {
		return v, strconv.Itoa(status)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, "bad-body"
	}
	return v, ""
}

func (c *REST) Write(ctx context.Context, v messages.ClaimView, path string, data []byte) string {
	if v.Endpoint == nil {
		return "no-endpoint"
	}
	u := fmt.Sprintf("http://%s:%d/files%s", v.Endpoint.Host, v.Endpoint.Port, path)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(data))
	if err != nil {
		return "bad-request"
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "transport"
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return "write-" + strconv.Itoa(resp.StatusCode)
	}
	return ""
}

func (c *REST) Release(ctx context.Context, tenant, workload string) string {
	status, _, err := c.post(ctx, "/api/v1/tenants/"+url.PathEscape(tenant)+"/release", map[string]any{"workload": workload})
	if err != nil {
		return "transport"
	}
	if status != http.StatusOK {
		return strconv.Itoa(status)
	}
	return ""
}

// NATS talks to claim-router directly.
type NATS struct {
	claim   bus.Handler[messages.ClaimRequest, messages.ClaimView]
	release bus.Handler[messages.ReleaseRequest, messages.ClaimView]
}

func NewNATS(nc *nats.Conn) *NATS {
	return &NATS{
		claim:   bus.Client[messages.ClaimRequest, messages.ClaimView](nc, messages.SubjectClaimsClaim, 60*time.Second),
		release: bus.Client[messages.ReleaseRequest, messages.ClaimView](nc, messages.SubjectClaimsRelease, 60*time.Second),
	}
}

func (c *NATS) Claim(ctx context.Context, tenant, workload string) (string, string) {
	v, err := c.claim(ctx, messages.ClaimRequest{TenantID: tenant, Workload: workload})
	if err != nil {
		return "", string(messages.CodeOf(err))
	}
	if v.Phase != messages.PhaseActive {
		return "", "phase-" + string(v.Phase)
	}
	return string(v.Source), ""
}

func (c *NATS) Release(ctx context.Context, tenant, workload string) string {
	if _, err := c.release(ctx, messages.ReleaseRequest{TenantID: tenant, Workload: workload}); err != nil {
		return string(messages.CodeOf(err))
	}
	return ""
}
