package devstack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/naming"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/services/claimrouter"
	"boilerhouse.dev/services/crsync"
)

// crsync starts a cr-sync on its own connection, its Config changed by tune; the returned
// function stops it.
func (s *system) crsync(tune ...func(*crsync.Config)) (stop func()) {
	s.t.Helper()
	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		s.t.Fatal(err)
	}
	cfg := crsync.Config{RestConfig: plane.Config, NATS: nc, Namespace: ns, ResyncInterval: 5 * time.Second}
	for _, f := range tune {
		f(&cfg)
	}
	cs, err := crsync.New(cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := cs.Run(ctx); err != nil && ctx.Err() == nil {
			s.t.Errorf("cr-sync: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; nc.Close() }) }
	s.t.Cleanup(stop)
	select {
	case <-cs.Ready():
	case <-time.After(time.Minute):
		s.t.Fatal("cr-sync not ready")
	}
	return stop
}

// freeAddr is a loopback address with a port that was free a moment ago, for a listener that
// the code under test opens itself.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestCRSyncHealth: the health listener answers /healthz, and /readyz while NATS is connected.
func TestCRSyncHealth(t *testing.T) {
	s := startSystem(t)
	addr := freeAddr(t)
	s.crsync(func(c *crsync.Config) { c.HealthAddr = addr })
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", path, resp.StatusCode)
		}
	}
	s.nats.Stop()
	eventually(t, "/readyz failing without NATS", 10*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusInternalServerError
	})
}

// TestCRSyncWorkers: Config.Workers is how many pairs the controller reconciles at once, as its
// metrics report it.
func TestCRSyncWorkers(t *testing.T) {
	s := startSystem(t)
	addr := freeAddr(t)
	s.crsync(func(c *crsync.Config) { c.MetricsAddr, c.Workers = addr, 3 })
	const want = `controller_runtime_max_concurrent_reconciles{controller="cr-sync"} 3`
	var body string
	eventually(t, "the cr-sync controller's metrics", 10*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		return err == nil && strings.Contains(body, "controller_runtime_max_concurrent_reconciles")
	})
	if !strings.Contains(body, want) {
		t.Fatalf("metrics lack %q", want)
	}
}

// TestCRSyncConvergesAfterDowntime: claims and releases made over REST while cr-sync is down
// show up on the objects once it runs again.
func TestCRSyncConvergesAfterDowntime(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.workload("down", 3)
	s.poolReady("down", 3)
	stop := s.crsync()
	if code, _ := s.restClaim("uma", "down"); code != 201 {
		t.Fatalf("claim uma: %d", code)
	}
	s.waitPhase(t, naming.ClaimName("uma", "down"), v1alpha1.ClaimActive)
	stop()

	var rel messages.ClaimView
	if code := postJSON(t, s.rest+"/api/v1/tenants/uma/release", `{"workload":"down"}`, &rel); code != 200 {
		t.Fatalf("release uma: %d %+v", code, rel)
	}
	if code, _ := s.restClaim("vic", "down"); code != 201 {
		t.Fatalf("claim vic: %d", code)
	}
	if c, ok := s.bhc(naming.ClaimName("uma", "down")); !ok || c.Status.Phase != v1alpha1.ClaimActive {
		t.Fatalf("uma's object changed while cr-sync was down: %+v", c)
	}
	s.crsync()
	s.waitPhase(t, naming.ClaimName("uma", "down"), v1alpha1.ClaimReleased)
	if c := s.waitPhase(t, naming.ClaimName("vic", "down"), v1alpha1.ClaimActive); c.Status.Endpoint == nil {
		t.Fatalf("vic's object without endpoint: %+v", c.Status)
	}
}

var crsyncRestartRuns atomic.Int32

// TestCRSyncFollowsAcrossNATSRestart: after the NATS server restarts, cr-sync sees claims made
// since at once (its watch of the claims bucket is started again on the reconnect), not at the
// next resync pass, which is out of reach here, nor after nats.go notices the lost watch.
func TestCRSyncFollowsAcrossNATSRestart(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	wl := fmt.Sprintf("renats-%d", crsyncRestartRuns.Add(1)) // the control plane outlives a test
	s.workload(wl, 2)
	s.poolReady(wl, 2)
	s.crsync(func(c *crsync.Config) { c.ResyncInterval = time.Hour })
	if code, _ := s.restClaim("wes", wl); code != 201 {
		t.Fatalf("claim wes: %d", code)
	}
	s.waitPhase(t, naming.ClaimName("wes", wl), v1alpha1.ClaimActive)

	s.nats.Stop()
	time.Sleep(time.Second)
	s.nats.Restart()
	var code int
	eventually(t, "claim xia after the restart", 30*time.Second, func() bool {
		code, _ = s.restClaim("xia", wl)
		return code == 201
	})
	answered := time.Now()
	eventually(t, "xia's object Active", 5*time.Second, func() bool {
		c, ok := s.bhc(naming.ClaimName("xia", wl))
		return ok && c.Status.Phase == v1alpha1.ClaimActive
	})
	t.Logf("xia's object Active %s after the claim's answer", time.Since(answered).Round(time.Millisecond))
}

func (s *system) bhc(name string) (*v1alpha1.BoilerhouseClaim, bool) {
	var c v1alpha1.BoilerhouseClaim
	err := s.client.Get(s.ctx, client.ObjectKey{Namespace: ns, Name: name}, &c)
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		s.t.Fatalf("claim %s: %v", name, err)
	}
	return &c, true
}

func (s *system) waitPhase(t *testing.T, name string, phase v1alpha1.ClaimPhase) *v1alpha1.BoilerhouseClaim {
	t.Helper()
	var c *v1alpha1.BoilerhouseClaim
	eventually(t, "claim "+name+" "+string(phase), time.Minute, func() bool {
		var ok bool
		c, ok = s.bhc(name)
		return ok && c.Status.Phase == phase
	})
	return c
}

func (s *system) kvRecord(t *testing.T, tenant, workload string) *messages.ClaimRecord {
	t.Helper()
	e, err := s.kv.Get(s.ctx, messages.ClaimKey(tenant, workload))
	if err == jetstream.ErrKeyNotFound {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var rec messages.ClaimRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	return &rec
}

func newBHC(name, tenant, workload string) *v1alpha1.BoilerhouseClaim {
	return &v1alpha1.BoilerhouseClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.ClaimSpec{TenantID: tenant, WorkloadRef: workload}}
}

// TestCRSync runs cr-sync in the integration harness: claims made with kubectl-style client
// Creates, over REST, duplicates, and the real kubectl.
func TestCRSync(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.workload("crs", 3)
	s.poolReady("crs", 3)
	// A claim made before cr-sync runs gets its object at start.
	if code, v := s.restClaim("sam", "crs"); code != 201 || v.Phase != messages.PhaseActive {
		t.Fatalf("early claim: %d %+v", code, v)
	}
	s.crsync()
	if c := s.waitPhase(t, naming.ClaimName("sam", "crs"), v1alpha1.ClaimActive); c.Spec.TenantID != "sam" {
		t.Fatalf("object for sam: %+v", c.Spec)
	}

	t.Run("CreateClaimsDeleteReleases", func(t *testing.T) {
		if err := s.client.Create(s.ctx, newBHC("kate-crs", "kate", "crs")); err != nil {
			t.Fatal(err)
		}
		c := s.waitPhase(t, "kate-crs", v1alpha1.ClaimActive)
		if c.Status.Endpoint == nil || c.Status.Endpoint.Host == "" || c.Status.InstanceID == "" {
			t.Fatalf("Active without endpoint: %+v", c.Status)
		}
		if rec := s.kvRecord(t, "kate", "crs"); rec == nil || rec.Phase != messages.PhaseActive || rec.InstanceID != c.Status.InstanceID {
			t.Fatalf("record %+v does not match status %+v", rec, c.Status)
		}
		eventually(t, "Events on the claim", 10*time.Second, func() bool {
			var evs eventsv1.EventList
			if err := s.client.List(s.ctx, &evs, client.InNamespace(ns)); err != nil {
				return false
			}
			for _, e := range evs.Items {
				if e.Regarding.Name == "kate-crs" && e.Reason == string(v1alpha1.ClaimActive) {
					return true
				}
			}
			return false
		})
		if err := s.client.Delete(s.ctx, c); err != nil {
			t.Fatal(err)
		}
		// While the object lives, the release has not finished; once it is gone, it has.
		eventually(t, "claim object gone", time.Minute, func() bool {
			_, ok := s.bhc("kate-crs")
			if ok {
				return false
			}
			rec := s.kvRecord(t, "kate", "crs")
			if rec == nil || rec.Phase != messages.PhaseReleased || rec.ReleaseReason != messages.ReasonClaimDeleted {
				t.Fatalf("object gone before the release: record %+v", rec)
			}
			return true
		})
		eventually(t, "kate's Pod deleted", 30*time.Second, func() bool {
			var p corev1.Pod
			err := s.client.Get(s.ctx, client.ObjectKey{Namespace: ns, Name: c.Status.InstanceID}, &p)
			return apierrors.IsNotFound(err) || p.DeletionTimestamp != nil
		})
	})

	t.Run("RESTClaimGetsObject", func(t *testing.T) {
		code, v := s.restClaim("rita", "crs")
		if code != 201 || v.Phase != messages.PhaseActive {
			t.Fatalf("REST claim: %d %+v", code, v)
		}
		name := naming.ClaimName("rita", "crs")
		c := s.waitPhase(t, name, v1alpha1.ClaimActive)
		if c.Status.InstanceID != v.InstanceID || c.Labels[v1alpha1.LabelTenant] != "rita" || c.Labels[v1alpha1.LabelWorkload] != "crs" {
			t.Fatalf("object %s: labels %v status %+v, want instance %s", name, c.Labels, c.Status, v.InstanceID)
		}
		eventually(t, "an Event saying the object mirrors an API claim", 10*time.Second, func() bool {
			var evs eventsv1.EventList
			if err := s.client.List(s.ctx, &evs, client.InNamespace(ns)); err != nil {
				return false
			}
			for _, e := range evs.Items {
				if e.Regarding.Name == name && strings.HasPrefix(e.Note, "created for a claim made over the API: ") {
					return true
				}
			}
			return false
		})
		var rel messages.ClaimView
		if code := postJSON(t, s.rest+"/api/v1/tenants/rita/release", `{"workload":"crs"}`, &rel); code != 200 || rel.Phase != messages.PhaseReleased {
			t.Fatalf("release: %d %+v", code, rel)
		}
		s.waitPhase(t, name, v1alpha1.ClaimReleased)
		// A later claim of the pair reuses the object.
		if code, v = s.restClaim("rita", "crs"); code != 201 {
			t.Fatalf("claim again: %d %+v", code, v)
		}
		eventually(t, "object follows the new claim", 30*time.Second, func() bool {
			c, ok := s.bhc(name)
			return ok && c.Status.Phase == v1alpha1.ClaimActive && c.Status.InstanceID == v.InstanceID
		})
	})

	t.Run("SecondObjectForPairIsError", func(t *testing.T) {
		if err := s.client.Create(s.ctx, newBHC("dora-one", "dora", "crs")); err != nil {
			t.Fatal(err)
		}
		first := s.waitPhase(t, "dora-one", v1alpha1.ClaimActive)
		if err := s.client.Create(s.ctx, newBHC("dora-two", "dora", "crs")); err != nil {
			t.Fatal(err)
		}
		second := s.waitPhase(t, "dora-two", v1alpha1.ClaimError)
		if !strings.Contains(second.Status.Detail, "dora-one") {
			t.Errorf("detail %q does not name the acting claim", second.Status.Detail)
		}
		time.Sleep(time.Second)
		c, _ := s.bhc("dora-one")
		if c.Status.Phase != v1alpha1.ClaimActive || c.Status.InstanceID != first.Status.InstanceID {
			t.Fatalf("first claim changed: %+v", c.Status)
		}
		if p := s.pod(first.Status.InstanceID); p.DeletionTimestamp != nil {
			t.Fatalf("first claim's Pod is being deleted")
		}
		// Deleting the duplicate releases nothing.
		if err := s.client.Delete(s.ctx, second); err != nil {
			t.Fatal(err)
		}
		eventually(t, "duplicate gone", 30*time.Second, func() bool { _, ok := s.bhc("dora-two"); return !ok })
		if rec := s.kvRecord(t, "dora", "crs"); rec == nil || rec.Phase != messages.PhaseActive {
			t.Fatalf("deleting the duplicate touched the claim: %+v", rec)
		}
	})

	t.Run("Kubectl", func(t *testing.T) {
		kubectl := func(args ...string) string {
			t.Helper()
			cmd := exec.Command(plane.Kubectl(), append([]string{"--kubeconfig", plane.Kubeconfig, "-n", ns}, args...)...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("kubectl %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		manifest := filepath.Join(t.TempDir(), "claim.yaml")
		if err := os.WriteFile(manifest, []byte(`apiVersion: boilerhouse.dev/v1alpha1
kind: BoilerhouseClaim
metadata:
  name: ken-crs
spec:
  tenantId: ken
  workloadRef: crs
`), 0o644); err != nil {
			t.Fatal(err)
		}
		kubectl("apply", "-f", manifest)
		kubectl("wait", "--for=jsonpath={.status.phase}=Active", "--timeout=60s", "bhc/ken-crs")
		if out := kubectl("get", "bhc", "ken-crs"); !strings.Contains(out, "Active") || !strings.Contains(out, "ken") {
			t.Errorf("kubectl get: %s", out)
		}
		kubectl("delete", "bhc", "ken-crs", "--timeout=60s")
		if rec := s.kvRecord(t, "ken", "crs"); rec == nil || rec.Phase != messages.PhaseReleased {
			t.Fatalf("kubectl delete returned before the release: %+v", rec)
		}
	})

	t.Run("AntiEntropy", func(t *testing.T) {
		name := naming.ClaimName("sam", "crs")
		c, _ := s.bhc(name)
		instance := c.Status.InstanceID
		// A stale status is put right.
		c.Status.Phase, c.Status.Detail = v1alpha1.ClaimPending, "tampered"
		if err := s.client.Status().Update(s.ctx, c); err != nil {
			t.Fatal(err)
		}
		s.waitPhase(t, name, v1alpha1.ClaimActive)
		// A record that vanishes under a live claim marks the object; nothing is released.
		if err := s.kv.Delete(s.ctx, messages.ClaimKey("sam", "crs")); err != nil {
			t.Fatal(err)
		}
		c = s.waitPhase(t, name, v1alpha1.ClaimError)
		if !strings.Contains(c.Status.Detail, "vanished") {
			t.Errorf("detail %q", c.Status.Detail)
		}
		time.Sleep(time.Second)
		if p := s.pod(instance); p.DeletionTimestamp != nil {
			t.Fatal("cr-sync released a claim the tenant did not release")
		}
	})
}

// TestCRSyncReleaseFailedKeepsObject: a deleted claim whose release fails stays, its status
// saying why, until a force release ends the claim.
func TestCRSyncReleaseFailedKeepsObject(t *testing.T) {
	s := startSystem(t)
	s.router(claimrouter.Config{ExtractBackoff: []time.Duration{}})
	killStore := s.store(t.TempDir())
	s.crsync()
	s.workload("crf", 1, "/data")
	s.poolReady("crf", 1)
	if err := s.client.Create(s.ctx, newBHC("fay-crf", "fay", "crf")); err != nil {
		t.Fatal(err)
	}
	c := s.waitPhase(t, "fay-crf", v1alpha1.ClaimActive)
	killStore() // the overlay cannot be saved: the release fails
	if err := s.client.Delete(s.ctx, c); err != nil {
		t.Fatal(err)
	}
	c = s.waitPhase(t, "fay-crf", v1alpha1.ClaimReleaseFailed)
	if c.DeletionTimestamp == nil || c.Status.Detail == "" {
		t.Fatalf("ReleaseFailed object: deletion %v detail %q", c.DeletionTimestamp, c.Status.Detail)
	}
	time.Sleep(2 * time.Second)
	if c, ok := s.bhc("fay-crf"); !ok || c.Status.Phase != v1alpha1.ClaimReleaseFailed {
		t.Fatalf("object let go while the release failed: %v %+v", ok, c)
	}
	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rel := bus.Client[messages.ReleaseRequest, messages.ClaimView](nc, messages.SubjectClaimsRelease, time.Minute)
	if v, err := rel(s.ctx, messages.ReleaseRequest{TenantID: "fay", Workload: "crf", Force: true}); err != nil || v.Phase != messages.PhaseReleased {
		t.Fatalf("force release: %+v %v", v, err)
	}
	eventually(t, "object gone after the force release", 30*time.Second, func() bool { _, ok := s.bhc("fay-crf"); return !ok })
}

// TestCRSyncRetriesLostClaimRequest: an object created with kubectl for a pair whose last claim
// was Released, while no claim-router answers, still gets its claim once one does. (The old
// record is terminal; cr-sync must not take it for the object's answer.)
func TestCRSyncRetriesLostClaimRequest(t *testing.T) {
	s := startSystem(t)
	killRouter := s.router(claimrouter.Config{})
	s.crsync()
	s.workload("crl", 2)
	s.poolReady("crl", 2)
	// A first life, through an object that is deleted again: the record ends Released.
	if err := s.client.Create(s.ctx, newBHC("uma-crl", "uma", "crl")); err != nil {
		t.Fatal(err)
	}
	c := s.waitPhase(t, "uma-crl", v1alpha1.ClaimActive)
	if err := s.client.Delete(s.ctx, c); err != nil {
		t.Fatal(err)
	}
	eventually(t, "first object gone", 30*time.Second, func() bool { _, ok := s.bhc("uma-crl"); return !ok })

	killRouter()
	if err := s.client.Create(s.ctx, newBHC("uma-crl", "uma", "crl")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cr-sync acting on the object", 10*time.Second, func() bool {
		c, ok := s.bhc("uma-crl")
		return ok && c.Status.Phase != ""
	})
	time.Sleep(6 * time.Second) // a resync pass (5 s) while the request has no answer
	s.router(claimrouter.Config{})
	c = s.waitPhase(t, "uma-crl", v1alpha1.ClaimActive)
	if rec := s.kvRecord(t, "uma", "crl"); rec == nil || rec.Phase != messages.PhaseActive || rec.InstanceID != c.Status.InstanceID {
		t.Fatalf("record %+v, object %+v", rec, c.Status)
	}
}
