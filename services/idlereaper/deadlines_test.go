package idlereaper

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
)

func TestTimersOrderRearmRemove(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }
	id := func(k string) timerID { return timerID{k, timerCheck} }
	tm := newTimers()
	tm.set(id("c"), at(3))
	tm.set(id("a"), at(1))
	tm.set(id("b"), at(2))
	tm.set(timerID{"a", timerProbe}, at(2)) // same key, other kind: its own entry
	tm.set(id("d"), at(4))

	tm.set(id("a"), at(5)) // re-armed later: a moves behind d
	tm.set(id("d"), at(0)) // re-armed earlier: d first
	tm.remove(id("b"))
	tm.remove(id("b")) // removing twice is a no-op
	if tm.len() != 4 || tm.has(id("b")) {
		t.Fatalf("len %d, has b %v; want 4 entries without b", tm.len(), tm.has(id("b")))
	}
	if next, ok := tm.next(); !ok || !next.Equal(at(0)) {
		t.Fatalf("next %v %v, want %v", next, ok, at(0))
	}
	got := tm.popDue(at(3), nil)
	want := []timerID{id("d"), {"a", timerProbe}, id("c")}
	if !slices.Equal(got, want) {
		t.Fatalf("due at 3s: %v, want %v", got, want)
	}
	if got := tm.popDue(at(4), nil); len(got) != 0 {
		t.Fatalf("due at 4s: %v, want none (a was moved to 5s)", got)
	}
	if got := tm.popDue(at(5), nil); !slices.Equal(got, []timerID{id("a")}) {
		t.Fatalf("due at 5s: %v, want a", got)
	}
	if _, ok := tm.next(); ok || tm.len() != 0 {
		t.Fatal("timers left after popping everything")
	}
}

// TestTimersRandom checks the heap against a sorted model over random sets, moves and removals.
func TestTimersRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Unix(0, 0)
	tm := newTimers()
	model := map[timerID]time.Time{}
	for range 20000 {
		id := timerID{fmt.Sprint(rng.IntN(500)), timerKind(rng.IntN(2))}
		switch rng.IntN(4) {
		case 0:
			tm.remove(id)
			delete(model, id)
		default:
			at := base.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
			tm.set(id, at)
			model[id] = at
		}
	}
	if tm.len() != len(model) {
		t.Fatalf("%d timers, model %d", tm.len(), len(model))
	}
	cut := base.Add(500 * time.Millisecond)
	got := tm.popDue(cut, nil)
	var want []timerID
	for id, at := range model {
		if !at.After(cut) {
			want = append(want, id)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d due, want %d", len(got), len(want))
	}
	for i, id := range got {
		if model[id].After(cut) || (i > 0 && model[id].Before(model[got[i-1]])) {
			t.Fatalf("pop %d: %v at %v out of order or not due", i, id, model[id])
		}
		delete(model, id)
	}
	if next, ok := tm.next(); ok {
		for _, at := range model {
			if at.Before(next) {
				t.Fatalf("next %v, but %v is armed", next, at)
			}
		}
	}
}

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sec := func(s float64) time.Time { return now.Add(time.Duration(s * float64(time.Second))) }
	rec := messages.ClaimRecord{ID: "c1", IdleTimeoutSeconds: 10}
	armedAt := func(last time.Time) idleState {
		return idleState{rev: 7, live: true, val: messages.IdleValue{ClaimID: "c1", LastActivity: last, TimeoutSeconds: 10}, at: last}
	}
	fired := idleState{rev: 8, live: true, val: messages.IdleValue{ClaimID: "c1", LastActivity: sec(-11), TimeoutSeconds: 10, Fired: true}, at: sec(-1)}
	firedThenMarker := fired
	firedThenMarker.rev, firedThenMarker.live = 9, false
	const debounce, firedTTL = time.Second, 30 * time.Second
	for _, c := range []struct {
		name string
		v    keyView
		want decision
	}{
		{"new claim: arm", keyView{rec: rec, last: sec(-2)},
			decision{act: actArm, last: sec(-2)}},
		{"new claim, deadline passed: fire", keyView{rec: rec, last: sec(-10)},
			decision{act: actFire, last: sec(-10)}},
		{"armed: wait for the deadline", keyView{rec: rec, st: armedAt(sec(-3)), last: sec(-3)},
			decision{next: sec(7)}},
		{"armed, deadline passed: fire", keyView{rec: rec, st: armedAt(sec(-10)), last: sec(-10)},
			decision{act: actFire, last: sec(-10)}},
		{"armed for another life: arm this one", keyView{rec: messages.ClaimRecord{ID: "c2", IdleTimeoutSeconds: 10}, st: armedAt(sec(-30)), last: sec(-1)},
			decision{act: actArm, last: sec(-1)}},
		{"marker after the deadline: fire", keyView{rec: rec, st: idleState{rev: 8, val: armedAt(sec(-10)).val}, last: sec(-10)},
			decision{act: actFire, last: sec(-10)}},
		{"fired: nothing, activity too late", keyView{rec: rec, st: fired, last: sec(-11), pending: sec(0), hasPending: true},
			decision{dropPending: true}},
		{"marker soon after fired: wait for the fired value's own expiry", keyView{rec: rec, st: firedThenMarker, last: sec(-11)},
			decision{next: sec(29)}},
		{"fired value expired: ask again", keyView{rec: rec, st: firedThenMarker, last: sec(-11)},
			decision{act: actFire, last: sec(-11)}}, // evaluated at now+30s below
		{"activity within the debounce: hold, deadline too", keyView{rec: rec, st: armedAt(sec(-10)), last: sec(-10), pending: sec(-0.2), hasPending: true, wrote: sec(-0.5)},
			decision{next: sec(0.5)}},
		{"activity after the debounce: arm it", keyView{rec: rec, st: armedAt(sec(-5)), last: sec(-5), pending: sec(-0.2), hasPending: true, wrote: sec(-2)},
			decision{act: actArm, last: sec(-0.2), dropPending: true, fromPending: true}},
		{"activity not newer than the armed one: dropped", keyView{rec: rec, st: armedAt(sec(-1)), last: sec(-1), pending: sec(-2), hasPending: true},
			decision{next: sec(9), dropPending: true}},
		{"activity older than the timeout: dropped, fire", keyView{rec: rec, last: sec(-20), pending: sec(-15), hasPending: true},
			decision{act: actFire, last: sec(-20), dropPending: true}},
		{"after a failed write: wait", keyView{rec: rec, last: sec(-20), retryAt: sec(0.1)},
			decision{next: sec(0.1)}},
	} {
		at := now
		if c.name == "fired value expired: ask again" {
			at = sec(30)
		}
		if got := decide(c.v, at, debounce, firedTTL); got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
	}
}

// TestStaleMarkerAfterFiredDoesNotReleaseAgain: a delete marker that lands on a fired key long
// before the fired value's own TTL (the server's expiry of the value the fired write replaced)
// must not start a second release; the retry comes when the fired value would have expired.
func TestStaleMarkerAfterFiredDoesNotReleaseAgain(t *testing.T) {
	e := newEnv(t)
	e.reaper(Config{FiredTTL: 2 * time.Second})
	js, _ := jetstream.New(e.nc)
	idle, err := js.KeyValue(e.ctx, messages.BucketIdle)
	if err != nil {
		t.Fatal(err)
	}
	key := messages.ClaimKey("gina", "w")
	old := time.Now().Add(-time.Minute)
	v, _ := json.Marshal(messages.IdleValue{ClaimID: "c-gina", LastActivity: old, TimeoutSeconds: 5, Fired: true})
	if _, err := idle.Put(e.ctx, key, v); err != nil {
		t.Fatal(err)
	}
	rec := messages.ClaimRecord{TenantID: "gina", Workload: "w", ID: "c-gina", Phase: messages.PhaseActive, InstanceID: "i-gina",
		ClaimedAt: messages.Timestamp(old), IdleTimeoutSeconds: 5, CreatedAt: old.UTC(), UpdatedAt: old.UTC()}
	b, _ := json.Marshal(rec)
	if _, err := e.claims.Put(e.ctx, key, b); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the reaper sees the fired key: nothing to do
	if err := idle.Delete(e.ctx, key); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	time.Sleep(time.Second)
	if _, ok := e.releasedAt(key); ok {
		t.Fatal("a marker right after the fired value released the claim (again)")
	}
	at := e.waitReleased(key, 4*time.Second)
	if d := at.Sub(deleted); d < time.Second || d > 3*time.Second {
		t.Fatalf("asked again %s after the marker, want when the fired value's 2 s were over", d)
	}
	time.Sleep(200 * time.Millisecond)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.calls[key] != 1 {
		t.Fatalf("%d release calls, want 1", e.calls[key])
	}
}
