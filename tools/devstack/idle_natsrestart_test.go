package devstack_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/services/claimrouter"
)

// releaseLag is how long after its deadline a claim may turn Releasing. The reaper scans
// every 100 ms and the release is one request and one compare-and-set; the 1 s
// target is for 10,000 claims on a quiet machine, and 0.5 s more allows for a loaded 2-core
// machine. A release that waited for a TTL marker (whole seconds), a watcher's heartbeat
// check (10 s) or a fired key's retry (30 s) is later than this.
const releaseLag = 1500 * time.Millisecond

var natsRestartRuns atomic.Int32

// TestIdleNATSRestart: the NATS server is stopped for 1.5 s and started again on the same
// store while five idle deadlines are pending. Every claim is still released once, with
// reason idle, not before its deadline and at most releaseLag after it; the services recover
// without help: a tenant claims again, gets its data back, and that claim is idle-released
// on time as well.
func TestIdleNATSRestart(t *testing.T) {
	const timeout = 6 * time.Second // room for the claims, 1.5 s down and the restart
	s := startSystem(t)
	s.router(claimrouter.Config{})
	s.store(t.TempDir())
	s.reaper()
	rw := s.watchReleases() // its request count survives the restart: a core subscription is resent
	// The control plane outlives a test: a new workload name per run, so -count=N works.
	wl := fmt.Sprintf("doze-%d", natsRestartRuns.Add(1))
	s.idleWorkload(wl, int32(timeout/time.Second), 5)

	nc, err := natsx.Connect(s.nats.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	idleKV, err := js.KeyValue(s.ctx, messages.BucketIdle)
	if err != nil {
		t.Fatal(err)
	}

	// claim claims tenant and returns the idle deadline the reaper stored for it.
	claim := func(tenant string) (messages.ClaimView, time.Time) {
		t.Helper()
		asked := time.Now()
		code, v := s.restClaim(tenant, wl)
		if code != 201 {
			t.Fatalf("%s: claim %d %+v", tenant, code, v)
		}
		answered := time.Now()
		d := s.idleDeadline(idleKV, tenant, wl)
		// It counts from the activation, which happened while we waited for the answer (a
		// second of slack for a record write just after it).
		if d.Before(asked.Add(timeout)) || d.After(answered.Add(timeout+time.Second)) {
			t.Fatalf("%s: deadline %s, want the claim's activation + %s (claim asked %s, answered %s)",
				tenant, d.Format(time.StampMilli), timeout, asked.Format(time.StampMilli), answered.Format(time.StampMilli))
		}
		return v, d
	}

	// Claims a quarter second apart, so that each release is timed against its own deadline.
	tenants := []string{"n-1", "org.acme", "n-3", "n-4", "n-5"}
	deadlines := map[string]time.Time{}
	var acme messages.ClaimView
	for _, tenant := range tenants {
		var v messages.ClaimView
		v, deadlines[tenant] = claim(tenant)
		if tenant == "org.acme" {
			acme = v
			putFile(t, endpointURL(v, "/files/data/keep.txt"), []byte("before the restart"))
		}
		time.Sleep(250 * time.Millisecond)
	}

	const down = 1500 * time.Millisecond
	first := deadlines[tenants[0]]
	s.nats.Stop()
	time.Sleep(down)
	s.nats.Restart()
	up := time.Now()
	if !up.Before(first) { // on a very slow machine; the premise of the test would not hold
		t.Fatalf("NATS back at %s, after the first deadline %s: no deadline was pending across the restart",
			up.Format(time.StampMilli), first.Format(time.StampMilli))
	}
	t.Logf("NATS restarted %s before the first deadline", first.Sub(up).Round(time.Millisecond))

	for _, tenant := range tenants {
		eventually(t, tenant+" Released", 30*time.Second, func() bool {
			return s.record(tenant, wl).Phase == messages.PhaseReleased
		})
	}
	released := s.releases(js, wl)
	for _, tenant := range tenants {
		key := messages.ClaimKey(tenant, wl)
		at := released[tenant]
		if len(at) != 1 {
			t.Errorf("%s: turned Releasing %d times, want once", tenant, len(at))
			continue
		}
		lag := at[0].Sub(deadlines[tenant])
		t.Logf("%s: Releasing %s after its deadline", tenant, lag.Round(time.Millisecond))
		if lag < 0 || lag > releaseLag {
			t.Errorf("%s: Releasing %s after its deadline, want 0..%s", tenant, lag, releaseLag)
		}
		if rec := s.record(tenant, wl); rec.ReleaseReason != messages.ReasonIdle ||
			!strings.Contains(rec.Detail, "idle") || !strings.Contains(rec.Detail, "hibernated") {
			t.Errorf("%s: released with reason %q detail %q, want idle and hibernated", tenant, rec.ReleaseReason, rec.Detail)
		}
		if n := rw.requests(key); n != 1 {
			t.Errorf("%s: %d idle release requests, want 1", tenant, n)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Every service serves again: a new claim (claim-router, pool-manager), its data restored
	// (overlay-store), and its own idle deadline tracked and fired (idle-reaper's watches).
	again, deadline := claim("org.acme")
	if again.Source != messages.SourcePoolData && again.Source != messages.SourceColdData {
		t.Fatalf("claim after the restart: %+v, want pool+data or cold+data", again)
	}
	if again.InstanceID == acme.InstanceID {
		t.Fatalf("claim after the release got the released instance %s", acme.InstanceID)
	}
	if status, body := getFile(t, endpointURL(again, "/files/data/keep.txt")); status != 200 || string(body) != "before the restart" {
		t.Fatalf("read back %d %q", status, body)
	}
	eventually(t, "second claim Released", 30*time.Second, func() bool {
		return s.record("org.acme", wl).Phase == messages.PhaseReleased
	})
	at := s.releases(js, wl)["org.acme"]
	if len(at) != 2 {
		t.Fatalf("org.acme turned Releasing %d times over two claims, want twice", len(at))
	}
	lag := at[1].Sub(deadline)
	t.Logf("second claim: Releasing %s after its deadline", lag.Round(time.Millisecond))
	if lag < 0 || lag > releaseLag {
		t.Errorf("second claim: Releasing %s after its deadline, want 0..%s", lag, releaseLag)
	}
	if n := rw.requests(messages.ClaimKey("org.acme", wl)); n != 2 {
		t.Errorf("org.acme: %d idle release requests over two claims, want 2", n)
	}
}

// idleDeadline waits for the idle-reaper to arm the current claim of tenant and returns the
// deadline stored in the idle bucket.
func (s *system) idleDeadline(idleKV jetstream.KeyValue, tenant, workload string) time.Time {
	s.t.Helper()
	id := s.record(tenant, workload).ID
	var deadline time.Time
	eventually(s.t, tenant+"'s idle deadline armed", 10*time.Second, func() bool {
		e, err := idleKV.Get(s.ctx, messages.ClaimKey(tenant, workload))
		if err != nil {
			return false
		}
		var v messages.IdleValue
		if err := json.Unmarshal(e.Value(), &v); err != nil || v.ClaimID != id || v.Fired {
			return false
		}
		deadline = v.Deadline()
		return true
	})
	return deadline
}

// releases returns, per tenant, when each claim of workload turned Releasing, read from the
// events stream: a claim event Releasing whose previous claim event was not (progress and
// heartbeat writes of a running release are Releasing too). The stream keeps every event,
// unlike the bucket's history of five revisions, so a claim released twice shows twice. An
// event's time is taken right after its compare-and-set.
func (s *system) releases(js jetstream.JetStream, workload string) map[string][]time.Time {
	s.t.Helper()
	stream, err := js.Stream(s.ctx, messages.StreamEvents)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := stream.Info(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	last := map[string]messages.ClaimPhase{}
	at := map[string][]time.Time{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := stream.GetMsg(s.ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			s.t.Fatalf("event %d: %v", seq, err)
		}
		var ev messages.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			s.t.Fatalf("event %d: %v", seq, err)
		}
		if ev.Kind != messages.EventClaim || ev.Workload != workload || ev.Claim == nil {
			continue
		}
		if ev.Claim.Phase == messages.PhaseReleasing && last[ev.TenantID] != messages.PhaseReleasing {
			at[ev.TenantID] = append(at[ev.TenantID], ev.At)
		}
		last[ev.TenantID] = ev.Claim.Phase
	}
	return at
}

// requests is how many idle release requests were sent for key.
func (rw *releaseWatch) requests(key string) int {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.calls[key]
}
