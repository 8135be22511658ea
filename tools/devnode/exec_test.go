package devnode

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// kube is a client-go clientset on the test control plane.
func kube(t *testing.T) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(plane.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// overlayPod is a demoPod shaped like the translator's Pods of a workload with overlay dirs:
// main mounts overlay-0 at /data and overlay-1 at /cache (plus a non-overlay scratch volume);
// the helper container "overlay" mounts them at /overlay/0 and /overlay/1 and the control volume
// at /bh.
func overlayPod(ns, name string, mods ...func(*corev1.Pod)) *corev1.Pod {
	p := demoPod(ns, name, "tenant-a")
	emptyDir := corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	p.Spec.Volumes = []corev1.Volume{
		{Name: "overlay-0", VolumeSource: emptyDir},
		{Name: "overlay-1", VolumeSource: emptyDir},
		{Name: "bh-control", VolumeSource: emptyDir},
		{Name: "scratch", VolumeSource: emptyDir},
	}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{
		{Name: "overlay-0", MountPath: "/data"},
		{Name: "overlay-1", MountPath: "/cache"},
		{Name: "scratch", MountPath: "/scratch"},
	}
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{
		Name: "overlay", Image: "busybox:1.36", Command: []string{"sleep", "infinity"},
		VolumeMounts: helperMounts(),
	})
	for _, m := range mods {
		m(p)
	}
	return p
}

func helperMounts() []corev1.VolumeMount {
	return []corev1.VolumeMount{
		{Name: "overlay-0", MountPath: "/overlay/0"},
		{Name: "overlay-1", MountPath: "/overlay/1"},
		{Name: "bh-control", MountPath: "/bh"},
	}
}

// withInit adds an init container with the helper's mounts running sh -c script.
func withInit(name, script string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{
			Name: name, Image: "busybox:1.36", Command: []string{"sh", "-c", script},
			VolumeMounts: helperMounts(),
		})
	}
}

// execResult is what an exec through the API server produced.
type execResult struct {
	stdout, stderr string
	err            error
}

// exitCode is the command's exit code: 0, the code of an exit error, or -1 for other errors.
func (r execResult) exitCode() int {
	if r.err == nil {
		return 0
	}
	var ee utilexec.ExitError
	if errors.As(r.err, &ee) && ee.Exited() {
		return ee.ExitStatus()
	}
	return -1
}

// execPod runs cmd in a container through the API server's pods/exec with client-go's SPDY
// executor, or its WebSocket (v5) one.
func execPod(t *testing.T, ns, pod, container string, stdin io.Reader, websocket bool, cmd ...string) execResult {
	t.Helper()
	req := kube(t).CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: container, Command: cmd,
			Stdin: stdin != nil, Stdout: true, Stderr: true,
		}, scheme.ParameterCodec)
	var (
		ex  remotecommand.Executor
		err error
	)
	if websocket {
		ex, err = remotecommand.NewWebSocketExecutor(plane.Config, "GET", req.URL().String())
	} else {
		ex, err = remotecommand.NewSPDYExecutor(plane.Config, "POST", req.URL())
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
	return execResult{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// mustExec runs cmd and fails the test unless it exits 0.
func mustExec(t *testing.T, ns, pod, container string, stdin io.Reader, cmd ...string) string {
	t.Helper()
	r := execPod(t, ns, pod, container, stdin, false, cmd...)
	if r.err != nil {
		t.Fatalf("exec %q in %s/%s: %v (stdout %q, stderr %q)", cmd, pod, container, r.err, r.stdout, r.stderr)
	}
	return r.stdout
}

func fileURL(ip, p string) string {
	return "http://" + net.JoinHostPort(ip, "8080") + FilesPrefix + p
}

// putFile PUTs body at /files<p> and returns the status code.
func putFile(t *testing.T, ip, p, body string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, fileURL(ip, p), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// getFile GETs /files<p>.
func getFile(t *testing.T, ip, p string) (int, string) {
	t.Helper()
	resp, err := httpClient.Get(fileURL(ip, p))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// tarOf builds a tar stream of regular files (name -> content), parent directories included.
func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for name, content := range files {
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(content))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// untar reads a tar stream into name -> content for its regular files (names cleaned of "./").
func untar(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimPrefix(h.Name, "./")] = string(content)
	}
}

func TestKubeletEndpoint(t *testing.T) {
	n := startNode(t, Config{NodeName: uniq("dn-kubelet")})
	var node corev1.Node
	waitFor(t, 30*time.Second, "node with a kubelet endpoint", func() (bool, error) {
		err := plane.Client.Get(context.Background(), client.ObjectKey{Name: n.Name()}, &node)
		return err == nil && node.Status.DaemonEndpoints.KubeletEndpoint.Port > 0, err
	})
	port := int(node.Status.DaemonEndpoints.KubeletEndpoint.Port)
	addrs := map[corev1.NodeAddressType]string{}
	for _, a := range node.Status.Addresses {
		addrs[a.Type] = a.Address
	}
	if addrs[corev1.NodeInternalIP] != "127.0.0.1" || addrs[corev1.NodeHostName] != n.Name() {
		t.Errorf("node addresses %v", node.Status.Addresses)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Proxy: nil, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // self-signed, checked below
	}}
	resp, err := hc.Get("https://127.0.0.1:" + strconv.Itoa(port) + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("GET /healthz = %d %q", resp.StatusCode, body)
	}
	if st := resp.TLS; st == nil || len(st.PeerCertificates) == 0 || st.PeerCertificates[0].VerifyHostname("127.0.0.1") != nil {
		t.Errorf("serving certificate does not cover 127.0.0.1")
	}
}

func TestExecThroughAPIServer(t *testing.T) {
	ns := newNamespace(t, "exec")
	n := startNode(t, Config{NodeName: uniq("dn-exec")})
	createPod(t, overlayPod(ns, "box"))
	waitReady(t, ns, "box")

	for _, ws := range []bool{false, true} {
		name := map[bool]string{false: "spdy", true: "websocket"}[ws]
		t.Run(name, func(t *testing.T) {
			r := execPod(t, ns, "box", "main", nil, ws, "sh", "-c", "echo hi; echo err >&2; exit 3")
			if r.stdout != "hi\n" || r.stderr != "err\n" || r.exitCode() != 3 {
				t.Errorf("stdout %q stderr %q err %v (exit code %d), want hi, err, 3", r.stdout, r.stderr, r.err, r.exitCode())
			}
			r = execPod(t, ns, "box", "overlay", strings.NewReader("piped through\n"), ws, "cat")
			if r.err != nil || r.stdout != "piped through\n" {
				t.Errorf("cat: %q %v", r.stdout, r.err)
			}
		})
	}

	// The process runs in the Pod's sandbox: its hostname, PID 1 of its own namespace, the
	// container's mounts, the host's /usr read-only, and no host paths beyond the binds.
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "host-secret")
	if err := os.WriteFile(secret, []byte("host only"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/work"); err != nil {
		t.Fatalf("test premise: the host has /work: %v", err)
	}
	script := fmt.Sprintf(`hostname; echo pid=$$; pwd
test -e %q && echo SEEN-SECRET
test -e %q && echo SEEN-SECRET-DIR
test -e /work && echo SEEN-WORK
test -e /.oldroot && echo SEEN-OLDROOT
grep -q oldroot /proc/self/mountinfo && echo SEEN-HOST-MOUNTS
test -d /data && test -d /cache && test -d /scratch && echo mounts-ok
touch /usr/devnode-probe 2>/dev/null && echo USR-WRITABLE
echo x > /data/written-by-exec && echo data-writable
ls /proc | grep -c '^[0-9]'
grep CapBnd /proc/self/status`, secret, secretDir)
	out := mustExec(t, ns, "box", "main", nil, "sh", "-c", script)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 7 || lines[0] != "box" || lines[1] != "pid=1" || lines[2] != "/" {
		t.Fatalf("sandbox identity: %q", out)
	}
	for _, bad := range []string{"SEEN-SECRET", "SEEN-WORK", "SEEN-OLDROOT", "SEEN-HOST-MOUNTS", "USR-WRITABLE"} {
		if strings.Contains(out, bad) {
			t.Errorf("sandbox leaks the host: %s in %q", bad, out)
		}
	}
	if !strings.Contains(out, "mounts-ok") || !strings.Contains(out, "data-writable") {
		t.Errorf("container mounts missing: %q", out)
	}
	// Only the sandbox's processes are visible: sh, and the ls and grep of the pipe.
	if procs, _ := strconv.Atoi(lines[len(lines)-2]); procs < 1 || procs > 3 {
		t.Errorf("sandbox sees %d processes in /proc, want only its own", procs)
	}
	if !strings.Contains(out, "CapBnd:\t"+fmt.Sprintf("%016x", capMask(capSet(nil, nil)))) {
		t.Errorf("bounding set: %q, want %016x", lines[len(lines)-1], capMask(capSet(nil, nil)))
	}
	// The helper sees main's file through the shared emptyDir.
	if got := mustExec(t, ns, "box", "overlay", nil, "cat", "/overlay/0/written-by-exec"); got != "x\n" {
		t.Errorf("helper reads %q", got)
	}

	// The kubelet endpoint talks to this process (plain HTTP to a TLS server gets an answer)
	// but not to a sandboxed one, which shares the host's network.
	probe := fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3`, n.kubeletPort())
	if out, err := exec.Command("bash", "-c", probe).CombinedOutput(); !strings.Contains(string(out), "HTTPS server") {
		t.Fatalf("test premise: the kubelet endpoint answers the test process: %q %v", out, err)
	}
	if r := execPod(t, ns, "box", "main", nil, false, "bash", "-c", probe); strings.Contains(r.stdout, "HTTPS") {
		t.Errorf("a sandboxed process reached the kubelet endpoint: %q", r.stdout)
	}

	// With a terminal: stdin, stdout and stderr are one pseudo-terminal.
	req := kube(t).CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name("box").SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: "main", Command: []string{"sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty; read line; echo got $line"},
			Stdin: true, Stdout: true, TTY: true,
		}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(plane.Config, "POST", req.URL())
	if err != nil {
		t.Fatal(err)
	}
	var ttyOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader("typed\n"), Stdout: &ttyOut, Tty: true})
	if got := strings.ReplaceAll(ttyOut.String(), "\r", ""); err != nil || !strings.Contains(got, "on-a-tty\n") || !strings.Contains(got, "got typed\n") {
		t.Errorf("tty exec: %q %v", ttyOut.String(), err)
	}

	// Errors that are not exit codes.
	if r := execPod(t, ns, "box", "main", nil, false, "no-such-command"); r.err == nil || r.exitCode() != -1 ||
		!strings.Contains(r.err.Error(), "executable file not found") {
		t.Errorf("unknown command: %v", r.err)
	}
	if r := execPod(t, ns, "box", "nope", nil, false, "true"); r.err == nil {
		t.Error("exec into a container that does not exist succeeded")
	}
}

// capMask is a capability set as the bits /proc/<pid>/status shows.
func capMask(caps []int) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return m
}

func TestTarStreams(t *testing.T) {
	ns := newNamespace(t, "tar")
	n := startNode(t, Config{NodeName: uniq("dn-tar")})
	createPod(t, overlayPod(ns, "box"))
	pod := waitReady(t, ns, "box")
	ip := pod.Status.PodIP

	// Files written into main through the demo server come out of the helper as a tar.
	big := make([]byte, 3<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"/data/notes.txt": "my notes\n", "/data/sub/dir/deep.txt": "deep", "/cache/c.bin": "\x00\x01binary", "/data/big.bin": string(big)}
	for p, content := range files {
		if code := putFile(t, ip, p, content); code != http.StatusCreated {
			t.Fatalf("PUT %s = %d", p, code)
		}
	}
	var archive bytes.Buffer
	r := execPod(t, ns, "box", "overlay", nil, false, "tar", "-c", "-f", "-", "-C", "/overlay", ".")
	if r.err != nil {
		t.Fatalf("tar -c: %v (%s)", r.err, r.stderr)
	}
	archive.WriteString(r.stdout)
	got := untar(t, archive.Bytes())
	want := map[string]string{"0/notes.txt": "my notes\n", "0/sub/dir/deep.txt": "deep", "1/c.bin": "\x00\x01binary", "0/big.bin": string(big)}
	for name, content := range want {
		if got[name] != content {
			t.Errorf("tar entry %s: %d bytes, want %d (entries %v)", name, len(got[name]), len(content), keys(got))
		}
	}

	// A tar streamed into tar -x lands in main's overlay dirs.
	in := tarOf(t, map[string]string{"0/restored/a.txt": "restored a", "1/b.txt": "restored b", "0/restored/big.bin": string(big)})
	mustExec(t, ns, "box", "overlay", bytes.NewReader(in), "tar", "-x", "-f", "-", "-C", "/overlay")
	for p, content := range map[string]string{"/data/restored/a.txt": "restored a", "/cache/b.txt": "restored b", "/data/restored/big.bin": string(big)} {
		if code, body := getFile(t, ip, p); code != http.StatusOK || body != content {
			t.Errorf("GET %s = %d (%d bytes), want %d bytes", p, code, len(body), len(content))
		}
	}
	// On disk they are in the volume's directory of the Pod.
	b, err := os.ReadFile(filepath.Join(n.volumeDir(pod.UID, "overlay-0"), "restored", "a.txt"))
	if err != nil || string(b) != "restored a" {
		t.Errorf("on disk: %q %v", b, err)
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestFilesEndpoint(t *testing.T) {
	ns := newNamespace(t, "files")
	n := startNode(t, Config{NodeName: uniq("dn-files")})
	createPod(t, overlayPod(ns, "box"))
	pod := waitReady(t, ns, "box")
	ip := pod.Status.PodIP

	if code := putFile(t, ip, "/data/a/b/c.txt", "v1"); code != http.StatusCreated {
		t.Errorf("PUT new = %d, want 201", code)
	}
	if code := putFile(t, ip, "/data/a/b/c.txt", "v2"); code != http.StatusOK {
		t.Errorf("PUT again = %d, want 200", code)
	}
	if code, body := getFile(t, ip, "/data/a/b/c.txt"); code != http.StatusOK || body != "v2" {
		t.Errorf("GET = %d %q", code, body)
	}
	if code, _ := getFile(t, ip, "/data/missing.txt"); code != http.StatusNotFound {
		t.Errorf("GET missing = %d, want 404", code)
	}
	if code, _ := getFile(t, ip, "/data/a"); code != http.StatusBadRequest {
		t.Errorf("GET a directory = %d, want 400", code)
	}

	// Outside the overlay mounts, or climbing out of them: 403, and nothing is written.
	outside := t.TempDir()
	for _, p := range []string{
		"/etc/passwd", "/scratch/x.txt", "/datax/y.txt", "/data/../etc/z.txt", "/data/%2e%2e/%2e%2e/z.txt",
		"/data/a/../../scratch/z.txt", "/cache/..",
	} {
		if code := putFile(t, ip, p, "evil"); code != http.StatusForbidden {
			t.Errorf("PUT %s = %d, want 403", p, code)
		}
		if code, _ := getFile(t, ip, p); code != http.StatusForbidden {
			t.Errorf("GET %s = %d, want 403", p, code)
		}
	}
	if code, _ := getFile(t, ip, "/../../../../etc/passwd"); code != http.StatusForbidden {
		t.Errorf("GET above / = %d", code)
	}
	// Symlinks inside a volume that point out of it are not followed out.
	vol := n.volumeDir(pod.UID, "overlay-0")
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(vol, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(vol, "secret-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../..", filepath.Join(vol, "up")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/data/escape/secret", "/data/secret-link", "/data/up" + outside + "/secret"} {
		if code, body := getFile(t, ip, p); code != http.StatusForbidden || strings.Contains(body, "host secret") {
			t.Errorf("GET %s = %d %q, want 403", p, code, body)
		}
	}
	for _, p := range []string{"/data/escape/planted", "/data/secret-link", "/data/up" + outside + "/planted"} {
		if code := putFile(t, ip, p, "planted"); code != http.StatusForbidden {
			t.Errorf("PUT %s = %d, want 403", p, code)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Errorf("files appeared outside the volume: %v", entries)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "host secret" {
		t.Errorf("the outside file was changed: %q", b)
	}
	// A symlink that stays inside the volume is fine.
	if err := os.Symlink("a/b/c.txt", filepath.Join(vol, "inside-link")); err != nil {
		t.Fatal(err)
	}
	if code, body := getFile(t, ip, "/data/inside-link"); code != http.StatusOK || body != "v2" {
		t.Errorf("GET through an inside symlink = %d %q", code, body)
	}
}

func TestInitContainers(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, "init")
	startNode(t, Config{NodeName: uniq("dn-init")})
	createPod(t, overlayPod(ns, "cold", withInit("overlay-restore",
		`echo waiting for the restore; until [ -e /bh/restored ]; do sleep 0.1; done; echo restored; ls /overlay/0`)))

	var pod *corev1.Pod
	waitFor(t, 30*time.Second, "overlay-restore running", func() (bool, error) {
		pod = getPod(t, ns, "cold")
		cs := pod.Status.InitContainerStatuses
		return len(cs) == 1 && cs[0].State.Running != nil, nil
	})
	if pod.Status.Phase != corev1.PodPending || podCondition(pod, corev1.PodInitialized) != corev1.ConditionFalse {
		t.Fatalf("while initializing: phase %s, Initialized %s", pod.Status.Phase, podCondition(pod, corev1.PodInitialized))
	}
	if cs := pod.Status.ContainerStatuses; len(cs) != 2 || cs[0].State.Waiting == nil || cs[0].State.Waiting.Reason != "PodInitializing" {
		t.Errorf("container statuses while initializing: %+v", cs)
	}
	// It waits for the marker: still Pending a second later, and main cannot be exec'd into yet.
	time.Sleep(time.Second)
	if p := getPod(t, ns, "cold"); p.Status.Phase != corev1.PodPending {
		t.Fatalf("pod went %s without the marker", p.Status.Phase)
	}
	if r := execPod(t, ns, "cold", "main", nil, false, "true"); r.err == nil {
		t.Error("exec into main succeeded before the pod was initialized")
	}
	// Restore as the overlay-store does: a tar into the running init container, then the marker.
	mustExec(t, ns, "cold", "overlay-restore", bytes.NewReader(tarOf(t, map[string]string{"0/state.json": `{"n":1}`})),
		"tar", "-x", "-f", "-", "-C", "/overlay")
	mustExec(t, ns, "cold", "overlay-restore", nil, "touch", "/bh/restored")
	pod = waitReady(t, ns, "cold")
	cs := pod.Status.InitContainerStatuses
	if len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 0 || cs[0].State.Terminated.Reason != "Completed" {
		t.Errorf("init container status after the restore: %+v", cs)
	}
	if podCondition(pod, corev1.PodInitialized) != corev1.ConditionTrue {
		t.Error("not Initialized")
	}
	if code, body := getFile(t, pod.Status.PodIP, "/data/state.json"); code != http.StatusOK || body != `{"n":1}` {
		t.Errorf("restored file: %d %q", code, body)
	}
	// Its output is its log; exec into it is refused now that it has ended.
	logs := podLogs(t, ns, "cold", &corev1.PodLogOptions{Container: "overlay-restore"})
	if logs != "waiting for the restore\nrestored\nstate.json\n" {
		t.Errorf("init container log %q", logs)
	}
	if r := execPod(t, ns, "cold", "overlay-restore", nil, false, "true"); r.err == nil {
		t.Error("exec into a completed init container succeeded")
	}

	// A failing init container fails the Pod; the next one never runs.
	createPod(t, overlayPod(ns, "broken", withInit("first", "echo boom >&2; exit 7"), withInit("second", "touch /bh/second")))
	waitFor(t, 30*time.Second, "broken Failed", func() (bool, error) {
		pod = getPod(t, ns, "broken")
		return pod.Status.Phase == corev1.PodFailed, nil
	})
	cs = pod.Status.InitContainerStatuses
	if len(cs) != 2 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 7 || cs[0].State.Terminated.Reason != "Error" ||
		cs[1].State.Waiting == nil {
		t.Errorf("init statuses of the failed pod: %+v", cs)
	}
	if got := podLogs(t, ns, "broken", &corev1.PodLogOptions{Container: "first"}); got != "boom\n" {
		t.Errorf("failed init container log %q", got)
	}
	if isReady(pod) || pod.Status.PodIP != "" {
		t.Errorf("failed pod: ready %v, IP %q", isReady(pod), pod.Status.PodIP)
	}
	// Deleting a Pod kills its running init container.
	createPod(t, overlayPod(ns, "stuck", withInit("overlay-restore", "until [ -e /bh/restored ]; do sleep 0.1; done")))
	waitFor(t, 30*time.Second, "stuck initializing", func() (bool, error) {
		cs := getPod(t, ns, "stuck").Status.InitContainerStatuses
		return len(cs) == 1 && cs[0].State.Running != nil, nil
	})
	if err := plane.Client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "stuck"}}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, "stuck")
	waitFor(t, 5*time.Second, "no sandbox processes", func() (bool, error) { return sandboxProcesses(t) == 0, nil })
}

// sandboxProcesses counts this process's children that are sandboxes: those in another PID
// namespace (etcd and kube-apiserver are children too).
func sandboxProcesses(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	ourNS, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == self {
			if ns, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err == nil && ns != ourNS {
				count++
			}
		}
	}
	return count
}

// podLogs fetches a container's log through the API server.
func podLogs(t *testing.T, ns, pod string, opts *corev1.PodLogOptions) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := kube(t).CoreV1().Pods(ns).GetLogs(pod, opts).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs of %s/%s: %v (%s)", pod, opts.Container, err, b)
	}
	return string(b)
}

func TestLogsThroughAPIServer(t *testing.T) {
	ns := newNamespace(t, "logs")
	startNode(t, Config{NodeName: uniq("dn-logs")})
	createPod(t, overlayPod(ns, "chatty"))
	pod := waitReady(t, ns, "chatty")
	ip := pod.Status.PodIP
	if _, err := demoGet(ip, 8080); err != nil {
		t.Fatal(err)
	}
	putFile(t, ip, "/data/x", "x")
	logs := podLogs(t, ns, "chatty", &corev1.PodLogOptions{Container: "main"})
	for _, want := range []string{"devnode demo server listening on " + ip + ":8080\n", "GET / 200\n", "PUT /files/data/x 201\n", "GET /health 200\n"} {
		if !strings.Contains(logs, want) {
			t.Errorf("main's log lacks %q:\n%s", want, logs)
		}
	}
	tail := podLogs(t, ns, "chatty", &corev1.PodLogOptions{Container: "main", TailLines: new(int64(2)), Timestamps: true})
	if lines := strings.Split(strings.TrimSuffix(tail, "\n"), "\n"); len(lines) != 2 {
		t.Errorf("tailLines=2: %q", tail)
	} else if _, err := time.Parse(time.RFC3339Nano, strings.Fields(lines[0])[0]); err != nil {
		t.Errorf("timestamps: %q: %v", lines[0], err)
	}
	if got := podLogs(t, ns, "chatty", &corev1.PodLogOptions{Container: "overlay"}); got != "" {
		t.Errorf("helper log %q, want empty", got)
	}

	// Following: a request made after the stream started shows up in it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := kube(t).CoreV1().Pods(ns).GetLogs("chatty", &corev1.PodLogOptions{Container: "main", Follow: true, TailLines: new(int64(0))}).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = httpClient.Get("http://" + net.JoinHostPort(ip, "8080") + "/follow-me")
	}()
	var seen bytes.Buffer
	buf := make([]byte, 4096)
	for !strings.Contains(seen.String(), "GET /follow-me 200\n") {
		n, err := stream.Read(buf)
		seen.Write(buf[:n])
		if err != nil {
			t.Fatalf("follow: %v after %q", err, seen.String())
		}
	}
}

// TestKubectl runs the real kubectl against a Pod: exec (with its exit code) and logs.
func TestKubectl(t *testing.T) {
	ns := newNamespace(t, "kubectl")
	startNode(t, Config{NodeName: uniq("dn-kubectl")})
	createPod(t, overlayPod(ns, "box"))
	pod := waitReady(t, ns, "box")
	if _, err := demoGet(pod.Status.PodIP, 8080); err != nil {
		t.Fatal(err)
	}
	kubectl := func(args ...string) (string, int) {
		cmd := exec.Command(plane.Kubectl(), append([]string{"--kubeconfig", plane.Kubeconfig, "-n", ns}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("kubectl %v: %v", args, err)
		}
		return out.String(), 0
	}
	if out, code := kubectl("exec", "box", "-c", "main", "--", "sh", "-c", "echo from kubectl; cat /etc/hostname >/dev/null; hostname"); code != 0 || out != "from kubectl\nbox\n" {
		t.Errorf("kubectl exec: %d %q", code, out)
	}
	if out, code := kubectl("exec", "-i", "box", "-c", "overlay", "--", "sh", "-c", "exit 5"); code != 5 {
		t.Errorf("kubectl exec exit 5: %d %q", code, out)
	}
	if out, code := kubectl("logs", "box", "-c", "main"); code != 0 || !strings.Contains(out, "GET / 200") {
		t.Errorf("kubectl logs: %d %q", code, out)
	}
}

func TestRestartKeepsFiles(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, "restartfs")
	nodeName, stateDir := uniq("dn-restartfs"), t.TempDir()
	first := startNode(t, Config{NodeName: nodeName, StateDir: stateDir})
	createPod(t, overlayPod(ns, "keeper", withInit("count", "echo run >> /bh/runs")))
	pod := waitReady(t, ns, "keeper")
	if code := putFile(t, pod.Status.PodIP, "/data/kept.txt", "still here"); code != http.StatusCreated {
		t.Fatalf("PUT = %d", code)
	}
	mustExec(t, ns, "keeper", "main", nil, "sh", "-c", "echo rootfs > /root-file")
	if err := first.stop(t); err != nil {
		t.Fatal(err)
	}
	// A directory of a Pod that no longer exists is cleaned up at start.
	orphan := filepath.Join(stateDir, "pods", "00000000-0000-0000-0000-000000000000")
	if err := os.MkdirAll(filepath.Join(orphan, "volumes", "x"), 0o755); err != nil {
		t.Fatal(err)
	}

	startNode(t, Config{NodeName: nodeName, StateDir: stateDir})
	waitFor(t, 30*time.Second, "kept file served again", func() (bool, error) {
		resp, err := httpClient.Get(fileURL(pod.Status.PodIP, "/data/kept.txt"))
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && string(b) == "still here", err
	})
	if got := mustExec(t, ns, "keeper", "overlay", nil, "cat", "/bh/runs"); got != "run\n" {
		t.Errorf("init container runs: %q, want one (not run again after the restart)", got)
	}
	if got := mustExec(t, ns, "keeper", "main", nil, "cat", "/root-file"); got != "rootfs\n" {
		t.Errorf("container root after restart: %q", got)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan pod directory: %v", err)
	}
	p := getPod(t, ns, "keeper")
	if cs := p.Status.InitContainerStatuses; len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 0 {
		t.Errorf("init status after restart: %+v", cs)
	}
	// Deleting the Pod removes its directory.
	podDir := filepath.Join(stateDir, "pods", string(p.UID))
	if _, err := os.Stat(podDir); err != nil {
		t.Fatal(err)
	}
	if err := plane.Client.Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, "keeper")
	waitFor(t, 10*time.Second, "pod directory removed", func() (bool, error) {
		_, err := os.Stat(podDir)
		return os.IsNotExist(err), err
	})
}

// Symlinks a container leaves in its own root or in a volume cannot point a sandbox's mounts at
// the host.
func TestSandboxEscapes(t *testing.T) {
	ns := newNamespace(t, "escape")
	n := startNode(t, Config{NodeName: uniq("dn-escape")})
	createPod(t, overlayPod(ns, "esc", func(p *corev1.Pod) {
		main := &p.Spec.Containers[0]
		main.VolumeMounts = append(main.VolumeMounts, corev1.VolumeMount{Name: "scratch", MountPath: "/a/b/c"})
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{
			Name: "sub", Image: "busybox:1.36",
			VolumeMounts: []corev1.VolumeMount{{Name: "overlay-0", SubPath: "link", MountPath: "/linked"}},
		})
	}))
	pod := waitReady(t, ns, "esc")
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "secret"), []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostUnchanged := func() {
		t.Helper()
		entries, _ := os.ReadDir(host)
		if len(entries) != 1 || entries[0].Name() != "secret" {
			t.Errorf("the host directory changed: %v", entries)
		}
	}

	// main's root on disk gets /a replaced by a symlink to the host directory through the place
	// the host root sits during set-up: the next sandbox must not create its mount point there.
	rootfs := filepath.Join(n.containerDir(pod.UID, "main"), "rootfs")
	if err := os.RemoveAll(filepath.Join(rootfs, "a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(oldRoot+host, filepath.Join(rootfs, "a")); err != nil {
		t.Fatal(err)
	}
	out := mustExec(t, ns, "esc", "main", nil, "sh", "-c", "test -d /a/b/c && echo mounted; cat /a/secret "+oldRoot+host+"/secret 2>/dev/null; true")
	if out != "mounted\n" {
		t.Errorf("exec with a planted symlink: %q", out)
	}
	hostUnchanged()

	// A subPath that is a symlink climbing out of the volume is refused.
	for _, target := range []string{strings.Repeat("../", 20) + strings.TrimPrefix(host, "/"), host} {
		mustExec(t, ns, "esc", "main", nil, "sh", "-c", "rm -f /data/link; ln -s "+target+" /data/link")
		r := execPod(t, ns, "esc", "sub", nil, false, "cat", "/linked/secret")
		if r.err == nil || r.exitCode() != -1 || strings.Contains(r.stdout, "host secret") {
			t.Errorf("subPath through a symlink to %s: stdout %q err %v", target, r.stdout, r.err)
		}
		hostUnchanged()
	}
	// A subPath that is a real directory works.
	mustExec(t, ns, "esc", "main", nil, "sh", "-c", "rm -f /data/link; mkdir /data/link; echo inside > /data/link/f")
	if got := mustExec(t, ns, "esc", "sub", nil, "cat", "/linked/f"); got != "inside\n" {
		t.Errorf("subPath: %q", got)
	}
}
