package poolmanager

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/natsx/natstest"
)

// After the NATS server restarts, the ledger view follows writes of other replicas at once, not
// after the 10-20 s that nats.go takes to notice a watch the new server does not know.
func TestLedgerFollowsAcrossServerRestart(t *testing.T) {
	srv := natstest.Start(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connect := func() (*nats.Conn, jetstream.KeyValue) {
		nc, js := srv.Connect()
		if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{}); err != nil {
			t.Fatal(err)
		}
		kv, err := js.KeyValue(ctx, messages.BucketInstances)
		if err != nil {
			t.Fatal(err)
		}
		return nc, kv
	}
	nc, kv := connect()
	l := newLedger(kv, testLogger())
	synced := make(chan struct{})
	done := make(chan struct{})
	go func() { l.watch(ctx, nc, synced); close(done) }()
	<-synced

	_, other := connect() // another replica
	entry, _ := json.Marshal(LedgerEntry{Workload: "w", Pool: "p", State: StateRetiring})
	if _, err := other.Create(ctx, "before", entry); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "ledger sees 'before'", func() (bool, string) { return l.Held("before"), "" })

	srv.Stop()
	time.Sleep(300 * time.Millisecond)
	srv.Restart()
	restarted := time.Now()
	waitFor(t, 10*time.Second, "other replica writes after the restart", func() (bool, string) {
		_, err := other.Create(ctx, "after", entry)
		if natsx.IsConflict(err) {
			err = nil
		}
		return err == nil, ""
	})
	if err := other.Delete(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "ledger follows writes made after the restart", func() (bool, string) {
		return l.Held("after") && !l.Held("before"), ""
	})
	t.Logf("ledger current %s after the restart", time.Since(restarted).Round(time.Millisecond))
	cancel()
	<-done
}
