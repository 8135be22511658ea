package natsx_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/natsx/natstest"
)

func TestMain(m *testing.M) {
	natstest.ServeIfAsked()
	os.Exit(m.Run())
}

// TestAcknowledgedWritesSurviveKill: writers compare-and-set keys of the claims bucket as fast
// as they can while the NATS server process is killed with SIGKILL (no shutdown, no flush);
// the server started again on the same store holds every write it acknowledged.
func TestAcknowledgedWritesSurviveKill(t *testing.T) {
	srv := natstest.StartProcess(t, true)
	_, js := srv.Connect()
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
	srv.Stop() // SIGKILL
	close(stop)
	wg.Wait()
	if len(last) == 0 {
		t.Fatal("no write was acknowledged before the kill")
	}

	srv.Restart()
	for key, a := range last {
		var e jetstream.KeyValueEntry
		var err error
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
