package natsx_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

// serveEnv makes the test binary a NATS server (see TestMain): "storeDir port".
const serveEnv = "BH_NATSX_TEST_SERVE"

func TestMain(m *testing.M) {
	if v := os.Getenv(serveEnv); v != "" {
		var dir string
		var port int
		if _, err := fmt.Sscan(v, &dir, &port); err != nil {
			fmt.Fprintln(os.Stderr, serveEnv, err)
			os.Exit(2)
		}
		if _, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: dir, Port: port, SyncAlways: true}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		select {} // until killed
	}
	os.Exit(m.Run())
}

// serverProcess runs a NATS server in a child process on dir and port, and waits until it
// accepts connections.
func serverProcess(t *testing.T, dir string, port int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", serveEnv, dir, port))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("NATS server process not accepting connections: %v", err)
		}
	}
}

// TestAcknowledgedWritesSurviveKill: writers compare-and-set keys of the claims bucket as fast
// as they can while the NATS server process is killed with SIGKILL (no shutdown, no flush);
// the server started again on the same store holds every write it acknowledged.
func TestAcknowledgedWritesSurviveKill(t *testing.T) {
	dir := t.TempDir()
	port := 20000 + rand.IntN(12000) // below the ephemeral range, as natstest explains
	srv := serverProcess(t, dir, port)
	nc, err := natsx.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatal(err)
	}

	type acked struct {
		rev uint64
		val string
	}
	var mu sync.Mutex
	last := map[string]acked{}
	writes := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				key := fmt.Sprintf("w%d-k%d", w, k%4)
				mu.Lock()
				prev, seen := last[key]
				mu.Unlock()
				val := fmt.Sprintf("%s-%d", key, k)
				wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				var rev uint64
				var err error
				if seen {
					rev, err = kv.Update(wctx, key, []byte(val), prev.rev)
				} else {
					rev, err = kv.Create(wctx, key, []byte(val))
				}
				cancel()
				if err != nil {
					return // the server is gone: everything acknowledged is recorded
				}
				mu.Lock()
				last[key] = acked{rev, val}
				writes++
				mu.Unlock()
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	time.Sleep(time.Second)
	if err := srv.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = srv.Wait()
	close(stop)
	wg.Wait()
	if len(last) == 0 {
		t.Fatal("no write was acknowledged before the kill")
	}

	serverProcess(t, dir, port)
	for key, a := range last {
		var e jetstream.KeyValueEntry
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			e, err = kv.Get(rctx, key)
			cancel()
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		switch {
		case err != nil:
			t.Fatalf("%s after the restart: %v", key, err)
		case e.Revision() < a.rev:
			t.Errorf("%s: revision %d after the restart, but %d (%q) was acknowledged", key, e.Revision(), a.rev, a.val)
		case e.Revision() == a.rev && string(e.Value()) != a.val:
			t.Errorf("%s: revision %d holds %q, %q was acknowledged", key, a.rev, e.Value(), a.val)
		}
	}
	t.Logf("%d writes acknowledged on %d keys before the kill; the last of each survived it", writes, len(last))
}
