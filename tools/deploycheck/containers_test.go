package deploycheck_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/naming"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/tools/devnode"
	"boilerhouse.dev/tools/images"
)

// runDeployments starts every Deployment of deploy/base from its service's image under runc,
// the OCI runtime beneath containerd and CRI-O, the way a kubelet would: the image's
// entrypoint as the Pod's user, a read-only root file system, no capabilities, no privilege
// escalation, the Deployment's environment and volumes, and the in-cluster configuration of its
// ServiceAccount (a token from the TokenRequest API, so the API server enforces the Role that
// deploy/base binds). Each must pass its readiness probe and run with those credentials. Then
// claims go through them (claimThrough), and each must exit 0 on SIGTERM within the stop
// timeout.
//
// What a kubelet does differently here: the containers share the host's network, so their
// listening addresses get free ports instead of their container ports; NATS_URL lists the
// three NATS servers of deploy/base (startNATSCluster) by their loopback ports; Secrets
// referenced by the environment get a test value; runc's default spec has no seccomp profile.
func runDeployments(ctx context.Context, t *testing.T, plane *localkube.Plane, namespace string) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatalf("runc is not installed (make test installs it): %v", err)
	}
	var list appsv1.DeploymentList
	if err := plane.Client.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(images.Services) {
		t.Fatalf("%d Deployments, want one per service %v", len(list.Items), images.Services)
	}
	nats := startNATSCluster(t)
	root, err := localkube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	rt := &runtimeEnv{runc: runc, state: t.TempDir(), plane: plane, namespace: namespace, natsURL: nats.url(),
		services: filepath.Join(root, "services")}

	running := map[string]*container{}
	for _, d := range list.Items {
		running[d.Name] = rt.start(ctx, t, d)
	}
	for _, c := range running {
		c.awaitReady(t, 2*time.Minute)
		c.checkCredentials(t, rt)
	}
	edge := running["edge"]
	if edge == nil || edge.ports["http"] == 0 {
		t.Fatal("no edge Deployment with an http port")
	}
	claimThrough(ctx, t, plane, namespace, fmt.Sprintf("http://127.0.0.1:%d", edge.ports["http"]), "test-"+apiKeyKey)
	for _, c := range running {
		c.stop(t, rt, svcmain.StopTimeout+10*time.Second)
	}
}

// runtimeEnv is what every container of the run shares.
type runtimeEnv struct {
	runc, state        string // the runc binary; its state directory (--root)
	plane              *localkube.Plane
	namespace, natsURL string
	services           string // the services module, where the binaries are built
}

// container is one running Deployment: one replica of its Pod, whose only container it is.
type container struct {
	name, id string
	uid, gid int
	ready    string         // the readiness probe's URL
	ports    map[string]int // host port by container port name
	out      *lockedBuffer
	exited   chan error
}

func (rt *runtimeEnv) cmd(args ...string) *exec.Cmd {
	return exec.Command(rt.runc, append([]string{"--root", rt.state}, args...)...)
}

// start builds the image of d's container, lays out its bundle and runs it.
func (rt *runtimeEnv) start(ctx context.Context, t *testing.T, d appsv1.Deployment) *container {
	t.Helper()
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("Deployment %s: %d containers, want 1", d.Name, len(pod.Containers))
	}
	spec := pod.Containers[0]
	bundle := t.TempDir()

	// The image, built as make images builds it, unpacked as the bundle's root file system.
	bin := filepath.Join(t.TempDir(), spec.Name)
	if err := images.Build(ctx, rt.services, "./cmd/"+spec.Name, runtime.GOARCH, bin); err != nil {
		t.Fatal(err)
	}
	img, err := images.Image(bin, spec.Name, runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	untar(t, mutate.Extract(img), filepath.Join(bundle, "rootfs"))

	uid, gid := podUser(t, d.Name, pod.SecurityContext, spec.SecurityContext)
	c := &container{name: d.Name, id: fmt.Sprintf("bh-%s-%d", d.Name, time.Now().UnixNano()), uid: uid, gid: gid,
		ports: map[string]int{}, out: &lockedBuffer{}, exited: make(chan error, 1)}

	// Ports: each container port gets a free host port, and an address in the environment
	// that listens on it (":9091") is moved there.
	hostPort := map[int32]int{}
	for _, p := range spec.Ports {
		hostPort[p.ContainerPort] = freePort(t)
		c.ports[p.Name] = hostPort[p.ContainerPort]
	}
	env := append([]string{}, cfg.Config.Env...)
	apiURL, err := url.Parse(rt.plane.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	env = append(env, "KUBERNETES_SERVICE_HOST="+apiURL.Hostname(), "KUBERNETES_SERVICE_PORT="+apiURL.Port())
	for _, e := range spec.Env {
		env = append(env, e.Name+"="+rt.envValue(t, d.Name, e, hostPort))
	}

	// Volumes: emptyDir and PersistentVolumeClaim become directories of the Pod's user.
	mounts := []any{rt.serviceAccountMount(ctx, t, pod.ServiceAccountName)}
	for _, m := range spec.VolumeMounts {
		var vol *corev1.Volume
		for i := range pod.Volumes {
			if pod.Volumes[i].Name == m.Name {
				vol = &pod.Volumes[i]
			}
		}
		if vol == nil || (vol.EmptyDir == nil && vol.PersistentVolumeClaim == nil) {
			t.Fatalf("Deployment %s: volume %s is neither an emptyDir nor a claim", d.Name, m.Name)
		}
		dir := t.TempDir()
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		mounts = append(mounts, bind(dir, m.MountPath, m.ReadOnly))
	}

	// runc's default spec (namespaces, masked paths, /dev, /proc), set as the Pod asks.
	if out, err := rt.cmd("spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	sc := spec.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || sc.AllowPrivilegeEscalation == nil || sc.Capabilities == nil {
		t.Fatalf("Deployment %s: container security context incomplete: %+v", d.Name, sc)
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, "CAP_"+string(c))
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Fatalf("Deployment %s: capabilities drop %v, want [ALL]", d.Name, sc.Capabilities.Drop)
	}
	args := append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...)
	if len(spec.Command) > 0 {
		args = append([]string{}, spec.Command...)
	}
	args = append(args, spec.Args...)
	editSpec(t, filepath.Join(bundle, "config.json"), func(s map[string]any) {
		proc := s["process"].(map[string]any)
		proc["terminal"] = false
		proc["args"] = args
		proc["env"] = env
		proc["cwd"] = cfg.Config.WorkingDir
		proc["user"] = map[string]any{"uid": uid, "gid": gid}
		proc["noNewPrivileges"] = !*sc.AllowPrivilegeEscalation
		proc["capabilities"] = map[string]any{"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps}
		s["root"].(map[string]any)["readonly"] = *sc.ReadOnlyRootFilesystem
		s["mounts"] = append(s["mounts"].([]any), mounts...)
		linux := s["linux"].(map[string]any)
		var ns []any
		for _, n := range linux["namespaces"].([]any) {
			if n.(map[string]any)["type"] != "network" { // the host's network: see runDeployments
				ns = append(ns, n)
			}
		}
		linux["namespaces"] = ns
	})

	probe := spec.ReadinessProbe
	if probe == nil || probe.HTTPGet == nil {
		t.Fatalf("Deployment %s: no HTTP readiness probe", d.Name)
	}
	port := hostPort[probe.HTTPGet.Port.IntVal]
	if name := probe.HTTPGet.Port.StrVal; name != "" {
		port = c.ports[name]
	}
	if port == 0 {
		t.Fatalf("Deployment %s: readiness probe on port %s, which the container does not declare", d.Name, probe.HTTPGet.Port.String())
	}
	c.ready = fmt.Sprintf("http://127.0.0.1:%d%s", port, probe.HTTPGet.Path)

	cmd := rt.cmd("run", "--bundle", bundle, c.id)
	cmd.Stdout, cmd.Stderr = c.out, c.out
	// Should the test binary die, runc gets SIGTERM and passes it on: no container outlives it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = rt.cmd("kill", c.id, "KILL").Run()
		_ = rt.cmd("delete", "--force", c.id).Run()
		if t.Failed() {
			t.Logf("%s's output:\n%s", c.name, c.out.String())
		}
	})
	return c
}

// listenAddr is an environment value that is a listening address on a port (":9091").
var listenAddr = regexp.MustCompile(`^:([0-9]+)$`)

// envValue is what the kubelet would set e to, with the test's NATS and ports.
func (rt *runtimeEnv) envValue(t *testing.T, deployment string, e corev1.EnvVar, hostPort map[int32]int) string {
	switch {
	case e.Name == "NATS_URL":
		return rt.natsURL
	case e.ValueFrom == nil:
		if m := listenAddr.FindStringSubmatch(e.Value); m != nil {
			p, _ := strconv.Atoi(m[1])
			if hp := hostPort[int32(p)]; hp != 0 {
				return fmt.Sprintf("127.0.0.1:%d", hp)
			}
			t.Fatalf("Deployment %s: %s listens on %s, a port the container does not declare", deployment, e.Name, e.Value)
		}
		return e.Value
	case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
		return deployment + "-0"
	case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
		return rt.namespace
	case e.ValueFrom.SecretKeyRef != nil:
		return "test-" + e.ValueFrom.SecretKeyRef.Key // the edge's API key: "test-" + apiKeyKey
	}
	t.Fatalf("Deployment %s: env %s: unsupported source %+v", deployment, e.Name, e.ValueFrom)
	return ""
}

// serviceAccountMount is the Pod's service account directory: a token that the TokenRequest
// API issued for sa, the API server's CA and the namespace, read-only where client-go's
// in-cluster configuration looks.
func (rt *runtimeEnv) serviceAccountMount(ctx context.Context, t *testing.T, sa string) any {
	t.Helper()
	if sa == "" {
		t.Fatal("a Deployment runs as the namespace's default service account")
	}
	hour := int64(3600)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &hour}}
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: rt.namespace}}
	if err := rt.plane.Client.SubResource("token").Create(ctx, account, tr); err != nil {
		t.Fatalf("token for service account %s: %v", sa, err)
	}
	ca := rt.plane.Config.CAData
	if len(ca) == 0 {
		t.Fatal("the control plane's client configuration has no CA data")
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": ca, "namespace": []byte(rt.namespace)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return bind(dir, "/var/run/secrets/kubernetes.io/serviceaccount", true)
}

// awaitReady polls the readiness probe until it answers 200.
func (c *container) awaitReady(t *testing.T, within time.Duration) {
	t.Helper()
	eventually(t, c.name+" ready ("+c.ready+")", within, func() (bool, any) {
		select {
		case err := <-c.exited:
			t.Fatalf("%s exited before it was ready (%v):\n%s", c.name, err, c.out.String())
		default:
		}
		resp, err := http.Get(c.ready)
		if err != nil {
			return false, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// checkCredentials reads the container's process from /proc: the Pod's user, no effective
// capabilities, no new privileges.
func (c *container) checkCredentials(t *testing.T, rt *runtimeEnv) {
	t.Helper()
	out, err := rt.cmd("state", c.id).Output()
	if err != nil {
		t.Fatalf("runc state %s: %v", c.id, err)
	}
	var st struct{ Pid int }
	if err := json.Unmarshal(out, &st); err != nil || st.Pid == 0 {
		t.Fatalf("runc state %s: %q %v", c.id, out, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.Pid))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Uid":        fmt.Sprintf("%d\t%d\t%d\t%d", c.uid, c.uid, c.uid, c.uid),
		"Gid":        fmt.Sprintf("%d\t%d\t%d\t%d", c.gid, c.gid, c.gid, c.gid),
		"CapEff":     "0000000000000000",
		"NoNewPrivs": "1",
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if w, ok := want[k]; ok {
			if strings.TrimSpace(v) != w {
				t.Errorf("%s: %s %q, want %q", c.name, k, strings.TrimSpace(v), w)
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		t.Errorf("%s: /proc status lacks %v", c.name, want)
	}
}

// stop sends SIGTERM, as the kubelet does, and wants a clean exit within the grace.
func (c *container) stop(t *testing.T, rt *runtimeEnv, grace time.Duration) {
	t.Helper()
	if out, err := rt.cmd("kill", c.id, "TERM").CombinedOutput(); err != nil {
		t.Fatalf("runc kill %s: %v: %s", c.id, err, out)
	}
	select {
	case err := <-c.exited:
		if err != nil {
			t.Errorf("%s exited with %v on SIGTERM:\n%s", c.name, err, c.out.String())
		}
	case <-time.After(grace):
		t.Errorf("%s still running %s after SIGTERM", c.name, grace)
	}
}

// podUser is the uid and gid the container runs as; runAsNonRoot must hold.
func podUser(t *testing.T, deployment string, pod *corev1.PodSecurityContext, ctr *corev1.SecurityContext) (int, int) {
	t.Helper()
	var uid, gid *int64
	nonRoot := false
	if pod != nil {
		uid, gid = pod.RunAsUser, pod.RunAsGroup
		nonRoot = pod.RunAsNonRoot != nil && *pod.RunAsNonRoot
	}
	if ctr != nil {
		if ctr.RunAsUser != nil {
			uid = ctr.RunAsUser
		}
		if ctr.RunAsGroup != nil {
			gid = ctr.RunAsGroup
		}
		if ctr.RunAsNonRoot != nil {
			nonRoot = *ctr.RunAsNonRoot
		}
	}
	if uid == nil || gid == nil || !nonRoot || *uid == 0 {
		t.Fatalf("Deployment %s: runs as uid %v gid %v, runAsNonRoot %v: want a non-root user and group", deployment, uid, gid, nonRoot)
	}
	return int(*uid), int(*gid)
}

func bind(source, dest string, readOnly bool) any {
	mode := "rw"
	if readOnly {
		mode = "ro"
	}
	return map[string]any{"destination": dest, "type": "bind", "source": source, "options": []string{"rbind", mode}}
}

// editSpec rewrites the bundle's config.json through edit.
func editSpec(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	edit(s)
	if b, err = json.MarshalIndent(s, "", " "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// untar writes an image's file system (directories and regular files only) under dir.
func untar(t *testing.T, rc io.ReadCloser, dir string) {
	t.Helper()
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, b, os.FileMode(h.Mode).Perm())
			}
		default:
			t.Fatalf("image entry %s of type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// freePort is a loopback port that was free a moment ago, below the kernel's ephemeral range
// (32768 and up), so that no outgoing connection takes it before its listener binds.
func freePort(t *testing.T) int {
	t.Helper()
	for range 1000 {
		p := 10000 + rand.IntN(22000)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port between 10000 and 32000")
	return 0
}

// lockedBuffer collects a container's output from runc's copying goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// apiKeyKey is the key of the edge's API key in its Secret (deploy-edge.yaml).
const apiKeyKey = "api-key"

// claimThrough drives the claim path through the containers: a workload and a pool of one
// over the edge's REST API, a dev node (the stand-in kubelet) running the Pods that
// pool-manager creates in the namespace (which enforces the restricted Pod Security Standard),
// a claim answered from the pool, data written into its instance, saved by its release and
// restored by the next claim; then a BoilerhouseClaim object, which cr-sync turns into a claim
// and releases when it is deleted; then a cold boot that the idle-reaper releases.
func claimThrough(ctx context.Context, t *testing.T, plane *localkube.Plane, namespace, base, apiKey string) {
	t.Helper()
	ips, err := devnode.ParseIPRange("127.93.0.1-127.93.0.254")
	if err != nil {
		t.Fatal(err)
	}
	node, err := devnode.New(devnode.Config{RestConfig: plane.Config, IPRange: ips, StateDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	nodeCtx, stopNode := context.WithCancel(ctx)
	nodeDone := make(chan error, 1)
	go func() { nodeDone <- node.Run(nodeCtx) }()
	t.Cleanup(func() { stopNode(); <-nodeDone })

	auth := http.Header{"Authorization": {"Bearer " + apiKey}, "Content-Type": {"application/json"}}
	call := func(method, path, body string, want ...int) map[string]any {
		t.Helper()
		status, b := fetch(t, method, base+path, body, auth)
		if !slices.Contains(want, status) {
			t.Fatalf("%s %s: %d %s, want %v", method, path, status, b, want)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(b), &v); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
		return v
	}
	// The demo workload of the dev node, with what each step adds to its spec.
	workload := func(name, more string) string {
		return fmt.Sprintf(`{"name":%q,"spec":{"version":"1","image":{"ref":"boilerhouse/demo:1"},
			"resources":{"vcpus":1,"memoryMb":64,"diskGb":0},"network":{"expose":[{"guest":8080}]},
			"health":{"intervalSeconds":1,"unhealthyThreshold":3,"httpGet":{"path":"/health","port":8080}},%s}}`, name, more)
	}
	call(http.MethodPost, "/api/v1/workloads", workload("demo", `"filesystem":{"overlayDirs":["/data"]}`), http.StatusCreated)
	call(http.MethodPost, "/api/v1/pools", `{"name":"demo","spec":{"workloadRef":"demo","size":1,"maxFillConcurrency":1}}`, http.StatusCreated)
	eventually(t, "a ready Pod in the pool", 2*time.Minute, func() (bool, any) {
		st, _ := call(http.MethodGet, "/api/v1/pools/demo", "", http.StatusOK)["status"].(map[string]any)
		ready, _ := st["ready"].(float64)
		return ready >= 1, st
	})

	// alice's data goes into her instance's overlay; her release saves it through overlay-store
	// (an exec of tar through the API server, with overlay-store's token), and her next claim
	// restores it.
	v := call(http.MethodPost, "/api/v1/tenants/alice/claim", `{"workload":"demo"}`, http.StatusCreated)
	if v["phase"] != "Active" || v["source"] != "pool" {
		t.Fatalf("claim: %v, want Active from the pool", v)
	}
	file := endpointURL(t, v, "/files/data/n")
	if status, _ := fetch(t, http.MethodPut, file, "42", nil); status/100 != 2 {
		t.Fatalf("PUT %s: %d", file, status)
	}
	if v := call(http.MethodPost, "/api/v1/tenants/alice/release", `{"workload":"demo"}`, http.StatusOK); v["phase"] != "Released" {
		t.Fatalf("release: %v, want Released", v)
	}
	v = call(http.MethodPost, "/api/v1/tenants/alice/claim", `{"workload":"demo"}`, http.StatusCreated)
	if v["phase"] != "Active" || (v["source"] != "pool+data" && v["source"] != "cold+data") {
		t.Fatalf("second claim: %v, want Active with alice's data", v)
	}
	if status, body := fetch(t, http.MethodGet, endpointURL(t, v, "/files/data/n"), "", nil); status != http.StatusOK || body != "42" {
		t.Fatalf("alice's data after the restore: %d %q, want 200 \"42\"", status, body)
	}
	if v := call(http.MethodPost, "/api/v1/tenants/alice/release", `{"workload":"demo"}`, http.StatusOK); v["phase"] != "Released" {
		t.Fatalf("second release: %v, want Released", v)
	}

	bhc := &v1alpha1.BoilerhouseClaim{ObjectMeta: metav1.ObjectMeta{Name: naming.ClaimName("bob", "demo"), Namespace: namespace},
		Spec: v1alpha1.ClaimSpec{TenantID: "bob", WorkloadRef: "demo"}}
	if err := plane.Client.Create(ctx, bhc); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKeyFromObject(bhc)
	eventually(t, "BoilerhouseClaim "+key.String()+" Active", 2*time.Minute, func() (bool, any) {
		if err := plane.Client.Get(ctx, key, bhc); err != nil {
			t.Fatal(err)
		}
		return bhc.Status.Phase == v1alpha1.ClaimActive && bhc.Status.Endpoint != nil, bhc.Status
	})
	if err := plane.Client.Delete(ctx, bhc); err != nil {
		t.Fatal(err)
	}
	eventually(t, "BoilerhouseClaim "+key.String()+" gone after its deletion", 2*time.Minute, func() (bool, any) {
		err := plane.Client.Get(ctx, key, bhc)
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return apierrors.IsNotFound(err), bhc.Status
	})

	// A cold boot of a workload without a pool, left unused: the idle-reaper releases it.
	call(http.MethodPost, "/api/v1/workloads", workload("sleepy", `"idle":{"timeoutSeconds":2,"action":"destroy"}`), http.StatusCreated)
	if v := call(http.MethodPost, "/api/v1/tenants/carol/claim", `{"workload":"sleepy"}`, http.StatusCreated); v["source"] != "cold" {
		t.Fatalf("claim of a workload without a pool: %v, want a cold boot", v)
	}
	eventually(t, "carol's idle claim released by the idle-reaper", time.Minute, func() (bool, any) {
		claims, _ := call(http.MethodGet, "/api/v1/tenants/carol", "", http.StatusOK)["claims"].([]any)
		if len(claims) != 1 {
			return false, claims
		}
		c := claims[0].(map[string]any)
		return c["phase"] == "Released" && strings.Contains(fmt.Sprint(c["detail"]), "idle"), claims
	})
}

// endpointURL is path on the endpoint of claim view v.
func endpointURL(t *testing.T, v map[string]any, path string) string {
	t.Helper()
	ep, _ := v["endpoint"].(map[string]any)
	if ep == nil {
		t.Fatalf("claim without an endpoint: %v", v)
	}
	return fmt.Sprintf("http://%v:%v%s", ep["host"], ep["port"], path)
}

// fetch makes a request with header and answers its status and body.
func fetch(t *testing.T, method, url, body string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(req.Header, header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// eventually calls cond every 200 ms until it reports done; after within, the test fails with
// what and cond's last state.
func eventually(t *testing.T, what string, within time.Duration, cond func() (done bool, state any)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		done, state := cond()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (%v)", what, within, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
