package claimrouter

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

func TestStore(t *testing.T) {
	env := newEnv(t, nil)
	ctx := context.Background()
	st := NewStore(env.kv, testLogger())
	now := time.Now()
	a := NewPending(messages.ClaimRequest{TenantID: "org.acme", Workload: "demo"}, "c1", "r1", now, time.Minute)

	if e, err := st.Get(ctx, messages.ClaimKey("org.acme", "demo")); e != nil || err != nil {
		t.Fatalf("Get of an absent key = %+v, %v", e, err)
	}
	e1, err := st.Create(ctx, a)
	if err != nil || e1.Key != "org_2eacme.demo" || e1.Revision == 0 {
		t.Fatalf("Create = %+v, %v", e1, err)
	}
	if _, err := st.Create(ctx, a); !natsx.IsConflict(err) {
		t.Fatalf("second Create: %v, want a conflict", err)
	}
	active := a
	active.Phase = messages.PhaseActive
	e2, err := st.Update(ctx, active, e1.Revision)
	if err != nil || e2.Revision <= e1.Revision {
		t.Fatalf("Update = %+v, %v", e2, err)
	}
	if _, err := st.Update(ctx, active, e1.Revision); !natsx.IsConflict(err) {
		t.Fatalf("Update at a stale revision: %v, want a conflict", err)
	}
	if err := st.Delete(ctx, e2.Key, e1.Revision); !natsx.IsConflict(err) {
		t.Fatalf("Delete at a stale revision: %v, want a conflict", err)
	}
	got, err := st.Get(ctx, e2.Key)
	if err != nil || got.Record.Phase != messages.PhaseActive || got.Revision != e2.Revision {
		t.Fatalf("Get = %+v, %v", got, err)
	}

	// Transition re-reads after losing a compare-and-set.
	calls := 0
	written, _, err := st.Transition(ctx, e2.Key, func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
		calls++
		if calls == 1 {
			// Someone else writes in between.
			if _, err := env.kv.Put(ctx, e2.Key, mustJSON(t, *c)); err != nil {
				t.Fatal(err)
			}
		}
		next := *c
		next.Detail = "touched"
		return next, nil
	})
	if err != nil || calls != 2 || written.Record.Detail != "touched" {
		t.Fatalf("Transition: calls %d, %+v, %v", calls, written, err)
	}
	_, refused, err := st.Transition(ctx, e2.Key, func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
		return Fail(c, "c1", "r1", "x", time.Now()) // Active: refused
	})
	if !errors.Is(err, ErrSuperseded) || refused == nil || refused.Record.Phase != messages.PhaseActive {
		t.Fatalf("refused Transition: %+v, %v", refused, err)
	}

	if err := st.Delete(ctx, written.Key, written.Revision); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if e, err := st.Get(ctx, written.Key); e != nil || err != nil {
		t.Fatalf("Get after Delete = %+v, %v", e, err)
	}
	// A deleted key can be created again.
	if _, err := st.Create(ctx, a); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}

	// Listing: tenants with '.' and '_' stay apart; bad values are skipped.
	for _, tw := range [][2]string{{"org.acme", "other"}, {"org_acme", "demo"}, {"bob", "demo"}} {
		if _, err := st.Create(ctx, NewPending(messages.ClaimRequest{TenantID: tw[0], Workload: tw[1]}, "c", "r", now, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := env.kv.Put(ctx, "zed.demo", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	mine, err := st.ListTenant(ctx, "org.acme")
	if err != nil || len(mine) != 2 || mine[0].Record.TenantID != "org.acme" || mine[1].Record.TenantID != "org.acme" {
		t.Fatalf("ListTenant(org.acme) = %+v, %v", mine, err)
	}
	all, err := st.List(ctx)
	if err != nil || len(all) != 4 {
		t.Fatalf("List = %d entries, %v; want 4 (the bad value skipped)", len(all), err)
	}
	if none, err := st.ListTenant(ctx, "nobody"); err != nil || len(none) != 0 {
		t.Fatalf("ListTenant(nobody) = %+v, %v", none, err)
	}
	if _, err := st.Get(ctx, "zed.demo"); messages.CodeOf(err) != messages.CodeInternal {
		t.Fatalf("Get of a bad value: %v, want internal", err)
	}

	// Watch of one key: the current value first, then changes.
	w, err := st.Watch(ctx, "bob.demo")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	next := func() jetstream.KeyValueEntry {
		t.Helper()
		select {
		case e := <-w.Updates():
			return e
		case <-time.After(5 * time.Second):
			t.Fatal("no watch update within 5s")
			return nil
		}
	}
	first := next()
	if first == nil || first.Key() != "bob.demo" {
		t.Fatalf("first watch update %v", first)
	}
	if marker := next(); marker != nil {
		t.Fatalf("want the end-of-initial-values marker, got %v", marker)
	}
	rev, err := env.kv.Put(ctx, "bob.demo", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if e := next(); e == nil || e.Revision() != rev {
		t.Fatalf("watch update %v, want revision %d", e, rev)
	}
}

func mustJSON(t *testing.T, rec messages.ClaimRecord) []byte {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
