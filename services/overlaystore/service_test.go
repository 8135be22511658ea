package overlaystore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/overlay"
)

var dirs2 = []string{"/data", "/home/agent"}

func TestExtractRestoreRoundTrip(t *testing.T) {
	env := newFakeEnv(t, testWorkload("agent", dirs2...),
		testPod("pod-a", "org.acme", "agent", dirs2, ""), testPod("pod-b", "org.acme", "agent", dirs2, ""))
	ctx := context.Background()
	files := map[string]string{"0/notes.txt": "my notes", "0/sub/deep.txt": "deep", "1/.bashrc": "export X=1"}
	env.exec.addPod(t, "pod-a", 2, files)
	env.exec.addPod(t, "pod-b", 2, nil)
	os.Symlink("sub/deep.txt", env.exec.dir("pod-a", "overlay", "0", "link"))

	snap, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-a"})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Generation != 1 || snap.TenantID != "org.acme" || snap.Workload != "agent" || snap.Path != "org_2eacme/agent/1.tar.gz" || snap.Size == 0 || len(snap.SHA256) != 64 {
		t.Fatalf("snapshot %+v", snap)
	}
	reply, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-b"})
	if err != nil || reply != (messages.RestoreReply{Generation: 1, Restored: true}) {
		t.Fatalf("Restore = %+v, %v", reply, err)
	}
	want := readVolume(t, env.exec.dir("pod-a", "overlay"))
	got := readVolume(t, env.exec.dir("pod-b", "overlay"))
	if fmt.Sprint(got) != fmt.Sprint(want) || got["0/link"] != "-> sub/deep.txt" {
		t.Fatalf("restored\n got %v\nwant %v", got, want)
	}

	// Invariant 3: pod-b was restored from 1 and extracts 2; pod-a (restored from 0) is stale.
	if snap, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-b", RestoredGeneration: 1}); err != nil || snap.Generation != 2 {
		t.Fatalf("extract from pod-b: %+v %v", snap, err)
	}
	calls := len(env.exec.callLog())
	_, err = env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-a", RestoredGeneration: 0})
	if messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("stale extract: %v", err)
	}
	if len(env.exec.callLog()) != calls {
		t.Fatalf("a refused extract exec'd in the Pod: %v", env.exec.callLog()[calls:])
	}
	// A retried extract of pod-b (its reply was lost) continues its own lineage.
	if snap, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-b", RestoredGeneration: 1}); err != nil || snap.Generation != 3 {
		t.Fatalf("retried extract from pod-b: %+v %v", snap, err)
	}
	// Force (resume: false): a new generation, old ones kept.
	if snap, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-a", Force: true}); err != nil || snap.Generation != 4 {
		t.Fatalf("forced extract: %+v %v", snap, err)
	}
	// Restore of a given generation.
	os.RemoveAll(env.exec.dir("pod-b", "overlay", "0", "notes.txt"))
	if reply, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-b", Generation: 3}); err != nil || reply.Generation != 3 {
		t.Fatalf("restore of generation 3: %+v %v", reply, err)
	}
	if b, _ := os.ReadFile(env.exec.dir("pod-b", "overlay", "0", "notes.txt")); string(b) != "my notes" {
		t.Fatalf("generation 3 not restored: %q", b)
	}
	if _, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-b", Generation: 1}); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("restore of a pruned generation: %v", err)
	}

	list, err := env.svc.List(ctx, messages.OverlayListRequest{TenantID: "org.acme"})
	if err != nil || len(list.Snapshots) != 3 || list.Snapshots[0].Generation != 4 {
		t.Fatalf("List = %+v %v", list, err)
	}
	del, err := env.svc.Delete(ctx, messages.OverlayDeleteRequest{TenantID: "org.acme", Workload: "agent"})
	if err != nil || del.Deleted != 3 {
		t.Fatalf("Delete = %+v %v", del, err)
	}
	if reply, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "pod-b"}); err != nil || reply.Restored {
		t.Fatalf("restore after delete = %+v %v", reply, err)
	}

	for _, c := range []struct {
		op, result string
		want       float64
	}{
		{"extract", "saved", 4}, {"extract", "conflict", 1},
		{"restore", "restored", 2}, {"restore", "not_found", 1}, {"restore", "nothing", 1},
	} {
		if got := testutil.ToFloat64(env.svc.metrics.ops.WithLabelValues(c.op, c.result)); got != c.want {
			t.Errorf("boilerhouse_snapshots_total{op=%s,result=%s} = %v, want %v", c.op, c.result, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(env.svc.metrics.duration); n != 2 {
		t.Errorf("%d duration series, want extract and restore", n)
	}
}

func TestNoOverlayDirs(t *testing.T) {
	env := newFakeEnv(t, testWorkload("plain"), testPod("pod-p", "t1", "plain", nil, ""),
		testWorkload("declared", "/data"), testPod("pod-old", "t1", "declared", nil, ""))
	ctx := context.Background()
	snap, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "t1", Workload: "plain", InstanceID: "pod-p"})
	if err != nil || snap != (messages.Snapshot{TenantID: "t1", Workload: "plain"}) {
		t.Fatalf("Extract without overlay dirs = %+v %v", snap, err)
	}
	if reply, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "t1", Workload: "plain", InstanceID: "pod-p"}); err != nil || reply.Restored {
		t.Fatalf("Restore without overlay dirs = %+v %v", reply, err)
	}
	if l, _ := env.svc.List(ctx, messages.OverlayListRequest{}); len(l.Snapshots) != 0 || len(env.exec.callLog()) != 0 {
		t.Fatalf("stored %+v, exec'd %v", l, env.exec.callLog())
	}
	// The workload declares dirs but the Pod has no overlay volumes: loud, not silent.
	if _, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "t1", Workload: "declared", InstanceID: "pod-old"}); messages.CodeOf(err) != messages.CodeInternal {
		t.Fatalf("Extract from a Pod without the declared volumes: %v", err)
	}
}

func TestRestoreThroughInitContainer(t *testing.T) {
	env := newFakeEnv(t, testWorkload("agent", "/data"),
		testPod("src", "t1", "agent", []string{"/data"}, ""),
		testPod("cold", "t1", "agent", []string{"/data"}, "running"),
		testPod("waiting", "t1", "agent", []string{"/data"}, "waiting"),
		testPod("empty-cold", "t2", "agent", []string{"/data"}, "running"),
	)
	ctx := context.Background()
	env.exec.addPod(t, "src", 1, map[string]string{"0/state.db": "rows"})
	env.exec.addPod(t, "cold", 1, nil)
	env.exec.addPod(t, "empty-cold", 1, nil)
	if _, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "t1", Workload: "agent", InstanceID: "src"}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "t1", Workload: "agent", InstanceID: "waiting"}); messages.CodeOf(err) != messages.CodeUnavailable {
		t.Fatalf("restore before the init container runs: %v", err)
	}
	reply, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "t1", Workload: "agent", InstanceID: "cold"})
	if err != nil || !reply.Restored {
		t.Fatalf("Restore = %+v %v", reply, err)
	}
	calls := env.exec.callLog()
	if len(calls) != 3 || !strings.HasPrefix(calls[1], "cold/overlay-restore: tar -x") || !strings.HasPrefix(calls[2], "cold/overlay-restore: touch /bh/restored") {
		t.Fatalf("exec calls %q", calls)
	}
	if b, _ := os.ReadFile(env.exec.dir("cold", "overlay", "0", "state.db")); string(b) != "rows" {
		t.Fatalf("restored %q", b)
	}
	if _, err := os.Stat(env.exec.dir("cold", "bh", "restored")); err != nil {
		t.Fatalf("marker not created: %v", err)
	}
	// Nothing stored for t2: the init container is released all the same.
	if reply, err := env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "t2", Workload: "agent", InstanceID: "empty-cold"}); err != nil || reply.Restored {
		t.Fatalf("Restore of nothing = %+v %v", reply, err)
	}
	if _, err := os.Stat(env.exec.dir("empty-cold", "bh", "restored")); err != nil {
		t.Fatalf("marker not created when nothing is stored: %v", err)
	}
}

func TestPodOwnershipChecked(t *testing.T) {
	unmanaged := testPod("unmanaged", "t1", "agent", []string{"/data"}, "")
	delete(unmanaged.Labels, v1alpha1.LabelManaged)
	late := testPod("late", "", "agent", []string{"/data"}, "")
	env := newFakeEnv(t, testWorkload("agent", "/data"), unmanaged, late,
		testPod("other", "t2", "agent", []string{"/data"}, ""),
		testPod("wrong-workload", "t1", "other", []string{"/data"}, ""),
		testPod("unlabelled", "", "agent", []string{"/data"}, ""),
	)
	ctx := context.Background()
	for _, p := range []string{"unmanaged", "other", "wrong-workload", "unlabelled", "late"} {
		env.exec.addPod(t, p, 1, map[string]string{"0/f": "data of " + p})
	}
	put(t, env.store, "t1", "agent", "stored data of t1")
	for _, tc := range []struct {
		pod  string
		code messages.Code
	}{
		{"unmanaged", messages.CodeInvalidArgument},
		{"other", messages.CodeConflict},
		{"wrong-workload", messages.CodeConflict},
		{"unlabelled", messages.CodeConflict},
		{"missing", messages.CodeNotFound},
	} {
		_, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "t1", Workload: "agent", InstanceID: tc.pod})
		if messages.CodeOf(err) != tc.code {
			t.Errorf("Extract from %s: %v, want %s", tc.pod, err, tc.code)
		}
		_, err = env.svc.Restore(ctx, messages.RestoreRequest{TenantID: "t1", Workload: "agent", InstanceID: tc.pod})
		if messages.CodeOf(err) != tc.code {
			t.Errorf("Restore into %s: %v, want %s", tc.pod, err, tc.code)
		}
	}
	if calls := env.exec.callLog(); len(calls) != 0 {
		t.Fatalf("exec'd into refused Pods: %q", calls)
	}
	// A pool Pod labelled just after acquisition is waited for.
	go func() {
		time.Sleep(100 * time.Millisecond)
		p := &corev1.Pod{}
		env.kube.Get(ctx, client.ObjectKey{Namespace: ns, Name: "late"}, p)
		p.Labels[v1alpha1.LabelTenant] = "t1"
		env.kube.Update(ctx, p)
	}()
	if _, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "t1", Workload: "agent", InstanceID: "late", RestoredGeneration: 1}); err != nil {
		t.Fatalf("Extract from a Pod labelled late: %v", err)
	}
	for _, bad := range []messages.ExtractRequest{
		{TenantID: "", Workload: "agent", InstanceID: "x"},
		{TenantID: "t1", Workload: "Agent", InstanceID: "x"},
		{TenantID: "t1", Workload: "agent"},
		{TenantID: "t1", Workload: "agent", InstanceID: "x", RestoredGeneration: -1},
	} {
		if _, err := env.svc.Extract(ctx, bad); messages.CodeOf(err) != messages.CodeInvalidArgument {
			t.Errorf("Extract(%+v): %v", bad, err)
		}
	}
}

// put stores raw bytes as the next generation, bypassing Pack (hostile archives).
func put(t *testing.T, s overlay.Store, tenant, workload, body string) messages.Snapshot {
	t.Helper()
	snap, err := s.Put(context.Background(), tenant, workload, 0, true, "", func(w io.Writer) error {
		_, err := io.WriteString(w, body)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// hostileArchive is a gzipped tar with a good file first and an escaping entry after it.
func hostileArchive(t *testing.T, evil func(tw *tarWriter)) string {
	t.Helper()
	var buf bytes.Buffer
	tw := newTarWriter(&buf)
	tw.dir("data/")
	tw.file("data/innocent.txt", "looks fine")
	evil(tw)
	tw.close()
	return buf.String()
}

func TestHostileStoredArchiveNeverReachesThePod(t *testing.T) {
	cases := []struct {
		name string
		evil func(tw *tarWriter)
	}{
		{"absolute path", func(tw *tarWriter) { tw.file("/etc/cron.d/evil", "* * * * * root sh") }},
		{"dot-dot", func(tw *tarWriter) { tw.file("data/../../etc/passwd", "root::0:0") }},
		{"escaping symlink", func(tw *tarWriter) { tw.symlink("data/etc", "../../../etc") }},
		{"write through a symlink", func(tw *tarWriter) { tw.symlink("data/l", "innocent-dir"); tw.file("data/l/x", "x") }},
		{"device", func(tw *tarWriter) { tw.device("data/mem") }},
		{"undeclared dir", func(tw *tarWriter) { tw.file("root/.ssh/authorized_keys", "ssh-ed25519 AAAA") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newFakeEnv(t, testWorkload("agent", "/data"), testPod("victim", "t1", "agent", []string{"/data"}, "running"))
			env.exec.addPod(t, "victim", 1, nil)
			put(t, env.store, "t1", "agent", hostileArchive(t, tc.evil))
			_, err := env.svc.Restore(context.Background(), messages.RestoreRequest{TenantID: "t1", Workload: "agent", InstanceID: "victim"})
			if messages.CodeOf(err) != messages.CodeInternal || !strings.Contains(err.Error(), "nothing restored") {
				t.Fatalf("Restore = %v", err)
			}
			if calls := env.exec.callLog(); len(calls) != 0 {
				t.Fatalf("exec'd into the Pod: %q", calls)
			}
			if got := readVolume(t, env.exec.dir("victim")); len(got) != 0 {
				t.Fatalf("written into the Pod: %v", got)
			}
		})
	}
	t.Run("tampered archive", func(t *testing.T) {
		env := newFakeEnv(t, testWorkload("agent", "/data"), testPod("src", "t1", "agent", []string{"/data"}, ""), testPod("dst", "t1", "agent", []string{"/data"}, ""))
		env.exec.addPod(t, "src", 1, map[string]string{"0/f": strings.Repeat("data ", 1000)})
		env.exec.addPod(t, "dst", 1, nil)
		if _, err := env.svc.Extract(context.Background(), messages.ExtractRequest{TenantID: "t1", Workload: "agent", InstanceID: "src"}); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(env.store.Root(), "t1", "agent", "1.tar.gz")
		raw, _ := os.ReadFile(p)
		raw[len(raw)/2] ^= 0x55
		os.WriteFile(p, raw, 0o600)
		_, err := env.svc.Restore(context.Background(), messages.RestoreRequest{TenantID: "t1", Workload: "agent", InstanceID: "dst"})
		if messages.CodeOf(err) != messages.CodeInternal {
			t.Fatalf("Restore of a tampered archive = %v", err)
		}
		if got := readVolume(t, env.exec.dir("dst", "overlay")); len(got) != 0 {
			t.Fatalf("written into the Pod: %v", got)
		}
	})
}

func TestExtractFailuresCommitNothing(t *testing.T) {
	env := newFakeEnv(t, testWorkload("agent", "/data"), testPod("p", "t1", "agent", []string{"/data"}, ""))
	ctx := context.Background()
	env.exec.addPod(t, "p", 1, map[string]string{"0/f": "v1"})
	if _, err := env.svc.Extract(ctx, messages.ExtractRequest{TenantID: "t1", Workload: "agent", InstanceID: "p"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(env.exec.dir("p", "overlay", "0", "f"), []byte("v2"), 0o644)
	req := messages.ExtractRequest{TenantID: "t1", Workload: "agent", InstanceID: "p", RestoredGeneration: 1}

	env.exec.fail["p"] = 2 // tar ran to the end of its stream but exited 2 (a file it could not read)
	if _, err := env.svc.Extract(ctx, req); messages.CodeOf(err) != messages.CodeInternal || !strings.Contains(err.Error(), "exit status 2") {
		t.Fatalf("tar exit 2: %v", err)
	}
	env.exec.fail["p"] = -1 // the exec connection failed
	if _, err := env.svc.Extract(ctx, req); messages.CodeOf(err) != messages.CodeUnavailable {
		t.Fatalf("exec failure: %v", err)
	}
	// The Pod disappears while tar runs: not_found.
	env.exec.fail["p"] = -1
	env.exec.before = func(pod string) {
		p := &corev1.Pod{}
		env.kube.Get(ctx, client.ObjectKey{Namespace: ns, Name: pod}, p)
		env.kube.Delete(ctx, p)
	}
	if _, err := env.svc.Extract(ctx, req); messages.CodeOf(err) != messages.CodeNotFound || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("Pod gone mid-extract: %v", err)
	}
	env.exec.before = nil
	env.kube.Create(ctx, testPod("p", "t1", "agent", []string{"/data"}, ""))
	if snap, _, _ := env.store.Latest(ctx, "t1", "agent"); snap.Generation != 1 {
		t.Fatalf("a failed extract committed generation %d", snap.Generation)
	}
	// Too large: invalid_argument, nothing committed.
	small, _ := New(Config{Client: env.kube, Executor: env.exec, Store: env.store, Namespace: ns, Limits: overlay.Limits{MaxTotalBytes: 1}, Logger: env.svc.log})
	if _, err := small.Extract(ctx, req); messages.CodeOf(err) != messages.CodeInvalidArgument || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("too large: %v", err)
	}
	if snap, _, _ := env.store.Latest(ctx, "t1", "agent"); snap.Generation != 1 {
		t.Fatalf("a failed extract committed generation %d", snap.Generation)
	}
	if rc, _, err := env.store.Open(ctx, "t1", "agent", 0); err != nil {
		t.Fatal(err)
	} else {
		_, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("generation 1 damaged: %v", err)
		}
	}
}

// TestServeOverNATS: the four subjects through the bus, in the queue group, with Run's
// graceful stop.
func TestServeOverNATS(t *testing.T) {
	srv, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer natsx.Shutdown(srv)
	nc, err := natsx.ConnectInProcess(srv, nats.Name("overlaystore-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	env := newFakeEnv(t, testWorkload("agent", "/data"), testPod("p", "org.acme", "agent", []string{"/data"}, ""))
	env.exec.addPod(t, "p", 1, map[string]string{"0/hello": "world"})
	svc, err := New(Config{Client: env.kube, Executor: env.exec, Store: env.store, NATS: nc, Namespace: ns, Logger: env.svc.log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	<-svc.Ready()

	extract := bus.Client[messages.ExtractRequest, messages.Snapshot](nc, messages.SubjectOverlaysExtract, 10*time.Second)
	restore := bus.Client[messages.RestoreRequest, messages.RestoreReply](nc, messages.SubjectOverlaysRestore, 10*time.Second)
	list := bus.Client[messages.OverlayListRequest, messages.SnapshotList](nc, messages.SubjectOverlaysList, 10*time.Second)
	del := bus.Client[messages.OverlayDeleteRequest, messages.OverlayDeleteReply](nc, messages.SubjectOverlaysDelete, 10*time.Second)

	snap, err := extract(ctx, messages.ExtractRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "p"})
	if err != nil || snap.Generation != 1 {
		t.Fatalf("extract = %+v %v", snap, err)
	}
	if _, err := extract(ctx, messages.ExtractRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "x", RestoredGeneration: 0}); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("extract from a missing instance: %v", err)
	}
	if r, err := restore(ctx, messages.RestoreRequest{TenantID: "org.acme", Workload: "agent", InstanceID: "p"}); err != nil || r.Generation != 1 {
		t.Fatalf("restore = %+v %v", r, err)
	}
	l, err := list(ctx, messages.OverlayListRequest{})
	if err != nil || len(l.Snapshots) != 1 || l.Snapshots[0].TenantID != "org.acme" {
		t.Fatalf("list = %+v %v", l, err)
	}
	if d, err := del(ctx, messages.OverlayDeleteRequest{TenantID: "org.acme", Workload: "agent"}); err != nil || d.Deleted != 1 {
		t.Fatalf("delete = %+v %v", d, err)
	}
	if _, err := del(ctx, messages.OverlayDeleteRequest{TenantID: "org.acme"}); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Fatalf("delete without a workload: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := list(context.Background(), messages.OverlayListRequest{}); messages.CodeOf(err) != messages.CodeUnavailable {
		t.Fatalf("list after stop: %v", err)
	}
}
