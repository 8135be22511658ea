package devnode

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSandboxDirect runs sandboxed processes without a node: the view they get, exit codes,
// signals, stdin, and set-up errors. It needs no control plane (see TestSandboxUnprivileged).
func TestSandboxDirect(t *testing.T) {
	base := t.TempDir()
	root, vol, outside := filepath.Join(base, "rootfs"), filepath.Join(base, "vol"), filepath.Join(base, "outside")
	for _, d := range []string{root, vol, outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(vol, "in-volume"), []byte("volume data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) (int, string, string, error) {
		t.Helper()
		spec := &sandboxSpec{
			Root: root, Hostname: "direct", Args: args, Env: []string{"PATH=" + defaultPath},
			Mounts: []sandboxMount{{Source: vol, Target: "/mnt/vol"}, {Source: vol, Target: "/ro", ReadOnly: true}},
			Caps:   capSet(nil, nil),
		}
		var out, errOut bytes.Buffer
		sio := sandboxIO{Stdout: &out, Stderr: &errOut}
		if stdin != "" {
			sio.Stdin = strings.NewReader(stdin)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		code, err := runSandboxed(ctx, spec, sio, nil)
		return code, out.String(), errOut.String(), err
	}

	code, out, errOut, err := run("", "sh", "-c", `id -u; hostname; echo pid=$$; cat /mnt/vol/in-volume
test -e `+outside+` && echo SEEN-OUTSIDE
test -e `+base+` && echo SEEN-BASE
echo new > /mnt/vol/from-sandbox
(echo x > /ro/x) 2>/dev/null && echo RO-WRITABLE
echo err >&2; exit 9`)
	if err != nil || code != 9 || errOut != "err\n" {
		t.Fatalf("run: code %d err %v stderr %q stdout %q", code, err, errOut, out)
	}
	if out != "0\ndirect\npid=1\nvolume data\n" {
		t.Errorf("stdout %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "from-sandbox")); err != nil || string(b) != "new\n" {
		t.Errorf("written through the mount: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(vol, "x")); err == nil {
		t.Error("a read-only mount was written")
	}
	// stdin reaches the command and its end ends it.
	if code, out, _, err := run("line one\nline two\n", "wc", "-l"); err != nil || code != 0 || strings.TrimSpace(out) != "2" {
		t.Errorf("wc -l: %d %q %v", code, out, err)
	}
	// A command that is not there never ran: a set-up error, not an exit code.
	_, _, _, err = run("", "/no/such/binary")
	var setup *errSandboxSetup
	if !errors.As(err, &setup) {
		t.Errorf("missing binary: %v", err)
	}
	// The context ends a command and all it started; killed by a signal, it exits 128 + the
	// signal.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	code, err = runSandboxed(ctx, &sandboxSpec{Root: root, Args: []string{"sh", "-c", "sleep 60 & sleep 60"}, Caps: capSet(nil, nil)}, sandboxIO{}, nil)
	if err != nil || code != 128+int(syscall.SIGKILL) || time.Since(start) > 10*time.Second {
		t.Errorf("cancelled: code %d err %v after %s", code, err, time.Since(start))
	}
}

// TestSandboxUnprivileged runs TestSandboxDirect again as an unprivileged user (nobody), where
// the sandbox adds a user namespace.
func TestSandboxUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test switches to another user and must run as root (as the suite does)")
	}
	dir, err := os.MkdirTemp("", "devnode-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "devnode.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestSandboxDirect$", "-test.v")
	cmd.Dir = dir
	cmd.Env = []string{noPlaneEnv + "=1", "TMPDIR=" + dir, "HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSandboxDirect") {
		t.Fatalf("TestSandboxDirect as nobody: %v\n%s", err, out)
	}
}
