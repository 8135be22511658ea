package edge

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

// activityRequest is POST /api/v1/tenants/{id}/activity: {"workload"|"workloadRef"}.
type activityRequest struct {
	tenant, workload string
}

func decodeActivity(_ context.Context, r *http.Request) (any, error) {
	tenant, err := pathTenant(r)
	if err != nil {
		return nil, err
	}
	var body claimBody
	if err := readJSON(r, &body); err != nil {
		return nil, err
	}
	w := body.workload()
	if err := messages.ValidateWorkloadName(w); err != nil {
		return nil, err
	}
	return activityRequest{tenant: tenant, workload: w}, nil
}

// activityEndpoint reports that the tenant's claim on the workload is in use
// (idle-reaper pushes its idle deadline back). It is a fire-and-forget
// publish: 202 Accepted with the activity recorded.
func (b *backend) activityEndpoint(_ context.Context, request any) (any, error) {
	req := request.(activityRequest)
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	a := messages.Activity{TenantID: req.tenant, Workload: req.workload, At: time.Now().UTC()}
	if err := b.publishActivity(a); err != nil {
		return nil, messages.Errorf(messages.CodeUnavailable, "publishing activity: %v", err)
	}
	return reply{Status: http.StatusAccepted, Body: a}, nil
}

func (b *backend) publishActivity(a messages.Activity) error {
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return b.nc.Publish(messages.ActivitySubject(a.TenantID, a.Workload), data)
}

// podActivity publishes activity for the claim holding p (exec and logs
// through the edge count as use). Pods not bound to a tenant are skipped.
func (b *backend) podActivity(p *corev1.Pod) {
	tenant, workload := p.Labels[v1alpha1.LabelTenant], p.Labels[v1alpha1.LabelWorkload]
	if tenant == "" || workload == "" || b.nc == nil {
		return
	}
	_ = b.publishActivity(messages.Activity{TenantID: tenant, Workload: workload, At: time.Now().UTC()})
}
