package poolmanager

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/overlay"
	"boilerhouse.dev/pkg/translate"
)

// execIn runs cmd in a container of a Pod through the API server (pods/exec, SPDY), as the
// overlay-store does, and fails the test unless it exits 0.
func execIn(t *testing.T, pod, container string, stdin io.Reader, cmd ...string) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(plane.Config)
	if err != nil {
		t.Fatal(err)
	}
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(testNamespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdin: stdin != nil, Stdout: true, Stderr: true},
			scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(plane.Config, "POST", req.URL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: &stdout, Stderr: &stderr}); err != nil {
		t.Fatalf("exec %q in %s/%s: %v (stdout %q, stderr %q)", cmd, pod, container, err, stdout.String(), stderr.String())
	}
}

// tarOf builds a plain tar of files (name -> content).
func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func initState(p *corev1.Pod, name string) string {
	for _, s := range p.Status.InitContainerStatuses {
		if s.Name == name {
			switch {
			case s.State.Running != nil:
				return "running"
			case s.State.Terminated != nil:
				return "terminated"
			}
			return "waiting"
		}
	}
	return "none"
}

func TestBootWithRestore(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "restore", func(w *v1alpha1.BoilerhouseWorkload) {
		w.Spec.Idle = &v1alpha1.IdleSpec{Action: v1alpha1.IdleActionDestroy}
	})
	req := bootReq("restore", "org.acme", "restore-claim-1")
	req.RestoreGeneration = 3
	name := translate.ClaimInstanceID("restore", "restore-claim-1")

	// The first boot answers once the restore init container runs: not Ready, awaiting-restore.
	inst, err := boot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if inst.InstanceID != name || inst.Ready || inst.Phase != messages.InstancePhaseAwaitingRestore || inst.TenantID != "org.acme" ||
		inst.Workload != "restore" || !inst.Overlays || inst.ReleaseAction != "destroy" {
		t.Fatalf("first boot = %+v", inst)
	}
	pod, ok := getPod(t, name)
	if !ok {
		t.Fatal("no pod")
	}
	if !RestoreGated(pod) || !HasOverlayHelper(pod) || initState(pod, overlay.RestoreInitContainer) != "running" || PodReady(pod) {
		t.Fatalf("pod: gated %v, helper %v, init %s, ready %v", RestoreGated(pod), HasOverlayHelper(pod),
			initState(pod, overlay.RestoreInitContainer), PodReady(pod))
	}
	if e, ok := ledgerEntry(t, name); !ok || e.RestoreGeneration != 3 || !e.RestoreOffered || e.ClaimID != req.ClaimID || e.State != StateAcquired {
		t.Errorf("ledger entry = %+v, %v", e, ok)
	}

	// A repeated boot while nobody restores waits the grace, then says awaiting-restore again.
	start := time.Now()
	again, err := boot(ctx, req)
	if err != nil || again.Phase != messages.InstancePhaseAwaitingRestore || again.Ready {
		t.Fatalf("repeated boot before the restore = %+v, %v", again, err)
	}
	if d := time.Since(start); d < testRestoreGrace {
		t.Errorf("repeated boot answered after %s, want at least the grace %s", d, testRestoreGrace)
	}

	// A restore boot of the same claim for another tenant is refused.
	other := req
	other.TenantID = "intruder"
	if _, err := boot(ctx, other); messages.CodeOf(err) != messages.CodeConflict {
		t.Errorf("boot of the claim for another tenant: %v, want conflict", err)
	}

	// Restore as the overlay-store does, while a repeated boot (as the claim-router sends it
	// after the restore, here without the generation) already waits: it must answer Ready.
	var wg sync.WaitGroup
	var ready messages.Instance
	var readyErr error
	wg.Go(func() {
		r := req
		r.RestoreGeneration = 0
		ready, readyErr = boot(ctx, r)
	})
	time.Sleep(200 * time.Millisecond)
	execIn(t, name, overlay.RestoreInitContainer, bytes.NewReader(tarOf(t, map[string]string{"0/notes.txt": "restored notes"})),
		overlay.RestoreCommand...)
	execIn(t, name, overlay.RestoreInitContainer, nil, overlay.MarkRestoredCommand...)
	wg.Wait()
	if readyErr != nil {
		t.Fatalf("boot after the restore: %v", readyErr)
	}
	if !ready.Ready || ready.Phase != PhaseBooted || !ready.Overlays || ready.ReleaseAction != "destroy" || ready.InstanceID != name {
		t.Fatalf("boot after the restore = %+v", ready)
	}
	checkEndpoint(t, ready.Endpoint)
	// The workload sees the restored data.
	resp, err := httpClient.Get("http://" + net.JoinHostPort(ready.Endpoint.Host, "8080") + "/files/data/notes.txt")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "restored notes" {
		t.Errorf("restored file through the workload: %d %q", resp.StatusCode, body)
	}
	pod, _ = getPod(t, name)
	if initState(pod, overlay.RestoreInitContainer) != "terminated" {
		t.Errorf("restore init container %s after the restore", initState(pod, overlay.RestoreInitContainer))
	}
	// Once Ready, boots answer Ready at once, with or without the generation.
	for _, g := range []int64{0, 3} {
		r := req
		r.RestoreGeneration = g
		if inst, err := boot(ctx, r); err != nil || !inst.Ready || inst.Phase != PhaseBooted {
			t.Errorf("boot (generation %d) of the ready instance = %+v, %v", g, inst, err)
		}
	}

	if _, err := retire(ctx, retireReq(ready)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "restored pod gone", func() (bool, string) {
		_, ok := getPod(t, name)
		return !ok, "still there"
	})
}

func TestBootWithRestoreErrors(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "no-overlays", func(w *v1alpha1.BoilerhouseWorkload) { w.Spec.Filesystem = nil })
	req := bootReq("no-overlays", "alice", "nothing-to-restore")
	req.RestoreGeneration = 1
	if _, err := boot(ctx, req); messages.CodeOf(err) != messages.CodeInvalidArgument || !strings.Contains(err.Error(), "no overlay directories") {
		t.Errorf("restore into a workload without overlay dirs: %v, want invalid_argument", err)
	}
	req.RestoreGeneration = -1
	if _, err := boot(ctx, req); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Errorf("negative generation: %v, want invalid_argument", err)
	}

	// Without overlays, replies say so; no helper container.
	req.RestoreGeneration = 0
	inst, err := boot(ctx, req)
	if err != nil || !inst.Ready || inst.Overlays || inst.ReleaseAction != "hibernate" {
		t.Fatalf("boot without overlays = %+v, %v", inst, err)
	}
	if p, _ := getPod(t, inst.InstanceID); HasOverlayHelper(p) || len(p.Spec.Containers) != 1 {
		t.Errorf("pod of a workload without overlays has containers %d", len(p.Spec.Containers))
	}
	if _, err := retire(ctx, retireReq(inst)); err != nil {
		t.Fatal(err)
	}

	// A claim whose Pod was booted without a restore cannot turn it into a restore.
	createWorkload(t, "late-restore", nil)
	plain := bootReq("late-restore", "alice", "late-1")
	inst, err = boot(ctx, plain)
	if err != nil || !inst.Ready || !inst.Overlays || inst.Phase != PhaseBooted {
		t.Fatalf("plain boot = %+v, %v", inst, err)
	}
	if p, _ := getPod(t, inst.InstanceID); RestoreGated(p) || !HasOverlayHelper(p) {
		t.Errorf("plain boot pod: gated %v, helper %v", RestoreGated(p), HasOverlayHelper(p))
	}
	plain.RestoreGeneration = 2
	if _, err := boot(ctx, plain); messages.CodeOf(err) != messages.CodeConflict {
		t.Errorf("restore boot of a Pod booted without restore: %v, want conflict", err)
	}
	if _, err := retire(ctx, retireReq(inst)); err != nil {
		t.Fatal(err)
	}

	// A restore boot whose Pod is deleted while it waits for its restore: the init container
	// is stopped, the Pod goes away, and a boot in flight says so.
	createWorkload(t, "abandoned", nil)
	ab := bootReq("abandoned", "bob", "abandoned-1")
	ab.RestoreGeneration = 1
	inst, err = boot(ctx, ab)
	if err != nil || inst.Phase != messages.InstancePhaseAwaitingRestore {
		t.Fatalf("restore boot = %+v, %v", inst, err)
	}
	if reply, err := retire(ctx, retireReq(inst)); err != nil || !reply.Retired {
		t.Fatalf("retire awaiting instance = %+v, %v", reply, err)
	}
	waitFor(t, 20*time.Second, "abandoned pod gone", func() (bool, string) {
		_, ok := getPod(t, inst.InstanceID)
		return !ok, "still there"
	})
}

func TestAcquireReplyOverlays(t *testing.T) {
	ctx := testContext(t)
	createWorkload(t, "acq-ov", func(w *v1alpha1.BoilerhouseWorkload) {
		w.Spec.Idle = &v1alpha1.IdleSpec{Action: v1alpha1.IdleActionDestroy}
	})
	createPool(t, "acq-ov-pool", "acq-ov", 1, nil)
	waitPoolFull(t, "acq-ov-pool", 1)
	req := acquireReq("acq-ov", "carol", "acq-ov-1")
	inst, err := acquire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !inst.Ready || !inst.Overlays || inst.ReleaseAction != "destroy" || inst.Phase != PhaseAcquired {
		t.Fatalf("acquire = %+v", inst)
	}
	// The retried acquire answers the same.
	again, err := acquire(ctx, req)
	if err != nil || again.InstanceID != inst.InstanceID || !again.Overlays || again.ReleaseAction != "destroy" {
		t.Fatalf("retried acquire = %+v, %v", again, err)
	}
	// Pool Pods never carry the restore gate (a pool+data restore execs in the helper).
	if p, _ := getPod(t, inst.InstanceID); RestoreGated(p) || !HasOverlayHelper(p) {
		t.Errorf("pool pod: gated %v, helper %v", RestoreGated(p), HasOverlayHelper(p))
	}
	if _, err := retire(ctx, retireReq(inst)); err != nil {
		t.Fatal(err)
	}
}
