package devstack_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/natsx"
)

const rest = "http://localhost:3000"

// readmeBlock is the command block of README.md that the e2e test runs as a user would.
func readmeBlock(t *testing.T, root string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- The e2e test")
	if !ok {
		t.Fatal("README.md lost its e2e marker")
	}
	_, rest, _ = strings.Cut(rest, "```bash\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok || strings.TrimSpace(block) == "" {
		t.Fatal("README.md e2e block not found")
	}
	return block
}

type stack struct {
	cmd  *exec.Cmd
	done chan error // receives the process's exit
}

// startStack builds `make run`'s binary and starts it in dir, as `make run` would.
func startStack(t *testing.T, root, dir string) *stack {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "devstack")
	build := exec.Command("go", "build", "-o", bin, "./tools/cmd/devstack")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build devstack: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-root", root, "-state", filepath.Join(dir, ".devstack"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KUBECONFIG=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs, err := os.Create(filepath.Join(dir, "devstack.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st := &stack{cmd: cmd, done: make(chan error, 1)}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGINT) // a clean stop ends the sandboxed processes too
			select {
			case <-st.done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-st.done
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("devstack log (tail):\n%s", b)
		}
	})
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Boilerhouse is up") {
				close(up)
			}
		}
		st.done <- cmd.Wait()
	}()
	select {
	case <-up:
	case err := <-st.done:
		st.done <- err
		t.Fatalf("devstack exited before it came up: %v", err)
	case <-time.After(3 * time.Minute):
		t.Fatal("devstack did not come up within 3 minutes")
	}
	return st
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v: %s", url, err, b)
		}
	}
	return resp.StatusCode
}

func postJSON(t *testing.T, url, body string, v any) int {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v: %s", url, err, b)
		}
	}
	return resp.StatusCode
}

func eventually(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestMakeRunEndToEnd drives the dev stack binary as a black box: the README's commands,
// then REST and NATS claims, and a clean shutdown.
func TestMakeRunEndToEnd(t *testing.T) {
	root, err := localkube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st := startStack(t, root, dir)

	eventually(t, "example pool demo ready", 2*time.Minute, func() bool {
		var pool struct {
			Status struct{ Ready int } `json:"status"`
		}
		return getJSON(t, rest+"/api/v1/pools/demo", &pool) == 200 && pool.Status.Ready == 3
	})

	// The README block, as a user runs it.
	script := exec.Command("bash", "-euo", "pipefail", "-c", readmeBlock(t, root))
	script.Dir = dir // the block finds kubectl and nats in .devstack/bin, as a user does
	out, err := script.CombinedOutput()
	t.Logf("README commands:\n%s", out)
	if err != nil {
		t.Fatalf("README commands failed: %v", err)
	}
	for _, want := range []string{
		`"tenantId":"alice"`, `"phase":"Active"`, `"source":"pool"`, // the claim
		`"tenant":"alice"`, `"workload":"demo"`, // the endpoint's demo server
		`"phase":"Released"`,                                       // the release
		`"tenantId":"org.acme"`,                                    // the NATS claim
		"boilerhousepool.boilerhouse.dev/demo",                     // kubectl
		"boilerhouseclaim.boilerhouse.dev/dave-demo condition met", // kubectl wait
		`boilerhouseclaim.boilerhouse.dev "dave-demo" deleted`,     // kubectl delete
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("README commands' output lacks %s", want)
		}
	}

	// REST: new claim, existing claim, errors.
	var first, second messages.ClaimView
	if code := postJSON(t, rest+"/api/v1/tenants/bob/claim", `{"workload":"demo"}`, &first); code != 201 {
		t.Fatalf("first claim: %d %+v", code, first)
	}
	if code := postJSON(t, rest+"/api/v1/tenants/bob/claim", `{"workloadRef":"demo"}`, &second); code != 200 ||
		second.Source != messages.SourceExisting || second.InstanceID != first.InstanceID {
		t.Fatalf("second claim: %d %+v, want 200 existing %s", code, second, first.InstanceID)
	}
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/", first.Endpoint.Host, first.Endpoint.Port))
	if err != nil {
		t.Fatalf("endpoint of bob's claim: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(body, []byte(`"tenant":"bob"`)) && !bytes.Contains(body, []byte(first.InstanceID)) {
		t.Errorf("endpoint answered %s", body)
	}
	if code := postJSON(t, rest+"/api/v1/tenants/Bad%20Tenant!/claim", `{"workload":"demo"}`, nil); code != 400 {
		t.Errorf("invalid tenant: %d, want 400", code)
	}
	if code := postJSON(t, rest+"/api/v1/tenants/carol/claim", `{"workload":"nope"}`, nil); code != 404 {
		t.Errorf("unknown workload: %d, want 404", code)
	}

	// NATS, as another system would publish.
	nc, err := natsx.Connect("nats://127.0.0.1:4222")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	claim := bus.Client[messages.ClaimRequest, messages.ClaimView](nc, messages.SubjectClaimsClaim, time.Minute)
	v, err := claim(context.Background(), messages.ClaimRequest{TenantID: "org.acme", Workload: "demo"})
	if err != nil || v.Source != messages.SourceExisting {
		t.Errorf("NATS claim for org.acme again: %+v %v, want existing", v, err)
	}
	tenant := bus.Client[messages.TenantGetRequest, messages.TenantView](nc, messages.SubjectTenantsGet, 5*time.Second)
	tv, err := tenant(context.Background(), messages.TenantGetRequest{TenantID: "bob"})
	if err != nil || len(tv.Claims) != 1 || tv.Claims[0].Phase != messages.PhaseActive {
		t.Errorf("tenant bob: %+v %v", tv, err)
	}

	// The dev node runs as a child process, and Ctrl-C ends it with the stack.
	nodes := devNodeProcesses(t, filepath.Join(dir, ".devstack", "devnode"))
	if runtime.GOOS == "linux" && len(nodes) != 1 {
		t.Errorf("dev node child processes: %v, want one", nodes)
	}

	// Ctrl-C stops everything cleanly.
	stopped := time.Now()
	if err := st.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-st.done:
		if err != nil {
			t.Errorf("devstack exit: %v", err)
		}
		t.Logf("devstack stopped %v after SIGINT", time.Since(stopped).Round(time.Millisecond))
	case <-time.After(time.Minute):
		t.Fatal("devstack did not stop within a minute of SIGINT")
	}
	for _, pid := range nodes {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Errorf("dev node process %d still runs after the stack stopped", pid)
		}
	}
}

// devNodeProcesses returns the pids of the processes that run a dev node on stateDir, which is
// this test's own (Linux: read from /proc; nil elsewhere).
func devNodeProcesses(t *testing.T, stateDir string) []int {
	t.Helper()
	if runtime.GOOS != "linux" {
		return nil
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(cmdline, []byte("\x00devnode\x00")) && bytes.Contains(cmdline, []byte("\x00"+stateDir+"\x00")) {
			out = append(out, pid)
		}
	}
	return out
}
