package devnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/localkube"
)

// plane is the real etcd + kube-apiserver all tests of this package share.
var plane *localkube.Plane

// noPlaneEnv makes TestMain run without a control plane: TestSandboxUnprivileged re-runs this
// binary so, as another user, for TestSandboxDirect only.
const noPlaneEnv = "DEVNODE_TEST_NO_PLANE"

func TestMain(m *testing.M) {
	if os.Getenv(noPlaneEnv) != "" {
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	p, err := localkube.Start(ctx, localkube.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "devnode tests:", err)
		os.Exit(1)
	}
	plane = p
	code := m.Run()
	if err := p.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "devnode tests: stopping control plane:", err)
	}
	os.Exit(code)
}

// testLogger logs warnings (everything with DEVNODE_LOG=debug) to stderr.
func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("DEVNODE_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// runningNode is a Node running in the background for one test.
type runningNode struct {
	*Node
	cancel context.CancelFunc
	done   chan error
}

// stop cancels Run and returns its error once it has returned. Idempotent.
func (r *runningNode) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
			return err
		}
		return nil
	case <-time.After(30 * time.Second):
		t.Fatal("Node.Run did not return within 30s of cancel")
		return nil
	}
}

func startNode(t *testing.T, cfg Config) *runningNode {
	t.Helper()
	cfg.RestConfig = plane.Config
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningNode{Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- n.Run(ctx) }()
	t.Cleanup(func() {
		if err := r.stop(t); err != nil {
			t.Errorf("Node.Run: %v", err)
		}
	})
	return r
}

var (
	uniqMu   sync.Mutex
	uniqUsed = map[string]int{}
)

// uniq returns name the first time and name-N after, so tests can run with -count>1 against
// the one control plane.
func uniq(name string) string {
	uniqMu.Lock()
	defer uniqMu.Unlock()
	uniqUsed[name]++
	if n := uniqUsed[name]; n > 1 {
		return fmt.Sprintf("%s-%d", name, n)
	}
	return name
}

// newNamespace creates a namespace named after name (see uniq) and returns its name.
func newNamespace(t *testing.T, name string) string {
	t.Helper()
	name = uniq(name)
	err := plane.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// demoPod is an unscheduled Pod with one container serving port 8080 and an HTTP readiness
// probe on /health, probed every second.
func demoPod(ns, name, tenant string, mods ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{v1alpha1.LabelWorkload: "echo", v1alpha1.LabelTenant: tenant},
		},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  "main",
				Image: "boilerhouse/echo:dev",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/health", Port: intstr.FromInt32(8080),
					}},
					PeriodSeconds:    1,
					FailureThreshold: 2,
				},
			}},
		},
	}
	for _, m := range mods {
		m(p)
	}
	return p
}

func withBehavior(b string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Annotations = map[string]string{BehaviorAnnotation: b} }
}

func createPod(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if err := plane.Client.Create(context.Background(), p); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
}

func getPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{}
	if err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, p); err != nil {
		t.Fatalf("get pod %s/%s: %v", ns, name, err)
	}
	return p
}

// waitFor polls cond every 50ms until it holds, failing the test with what after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func podCondition(p *corev1.Pod, typ corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return ""
}

func isReady(p *corev1.Pod) bool { return podCondition(p, corev1.PodReady) == corev1.ConditionTrue }

// waitReady waits for the Pod to be Running and Ready and returns it.
func waitReady(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, 30*time.Second, "pod "+name+" Ready", func() (bool, error) {
		pod = getPod(t, ns, name)
		return pod.Status.Phase == corev1.PodRunning && isReady(pod), nil
	})
	return pod
}

var httpClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	Timeout:   5 * time.Second,
}

// getJSON GETs http://ip:port/path and decodes the JSON answer into v, returning the status code.
func getJSON(ip string, port int, path string, v any) (int, error) {
	resp, err := httpClient.Get("http://" + net.JoinHostPort(ip, strconv.Itoa(port)) + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		return resp.StatusCode, fmt.Errorf("content type %q", ct)
	}
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(v)
}

// demoGet fetches GET / from a Pod's demo server.
func demoGet(ip string, port int) (DemoReply, error) {
	var r DemoReply
	code, err := getJSON(ip, port, "/", &r)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /: status %d", code)
	}
	return r, err
}

// refused reports whether a TCP connection to ip:port is refused.
func refused(ip string, port int) (bool, error) {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(port)), 2*time.Second)
	if err == nil {
		c.Close()
		return false, errors.New("connection accepted")
	}
	return errors.Is(err, syscall.ECONNREFUSED), err
}

// checkPodIP checks that ip is a loopback address outside 127.0.0.0/24.
func checkPodIP(t *testing.T, ip string) {
	t.Helper()
	a, err := netip.ParseAddr(ip)
	if err != nil {
		t.Fatalf("pod IP %q: %v", ip, err)
	}
	if !a.Is4() || !netip.MustParsePrefix("127.0.0.0/8").Contains(a) || netip.MustParsePrefix("127.0.0.0/24").Contains(a) {
		t.Fatalf("pod IP %s: want 127.0.0.0/8 outside 127.0.0.0/24", a)
	}
}

func deletePod(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if err := plane.Client.Delete(context.Background(), p); err != nil {
		t.Fatalf("delete pod %s: %v", p.Name, err)
	}
}

func waitGone(t *testing.T, ns, name string) {
	t.Helper()
	waitFor(t, 30*time.Second, "pod "+name+" gone", func() (bool, error) {
		err := plane.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &corev1.Pod{})
		return apierrors.IsNotFound(err), err
	})
}
