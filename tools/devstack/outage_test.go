package devstack_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/naming"
	"boilerhouse.dev/services/claimrouter"
)

// TestAPIServerOutage freezes kube-apiserver (it accepts connections and answers nothing) for
// longer than the edge's request timeout. Meanwhile pool claims and existing claims are
// answered as usual, since nothing on their path writes to Kubernetes; a claim that needs a
// cold boot, a release and a workload read wait or fail with a typed error, and none of them is
// lost: once the API server is back the cold claim goes Active, the release ends Released, the
// tenant labels and claim objects catch up and the pool refills.
func TestAPIServerOutage(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.crsync()
	s.workload("steady", 3)
	s.poolReady("steady", 3)

	resume, err := plane.PauseAPIServer()
	if err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	resumeOnce := sync.OnceFunc(func() {
		if err := resume(); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(resumeOnce) // the control plane serves the package's other tests

	// A workload read: a typed error once the edge's request timeout (10 s) passes.
	read := make(chan error, 1)
	go func() {
		resp, err := http.Get(s.rest + "/api/v1/workloads")
		if err != nil {
			read <- err
			return
		}
		defer resp.Body.Close()
		var body struct{ Code string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != http.StatusGatewayTimeout && resp.StatusCode != http.StatusServiceUnavailable || body.Code == "" {
			read <- fmt.Errorf("answered %d, code %q; want 503 or 504 with a code", resp.StatusCode, body.Code)
			return
		}
		read <- nil
	}()

	// The pool's three Pods serve three tenants; each claims again and gets the same.
	views := map[string]messages.ClaimView{}
	for i := range 3 {
		tenant := fmt.Sprintf("calm-%d", i)
		code, v := s.restClaim(tenant, "steady")
		if code != http.StatusCreated || v.Source != messages.SourcePool {
			t.Fatalf("%s during the outage: %d %+v, want 201 from the pool", tenant, code, v)
		}
		if code, again := s.restClaim(tenant, "steady"); code != http.StatusOK || again.InstanceID != v.InstanceID {
			t.Fatalf("%s again: %d %+v, want 200 existing %s", tenant, code, again, v.InstanceID)
		}
		if status, _, err := httpGet(endpointURL(v, "/")); err != nil || status != http.StatusOK {
			t.Fatalf("%s's endpoint: %d %v", tenant, status, err)
		}
		views[tenant] = v
	}
	// The pool is empty and nothing can be created: Pending, not an error.
	var cold messages.ClaimView
	if code := postJSON(t, s.rest+"/api/v1/tenants/late/claim?wait=2s", `{"workload":"steady"}`, &cold); code != http.StatusAccepted || cold.Phase != messages.PhasePending {
		t.Fatalf("cold claim during the outage: %d %+v, want 202 Pending", code, cold)
	}
	// Releasing destroys a Pod: Releasing until the API server answers.
	var rel messages.ClaimView
	if code := postJSON(t, s.rest+"/api/v1/tenants/calm-0/release?wait=2s", `{"workload":"steady"}`, &rel); code != http.StatusAccepted || rel.Phase != messages.PhaseReleasing {
		t.Fatalf("release during the outage: %d %+v, want 202 Releasing", code, rel)
	}
	if err := <-read; err != nil {
		t.Errorf("workload read during the outage: %v", err)
	}
	resumeOnce()
	t.Logf("API server frozen for %s", time.Since(paused).Round(100*time.Millisecond))

	// Nothing was lost.
	eventually(t, "the cold claim Active", time.Minute, func() bool {
		return s.record("late", "steady").Phase == messages.PhaseActive
	})
	eventually(t, "the release Released", time.Minute, func() bool {
		return s.record("calm-0", "steady").Phase == messages.PhaseReleased
	})
	for tenant, v := range views {
		if tenant == "calm-0" {
			continue
		}
		eventually(t, tenant+"'s Pod labelled and its claim object Active", time.Minute, func() bool {
			var p corev1.Pod
			if err := s.client.Get(s.ctx, client.ObjectKey{Namespace: ns, Name: v.InstanceID}, &p); err != nil || p.Labels[v1alpha1.LabelTenant] != tenant {
				return false
			}
			c, ok := s.bhc(naming.ClaimName(tenant, "steady"))
			return ok && c.Status.Phase == v1alpha1.ClaimActive && c.Status.InstanceID == v.InstanceID
		})
	}
	s.poolReady("steady", 3)
}
