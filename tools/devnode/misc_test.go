package devnode

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

func TestNewValidates(t *testing.T) {
	rc := &rest.Config{Host: "https://127.0.0.1:1"}
	bad := map[string]Config{
		"no rest config":   {},
		"bad node name":    {RestConfig: rc, NodeName: "Not_A_Name"},
		"range in 127.0.0": {RestConfig: rc, IPRange: IPRange{First: mustAddr("127.0.0.2"), Last: mustAddr("127.0.1.9")}},
		"range off host":   {RestConfig: rc, IPRange: IPRange{First: mustAddr("127.1.0.1"), Last: mustAddr("128.0.0.1")}},
	}
	for name, cfg := range bad {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	n, err := New(Config{RestConfig: rc})
	if err != nil {
		t.Fatal(err)
	}
	if n.Name() != DefaultNodeName || n.cfg.IPRange != DefaultIPRange || n.cfg.Workers != DefaultWorkers ||
		n.cfg.StateDir != DefaultStateDir(DefaultNodeName) || !strings.HasSuffix(n.cfg.StateDir, "/boilerhouse/devnode/"+DefaultNodeName) {
		t.Errorf("defaults: %+v", n.cfg)
	}
}

func TestRunFailsWithoutAPIServer(t *testing.T) {
	n, err := New(Config{RestConfig: &rest.Config{Host: "http://127.0.0.1:1"}, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Run(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("Run = %v (ctx %v), want a registration error", err, ctx.Err())
	}
	if err := n.Run(ctx); err == nil {
		t.Error("second Run accepted")
	}
}

// TestCommand builds tools/cmd/devnode and runs it against the test control plane: it runs a
// Pod, and on SIGTERM exits 0 with the Pod's listener closed.
func TestCommand(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "devnode")
	build := exec.Command("go", "build", "-o", bin, "boilerhouse.dev/tools/cmd/devnode")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ns := newNamespace(t, "command")
	var logs bytes.Buffer
	nodeName := uniq("dn-command")
	cmd := exec.Command(bin, "--kubeconfig", plane.Kubeconfig, "--node-name", nodeName,
		"--ip-range", "127.4.0.1-127.4.0.254", "--state-dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	createPod(t, demoPod(ns, "cmdpod", "tenant-a"))
	pod := waitReady(t, ns, "cmdpod")
	if pod.Spec.NodeName != nodeName || !strings.HasPrefix(pod.Status.PodIP, "127.4.0.") {
		t.Errorf("node %q IP %q", pod.Spec.NodeName, pod.Status.PodIP)
	}
	if got, err := demoGet(pod.Status.PodIP, 8080); err != nil || got.Pod != "cmdpod" {
		t.Errorf("GET / = %+v, %v", got, err)
	}
	// The command's binary runs sandboxes too (its re-exec hook).
	if r := execPod(t, ns, "cmdpod", "main", nil, false, "sh", "-c", "hostname; exit 4"); r.stdout != "cmdpod\n" || r.exitCode() != 4 {
		t.Errorf("exec through the command's node: %q %v\n%s", r.stdout, r.err, logs.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("devnode exited with %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("devnode did not exit on SIGTERM\n%s", logs.String())
	}
	if ok, err := refused(pod.Status.PodIP, 8080); !ok {
		t.Errorf("after exit: %v", err)
	}
	if testing.Verbose() {
		os.Stderr.Write(logs.Bytes())
	}
}
