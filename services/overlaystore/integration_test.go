package overlaystore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/overlay"
	"boilerhouse.dev/pkg/translate"
	"boilerhouse.dev/tools/devnode"
)

// The tests in this file run the real exec path: a real API server (localkube) proxying
// pods/exec to the dev node's kubelet endpoint, which runs tar in sandboxed containers. They
// share one control plane and node, started by the first test that needs them.

func TestMain(m *testing.M) {
	code := m.Run()
	real.stop()
	os.Exit(code)
}

var real realEnvironment

type realEnvironment struct {
	once  sync.Once
	err   error
	plane *localkube.Plane
	kube  client.Client
	exec  *KubeExecutor
	stops []func()
}

func (r *realEnvironment) stop() {
	for i := len(r.stops) - 1; i >= 0; i-- {
		r.stops[i]()
	}
}

// testIPRange keeps this package's Pod IPs apart from other test packages running at once.
var testIPRange = devnode.IPRange{
	First: netip.MustParseAddr("127.79.0.1"),
	Last:  netip.MustParseAddr("127.79.255.254"),
}

func integrationLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("OVERLAYSTORE_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// realEnv starts (once) the control plane and the dev node.
func realEnv(t *testing.T) *realEnvironment {
	t.Helper()
	real.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		p, err := localkube.Start(ctx, localkube.Options{Namespaces: []string{ns}})
		if err != nil {
			real.err = fmt.Errorf("control plane: %w", err)
			return
		}
		real.plane, real.kube = p, p.Client
		real.stops = append(real.stops, func() { p.Stop() })
		stateDir, err := os.MkdirTemp("", "overlaystore-devnode-")
		if err != nil {
			real.err = err
			return
		}
		real.stops = append(real.stops, func() { os.RemoveAll(stateDir) })
		node, err := devnode.New(devnode.Config{RestConfig: p.Config, NodeName: "overlaystore-node", IPRange: testIPRange,
			StateDir: stateDir, Logger: integrationLogger()})
		if err != nil {
			real.err = fmt.Errorf("dev node: %w", err)
			return
		}
		nctx, stopNode := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- node.Run(nctx) }()
		real.stops = append(real.stops, func() { stopNode(); <-done })
		if real.exec, err = NewKubeExecutor(p.Config); err != nil {
			real.err = err
		}
	})
	if real.err != nil {
		t.Fatal(real.err)
	}
	return &real
}

// realService is an overlay-store on the real API server with its own store directory.
func realService(t *testing.T, env *realEnvironment) *Service {
	t.Helper()
	svc, err := New(Config{RestConfig: env.plane.Config, Namespace: ns, StoreDir: t.TempDir(), Logger: integrationLogger(),
		LabelWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

var uniqN struct {
	sync.Mutex
	n int
}

func uniq(prefix string) string {
	uniqN.Lock()
	defer uniqN.Unlock()
	uniqN.n++
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().Unix()%100000, uniqN.n)
}

// realPod is a Pod shaped as the translator makes them (docs/overlays.md): the dev node's demo
// server as main (with its file API) mounting overlay-<i> at each dir, the helper container,
// and with restoreInit the restore init container waiting for the marker.
func realPod(name, tenant, workload string, dirs []string, restoreInit bool) *corev1.Pod {
	emptyDir := corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	main := corev1.Container{
		Name: translate.ContainerName, Image: "boilerhouse/echo:dev",
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 1, FailureThreshold: 2,
		},
	}
	helperMounts := []corev1.VolumeMount{{Name: overlay.ControlVolume, MountPath: overlay.ControlDir}}
	volumes := []corev1.Volume{{Name: overlay.ControlVolume, VolumeSource: emptyDir}}
	for i, d := range dirs {
		v := fmt.Sprintf("%s%d", overlay.VolumePrefix, i)
		volumes = append(volumes, corev1.Volume{Name: v, VolumeSource: emptyDir})
		main.VolumeMounts = append(main.VolumeMounts, corev1.VolumeMount{Name: v, MountPath: d})
		helperMounts = append(helperMounts, corev1.VolumeMount{Name: v, MountPath: fmt.Sprintf("%s/%d", overlay.MountRoot, i)})
	}
	labels := map[string]string{v1alpha1.LabelManaged: "true", v1alpha1.LabelWorkload: workload}
	if tenant != "" {
		labels[v1alpha1.LabelTenant] = tenant
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{main, {
				Name: overlay.HelperContainer, Image: overlay.DefaultHelperImage, Command: []string{"sleep", "infinity"},
				VolumeMounts: helperMounts,
			}},
			Volumes:                       volumes,
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64(1)),
		},
	}
	if restoreInit {
		p.Spec.InitContainers = []corev1.Container{{
			Name: overlay.RestoreInitContainer, Image: overlay.DefaultHelperImage,
			Command:      []string{"sh", "-c", "until [ -e " + overlay.RestoredMarker + " ]; do sleep 0.1; done"},
			VolumeMounts: helperMounts,
		}}
	}
	return p
}

func createRealPod(t *testing.T, env *realEnvironment, p *corev1.Pod) {
	t.Helper()
	if err := env.kube.Create(context.Background(), p); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
	t.Cleanup(func() { env.kube.Delete(context.Background(), p) })
}

// waitPod polls the Pod until cond holds.
func waitPod(t *testing.T, env *realEnvironment, name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		p := &corev1.Pod{}
		err := env.kube.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, p)
		if err == nil && cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: not %s after 60s (err %v, status %+v)", name, what, err, p.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue && p.Status.PodIP != ""
		}
	}
	return false
}

func initRunning(p *corev1.Pod) bool {
	st := containerStatus(p.Status.InitContainerStatuses, overlay.RestoreInitContainer)
	return st != nil && st.State.Running != nil
}

// fileURL is the demo server's file API for an absolute path in main.
func fileURL(p *corev1.Pod, path string) string {
	return fmt.Sprintf("http://%s:8080%s%s", p.Status.PodIP, devnode.FilesPrefix, path)
}

func putFile(t *testing.T, p *corev1.Pod, path string, body []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, fileURL(p, path), bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("PUT %s: %s: %s", path, resp.Status, b)
	}
}

// getFile reads a file of main through the demo server; ok is false on 404.
func getFile(t *testing.T, p *corev1.Pod, path string) ([]byte, bool) {
	t.Helper()
	resp, err := http.Get(fileURL(p, path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return nil, false
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	return b, true
}

// listOverlay lists everything under /overlay in the Pod's helper container (find, via exec).
func listOverlay(t *testing.T, env *realEnvironment, pod string) []string {
	t.Helper()
	var out bytes.Buffer
	err := env.exec.Exec(context.Background(), ns, pod, overlay.HelperContainer, []string{"find", overlay.MountRoot, "-mindepth", "2"}, nil, &out)
	if err != nil {
		t.Fatalf("find in %s: %v", pod, err)
	}
	return strings.Fields(out.String())
}

func TestRealExtractRestore(t *testing.T) {
	env := realEnv(t)
	svc := realService(t, env)
	ctx := context.Background()
	dirs := []string{"/data", "/home/agent"}
	tenant, workload := "org.acme", "agent"

	src := realPod(uniq("src"), tenant, workload, dirs, false)
	createRealPod(t, env, src)
	src = waitPod(t, env, src.Name, "ready", ready)
	big := []byte(strings.Repeat("0123456789abcdef", 64<<10)) // 1 MiB
	putFile(t, src, "/data/notes.txt", []byte("my notes\n"))
	putFile(t, src, "/data/projects/x/main.go", []byte("package main\n"))
	putFile(t, src, "/data/big.bin", big)
	putFile(t, src, "/home/agent/.config/app.toml", []byte("theme = 'dark'\n"))

	snap, err := svc.Extract(ctx, messages.ExtractRequest{TenantID: tenant, Workload: workload, InstanceID: src.Name})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Generation != 1 || snap.Size == 0 {
		t.Fatalf("snapshot %+v", snap)
	}

	// Into a running Pod (pool+data): through the helper container.
	dst := realPod(uniq("dst"), tenant, workload, dirs, false)
	createRealPod(t, env, dst)
	dst = waitPod(t, env, dst.Name, "ready", ready)
	reply, err := svc.Restore(ctx, messages.RestoreRequest{TenantID: tenant, Workload: workload, InstanceID: dst.Name})
	if err != nil || reply != (messages.RestoreReply{Generation: 1, Restored: true}) {
		t.Fatalf("Restore = %+v, %v", reply, err)
	}
	for path, want := range map[string][]byte{
		"/data/notes.txt": []byte("my notes\n"), "/data/projects/x/main.go": []byte("package main\n"),
		"/data/big.bin": big, "/home/agent/.config/app.toml": []byte("theme = 'dark'\n"),
	} {
		if got, ok := getFile(t, dst, path); !ok || !bytes.Equal(got, want) {
			t.Errorf("%s in the restored Pod: %d bytes (found %v), want %d", path, len(got), ok, len(want))
		}
	}

	// A cold boot (cold+data): the workload starts only once the restore is done.
	cold := realPod(uniq("cold"), tenant, workload, dirs, true)
	createRealPod(t, env, cold)
	waitPod(t, env, cold.Name, "running its restore init container", initRunning)
	reply, err = svc.Restore(ctx, messages.RestoreRequest{TenantID: tenant, Workload: workload, InstanceID: cold.Name})
	if err != nil || !reply.Restored {
		t.Fatalf("Restore into the init container = %+v, %v", reply, err)
	}
	cold = waitPod(t, env, cold.Name, "ready after its restore", ready)
	if got, ok := getFile(t, cold, "/data/notes.txt"); !ok || string(got) != "my notes\n" {
		t.Fatalf("cold Pod's /data/notes.txt = %q (found %v)", got, ok)
	}

	// The restored Pod changes its data and saves it as generation 2; the source Pod, which was
	// not restored from generation 1, may not overwrite it.
	putFile(t, dst, "/data/notes.txt", []byte("edited\n"))
	if snap, err := svc.Extract(ctx, messages.ExtractRequest{TenantID: tenant, Workload: workload, InstanceID: dst.Name, RestoredGeneration: 1}); err != nil || snap.Generation != 2 {
		t.Fatalf("second extract = %+v, %v", snap, err)
	}
	if _, err := svc.Extract(ctx, messages.ExtractRequest{TenantID: tenant, Workload: workload, InstanceID: src.Name}); messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("stale extract = %v, want conflict", err)
	}
}

// TestRealHostileArchiveRejected: a hostile stored archive is refused and nothing at all is
// written in the Pod.
func TestRealHostileArchiveRejected(t *testing.T) {
	env := realEnv(t)
	svc := realService(t, env)
	ctx := context.Background()
	pod := realPod(uniq("victim"), "t1", "agent", []string{"/data"}, false)
	createRealPod(t, env, pod)
	pod = waitPod(t, env, pod.Name, "ready", ready)
	for _, evil := range []func(*tarWriter){
		func(tw *tarWriter) { tw.file("data/../bh/restored", "") },
		func(tw *tarWriter) { tw.symlink("data/escape", "../../bh") },
		func(tw *tarWriter) { tw.file("/bh/restored", "") },
	} {
		put(t, svc.Store(), "t1", "agent", hostileArchive(t, evil))
		_, err := svc.Restore(ctx, messages.RestoreRequest{TenantID: "t1", Workload: "agent", InstanceID: pod.Name})
		if messages.CodeOf(err) != messages.CodeInternal {
			t.Fatalf("Restore of a hostile archive = %v", err)
		}
		if got := listOverlay(t, env, pod.Name); len(got) != 0 {
			t.Fatalf("written into the Pod: %v", got)
		}
		if _, ok := getFile(t, pod, "/data/innocent.txt"); ok {
			t.Fatal("the innocent part of a hostile archive reached the Pod")
		}
	}
}

// TestRealPodOwnershipRefused: Pods without the right labels are refused, on the real API.
func TestRealPodOwnershipRefused(t *testing.T) {
	env := realEnv(t)
	svc := realService(t, env)
	ctx := context.Background()
	other := realPod(uniq("other"), "t2", "agent", []string{"/data"}, false)
	unmanaged := realPod(uniq("unmanaged"), "t1", "agent", []string{"/data"}, false)
	delete(unmanaged.Labels, v1alpha1.LabelManaged)
	unlabelled := realPod(uniq("unlabelled"), "", "agent", []string{"/data"}, false)
	for _, p := range []*corev1.Pod{other, unmanaged, unlabelled} {
		createRealPod(t, env, p)
	}
	other = waitPod(t, env, other.Name, "ready", ready)
	putFile(t, other, "/data/secret", []byte("t2's secret"))
	put(t, svc.Store(), "t1", "agent", hostileArchive(t, func(*tarWriter) {}))
	for pod, code := range map[string]messages.Code{other.Name: messages.CodeConflict, unmanaged.Name: messages.CodeInvalidArgument, unlabelled.Name: messages.CodeConflict} {
		if _, err := svc.Extract(ctx, messages.ExtractRequest{TenantID: "t1", Workload: "agent", InstanceID: pod, RestoredGeneration: 1}); messages.CodeOf(err) != code {
			t.Errorf("Extract from %s = %v, want %s", pod, err, code)
		}
		if _, err := svc.Restore(ctx, messages.RestoreRequest{TenantID: "t1", Workload: "agent", InstanceID: pod}); messages.CodeOf(err) != code {
			t.Errorf("Restore into %s = %v, want %s", pod, err, code)
		}
	}
	if l, _ := svc.List(ctx, messages.OverlayListRequest{TenantID: "t1"}); len(l.Snapshots) != 1 {
		t.Fatalf("t1's store changed: %+v", l)
	}
	if got := listOverlay(t, env, other.Name); len(got) != 1 {
		t.Fatalf("t2's Pod changed: %v", got)
	}
}
