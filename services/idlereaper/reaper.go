// Package idlereaper releases claims that nobody used for their workload's
// idle.timeoutSeconds (release reason "idle").
//
// Design (durable, distributed deadlines):
//
//   - The reaper watches the claims bucket. For every Active claim whose
//     record has IdleTimeoutSeconds > 0 it keeps one key in the idle bucket
//     (same key as the claim) holding a [messages.IdleValue] {claimId,
//     lastActivity, timeoutSeconds}. The key is written with a per-message
//     TTL that ends at lastActivity + timeout, so the deadline lives in
//     JetStream: it survives a restart of the reaper and of the NATS server,
//     and when it passes the server leaves a delete marker that every
//     watcher sees.
//   - Activity (bh.v1.activity.<tenant>.<workload>, queue group
//     "idle-reaper": each message reaches one replica) moves lastActivity
//     forward. Writes are debounced per claim to at most one per
//     max(timeout/10, 100ms); the deadline written is exact (lastActivity +
//     timeout), only its recording may lag by the debounce interval. Each
//     write is a compare-and-set on the key's revision that re-arms the TTL
//     (a KV Update would clear it, so the reaper publishes to the key's
//     subject with an expected last sequence and a TTL header).
//   - A deadline fires when the TTL marker arrives or, for sub-second
//     precision (JetStream expires TTLs on a coarse timer), when the
//     reaper's own 100 ms scan sees lastActivity + timeout pass. Firing is a
//     compare-and-set that replaces the key with a "fired" value (with a
//     short TTL): exactly one replica wins it and asks claim-router for the
//     release; the others see a conflict and do nothing. If the claim is
//     still Active when the fired key expires (claim-router was down), the
//     deadline fires again, so the release is retried.
//   - On start (and for any Active claim without a live key of its life)
//     the reaper reconciles: if max(claimedAt, recorded lastActivity) +
//     timeout has passed the claim is released, otherwise the key is
//     created with the remaining TTL.
//
// The last activity is recorded in the idle bucket only, not in the claim
// record, so activity never writes to the (synchronously flushed) claims
// bucket; claim-router reads it from the idle bucket for the tenant view.
package idlereaper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/client-go/rest"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/services/overlaystore"
)

// QueueIdleReaper is the queue group of the activity subscription.
const QueueIdleReaper = "idle-reaper"

// Defaults of [Config].
const (
	DefaultFiredTTL       = 30 * time.Second
	DefaultMinDebounce    = 100 * time.Millisecond
	DefaultScanInterval   = 100 * time.Millisecond
	DefaultReleaseTimeout = 5 * time.Minute
	// minTTL is the smallest per-message TTL JetStream accepts.
	minTTL = time.Second
)

// Config configures a [Reaper].
type Config struct {
	Conn      *nats.Conn
	JetStream jetstream.JetStream // default jetstream.New(Conn)
	Logger    *slog.Logger
	// FiredTTL is how long the "fired" key of a released claim lives; if the
	// claim is still Active after it, the release is asked again.
	FiredTTL time.Duration
	// MinDebounce is the lower bound of the per-claim activity write
	// interval (timeout/10).
	MinDebounce time.Duration
	// ScanInterval is how often local deadlines are checked.
	ScanInterval time.Duration
	// ReleaseTimeout bounds one release request.
	ReleaseTimeout time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time

	// RestConfig reaches the API server for probing idle.watchDirs (exec
	// into the instance's container "main"); nil: watchDirs are ignored
	// (logged once).
	RestConfig *rest.Config
	// Executor overrides the exec used by the probes (tests); default a
	// KubeExecutor of RestConfig.
	Executor overlaystore.Executor
	// Namespace of the instance Pods; default overlaystore.DefaultNamespace.
	Namespace string
	// ProbeConcurrency bounds the watchDirs probes running at once.
	ProbeConcurrency int
	// ProbeTimeout bounds one watchDirs probe.
	ProbeTimeout time.Duration
}

// Reaper is the idle-reaper service.
type Reaper struct {
	cfg     Config
	log     *slog.Logger
	js      jetstream.JetStream
	release bus.Handler[messages.ReleaseRequest, messages.ClaimView]

	mu       sync.Mutex
	activity map[string]time.Time // coalesced activity not yet handled by the loop
	wake     chan struct{}

	// Owned by the loop goroutine.
	idleKV  jetstream.KeyValue
	claims  map[string]messages.ClaimRecord // Active claims with a timeout
	idle    map[string]idleState
	pending map[string]time.Time // debounced activity waiting for its write
	wrote   map[string]time.Time // last activity write per key

	// watchDirs probing (see watchdirs.go); probes is owned by the loop.
	exec         overlaystore.Executor
	probes       map[string]*probeState
	probeSem     chan struct{}
	probeResults chan probeResult
	warnedNoExec bool

	ready chan struct{}
	fired func(key string) // test hook: called when this replica asks for a release
}

type idleState struct {
	rev  uint64
	live bool               // a value (not a marker) is the latest revision
	val  messages.IdleValue // the latest value seen (kept across a marker)
}

// New checks cfg and builds a Reaper.
func New(cfg Config) (*Reaper, error) {
	if cfg.Conn == nil {
		return nil, errors.New("idlereaper: nil NATS connection")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FiredTTL <= 0 {
		cfg.FiredTTL = DefaultFiredTTL
	}
	if cfg.FiredTTL < minTTL {
		cfg.FiredTTL = minTTL
	}
	if cfg.MinDebounce <= 0 {
		cfg.MinDebounce = DefaultMinDebounce
	}
	if cfg.ScanInterval <= 0 {
		cfg.ScanInterval = DefaultScanInterval
	}
	if cfg.ReleaseTimeout <= 0 {
		cfg.ReleaseTimeout = DefaultReleaseTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Namespace == "" {
		cfg.Namespace = overlaystore.DefaultNamespace
	}
	if cfg.ProbeConcurrency <= 0 {
		cfg.ProbeConcurrency = DefaultProbeConcurrency
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	exec := cfg.Executor
	if exec == nil && cfg.RestConfig != nil {
		ke, err := overlaystore.NewKubeExecutor(cfg.RestConfig)
		if err != nil {
			return nil, fmt.Errorf("idlereaper: kubernetes client: %w", err)
		}
		exec = ke
	}
	js := cfg.JetStream
	if js == nil {
		var err error
		if js, err = jetstream.New(cfg.Conn); err != nil {
			return nil, err
		}
	}
	return &Reaper{
		cfg:      cfg,
		log:      cfg.Logger.With("service", "idle-reaper"),
		js:       js,
		release:  bus.Client[messages.ReleaseRequest, messages.ClaimView](cfg.Conn, messages.SubjectClaimsRelease, cfg.ReleaseTimeout),
		activity: map[string]time.Time{},
		wake:     make(chan struct{}, 1),
		claims:   map[string]messages.ClaimRecord{},
		idle:     map[string]idleState{},
		pending:  map[string]time.Time{},
		wrote:    map[string]time.Time{},
		ready:    make(chan struct{}),

		exec:         exec,
		probes:       map[string]*probeState{},
		probeSem:     make(chan struct{}, cfg.ProbeConcurrency),
		probeResults: make(chan probeResult, cfg.ProbeConcurrency),
	}, nil
}

// Ready is closed once the reaper has read both buckets and reconciled.
func (r *Reaper) Ready() <-chan struct{} { return r.ready }

// Run watches the claims and idle buckets and serves activity until ctx ends.
func (r *Reaper) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	claimsKV, err := r.js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		return fmt.Errorf("idlereaper: claims bucket: %w", err)
	}
	if r.idleKV, err = r.js.KeyValue(ctx, messages.BucketIdle); err != nil {
		return fmt.Errorf("idlereaper: idle bucket: %w", err)
	}
	sub, err := r.cfg.Conn.QueueSubscribe(messages.ActivityWildcard, QueueIdleReaper, r.onActivity)
	if err != nil {
		return fmt.Errorf("idlereaper: subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)

	// Registered before the first watch, so that no reconnect goes unseen.
	reconnected := r.cfg.Conn.StatusChanged(nats.CONNECTED)
	defer r.cfg.Conn.RemoveStatusListener(reconnected)
	w, err := r.watch(ctx, claimsKV)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() { w.stop() }()
	close(r.ready)
	r.log.Info("idle-reaper ready", "claims", len(r.claims))

	tick := time.NewTicker(r.cfg.ScanInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
			// The watches' ordered consumers may not have survived (a restarted server forgets
			// them); nats.go would recreate them only after 10-20 s without heartbeats, and a
			// claim activated meanwhile would go untracked: its activity dropped, its release
			// late. Watch both buckets again from their current state.
			w.stop()
			for {
				if w, err = r.watch(ctx, claimsKV); err == nil {
					break
				}
				if ctx.Err() != nil {
					return nil
				}
				r.log.Warn("watching the buckets again after a reconnect failed; retrying", "err", err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
			r.log.Info("watching the buckets again after a reconnect", "claims", len(r.claims))
		case e, ok := <-w.claims.Updates():
			if !ok {
				return errors.New("idlereaper: claims watch closed")
			}
			if e == nil {
				continue
			}
			if key := r.applyClaim(e); key != "" {
				r.ensure(ctx, key, false)
			}
		case e, ok := <-w.idle.Updates():
			if !ok {
				return errors.New("idlereaper: idle watch closed")
			}
			if e == nil {
				continue
			}
			prev := r.idle[e.Key()]
			r.applyIdle(e)
			if e.Operation() != jetstream.KeyValuePut && e.Revision() >= prev.rev {
				// A TTL marker: the deadline (or a fired key's retry time) passed.
				r.ensure(ctx, e.Key(), true)
			}
		case <-r.wake:
			r.drainActivity(ctx)
		case res := <-r.probeResults:
			r.probed(ctx, res)
		case <-tick.C:
			r.scan(ctx)
		}
	}
}

// watchers are the reaper's watches of the claims and idle buckets.
type watchers struct{ claims, idle jetstream.KeyWatcher }

// stop stops both; a no-op on the zero value (left by a failed watch).
func (w watchers) stop() {
	if w.claims != nil {
		_ = w.claims.Stop()
		_ = w.idle.Stop()
	}
}

// watch watches both buckets, reads their current state (the claims tracked are rebuilt from
// it, so claims that ended while unwatched are dropped) and reconciles every claim.
func (r *Reaper) watch(ctx context.Context, claimsKV jetstream.KeyValue) (watchers, error) {
	cw, err := claimsKV.WatchAll(ctx)
	if err != nil {
		return watchers{}, fmt.Errorf("idlereaper: watch claims: %w", err)
	}
	iw, err := r.idleKV.WatchAll(ctx)
	if err != nil {
		_ = cw.Stop()
		return watchers{}, fmt.Errorf("idlereaper: watch idle: %w", err)
	}
	w := watchers{claims: cw, idle: iw}
	claims := r.claims
	r.claims = map[string]messages.ClaimRecord{}
	claimsSynced, idleSynced := false, false
	for !claimsSynced || !idleSynced {
		var err error
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case e, ok := <-cw.Updates():
			switch {
			case !ok:
				err = errors.New("idlereaper: claims watch closed")
			case e == nil:
				claimsSynced = true
			default:
				r.applyClaim(e)
			}
		case e, ok := <-iw.Updates():
			switch {
			case !ok:
				err = errors.New("idlereaper: idle watch closed")
			case e == nil:
				idleSynced = true
			default:
				r.applyIdle(e)
			}
		}
		if err != nil {
			w.stop()
			r.claims = claims // keep tracking what was known until a watch succeeds
			return watchers{}, err
		}
	}
	for key := range r.claims {
		r.ensure(ctx, key, false)
	}
	return w, nil
}

// applyClaim records a claims-bucket entry; it returns the key when the claim
// is one the reaper tracks.
func (r *Reaper) applyClaim(e jetstream.KeyValueEntry) string {
	key := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(r.claims, key)
		return ""
	}
	var rec messages.ClaimRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		r.log.Warn("malformed claim record", "key", key, "err", err)
		delete(r.claims, key)
		return ""
	}
	if rec.Phase != messages.PhaseActive || rec.IdleTimeoutSeconds <= 0 {
		delete(r.claims, key)
		delete(r.pending, key)
		return ""
	}
	r.claims[key] = rec
	return key
}

func (r *Reaper) applyIdle(e jetstream.KeyValueEntry) {
	key := e.Key()
	st := r.idle[key]
	if e.Revision() < st.rev {
		return // older than what this replica wrote itself
	}
	st.rev = e.Revision()
	if e.Operation() != jetstream.KeyValuePut {
		st.live = false
		r.idle[key] = st
		return
	}
	var v messages.IdleValue
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		st.live = false
		r.idle[key] = st
		return
	}
	st.live, st.val = true, v
	r.idle[key] = st
}

func timeout(rec messages.ClaimRecord) time.Duration {
	return time.Duration(rec.IdleTimeoutSeconds) * time.Second
}

// lastActivity is the best known last activity of the claim's current life.
func (r *Reaper) lastActivity(key string, rec messages.ClaimRecord) time.Time {
	// ClaimedAt is truncated to seconds; UpdatedAt of an Active record is
	// its activation (or a later write), so never earlier than the truth.
	last := rec.UpdatedAt
	if rec.ClaimedAt != nil && rec.ClaimedAt.After(last) {
		last = *rec.ClaimedAt
	}
	if rec.LastActivity != nil && rec.LastActivity.After(last) {
		last = *rec.LastActivity
	}
	if st, ok := r.idle[key]; ok && st.val.ClaimID == rec.ID && st.val.LastActivity.After(last) {
		last = st.val.LastActivity
	}
	return last
}

// ensure makes the idle key of an Active claim match its life: creates it
// when missing, or fires when the deadline passed. marker says a TTL marker
// for key just arrived.
func (r *Reaper) ensure(ctx context.Context, key string, marker bool) {
	rec, ok := r.claims[key]
	if !ok {
		return
	}
	st := r.idle[key]
	if st.live && st.val.ClaimID == rec.ID {
		if st.val.Fired {
			return // a release was asked; the fired key's expiry retries it
		}
		if !st.val.Deadline().After(r.cfg.Now()) {
			r.fire(ctx, key, rec, st)
		}
		return
	}
	last := r.lastActivity(key, rec)
	deadline := last.Add(timeout(rec))
	// A TTL marker is never early (TTLs are rounded up to whole seconds),
	// but the deadline is checked anyway, so a marker alone never releases.
	_ = marker
	if !deadline.After(r.cfg.Now()) {
		r.fire(ctx, key, rec, st)
		return
	}
	r.arm(ctx, key, rec, st, last)
}

// arm writes the idle key of rec with lastActivity last and a TTL ending at
// the deadline; a compare-and-set on st.rev.
func (r *Reaper) arm(ctx context.Context, key string, rec messages.ClaimRecord, st idleState, last time.Time) {
	v := messages.IdleValue{ClaimID: rec.ID, LastActivity: last.UTC(), TimeoutSeconds: rec.IdleTimeoutSeconds}
	ttl := v.Deadline().Sub(r.cfg.Now())
	rev, err := r.put(ctx, key, v, st.rev, ttl)
	if err != nil {
		if !natsx.IsConflict(err) {
			r.log.Warn("writing idle deadline failed", "key", key, "err", err)
		}
		r.refresh(ctx, key)
		return
	}
	r.idle[key] = idleState{rev: rev, live: true, val: v}
}

// fire replaces the idle key with a fired value (compare-and-set on st.rev,
// so one replica wins) and asks claim-router to release the claim.
func (r *Reaper) fire(ctx context.Context, key string, rec messages.ClaimRecord, st idleState) {
	v := messages.IdleValue{ClaimID: rec.ID, LastActivity: r.lastActivity(key, rec).UTC(), TimeoutSeconds: rec.IdleTimeoutSeconds, Fired: true}
	rev, err := r.put(ctx, key, v, st.rev, r.cfg.FiredTTL)
	if err != nil {
		if !natsx.IsConflict(err) {
			r.log.Warn("marking idle deadline fired failed", "key", key, "err", err)
		}
		r.refresh(ctx, key)
		return
	}
	r.idle[key] = idleState{rev: rev, live: true, val: v}
	delete(r.pending, key)
	if r.fired != nil {
		r.fired(key)
	}
	r.log.Info("idle deadline passed; releasing", "tenant", rec.TenantID, "workload", rec.Workload,
		"claim", rec.ID, "lastActivity", v.LastActivity, "timeoutSeconds", rec.IdleTimeoutSeconds)
	go func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ReleaseTimeout)
		defer cancel()
		view, err := r.release(rctx, messages.ReleaseRequest{TenantID: rec.TenantID, Workload: rec.Workload, Reason: messages.ReasonIdle})
		if err != nil {
			r.log.Warn("idle release failed", "tenant", rec.TenantID, "workload", rec.Workload, "err", err)
			return
		}
		r.log.Info("idle release done", "tenant", rec.TenantID, "workload", rec.Workload, "phase", view.Phase, "detail", view.Detail)
	}()
}

// put publishes v under key with an expected last revision and a TTL.
func (r *Reaper) put(ctx context.Context, key string, v messages.IdleValue, rev uint64, ttl time.Duration) (uint64, error) {
	if ttl < minTTL {
		ttl = minTTL
	}
	// JetStream keeps per-message TTLs in whole seconds: round up, so the
	// key never expires before the deadline (the 100 ms scan fires on time).
	ttl = (ttl + time.Second - 1).Truncate(time.Second)
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if rev == 0 {
		// No known revision: KV Create is the atomic "only if absent (or deleted)", which an
		// expected last sequence of 0 is not once the key has had messages (e.g. a TTL marker).
		return r.idleKV.Create(wctx, key, b, jetstream.KeyTTL(ttl))
	}
	ack, err := r.js.PublishMsg(wctx, &nats.Msg{Subject: "$KV." + messages.BucketIdle + "." + key, Data: b},
		jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
		}
		return 0, err
	}
	return ack.Sequence, nil
}

// refresh re-reads key after a lost compare-and-set.
func (r *Reaper) refresh(ctx context.Context, key string) {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e, err := r.idleKV.Get(gctx, key)
	switch {
	case err == nil:
		r.applyIdle(e)
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Deleted or expired: learn the marker's revision for the next
		// compare-and-set.
		stream, serr := r.js.Stream(gctx, "KV_"+messages.BucketIdle)
		if serr != nil {
			return
		}
		m, merr := stream.GetLastMsgForSubject(gctx, "$KV."+messages.BucketIdle+"."+key)
		if merr != nil {
			return
		}
		if st := r.idle[key]; m.Sequence > st.rev {
			st.rev, st.live = m.Sequence, false
			r.idle[key] = st
		}
	default:
		r.log.Debug("reading idle key failed", "key", key, "err", err)
	}
}

// onActivity runs on the subscription's goroutine: it only coalesces.
func (r *Reaper) onActivity(msg *nats.Msg) {
	var a messages.Activity
	if err := json.Unmarshal(msg.Data, &a); err != nil || a.TenantID == "" || a.Workload == "" {
		return
	}
	now := r.cfg.Now()
	at := a.At
	if at.IsZero() || at.After(now) {
		at = now // never trust a clock ahead of ours
	}
	key := messages.ClaimKey(a.TenantID, a.Workload)
	r.mu.Lock()
	if cur, ok := r.activity[key]; !ok || at.After(cur) {
		r.activity[key] = at
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Reaper) debounce(rec messages.ClaimRecord) time.Duration {
	d := timeout(rec) / 10
	if d < r.cfg.MinDebounce {
		d = r.cfg.MinDebounce
	}
	return d
}

func (r *Reaper) drainActivity(ctx context.Context) {
	r.mu.Lock()
	batch := r.activity
	r.activity = make(map[string]time.Time, len(batch))
	r.mu.Unlock()
	for key, at := range batch {
		if _, ok := r.claims[key]; !ok {
			continue
		}
		if cur, ok := r.pending[key]; !ok || at.After(cur) {
			r.pending[key] = at
		}
		r.flush(ctx, key, false)
	}
}

// flush writes the pending activity of key unless the last write was less
// than the debounce interval ago (or force).
func (r *Reaper) flush(ctx context.Context, key string, force bool) {
	at, ok := r.pending[key]
	if !ok {
		return
	}
	rec, ok := r.claims[key]
	if !ok {
		delete(r.pending, key)
		return
	}
	now := r.cfg.Now()
	if !force && now.Sub(r.wrote[key]) < r.debounce(rec) {
		return // the scan writes it when the interval is over
	}
	delete(r.pending, key)
	st := r.idle[key]
	if st.live && st.val.ClaimID == rec.ID && st.val.Fired {
		return // too late: the deadline passed and the release was asked
	}
	if st.live && st.val.ClaimID == rec.ID && !at.After(st.val.LastActivity) {
		return
	}
	if !at.Add(timeout(rec)).After(now) {
		return // older than the timeout: it cannot move the deadline
	}
	r.wrote[key] = now
	r.arm(ctx, key, rec, st, at)
}

// scan writes debounced activity whose interval is over and fires
// deadlines that passed (sub-second precision; the TTL marker is the
// durable backstop).
func (r *Reaper) scan(ctx context.Context) {
	now := r.cfg.Now()
	for key := range r.pending {
		if rec, ok := r.claims[key]; ok && now.Sub(r.wrote[key]) >= r.debounce(rec) {
			r.flush(ctx, key, true)
		} else if !ok {
			delete(r.pending, key)
		}
	}
	for key, rec := range r.claims {
		st := r.idle[key]
		if st.live && st.val.ClaimID == rec.ID {
			if st.val.Fired || st.val.Deadline().After(now) {
				continue
			}
			if _, waiting := r.pending[key]; waiting {
				continue
			}
			r.fire(ctx, key, rec, st)
			continue
		}
		r.ensure(ctx, key, false) // not armed for this life yet (or a write failed): retry
	}
	for key := range r.wrote {
		if _, ok := r.claims[key]; !ok {
			delete(r.wrote, key)
		}
	}
	r.probeDirs(ctx, now)
}
