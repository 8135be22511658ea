// Package idlereaper releases claims that nobody used for their workload's
// idle.timeoutSeconds (release reason "idle").
//
// Design (durable, distributed deadlines):
//
//   - The reaper watches the claims bucket. For every Active claim whose
//     record has IdleTimeoutSeconds > 0 it keeps one key in the idle bucket
//     (same key as the claim) holding a [messages.IdleValue] {claimId,
//     lastActivity, timeoutSeconds}. The key is written with a per-message
//     TTL that ends a second after lastActivity + timeout, so the deadline
//     lives in JetStream: it survives a restart of the reaper and of the NATS
//     server, and when it passes the server leaves a delete marker that
//     every watcher sees.
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
//     reaper's own timer for it runs out (a min-heap of every tracked
//     claim's next check, see deadlines.go; no periodic scan, which cost
//     ~10% of a core at 10,000 claims). Firing is a compare-and-set that
//     replaces the key with a "fired" value (with a short TTL): exactly one
//     replica wins it and asks claim-router for the release; the others see
//     a conflict and do nothing. If the claim is still Active when the fired
//     key expires (claim-router was down), the deadline fires again, so the
//     release is retried.
//   - The loop goroutine only decides ([decide], no I/O); idle-key writes
//     and the release requests after them run on a small worker set, at
//     most one write per key at a time, so one slow write delays no other
//     claim's release. Releasing once rests on the compare-and-set alone.
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
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/metrics"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/services/overlaystore"
)

// QueueIdleReaper is the queue group of the activity subscription.
const QueueIdleReaper = "idle-reaper"

// Defaults of [Config].
const (
	DefaultFiredTTL       = 30 * time.Second
	DefaultMinDebounce    = 100 * time.Millisecond
	DefaultRetryInterval  = 100 * time.Millisecond
	DefaultReleaseTimeout = 5 * time.Minute
	DefaultWriters        = 12
	// minTTL is the smallest per-message TTL JetStream accepts.
	minTTL = time.Second
	// markerSlack is how long an armed idle key outlives its deadline.
	markerSlack = time.Second
)

// Config configures a [Reaper].
type Config struct {
	Conn      *nats.Conn
	JetStream jetstream.JetStream // default jetstream.New(Conn)
	Logger    *slog.Logger
	// Metrics receives boilerhouse_idle_releases_total; prometheus.DefaultRegisterer when nil.
	Metrics prometheus.Registerer
	// FiredTTL is how long the "fired" key of a released claim lives; if the
	// claim is still Active after it, the release is asked again.
	FiredTTL time.Duration
	// MinDebounce is the lower bound of the per-claim activity write
	// interval (timeout/10).
	MinDebounce time.Duration
	// RetryInterval is how long a claim waits after a failed idle-key write,
	// and a due watchDirs probe after finding ProbeConcurrency probes running.
	RetryInterval time.Duration
	// Writers is the number of goroutines writing idle keys (and starting
	// releases); default DefaultWriters.
	Writers int
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
	cfg      Config
	log      *slog.Logger
	js       jetstream.JetStream
	release  bus.Handler[messages.ReleaseRequest, messages.ClaimView]
	released *prometheus.CounterVec // result

	mu       sync.Mutex
	activity map[string]time.Time // coalesced activity not yet handled by the loop
	wake     chan struct{}

	// Owned by the loop goroutine.
	idleKV   jetstream.KeyValue
	claims   map[string]messages.ClaimRecord // Active claims with a timeout
	idle     map[string]idleState
	pending  map[string]time.Time // debounced activity waiting for its write
	wrote    map[string]time.Time // last activity write per key
	retryAt  map[string]time.Time // no write for the key before this (one failed)
	inflight map[string]bool      // a write of the key is queued or running
	timers   *timers
	fireQ    []writeOp // queued for the writers, fires before arms
	armQ     []writeOp

	writes  chan writeOp
	written chan writeResult

	// watchDirs probing (see watchdirs.go); probes is owned by the loop.
	exec         overlaystore.Executor
	probes       map[string]*probeState
	probeSem     chan struct{}
	probeResults chan probeResult
	warnedNoExec bool

	ready chan struct{}
	fired func(key string) // test hook: called when this replica asks for a release (from a writer)
}

type idleState struct {
	rev  uint64
	live bool               // a value (not a marker) is the latest revision
	val  messages.IdleValue // the latest value seen (kept across a marker)
	at   time.Time          // when val was written
}

// writeOp is one compare-and-set of an idle key, decided by the loop.
type writeOp struct {
	key         string
	rec         messages.ClaimRecord
	rev         uint64 // expected revision (0: the key must not exist)
	val         messages.IdleValue
	fromPending bool // it writes debounced activity
}

type writeResult struct {
	writeOp
	rev      uint64    // the write's revision
	at       time.Time // when it was written
	err      error
	conflict bool
	// After a failed write: the key's latest entry, or the revision of its
	// delete marker, so the next compare-and-set can succeed.
	latest    jetstream.KeyValueEntry
	markerRev uint64
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
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.Writers <= 0 {
		cfg.Writers = DefaultWriters
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
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.DefaultRegisterer
	}
	released := metrics.Must(cfg.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "boilerhouse_idle_releases_total",
		Help: "Idle releases idle-reaper asked for, by result (the phase claim-router answered, or the error code).",
	}, []string{"result"}))
	return &Reaper{
		cfg:      cfg,
		released: released,
		log:      cfg.Logger.With("service", "idle-reaper"),
		js:       js,
		release:  bus.Client[messages.ReleaseRequest, messages.ClaimView](cfg.Conn, messages.SubjectClaimsRelease, cfg.ReleaseTimeout),
		activity: map[string]time.Time{},
		wake:     make(chan struct{}, 1),
		claims:   map[string]messages.ClaimRecord{},
		idle:     map[string]idleState{},
		pending:  map[string]time.Time{},
		wrote:    map[string]time.Time{},
		retryAt:  map[string]time.Time{},
		inflight: map[string]bool{},
		timers:   newTimers(),
		writes:   make(chan writeOp),
		written:  make(chan writeResult, cfg.Writers),
		ready:    make(chan struct{}),

		exec:         exec,
		probes:       map[string]*probeState{},
		probeSem:     make(chan struct{}, cfg.ProbeConcurrency),
		probeResults: make(chan probeResult, cfg.ProbeConcurrency),
	}, nil
}

// Ready is closed once the reaper has read both buckets and decided about
// every claim (the writes that follow may still be running).
func (r *Reaper) Ready() <-chan struct{} { return r.ready }

// Run watches the claims and idle buckets and serves activity until ctx ends.
func (r *Reaper) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var writers sync.WaitGroup
	defer writers.Wait() // no write outlives Run
	defer cancel()
	claimsKV, err := r.js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		return fmt.Errorf("idlereaper: claims bucket: %w", err)
	}
	if r.idleKV, err = r.js.KeyValue(ctx, messages.BucketIdle); err != nil {
		return fmt.Errorf("idlereaper: idle bucket: %w", err)
	}
	for range r.cfg.Writers {
		writers.Go(func() { r.writer(ctx) })
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

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var timerAt time.Time // what timer is set to; zero: stopped
	timer.Stop()
	var due []timerID
	for {
		// One timer for the earliest entry of the heap (Go >= 1.23 timers deliver no stale
		// value after Reset or Stop).
		if at, ok := r.timers.next(); !ok {
			if !timerAt.IsZero() {
				timer.Stop()
				timerAt = time.Time{}
			}
		} else if !at.Equal(timerAt) {
			timer.Reset(max(0, at.Sub(r.cfg.Now())))
			timerAt = at
		}
		// The next queued write, fires first; a nil channel while there is none.
		var writes chan writeOp
		var next writeOp
		if len(r.fireQ) > 0 {
			writes, next = r.writes, r.fireQ[0]
		} else if len(r.armQ) > 0 {
			writes, next = r.writes, r.armQ[0]
		}
		select {
		case <-ctx.Done():
			return nil
		case writes <- next:
			if len(r.fireQ) > 0 {
				r.fireQ = popFront(r.fireQ)
			} else {
				r.armQ = popFront(r.armQ)
			}
		case res := <-r.written:
			r.wrote1(res)
		case <-timer.C:
			timerAt = time.Time{}
			due = r.timers.popDue(r.cfg.Now(), due[:0])
			for _, id := range due {
				if id.kind == timerProbe {
					r.probeDue(ctx, id.key)
				} else {
					r.check(id.key)
				}
			}
		case <-reconnected:
			// The watches' ordered consumers may not have survived (a restarted server forgets
			// them); nats.go would recreate them only after 10-20 s without heartbeats, and a
			// claim activated meanwhile would go untracked: its activity dropped, its release
			// late. Watch both buckets again from their current state. (Not natsx.Follow: the
			// claims tracked are rebuilt from both buckets at once, on this goroutine, which
			// owns them.)
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
			r.applyClaim(e)
			r.check(e.Key())
			r.syncProbe(e.Key())
		case e, ok := <-w.idle.Updates():
			if !ok {
				return errors.New("idlereaper: idle watch closed")
			}
			if e == nil {
				continue
			}
			// A value or a TTL marker (the deadline, or a fired key's retry time, passed).
			if r.applyIdle(e) {
				r.check(e.Key())
			}
		case <-r.wake:
			r.drainActivity()
		case res := <-r.probeResults:
			r.probed(res)
		}
	}
}

func popFront(q []writeOp) []writeOp {
	q[0] = writeOp{}
	if len(q) == 1 {
		return nil // let the array go
	}
	return q[1:]
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
	for key := range claims {
		if _, ok := r.claims[key]; !ok {
			r.check(key) // ended while unwatched: forgets it
			r.syncProbe(key)
		}
	}
	for key := range r.claims {
		r.check(key)
		r.syncProbe(key)
	}
	return w, nil
}

// applyClaim records a claims-bucket entry: the claim is tracked when it is
// Active with an idle timeout, and dropped otherwise.
func (r *Reaper) applyClaim(e jetstream.KeyValueEntry) {
	key := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(r.claims, key)
		return
	}
	var rec messages.ClaimRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		r.log.Warn("malformed claim record", "key", key, "err", err)
		delete(r.claims, key)
		return
	}
	if rec.Phase != messages.PhaseActive || rec.IdleTimeoutSeconds <= 0 {
		delete(r.claims, key)
		return
	}
	r.claims[key] = rec
}

// applyIdle records an idle-bucket entry; false when it is older than what
// this replica knows (its own write, seen late).
func (r *Reaper) applyIdle(e jetstream.KeyValueEntry) bool {
	key := e.Key()
	st := r.idle[key]
	if e.Revision() < st.rev {
		return false
	}
	st.rev = e.Revision()
	if e.Operation() != jetstream.KeyValuePut {
		st.live = false
		r.idle[key] = st
		return true
	}
	var v messages.IdleValue
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		st.live = false
		r.idle[key] = st
		return true
	}
	st.live, st.val, st.at = true, v, e.Created()
	r.idle[key] = st
	return true
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

// check decides about key now (see [decide]): queues its write, or sets its
// timer for when to look again. Loop only; call it after anything about key
// changed.
func (r *Reaper) check(key string) {
	id := timerID{key, timerCheck}
	rec, ok := r.claims[key]
	if !ok {
		// Not (or no longer) an Active claim with a timeout.
		r.timers.remove(id)
		delete(r.pending, key)
		delete(r.wrote, key)
		delete(r.retryAt, key)
		return
	}
	if r.inflight[key] {
		r.timers.remove(id) // the write's result checks again
		return
	}
	now := r.cfg.Now()
	v := keyView{rec: rec, st: r.idle[key], last: r.lastActivity(key, rec), wrote: r.wrote[key], retryAt: r.retryAt[key]}
	v.pending, v.hasPending = r.pending[key]
	d := decide(v, now, r.debounce(rec), r.cfg.FiredTTL)
	if d.dropPending {
		delete(r.pending, key)
	}
	if d.act == actNone {
		if d.next.IsZero() {
			r.timers.remove(id)
		} else {
			r.timers.set(id, d.next)
		}
		return
	}
	r.timers.remove(id)
	delete(r.retryAt, key)
	if d.fromPending {
		r.wrote[key] = now
	}
	op := writeOp{key: key, rec: rec, rev: v.st.rev, fromPending: d.fromPending,
		val: messages.IdleValue{ClaimID: rec.ID, LastActivity: d.last.UTC(), TimeoutSeconds: rec.IdleTimeoutSeconds, Fired: d.act == actFire}}
	r.inflight[key] = true
	if op.val.Fired {
		r.fireQ = append(r.fireQ, op)
	} else {
		r.armQ = append(r.armQ, op)
	}
}

// wrote1 takes the result of one write back into the loop's state.
func (r *Reaper) wrote1(res writeResult) {
	key := res.key
	delete(r.inflight, key)
	st := r.idle[key]
	switch {
	case res.err == nil:
		if res.rev >= st.rev {
			r.idle[key] = idleState{rev: res.rev, live: true, val: res.val, at: res.at}
		}
	default:
		before := st.rev
		if res.latest != nil {
			r.applyIdle(res.latest)
		} else if res.markerRev > st.rev {
			st.rev, st.live = res.markerRev, false
			r.idle[key] = st
		}
		if !res.conflict || r.idle[key].rev == before {
			// Failed, or lost to a revision not read yet: wait rather than spin.
			r.retryAt[key] = r.cfg.Now().Add(r.cfg.RetryInterval)
		}
		if res.fromPending {
			if cur, ok := r.pending[key]; !ok || res.val.LastActivity.After(cur) {
				r.pending[key] = res.val.LastActivity // not written: keep it for the next try
			}
		}
	}
	r.check(key)
}

// writer runs queued idle-key writes until ctx ends.
func (r *Reaper) writer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case op := <-r.writes:
			res := r.write(ctx, op)
			select {
			case r.written <- res:
			case <-ctx.Done():
				return
			}
		}
	}
}

// write makes one compare-and-set of op's idle key; a fired value that wins
// starts the release (exactly one replica wins it).
func (r *Reaper) write(ctx context.Context, op writeOp) writeResult {
	now := r.cfg.Now()
	ttl := r.cfg.FiredTTL
	if !op.val.Fired {
		// The local timer fires at the deadline; the key outlives it by markerSlack so that
		// the fired write replaces it before it expires: no marker to write, and none that
		// could land after the fired value and wipe it.
		ttl = op.val.Deadline().Sub(now) + markerSlack
	}
	res := writeResult{writeOp: op, at: now}
	res.rev, res.err = r.put(ctx, op.key, op.val, op.rev, ttl)
	if res.err != nil {
		res.conflict = natsx.IsConflict(res.err)
		if !res.conflict && ctx.Err() == nil {
			r.log.Warn("writing idle key failed", "key", op.key, "fired", op.val.Fired, "err", res.err)
		}
		res.latest, res.markerRev = r.read(ctx, op.key)
		return res
	}
	if op.val.Fired {
		r.startRelease(ctx, op)
	}
	return res
}

// startRelease asks claim-router to release op's claim, without waiting:
// the reply comes when the release finished.
func (r *Reaper) startRelease(ctx context.Context, op writeOp) {
	rec := op.rec
	if r.fired != nil {
		r.fired(op.key)
	}
	r.log.Info("idle deadline passed; releasing", "tenant", rec.TenantID, "workload", rec.Workload,
		"claim", rec.ID, "lastActivity", op.val.LastActivity, "timeoutSeconds", rec.IdleTimeoutSeconds)
	go func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ReleaseTimeout)
		defer cancel()
		view, err := r.release(rctx, messages.ReleaseRequest{TenantID: rec.TenantID, Workload: rec.Workload, Reason: messages.ReasonIdle})
		if err != nil {
			r.released.WithLabelValues(string(messages.CodeOf(err))).Inc()
			r.log.Warn("idle release failed", "tenant", rec.TenantID, "workload", rec.Workload, "err", err)
			return
		}
		r.released.WithLabelValues(string(view.Phase)).Inc()
		r.log.Info("idle release done", "tenant", rec.TenantID, "workload", rec.Workload, "phase", view.Phase, "detail", view.Detail)
	}()
}

// put publishes v under key with an expected last revision and a TTL.
func (r *Reaper) put(ctx context.Context, key string, v messages.IdleValue, rev uint64, ttl time.Duration) (uint64, error) {
	if ttl < minTTL {
		ttl = minTTL
	}
	// JetStream keeps per-message TTLs in whole seconds: round up, so the
	// key never expires before the deadline.
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

// read re-reads key after a failed write: its latest entry, or (deleted or
// expired) the revision of its marker, for the next compare-and-set.
func (r *Reaper) read(ctx context.Context, key string) (jetstream.KeyValueEntry, uint64) {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e, err := r.idleKV.Get(gctx, key)
	switch {
	case err == nil:
		return e, 0
	case errors.Is(err, jetstream.ErrKeyNotFound):
		stream, serr := r.js.Stream(gctx, "KV_"+messages.BucketIdle)
		if serr != nil {
			return nil, 0
		}
		m, merr := stream.GetLastMsgForSubject(gctx, "$KV."+messages.BucketIdle+"."+key)
		if merr != nil {
			return nil, 0
		}
		return nil, m.Sequence
	default:
		r.log.Debug("reading idle key failed", "key", key, "err", err)
		return nil, 0
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

func (r *Reaper) drainActivity() {
	r.mu.Lock()
	batch := r.activity
	r.activity = make(map[string]time.Time, len(batch))
	r.mu.Unlock()
	for key, at := range batch {
		r.noteActivity(key, at)
	}
}

// noteActivity records activity of key at at (debounced by check). Loop only.
func (r *Reaper) noteActivity(key string, at time.Time) {
	if _, ok := r.claims[key]; !ok {
		return
	}
	if cur, ok := r.pending[key]; !ok || at.After(cur) {
		r.pending[key] = at
	}
	r.check(key)
}
