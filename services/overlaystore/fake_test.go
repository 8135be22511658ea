package overlaystore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/overlay"
	"boilerhouse.dev/pkg/translate"
)

// fakeExec plays the Pods' containers with directories: <root>/<pod>/overlay/<i> is what the
// helper sees at /overlay/<i>, <root>/<pod>/bh is /bh. tar is the machine's tar.
type fakeExec struct {
	root string
	tar  string

	mu    sync.Mutex
	calls []string // "<pod>/<container>: <command>"
	// fail makes the next exec in a Pod fail: a transport error (code -1) or an exit code.
	fail map[string]int
	// before, if set, runs before every exec.
	before func(pod string)
}

func newFakeExec(t *testing.T) *fakeExec {
	t.Helper()
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Fatal("tar not found: the tests use the real tar")
	}
	return &fakeExec{root: t.TempDir(), tar: tarBin, fail: map[string]int{}}
}

func (f *fakeExec) dir(pod string, parts ...string) string {
	return filepath.Join(append([]string{f.root, pod}, parts...)...)
}

// addPod creates the Pod's volumes, with files (volume-relative path -> content).
func (f *fakeExec) addPod(t *testing.T, pod string, volumes int, files map[string]string) {
	t.Helper()
	for i := 0; i < volumes; i++ {
		if err := os.MkdirAll(f.dir(pod, "overlay", fmt.Sprint(i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(f.dir(pod, "bh"), 0o755)
	for p, body := range files {
		full := f.dir(pod, "overlay", p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func (f *fakeExec) callLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeExec) Exec(ctx context.Context, namespace, pod, container string, command []string, stdin io.Reader, stdout io.Writer) error {
	f.mu.Lock()
	f.calls = append(f.calls, pod+"/"+container+": "+strings.Join(command, " "))
	code, failing := f.fail[pod]
	delete(f.fail, pod)
	before := f.before
	f.mu.Unlock()
	if before != nil {
		before(pod)
	}
	if failing && code < 0 {
		return &ExecError{Container: container, Command: command, ExitCode: -1, Err: errors.New("connection refused")}
	}
	if _, err := os.Stat(f.dir(pod)); err != nil {
		return &ExecError{Container: container, Command: command, ExitCode: -1, Err: errors.New("pod not found")}
	}
	var args []string
	switch strings.Join(command, " ") {
	case strings.Join(overlay.ExtractCommand, " "):
		args = []string{"-c", "-f", "-", "-C", f.dir(pod, "overlay"), "."}
	case strings.Join(overlay.RestoreCommand, " "):
		args = []string{"-x", "-f", "-", "-C", f.dir(pod, "overlay")}
	case strings.Join(overlay.MarkRestoredCommand, " "):
		return os.WriteFile(f.dir(pod, "bh", "restored"), nil, 0o644)
	default:
		return fmt.Errorf("fake exec: unknown command %q", command)
	}
	cmd := exec.CommandContext(ctx, f.tar, args...)
	cmd.Stdin, cmd.Stdout = stdin, stdout
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if failing {
		return &ExecError{Container: container, Command: command, ExitCode: code, Stderr: "injected failure"}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &ExecError{Container: container, Command: command, ExitCode: ee.ExitCode(), Stderr: stderr.String()}
	}
	return err
}

const ns = "boilerhouse"

// testPod is a Pod as the translator makes it: main mounting overlay-<i> at each dir, the
// helper container, and optionally the restore init container.
func testPod(name, tenant, workload string, dirs []string, initState string) *corev1.Pod {
	main := corev1.Container{Name: translate.ContainerName, Image: "app"}
	helper := corev1.Container{Name: overlay.HelperContainer, Image: overlay.DefaultHelperImage}
	for i, d := range dirs {
		v := fmt.Sprintf("%s%d", overlay.VolumePrefix, i)
		main.VolumeMounts = append(main.VolumeMounts, corev1.VolumeMount{Name: v, MountPath: d})
		helper.VolumeMounts = append(helper.VolumeMounts, corev1.VolumeMount{Name: v, MountPath: fmt.Sprintf("%s/%d", overlay.MountRoot, i)})
	}
	labels := map[string]string{v1alpha1.LabelManaged: "true", v1alpha1.LabelWorkload: workload}
	if tenant != "" {
		labels[v1alpha1.LabelTenant] = tenant
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{main, helper}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
			{Name: overlay.HelperContainer, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
		}},
	}
	if initState != "" {
		p.Spec.InitContainers = []corev1.Container{{Name: overlay.RestoreInitContainer, Image: overlay.DefaultHelperImage}}
		st := corev1.ContainerStatus{Name: overlay.RestoreInitContainer}
		switch initState {
		case "running":
			st.State.Running = &corev1.ContainerStateRunning{}
		case "terminated":
			st.State.Terminated = &corev1.ContainerStateTerminated{}
		default:
			st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "PodInitializing"}
		}
		p.Status.InitContainerStatuses = []corev1.ContainerStatus{st}
		p.Status.Phase = corev1.PodPending
		p.Status.ContainerStatuses = nil
	}
	return p
}

func testWorkload(name string, dirs ...string) *v1alpha1.BoilerhouseWorkload {
	w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if len(dirs) > 0 {
		w.Spec.Filesystem = &v1alpha1.FilesystemSpec{OverlayDirs: dirs}
	}
	return w
}

type fakeEnv struct {
	svc   *Service
	exec  *fakeExec
	kube  client.Client
	store *overlay.DirStore
}

func newFakeEnv(t *testing.T, objs ...client.Object) *fakeEnv {
	t.Helper()
	kube := fake.NewClientBuilder().WithScheme(localkube.NewScheme()).WithObjects(objs...).Build()
	fx := newFakeExec(t)
	store, err := overlay.NewDirStore(t.TempDir(), overlay.DirStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(Config{Client: kube, Executor: fx, Store: store, Namespace: ns, LabelWait: 300e6,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeEnv{svc: svc, exec: fx, kube: kube, store: store}
}

func readVolume(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out[rel] = "-> " + l
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			out[rel] = string(b)
		}
		return nil
	})
	return out
}

// tarWriter builds stored archives by hand (gzip of tar), hostile ones included.
type tarWriter struct {
	gz *gzip.Writer
	tw *tar.Writer
}

func newTarWriter(w io.Writer) *tarWriter {
	gz := gzip.NewWriter(w)
	return &tarWriter{gz: gz, tw: tar.NewWriter(gz)}
}

func (w *tarWriter) header(h *tar.Header) {
	h.ModTime = time.Unix(1700000000, 0)
	if err := w.tw.WriteHeader(h); err != nil {
		panic(err)
	}
}

func (w *tarWriter) dir(name string) {
	w.header(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755})
}

func (w *tarWriter) file(name, body string) {
	w.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))})
	io.WriteString(w.tw, body)
}

func (w *tarWriter) symlink(name, target string) {
	w.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
}

func (w *tarWriter) device(name string) {
	w.header(&tar.Header{Typeflag: tar.TypeChar, Name: name, Mode: 0o666, Devmajor: 1, Devminor: 1})
}

func (w *tarWriter) close() {
	w.tw.Close()
	w.gz.Close()
}
