package poolmanager

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/translate"
	"boilerhouse.dev/tools/devnode"
)

const testNamespace = "boilerhouse"

// Shared by every test of the package: one real API server, one embedded NATS server, one dev
// node and one pool-manager replica.
var (
	plane *localkube.Plane
	srv   *server.Server
	nc    *nats.Conn
	kv    jetstream.KeyValue
	pm    *Manager

	acquire = func(ctx context.Context, req messages.AcquireRequest) (messages.Instance, error) {
		return bus.Client[messages.AcquireRequest, messages.Instance](nc, messages.SubjectPoolAcquire, 10*time.Second)(ctx, req)
	}
	boot = func(ctx context.Context, req messages.BootRequest) (messages.Instance, error) {
		return bus.Client[messages.BootRequest, messages.Instance](nc, messages.SubjectInstancesBoot, 40*time.Second)(ctx, req)
	}
	retire = func(ctx context.Context, req messages.RetireRequest) (messages.RetireReply, error) {
		return bus.Client[messages.RetireRequest, messages.RetireReply](nc, messages.SubjectInstancesRetire, 10*time.Second)(ctx, req)
	}
)

// testRestoreGrace is the shared replica's RestoreRepeatGrace.
const testRestoreGrace = 2 * time.Second

// testIPRange keeps this package's Pod IPs apart from other test packages running at once.
var testIPRange = devnode.IPRange{
	First: netip.MustParseAddr("127.77.0.1"),
	Last:  netip.MustParseAddr("127.77.255.254"),
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("POOLMANAGER_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func runTests(m *testing.M) int {
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "poolmanager tests: %s: %v\n", what, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	p, err := localkube.Start(ctx, localkube.Options{Namespaces: []string{testNamespace}})
	cancel()
	if err != nil {
		return fail("control plane", err)
	}
	plane = p
	defer func() {
		if err := p.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "poolmanager tests: stopping control plane:", err)
		}
	}()

	dir, err := os.MkdirTemp("", "poolmanager-nats-")
	if err != nil {
		return fail("temp dir", err)
	}
	defer os.RemoveAll(dir)
	srv, err = natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: dir})
	if err != nil {
		return fail("NATS", err)
	}
	defer natsx.Shutdown(srv)
	nc, err = natsx.ConnectInProcess(srv, nats.Name("poolmanager-test"))
	if err != nil {
		return fail("NATS connect", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail("JetStream", err)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	if err := natsx.Provision(pctx, js, natsx.ProvisionConfig{}); err != nil {
		return fail("provision", err)
	}
	if kv, err = js.KeyValue(pctx, messages.BucketInstances); err != nil {
		return fail("KV", err)
	}

	node, err := devnode.New(devnode.Config{RestConfig: p.Config, IPRange: testIPRange, Logger: testLogger()})
	if err != nil {
		return fail("dev node", err)
	}
	nodeCtx, stopNode := context.WithCancel(context.Background())
	nodeDone := make(chan error, 1)
	go func() { nodeDone <- node.Run(nodeCtx) }()
	defer func() {
		stopNode()
		if err := <-nodeDone; err != nil {
			fmt.Fprintln(os.Stderr, "poolmanager tests: dev node:", err)
		}
	}()

	pm, err = New(Config{RestConfig: p.Config, NATS: nc, Namespace: testNamespace, Logger: testLogger(),
		ReplicaID: "test-replica", BootTimeout: 20 * time.Second, RestoreRepeatGrace: testRestoreGrace,
		// The tests acquire without claim records: TestOrphanSweep runs the sweep itself.
		OrphanSweep: 24 * time.Hour})
	if err != nil {
		return fail("pool-manager", err)
	}
	pmCtx, stopPM := context.WithCancel(context.Background())
	pmDone := make(chan error, 1)
	go func() { pmDone <- pm.Run(pmCtx) }()
	defer func() {
		stopPM()
		if err := <-pmDone; err != nil {
			fmt.Fprintln(os.Stderr, "poolmanager tests: pool-manager:", err)
		}
	}()
	select {
	case <-pm.Ready():
	case err := <-pmDone:
		pmDone <- err
		return fail("pool-manager run", err)
	case <-time.After(time.Minute):
		return fail("pool-manager", fmt.Errorf("not ready within a minute"))
	}
	return m.Run()
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 25ms until it holds, failing the test after timeout with the last
// explanation cond gave.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// workloadSpec serves port 8080 with an HTTP readiness probe on /health every second.
func workloadSpec() v1alpha1.WorkloadSpec {
	return v1alpha1.WorkloadSpec{
		Version:   "1",
		Image:     v1alpha1.ImageSpec{Ref: "boilerhouse/echo:dev"},
		Resources: v1alpha1.ResourcesSpec{VCPUs: 1, MemoryMb: 64},
		Network:   &v1alpha1.NetworkSpec{Expose: []v1alpha1.ExposeSpec{{Guest: 8080}}},
		Health: &v1alpha1.HealthSpec{IntervalSeconds: 1, UnhealthyThreshold: 2,
			HTTPGet: &v1alpha1.HTTPGetHealth{Path: "/health", Port: 8080}},
		Filesystem: &v1alpha1.FilesystemSpec{OverlayDirs: []string{"/data"}},
	}
}

// failing makes every Pod of the workload fail (dev node behavior) without ever being Ready
// (its probe targets a port nobody serves).
func failing(w *v1alpha1.BoilerhouseWorkload) {
	w.Annotations = map[string]string{translate.AnnotationPodAnnotations: `{"` + devnode.BehaviorAnnotation + `":"` + devnode.BehaviorFail + `"}`}
	w.Spec.Health.HTTPGet.Port = 9999
}

func createWorkload(t *testing.T, name string, mutate func(*v1alpha1.BoilerhouseWorkload)) *v1alpha1.BoilerhouseWorkload {
	t.Helper()
	w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}, Spec: workloadSpec()}
	if mutate != nil {
		mutate(w)
	}
	if err := plane.Client.Create(context.Background(), w); err != nil {
		t.Fatalf("create workload %s: %v", name, err)
	}
	t.Cleanup(func() { _ = plane.Client.Delete(context.Background(), w) })
	return w
}

func createPool(t *testing.T, name, workload string, size int32, fill *int32) *v1alpha1.BoilerhousePool {
	t.Helper()
	p := &v1alpha1.BoilerhousePool{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
		Spec: v1alpha1.PoolSpec{WorkloadRef: workload, Size: size, MaxFillConcurrency: fill}}
	if err := plane.Client.Create(context.Background(), p); err != nil {
		t.Fatalf("create pool %s: %v", name, err)
	}
	t.Cleanup(func() { _ = plane.Client.Delete(context.Background(), p) })
	return p
}

func getPool(t *testing.T, name string) *v1alpha1.BoilerhousePool {
	t.Helper()
	var p v1alpha1.BoilerhousePool
	if err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: testNamespace, Name: name}, &p); err != nil {
		t.Fatalf("get pool %s: %v", name, err)
	}
	return &p
}

// listPods lists the Pods (from the API server, not a cache) matching the labels.
func listPods(t *testing.T, labels map[string]string) []corev1.Pod {
	t.Helper()
	var list corev1.PodList
	if err := plane.Client.List(context.Background(), &list, client.InNamespace(testNamespace), client.MatchingLabels(labels)); err != nil {
		t.Fatalf("list pods: %v", err)
	}
	return list.Items
}

func getPod(t *testing.T, name string) (*corev1.Pod, bool) {
	t.Helper()
	var p corev1.Pod
	err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: testNamespace, Name: name}, &p)
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("get pod %s: %v", name, err)
	}
	return &p, true
}

// unheldPoolPods are the live Pods of a pool that no tenant holds: what counts toward its size.
func unheldPoolPods(t *testing.T, pool string) (ready, warming []string) {
	t.Helper()
	for _, p := range listPods(t, map[string]string{v1alpha1.LabelPool: pool}) {
		if p.DeletionTimestamp != nil || PodFinished(&p) || p.Labels[v1alpha1.LabelTenant] != "" {
			continue
		}
		if _, err := kv.Get(context.Background(), p.Name); err == nil {
			continue
		}
		if PodReady(&p) {
			ready = append(ready, p.Name)
		} else {
			warming = append(warming, p.Name)
		}
	}
	return ready, warming
}

// waitPoolFull waits until the pool reports size ready Pods, Healthy, and the API server agrees.
func waitPoolFull(t *testing.T, pool string, size int) {
	t.Helper()
	waitFor(t, 60*time.Second, fmt.Sprintf("pool %s full with %d ready", pool, size), func() (bool, string) {
		p := getPool(t, pool)
		ready, warming := unheldPoolPods(t, pool)
		st := p.Status
		c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
		ok := int(st.Ready) == size && st.Warming == 0 && st.Phase == v1alpha1.PoolHealthy && len(ready) == size && len(warming) == 0 &&
			c != nil && c.Status == metav1.ConditionTrue && c.Reason == string(v1alpha1.PoolHealthy) && c.ObservedGeneration == p.Generation
		return ok, fmt.Sprintf("status %+v, api ready %d warming %d", st, len(ready), len(warming))
	})
}

var httpClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}

// checkEndpoint checks that an instance endpoint is a loopback Pod IP whose port answers HTTP.
func checkEndpoint(t *testing.T, ep *messages.Endpoint) {
	t.Helper()
	if ep == nil {
		t.Fatal("no endpoint")
	}
	a, err := netip.ParseAddr(ep.Host)
	if err != nil || !a.IsLoopback() {
		t.Fatalf("endpoint host %q is not a loopback address", ep.Host)
	}
	if ep.Port != 8080 {
		t.Fatalf("endpoint port = %d, want 8080", ep.Port)
	}
	resp, err := httpClient.Get("http://" + net.JoinHostPort(ep.Host, strconv.Itoa(int(ep.Port))) + "/health")
	if err != nil {
		t.Fatalf("GET endpoint: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET endpoint /health: status %d", resp.StatusCode)
	}
}

func envJSON(raw string) *apiextensionsv1.JSON { return &apiextensionsv1.JSON{Raw: []byte(raw)} }

// holdRefills makes the Pods created from now on for the workload never Ready (dev node
// never-ready behavior), so that a race of acquirers against the pool's refill has exactly as
// many winners as the pool had Ready Pods. It returns once pool-manager's cache has the change.
func holdRefills(t *testing.T, workload string) {
	t.Helper()
	setPodAnnotations(t, workload, `{"`+devnode.BehaviorAnnotation+`":"`+devnode.BehaviorNeverReady+`"}`)
}

// releaseRefills undoes holdRefills for the workload and for the Pods created meanwhile.
func releaseRefills(t *testing.T, workload string) {
	t.Helper()
	setPodAnnotations(t, workload, "")
	unset := []byte(`{"metadata":{"annotations":{"` + devnode.BehaviorAnnotation + `":null}}}`)
	for _, p := range listPods(t, map[string]string{v1alpha1.LabelWorkload: workload}) {
		if _, ok := p.Annotations[devnode.BehaviorAnnotation]; ok {
			if err := plane.Client.Patch(context.Background(), &p, client.RawPatch(types.MergePatchType, unset)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func setPodAnnotations(t *testing.T, workload, value string) {
	t.Helper()
	var w v1alpha1.BoilerhouseWorkload
	key := client.ObjectKey{Namespace: testNamespace, Name: workload}
	if err := plane.Client.Get(context.Background(), key, &w); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(w.DeepCopy())
	if value == "" {
		delete(w.Annotations, translate.AnnotationPodAnnotations)
	} else {
		if w.Annotations == nil {
			w.Annotations = map[string]string{}
		}
		w.Annotations[translate.AnnotationPodAnnotations] = value
	}
	if err := plane.Client.Patch(context.Background(), &w, patch); err != nil {
		t.Fatal(err)
	}
	rv := w.ResourceVersion
	waitFor(t, 10*time.Second, "pool-manager cache has workload "+workload+" at "+rv, func() (bool, string) {
		var cached v1alpha1.BoilerhouseWorkload
		if err := pm.client.Get(context.Background(), key, &cached); err != nil {
			return false, err.Error()
		}
		return cached.ResourceVersion == rv, cached.ResourceVersion
	})
}
