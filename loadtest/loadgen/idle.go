package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
)

// IdleScenario measures idle release on the full stack: Claims new tenants claim Workload (which
// must have idle.timeoutSeconds) at Rate, then nobody touches them, and each claim's release lag
// is taken from the KV buckets, not from the services' logs:
//
//   - the deadline is the one idle-reaper recorded for the claim's life in the idle bucket
//     (lastActivity + timeout at full precision; GET /api/v1/tenants/{id} shows the same value,
//     but the claim view's claimedAt is cut to whole seconds, so it is not used);
//   - Releasing is when the claims bucket stored the Active -> Releasing write (the JetStream
//     message's server timestamp, so a slow watcher here does not add lag).
//
// A release before the recorded deadline, or before activation + timeout (a check that does not
// trust the reaper's own deadline), counts as early; a second transition into Releasing, a
// second fired mark in the idle bucket or a reason other than idle is a failure too.
type IdleScenario struct {
	Workload string
	Claims   int
	Rate     float64
	Prefix   string
	// Grace is how long releases are waited for after the last deadline.
	Grace time.Duration
	// Progress gets a line every 10 s while waiting (nil: none).
	Progress io.Writer
}

// IdleResult is what an idle run measured.
type IdleResult struct {
	Claims     int           // claims the run made
	Claim      Report        // the claim calls themselves
	ClaimPhase time.Duration // first claim started -> last claim stored Active
	Active     int           // claims of the run seen Active
	Timeout    time.Duration // the workload's idle timeout (from the claim records)
	// Groups: "deadline to Releasing" (the lag) and "deadline to Released" (the Pod gone).
	Groups   []Summary
	Released int // claims that reached Releasing once, for idle, not early
	// Failures.
	Never, Twice, Early, NotIdle int
	// DeadlineSkew is the largest difference between the recorded deadline and activation +
	// timeout (no activity was sent, so it shows how the reaper placed the deadline).
	DeadlineSkew time.Duration
}

// Failed reports whether any claim was not released exactly once, on time, for idle.
func (r IdleResult) Failed() bool {
	return r.Active < r.Claims || r.Never+r.Twice+r.Early+r.NotIdle > 0
}

// WriteMarkdown prints the result.
func (r IdleResult) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Claim phase: %d claims, %d Active, the last stored Active %s after the first claim started; idle timeout %s.\n\n",
		r.Claims, r.Active, r.ClaimPhase.Round(time.Millisecond), r.Timeout)
	r.Claim.WriteMarkdown(w)
	fmt.Fprintf(w, "\nRelease lag, from each claim's idle deadline:\n\n")
	WriteTable(w, r.Groups)
	fmt.Fprintf(w, "\nreleased once for idle %d of %d; never released %d, released twice %d, early %d, other reason %d; "+
		"largest deadline offset from activation + timeout %s\n",
		r.Released, r.Active, r.Never, r.Twice, r.Early, r.NotIdle, r.DeadlineSkew.Round(time.Microsecond))
}

// RunIdle runs the scenario: claims through c, watches both buckets through nc.
func RunIdle(ctx context.Context, c Client, nc *nats.Conn, sc IdleScenario) (IdleResult, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return IdleResult{}, err
	}
	claimsKV, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		return IdleResult{}, fmt.Errorf("claims bucket: %w", err)
	}
	idleKV, err := js.KeyValue(ctx, messages.BucketIdle)
	if err != nil {
		return IdleResult{}, fmt.Errorf("idle bucket: %w", err)
	}
	// Only this workload's keys ("<tenant>.<workload>").
	filter := "*." + messages.EncodeToken(sc.Workload)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	cw, err := claimsKV.Watch(wctx, filter)
	if err != nil {
		return IdleResult{}, err
	}
	defer func() { _ = cw.Stop() }()
	iw, err := idleKV.Watch(wctx, filter)
	if err != nil {
		return IdleResult{}, err
	}
	defer func() { _ = iw.Stop() }()

	tr := newIdleTracker(sc.Prefix + "-")
	var mu sync.Mutex
	synced := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() {
		cSynced, iSynced, announced := false, false, false
		for {
			select {
			case <-wctx.Done():
				return
			case e, ok := <-cw.Updates():
				if !ok {
					watchErr <- fmt.Errorf("claims watch closed")
					return
				}
				if e == nil {
					cSynced = true
				} else {
					mu.Lock()
					tr.claimEntry(e.Key(), e.Operation() == jetstream.KeyValuePut, e.Value(), e.Created())
					mu.Unlock()
				}
			case e, ok := <-iw.Updates():
				if !ok {
					watchErr <- fmt.Errorf("idle watch closed")
					return
				}
				if e == nil {
					iSynced = true
				} else if e.Operation() == jetstream.KeyValuePut {
					mu.Lock()
					tr.idleEntry(e.Key(), e.Value())
					mu.Unlock()
				}
			}
			if cSynced && iSynced && !announced {
				close(synced)
				announced = true
			}
		}
	}()
	select {
	case <-synced:
	case err := <-watchErr:
		return IdleResult{}, err
	case <-ctx.Done():
		return IdleResult{}, ctx.Err()
	}

	var rec Recorder
	start := time.Now()
	elapsed := Run(ctx, c, Scenario{Workload: sc.Workload, Rate: sc.Rate, Count: sc.Claims, Tenants: TenantSeq(sc.Prefix)}, &rec)

	progress := func(what string) {
		if sc.Progress != nil {
			mu.Lock()
			s := tr.counts()
			mu.Unlock()
			fmt.Fprintf(sc.Progress, "idle: %s after %s: %s\n", what, time.Since(start).Round(time.Second), s)
		}
	}
	// Claims answered Pending (a cold boot slower than the server's wait) turn Active later: wait
	// for every one, or for a minute without progress.
	wait := func(done func() bool, until func() time.Time, what string) error {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		report := time.Now()
		for {
			mu.Lock()
			ok, limit := done(), until()
			mu.Unlock()
			if ok || time.Now().After(limit) {
				return nil
			}
			if time.Since(report) >= 10*time.Second {
				progress(what)
				report = time.Now()
			}
			select {
			case <-tick.C:
			case err := <-watchErr:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	claimed := time.Now()
	if err := wait(func() bool { return tr.active() >= sc.Claims },
		func() time.Time { return claimed.Add(time.Minute) }, "waiting for Active"); err != nil {
		return IdleResult{}, err
	}
	progress("all claims made")
	if err := wait(tr.allReleased, func() time.Time { return tr.lastDeadline().Add(sc.Grace) }, "waiting for releases"); err != nil {
		return IdleResult{}, err
	}
	// A second release would come from a retry or another replica: give it a moment to show.
	time.Sleep(2 * time.Second)
	stop()
	progress("done")

	mu.Lock()
	defer mu.Unlock()
	res := tr.result(start)
	res.Claims, res.Claim = sc.Claims, rec.Summarise(elapsed)
	return res, nil
}

// idleClaim is what the watches saw of one claim of the run.
type idleClaim struct {
	id        string
	activated time.Time // the Active record's UpdatedAt: its activation
	activeAt  time.Time // when the Active record was stored
	timeout   time.Duration
	deadline  time.Time           // recorded by idle-reaper for this life (latest value)
	fired     bool                // the latest idle value is a fired one
	fires     int                 // times idle-reaper marked the deadline fired (asked for the release)
	phase     messages.ClaimPhase // of the latest record seen
	releasing []time.Time         // stored transitions into Releasing (not later Releasing writes)
	reasons   []messages.ReleaseReason
	released  time.Time // stored Released
}

// idleTracker folds bucket entries into per-claim timelines; pure, so it is table-tested.
type idleTracker struct {
	prefix string
	claims map[string]*idleClaim
	// idle values seen before their claim's Active record (watch order across two buckets).
	early map[string]messages.IdleValue
}

func newIdleTracker(prefix string) *idleTracker {
	return &idleTracker{prefix: prefix, claims: map[string]*idleClaim{}, early: map[string]messages.IdleValue{}}
}

func (t *idleTracker) ours(key string) bool {
	tenant, _, err := messages.ParseClaimKey(key)
	return err == nil && strings.HasPrefix(tenant, t.prefix)
}

func (t *idleTracker) claimEntry(key string, put bool, value []byte, stored time.Time) {
	if !put || !t.ours(key) {
		return
	}
	var rec messages.ClaimRecord
	if json.Unmarshal(value, &rec) != nil {
		return
	}
	c := t.claims[key]
	switch rec.Phase {
	case messages.PhaseActive:
		if c == nil || c.id != rec.ID {
			c = &idleClaim{id: rec.ID, activated: rec.UpdatedAt, activeAt: stored,
				timeout: time.Duration(rec.IdleTimeoutSeconds) * time.Second}
			t.claims[key] = c
			if v, ok := t.early[key]; ok {
				t.idleValue(c, v)
				delete(t.early, key)
			}
		}
	case messages.PhaseReleasing:
		// The release saga rewrites a Releasing record as it goes; only entering it counts.
		if c != nil && c.id == rec.ID && c.phase != messages.PhaseReleasing {
			c.releasing = append(c.releasing, stored)
			c.reasons = append(c.reasons, rec.ReleaseReason)
		}
	case messages.PhaseReleased:
		if c != nil && c.id == rec.ID && c.released.IsZero() {
			c.released = stored
		}
	}
	if c != nil && c.id == rec.ID {
		c.phase = rec.Phase
	}
}

func (t *idleTracker) idleEntry(key string, value []byte) {
	if !t.ours(key) {
		return
	}
	var v messages.IdleValue
	if json.Unmarshal(value, &v) != nil {
		return
	}
	if c := t.claims[key]; c != nil && c.id == v.ClaimID {
		t.idleValue(c, v)
		return
	}
	t.early[key] = v
}

func (t *idleTracker) idleValue(c *idleClaim, v messages.IdleValue) {
	if v.ClaimID != c.id {
		return
	}
	c.deadline = v.Deadline()
	if v.Fired && !c.fired {
		c.fires++
	}
	c.fired = v.Fired
}

func (t *idleTracker) active() int { return len(t.claims) }

func (t *idleTracker) allReleased() bool {
	for _, c := range t.claims {
		if c.released.IsZero() {
			return false
		}
	}
	return true
}

// lastDeadline is the latest deadline of the run (activation + timeout where none was recorded).
func (t *idleTracker) lastDeadline() time.Time {
	var last time.Time
	for _, c := range t.claims {
		d := c.deadline
		if d.IsZero() {
			d = c.activated.Add(c.timeout)
		}
		if d.After(last) {
			last = d
		}
	}
	return last
}

func (t *idleTracker) counts() string {
	var releasing, released int
	for _, c := range t.claims {
		if len(c.releasing) > 0 {
			releasing++
		}
		if !c.released.IsZero() {
			released++
		}
	}
	return fmt.Sprintf("%d claims seen Active, %d of them Releasing, %d Released", len(t.claims), releasing, released)
}

// result summarises the run; start is when the first claim was due.
func (t *idleTracker) result(start time.Time) IdleResult {
	var res IdleResult
	var lag, gone Recorder
	var lastActive time.Time
	for _, c := range t.claims {
		res.Active++
		res.Timeout = max(res.Timeout, c.timeout)
		if c.activeAt.After(lastActive) {
			lastActive = c.activeAt
		}
		deadline := c.deadline
		if deadline.IsZero() {
			// The reaper fired without a recorded value we saw: judge against activation.
			deadline = c.activated.Add(c.timeout)
		}
		skew := deadline.Sub(c.activated.Add(c.timeout)).Abs()
		res.DeadlineSkew = max(res.DeadlineSkew, skew)
		switch {
		case len(c.releasing) == 0:
			res.Never++
			continue
		case len(c.releasing) > 1 || c.fires > 1:
			res.Twice++
		case c.reasons[0] != messages.ReasonIdle:
			res.NotIdle++
		case c.releasing[0].Before(deadline) || c.releasing[0].Before(c.activated.Add(c.timeout)):
			res.Early++
		default:
			res.Released++
		}
		lag.Add(Sample{Op: "deadline to Releasing", Latency: c.releasing[0].Sub(deadline)})
		if !c.released.IsZero() {
			gone.Add(Sample{Op: "deadline to Released", Latency: c.released.Sub(deadline)})
		}
	}
	if !lastActive.IsZero() {
		res.ClaimPhase = lastActive.Sub(start)
	}
	res.Groups = append(lag.Summarise(0).Groups, gone.Summarise(0).Groups...)
	slices.SortStableFunc(res.Groups, func(a, b Summary) int { return strings.Compare(b.Group, a.Group) })
	return res
}
