package claimrouter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/tracing"
)

// Defaults of [Config].
const (
	DefaultClaimTimeout  = 120 * time.Second
	DefaultStaleAfter    = 15 * time.Second
	DefaultSweepInterval = 5 * time.Second
	DefaultWorkers       = 256
	DefaultWait          = 30 * time.Second
	DefaultMaxWait       = 5 * time.Minute
	DefaultCallTimeout   = 30 * time.Second
	// DefaultOverlayTimeout bounds one extract or restore call.
	DefaultOverlayTimeout = 5 * time.Minute
)

// DefaultExtractBackoff is the pause before each retry of a failed
// overlay extract (or delete) of a release: 1s, 4s, 16s, then the release
// fails with the instance kept.
var DefaultExtractBackoff = []time.Duration{time.Second, 4 * time.Second, 16 * time.Second}

const (
	// maxRequests bounds concurrent requests per subject. Claim requests
	// mostly wait (for a saga), so this is far above Workers.
	maxRequests = 16384
	// kvTimeout bounds one KV operation of a saga or the sweeper.
	kvTimeout = 10 * time.Second
	// pollInterval is how often a waiting request re-reads its key, in
	// case a watch update was lost (reconnect): a fallback, not the
	// mechanism.
	pollInterval = time.Second
	// maxDecisions bounds the read-decide-write loop of one request.
	maxDecisions = 32
	// fastAcquireTimeout bounds the acquire of a claim's fast path; a slower
	// pool-manager is left to the saga, which retries until the deadline.
	fastAcquireTimeout = 2 * time.Second
	// handlerGrace is added to the longest wait to get a handler timeout.
	handlerGrace = 10 * time.Second
)

// InstanceEventsSubject is what the router subscribes to for pool-manager's
// instance events: bh.v1.events.instance.>.
var InstanceEventsSubject = strings.TrimSuffix(messages.EventsWildcard, ">") + string(messages.EventInstance) + ".>"

// Config configures a [Router].
type Config struct {
	// Conn is the NATS connection; required.
	Conn *nats.Conn
	// JetStream is used for the claims bucket; built from Conn when nil.
	// Events are published through a JetStream context of the router's own
	// (it needs its own async error handler).
	JetStream jetstream.JetStream
	// ReplicaID names this replica as the Owner of the claims it drives;
	// random by default. Two live replicas must not share one.
	ReplicaID string
	// ClaimTimeout is how long a claim may stay Pending (its Deadline);
	// default 120s. It also bounds a release.
	ClaimTimeout time.Duration
	// StaleAfter is the age of UpdatedAt after which an in-flight claim's
	// owner counts as dead and another replica takes it over; default 15s.
	// Owners refresh UpdatedAt every StaleAfter/3.
	StaleAfter time.Duration
	// SweepInterval is how often the bucket is scanned for claims to take
	// over or expire; default 5s.
	SweepInterval time.Duration
	// Workers bounds the sagas running at once; default 256. More wait for
	// a slot (their claims stay owned and refreshed meanwhile).
	Workers int
	// DefaultWait is how long a claim request waits for its claim when it
	// does not say (WaitMillis 0), and how long a release waits; default
	// 30s.
	DefaultWait time.Duration
	// MaxWait caps a claim request's WaitMillis; default 5m.
	MaxWait time.Duration
	// CallTimeout bounds one request to pool-manager, and overlay-store's
	// list and delete; default 30s. A boot that times out is retried until
	// the claim's deadline.
	CallTimeout time.Duration
	// OverlayTimeout bounds one extract or restore request to
	// overlay-store; default 5m. A restore is also bounded by the claim's
	// deadline.
	OverlayTimeout time.Duration
	// OverlayIdle: an extract or restore without a progress message from
	// overlay-store for this long failed (the store died mid-request) and is
	// retried like any failed call; default 5 progress intervals (10s).
	OverlayIdle time.Duration
	// ExtractBackoff is the pause before each retry of a release's failed
	// extract (or, for destroy, delete); its length is the number of
	// retries. nil means DefaultExtractBackoff (1s, 4s, 16s); an empty
	// non-nil slice means no retries.
	ExtractBackoff []time.Duration
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Metrics receives the request metrics; prometheus.DefaultRegisterer when nil.
	Metrics prometheus.Registerer
}

func (c Config) withDefaults() (Config, error) {
	if c.Conn == nil {
		return c, errors.New("claimrouter: Config.Conn is required")
	}
	def := func(d *time.Duration, v time.Duration, name string) error {
		switch {
		case *d == 0:
			*d = v
		case *d < 0:
			return fmt.Errorf("claimrouter: Config.%s must not be negative, got %s", name, *d)
		}
		return nil
	}
	for _, f := range []struct {
		d    *time.Duration
		v    time.Duration
		name string
	}{
		{&c.ClaimTimeout, DefaultClaimTimeout, "ClaimTimeout"},
		{&c.StaleAfter, DefaultStaleAfter, "StaleAfter"},
		{&c.SweepInterval, DefaultSweepInterval, "SweepInterval"},
		{&c.DefaultWait, DefaultWait, "DefaultWait"},
		{&c.MaxWait, DefaultMaxWait, "MaxWait"},
		{&c.CallTimeout, DefaultCallTimeout, "CallTimeout"},
		{&c.OverlayTimeout, DefaultOverlayTimeout, "OverlayTimeout"},
		{&c.OverlayIdle, 5 * messages.ProgressInterval, "OverlayIdle"},
	} {
		if err := def(f.d, f.v, f.name); err != nil {
			return c, err
		}
	}
	if c.ExtractBackoff == nil {
		c.ExtractBackoff = DefaultExtractBackoff
	}
	c.ExtractBackoff = slices.Clone(c.ExtractBackoff)
	for _, d := range c.ExtractBackoff {
		if d < 0 {
			return c, fmt.Errorf("claimrouter: Config.ExtractBackoff must not hold negative pauses, got %s", d)
		}
	}
	if c.StaleAfter < 3*time.Millisecond {
		return c, fmt.Errorf("claimrouter: Config.StaleAfter %s is too short", c.StaleAfter)
	}
	if c.DefaultWait > c.MaxWait {
		c.DefaultWait = c.MaxWait
	}
	if c.Workers < 0 {
		return c, fmt.Errorf("claimrouter: Config.Workers must not be negative, got %d", c.Workers)
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.ReplicaID == "" {
		c.ReplicaID = "claim-router-" + randomHex(4)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = prometheus.DefaultRegisterer
	}
	return c, nil
}

// Router is the claim-router: it serves the claim subjects over NATS and
// drives claims through their sagas. Create it with [New], start it with
// [Router.Run].
type Router struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	events  jetstream.JetStream
	logger  *slog.Logger
	metrics *routerMetrics

	acquire bus.Handler[messages.AcquireRequest, messages.Instance]
	boot    bus.Handler[messages.BootRequest, messages.Instance]
	retire  bus.Handler[messages.RetireRequest, messages.RetireReply]

	restore        bus.Handler[messages.RestoreRequest, messages.RestoreReply]
	extract        bus.Handler[messages.ExtractRequest, messages.Snapshot]
	listOverlays   bus.Handler[messages.OverlayListRequest, messages.SnapshotList]
	deleteOverlays bus.Handler[messages.OverlayDeleteRequest, messages.OverlayDeleteReply]

	hub   *hub
	sagas *sagaSet
	// flights lets one request at a time start a pair's claim on this
	// replica, so that concurrent claims of a new pair acquire one instance.
	flights *flights
	// poolTried holds the ids of claims whose fast path found no ready
	// instance: their saga boots without asking the pool again.
	poolTried sync.Map
	slots     chan struct{}

	mu       sync.Mutex
	running  bool
	stopped  bool
	runCtx   context.Context
	store    *Store
	ready    chan struct{}
	stopping chan struct{}
	wg       sync.WaitGroup
	idleKV   jetstream.KeyValue
}

// New checks cfg and builds a Router. Nothing is subscribed until Run.
func New(cfg Config) (*Router, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Router{
		cfg:      cfg,
		nc:       cfg.Conn,
		js:       cfg.JetStream,
		logger:   cfg.Logger.With("service", "claim-router", "replica", cfg.ReplicaID),
		hub:      newHub(),
		sagas:    newSagaSet(),
		flights:  newFlights(),
		slots:    make(chan struct{}, cfg.Workers),
		ready:    make(chan struct{}),
		stopping: make(chan struct{}),
		metrics:  newRouterMetrics(cfg.Metrics),
	}
	if r.js == nil {
		if r.js, err = jetstream.New(cfg.Conn); err != nil {
			return nil, fmt.Errorf("claimrouter: jetstream: %w", err)
		}
	}
	r.events, err = jetstream.New(cfg.Conn,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, err error) {
			r.logger.Warn("claim event not stored", "subject", msg.Subject, "err", err)
		}))
	if err != nil {
		return nil, fmt.Errorf("claimrouter: jetstream: %w", err)
	}
	r.acquire = bus.Client[messages.AcquireRequest, messages.Instance](cfg.Conn, messages.SubjectPoolAcquire, cfg.CallTimeout)
	r.boot = bus.Client[messages.BootRequest, messages.Instance](cfg.Conn, messages.SubjectInstancesBoot, cfg.CallTimeout)
	r.retire = bus.Client[messages.RetireRequest, messages.RetireReply](cfg.Conn, messages.SubjectInstancesRetire, cfg.CallTimeout)
	r.restore = bus.LongClient[messages.RestoreRequest, messages.RestoreReply](cfg.Conn, messages.SubjectOverlaysRestore, cfg.OverlayTimeout, cfg.OverlayIdle)
	r.extract = bus.LongClient[messages.ExtractRequest, messages.Snapshot](cfg.Conn, messages.SubjectOverlaysExtract, cfg.OverlayTimeout, cfg.OverlayIdle)
	r.listOverlays = bus.Client[messages.OverlayListRequest, messages.SnapshotList](cfg.Conn, messages.SubjectOverlaysList, cfg.CallTimeout)
	r.deleteOverlays = bus.Client[messages.OverlayDeleteRequest, messages.OverlayDeleteReply](cfg.Conn, messages.SubjectOverlaysDelete, cfg.CallTimeout)
	return r, nil
}

// ReplicaID is the Owner this replica writes on the claims it drives.
func (r *Router) ReplicaID() string { return r.cfg.ReplicaID }

// Run serves the claim subjects (queue group claim-router) and the
// instance events, sweeps the bucket on start and every SweepInterval,
// until ctx ends. It then unsubscribes, stops its sagas (their claims stay
// in KV, owned by this replica, and another replica takes them over once
// they are stale) and returns nil. Run may be called once.
func (r *Router) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return errors.New("claimrouter: Run called twice")
	}
	r.running = true
	r.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	store, err := OpenStore(ctx, r.js, r.logger)
	if err != nil {
		return err
	}
	r.store = store
	r.runCtx = ctx

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.feedHub(ctx)
	}()

	subs, err := r.subscribe()
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		r.mu.Lock()
		r.stopped = true
		close(r.stopping)
		r.mu.Unlock()
		cancel()
		r.wg.Wait()
		if !r.nc.IsClosed() {
			// Let the last claim events reach the stream.
			select {
			case <-r.events.PublishAsyncComplete():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	if err != nil {
		return err
	}
	close(r.ready)
	r.logger.Info("claim-router running", "claim_timeout", r.cfg.ClaimTimeout.String(), "stale_after", r.cfg.StaleAfter.String(), "sweep_interval", r.cfg.SweepInterval.String())

	r.sweep()
	tick := time.NewTicker(r.cfg.SweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.logger.Info("claim-router stopping")
			return nil
		case <-tick.C:
			r.sweep()
		}
	}
}

// claimAttrs are the span attributes of an answered claim or release.
func claimAttrs(v messages.ClaimView) []attribute.KeyValue {
	return []attribute.KeyValue{tracing.Tenant(v.TenantID), tracing.Workload(v.Workload), tracing.Phase(string(v.Phase)),
		tracing.Source(string(v.Source)), tracing.Instance(v.InstanceID)}
}

func (r *Router) subscribe() ([]*nats.Subscription, error) {
	opts := bus.ServeOptions{
		Queue:   messages.QueueClaimRouter,
		Workers: maxRequests,
		Timeout: r.cfg.MaxWait + handlerGrace,
		Logger:  r.logger,
	}
	type subscribeFunc func() (*nats.Subscription, error)
	var subs []*nats.Subscription
	for _, subscribe := range []subscribeFunc{
		func() (*nats.Subscription, error) {
			return bus.Serve[messages.ClaimRequest](r.nc, messages.SubjectClaimsClaim, r.metrics.measureClaims(bus.Annotated(bus.Endpoint(r.Claim), claimAttrs)), opts)
		},
		func() (*nats.Subscription, error) {
			return bus.Serve[messages.ReleaseRequest](r.nc, messages.SubjectClaimsRelease, r.metrics.measureReleases(bus.Annotated(bus.Endpoint(r.Release), claimAttrs)), opts)
		},
		func() (*nats.Subscription, error) {
			return bus.Serve[messages.ClaimGetRequest](r.nc, messages.SubjectClaimsGet, bus.Endpoint(r.Get), opts)
		},
		func() (*nats.Subscription, error) {
			return bus.Serve[messages.TenantGetRequest](r.nc, messages.SubjectTenantsGet, bus.Endpoint(r.Tenant), opts)
		},
		func() (*nats.Subscription, error) {
			return bus.Serve[messages.TenantListRequest](r.nc, messages.SubjectTenantsList, bus.Endpoint(r.Tenants), opts)
		},
		func() (*nats.Subscription, error) {
			s, err := r.nc.QueueSubscribe(InstanceEventsSubject, messages.QueueClaimRouter, r.onInstanceEvent)
			if err != nil {
				return nil, err
			}
			return s, s.SetPendingLimits(-1, -1)
		},
	} {
		s, err := subscribe()
		if s != nil {
			subs = append(subs, s)
		}
		if err != nil {
			return subs, fmt.Errorf("claimrouter: subscribe: %w", err)
		}
	}
	// Make sure the server has the subscriptions before Run reports ready.
	if err := r.nc.Flush(); err != nil {
		return subs, fmt.Errorf("claimrouter: flush subscriptions: %w", err)
	}
	return subs, nil
}

func (r *Router) ensureRunning() error {
	select {
	case <-r.ready:
		return nil
	default:
		return messages.Errorf(messages.CodeUnavailable, "claim-router %s is not running", r.cfg.ReplicaID)
	}
}

// Claim serves bh.v1.claims.claim (docs/claim-path.md): an Active claim is
// answered as it is (source existing, one KV read, no write); otherwise the
// request starts a claim, takes a dead one over, or waits for the one in
// flight, and answers its view once it settles or the caller's wait
// (WaitMillis, default DefaultWait, capped at MaxWait) ends, Pending then.
func (r *Router) Claim(ctx context.Context, req messages.ClaimRequest) (messages.ClaimView, error) {
	var zero messages.ClaimView
	if err := req.Validate(); err != nil {
		return zero, err
	}
	if err := r.ensureRunning(); err != nil {
		return zero, err
	}
	key := messages.ClaimKey(req.TenantID, req.Workload)
	deadline := time.Now().Add(r.wait(req.WaitMillis))
	for range maxDecisions {
		epoch := r.flights.epoch(key)
		cur, err := r.store.Get(ctx, key)
		if err != nil {
			return zero, err
		}
		now := time.Now()
		var waited *Entry
		act := DecideClaim(recordOf(cur), now, r.cfg.StaleAfter)
		if act == ClaimTakeOver && r.sagas.has(key, cur.Record.ID) {
			// Stale, but our own saga drives it: decide as if fresh.
			act = DecideClaim(recordOf(cur), now, math.MaxInt64)
		}
		switch act {
		case ClaimExisting:
			v := cur.Record.View()
			v.Source = messages.SourceExisting
			r.activity(cur.Record, now)
			return v, nil
		case ClaimConflict:
			return zero, messages.Errorf(messages.CodeConflict, "the claim of tenant %q on workload %q is %s (%s); its release must be retried or forced first",
				req.TenantID, req.Workload, cur.Record.Phase, cur.Record.Detail)
		case ClaimExpire:
			if err := r.expire(key); err != nil {
				return zero, err
			}
			continue
		case ClaimTakeOver:
			if err := r.takeOver(key); err != nil {
				return zero, err
			}
			continue
		case ClaimWait:
			waited = cur
		case ClaimStart:
			done, leader := r.flights.join(key, epoch)
			if !leader {
				// Another request of this replica starts (or started) the
				// pair's claim: decide again on what it wrote.
				select {
				case <-done:
				case <-ctx.Done():
				}
				continue
			}
			e, answer, err := r.start(ctx, req, key, cur)
			r.flights.leave(key)
			switch {
			case err != nil:
				return zero, err
			case answer:
				return e.Record.View(), nil
			case e == nil:
				continue // another request won: decide again on its record
			}
			waited = e
		}
		got, err := r.await(ctx, key, waited.Record.ID, deadline)
		if err != nil {
			return zero, err
		}
		answer, notFound := ClaimSettled(waited.Record, recordOf(got))
		if notFound {
			return zero, messages.Errorf(messages.CodeNotFound, "workload %q not found", req.Workload)
		}
		if answer {
			return got.Record.View(), nil
		}
	}
	return zero, messages.Errorf(messages.CodeConflict, "the claim of tenant %q on workload %q keeps changing; retry", req.TenantID, req.Workload)
}

// start begins a new life of key's claim: the fast path first, else a
// Pending record and its saga. It returns the Active entry with answer set,
// the Pending entry to wait on, or nil when another request wrote first.
func (r *Router) start(ctx context.Context, req messages.ClaimRequest, key string, cur *Entry) (*Entry, bool, error) {
	id := newClaimID()
	e, outcome, err := r.claimFromPool(ctx, req, key, cur, id)
	switch outcome {
	case fastActive:
		return e, true, nil
	case fastRetry:
		return nil, false, nil
	case fastFailed:
		return nil, false, err
	}
	if outcome == fastCold {
		r.poolTried.Store(id, struct{}{})
	}
	e, err = r.store.Write(ctx, NewPending(req, id, r.cfg.ReplicaID, time.Now(), r.cfg.ClaimTimeout), cur)
	if natsx.IsConflict(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	r.written(e, "claim")
	r.logger.Debug("claim started", "key", key, "claim", e.Record.ID, "request", req.RequestID)
	r.startSaga(trace.SpanContextFromContext(ctx), *e)
	return e, false, nil
}

// Outcomes of [Router.claimFromPool].
type fastOutcome int

const (
	// fastSaga: take the saga path with the same claim id.
	fastSaga fastOutcome = iota
	// fastCold: the saga path, straight to a cold boot: the pool had no
	// ready instance a moment ago.
	fastCold
	// fastActive: the claim is Active.
	fastActive
	// fastRetry: another request wrote the record first; decide again.
	fastRetry
	// fastFailed: answer the error.
	fastFailed
)

// claimFromPool is the fast path of a new claim: a ready pool instance is
// acquired for claim id first, then the record is written once, Active.
// A pool claim so costs two flushed writes (the ledger's and the record's)
// instead of three, and no saga. Everything else takes the saga path with the
// same id: no ready instance (a cold boot), pool-manager not answering, or an
// overlay to restore; the saga's acquire then gets the same instance back,
// acquisition being idempotent per claim id. An instance acquired for a
// record that was never written (a lost race is retired here; a crash
// between the two writes) is freed by pool-manager's orphan sweep.
func (r *Router) claimFromPool(ctx context.Context, req messages.ClaimRequest, key string, cur *Entry, id string) (*Entry, fastOutcome, error) {
	actx, cancel := context.WithTimeout(ctx, fastAcquireTimeout)
	inst, err := r.acquire(actx, messages.AcquireRequest{Workload: req.Workload, TenantID: req.TenantID, ClaimKey: key, ClaimID: id})
	cancel()
	if messages.CodeOf(err) == messages.CodeNotFound {
		return nil, fastFailed, messages.Errorf(messages.CodeNotFound, "workload %q not found", req.Workload)
	}
	if messages.CodeOf(err) == messages.CodeCapacityExhausted {
		return nil, fastCold, nil
	}
	if err != nil || inst.InstanceID == "" {
		return nil, fastSaga, nil
	}
	now := time.Now()
	rec := NewPending(req, id, r.cfg.ReplicaID, now, r.cfg.ClaimTimeout)
	if RestoreDue(rec, inst) {
		return nil, fastSaga, nil
	}
	active, err := Activate(&rec, id, r.cfg.ReplicaID, Obtained{Instance: inst, Source: messages.SourcePool}, now, r.cfg.ClaimTimeout)
	if err != nil {
		return nil, fastSaga, nil
	}
	wctx, cancel := context.WithTimeout(r.runCtx, kvTimeout)
	defer cancel()
	e, err := r.store.Write(wctx, active, cur)
	if err != nil && !natsx.IsConflict(err) {
		// The write may have happened all the same: look before freeing the
		// instance. Unknown stays unknown: the orphan sweep decides later.
		got, gerr := r.store.Get(wctx, key)
		if gerr != nil {
			return nil, fastFailed, err
		}
		if got != nil && got.Record.ID == id {
			e, err = got, nil
		}
	}
	if err != nil {
		r.retireOrphan(active, inst.InstanceID, "orphaned")
		if natsx.IsConflict(err) {
			return nil, fastRetry, nil
		}
		return nil, fastFailed, err
	}
	r.written(e, "activated")
	r.logger.Debug("claim active", "key", key, "claim", id, "instance", inst.InstanceID, "source", messages.SourcePool, "request", req.RequestID)
	return e, fastActive, nil
}

// wait is how long a request waits for its claim to settle: WaitMillis, or
// DefaultWait when 0, capped at MaxWait.
func (r *Router) wait(millis int64) time.Duration {
	if millis <= 0 {
		return r.cfg.DefaultWait
	}
	if millis > r.cfg.MaxWait.Milliseconds() {
		return r.cfg.MaxWait
	}
	return time.Duration(millis) * time.Millisecond
}

// Release serves bh.v1.claims.release: Active -> Releasing -> (extract,
// retire, delete: see [PlanRelease]) -> Released or ReleaseFailed. A
// Pending claim gets the release recorded on it and is released as soon as
// its saga has the instance (durable, no 409). Released and Error claims
// are answered as they are, and so are ReleaseFailed ones unless the reason
// is retry (the same saga again) or force (retire without saving; also
// ReleaseRequest.Force). Retry of an Active or Pending claim is a
// conflict. A pair that never had a claim is not_found. The reply waits up
// up to WaitMillis (default DefaultWait) for the release to finish, then
// answers the current view.
func (r *Router) Release(ctx context.Context, req messages.ReleaseRequest) (messages.ClaimView, error) {
	var zero messages.ClaimView
	if err := req.Validate(); err != nil {
		return zero, err
	}
	if err := r.ensureRunning(); err != nil {
		return zero, err
	}
	reason := req.Reason
	switch {
	case req.Force:
		reason = messages.ReasonForce
	case reason == "":
		reason = messages.ReasonAPI
	}
	key := messages.ClaimKey(req.TenantID, req.Workload)
	deadline := time.Now().Add(r.wait(req.WaitMillis))
	for range maxDecisions {
		cur, err := r.store.Get(ctx, key)
		if err != nil {
			return zero, err
		}
		now := time.Now()
		var waited *Entry
		act := DecideRelease(recordOf(cur), reason, now, r.cfg.StaleAfter)
		if act == ReleaseTakeOver && r.sagas.has(key, cur.Record.ID) {
			act = DecideRelease(recordOf(cur), reason, now, math.MaxInt64)
		}
		switch act {
		case ReleaseNotFound:
			return zero, messages.Errorf(messages.CodeNotFound, "tenant %q has no claim on workload %q", req.TenantID, req.Workload)
		case ReleaseConflict:
			return zero, messages.Errorf(messages.CodeConflict, "the claim of tenant %q on workload %q is %s, not ReleaseFailed: there is no failed release to retry",
				req.TenantID, req.Workload, cur.Record.Phase)
		case ReleaseAnswer:
			return cur.Record.View(), nil
		case ReleaseExpire:
			if err := r.expire(key); err != nil {
				return zero, err
			}
			continue
		case ReleaseTakeOver:
			if err := r.takeOver(key); err != nil {
				return zero, err
			}
			continue
		case ReleaseWait:
			waited = cur
		case ReleaseBegin, ReleaseMark:
			step := func(c *messages.ClaimRecord) (messages.ClaimRecord, error) {
				if act == ReleaseMark {
					return RequestRelease(c, reason, time.Now())
				}
				return BeginRelease(c, reason, r.cfg.ReplicaID, time.Now(), r.cfg.ClaimTimeout)
			}
			e, _, err := r.transition(key, string(reason), step)
			if errors.Is(err, ErrSuperseded) {
				continue
			}
			if err != nil {
				return zero, err
			}
			if act == ReleaseBegin {
				r.startSaga(trace.SpanContextFromContext(ctx), *e)
			}
			waited = e
		}
		got, err := r.await(ctx, key, waited.Record.ID, deadline)
		if err != nil {
			return zero, err
		}
		if got == nil {
			// The Pending claim was withdrawn: its workload is unknown.
			return zero, messages.Errorf(messages.CodeNotFound, "tenant %q has no claim on workload %q", req.TenantID, req.Workload)
		}
		return got.Record.View(), nil
	}
	return zero, messages.Errorf(messages.CodeConflict, "the claim of tenant %q on workload %q keeps changing; retry", req.TenantID, req.Workload)
}

// Get serves bh.v1.claims.get: the view of one claim, not_found when the
// pair has none.
func (r *Router) Get(ctx context.Context, req messages.ClaimGetRequest) (messages.ClaimView, error) {
	if err := req.Validate(); err != nil {
		return messages.ClaimView{}, err
	}
	if err := r.ensureRunning(); err != nil {
		return messages.ClaimView{}, err
	}
	e, err := r.store.Get(ctx, messages.ClaimKey(req.TenantID, req.Workload))
	if err != nil {
		return messages.ClaimView{}, err
	}
	if e == nil {
		return messages.ClaimView{}, messages.Errorf(messages.CodeNotFound, "tenant %q has no claim on workload %q", req.TenantID, req.Workload)
	}
	v := e.Record.View()
	r.idleView(ctx, e.Record, &v)
	return v, nil
}

// Tenant serves bh.v1.tenants.get: every claim of one tenant (any phase),
// sorted by workload; not_found when it has none.
func (r *Router) Tenant(ctx context.Context, req messages.TenantGetRequest) (messages.TenantView, error) {
	if err := req.Validate(); err != nil {
		return messages.TenantView{}, err
	}
	if err := r.ensureRunning(); err != nil {
		return messages.TenantView{}, err
	}
	entries, err := r.store.ListTenant(ctx, req.TenantID)
	if err != nil {
		return messages.TenantView{}, err
	}
	views := groupByTenant(entries)
	if len(views) == 0 {
		return messages.TenantView{}, messages.Errorf(messages.CodeNotFound, "tenant %q has no claims", req.TenantID)
	}
	byWorkload := make(map[string]messages.ClaimRecord, len(entries))
	for _, e := range entries {
		byWorkload[e.Record.Workload] = e.Record
	}
	for i := range views[0].Claims {
		if rec, ok := byWorkload[views[0].Claims[i].Workload]; ok {
			r.idleView(ctx, rec, &views[0].Claims[i])
		}
	}
	return views[0], nil
}

// Tenants serves bh.v1.tenants.list: every tenant with claims, sorted by
// tenant id, each with its claims sorted by workload.
func (r *Router) Tenants(ctx context.Context, _ messages.TenantListRequest) (messages.TenantList, error) {
	if err := r.ensureRunning(); err != nil {
		return messages.TenantList{}, err
	}
	entries, err := r.store.List(ctx)
	if err != nil {
		return messages.TenantList{}, err
	}
	return messages.TenantList{Tenants: groupByTenant(entries)}, nil
}

func groupByTenant(entries []Entry) []messages.TenantView {
	byTenant := map[string][]messages.ClaimView{}
	for _, e := range entries {
		byTenant[e.Record.TenantID] = append(byTenant[e.Record.TenantID], e.Record.View())
	}
	out := make([]messages.TenantView, 0, len(byTenant))
	for t, claims := range byTenant {
		slices.SortFunc(claims, func(a, b messages.ClaimView) int { return strings.Compare(a.Workload, b.Workload) })
		out = append(out, messages.TenantView{TenantID: t, Claims: claims})
	}
	slices.SortFunc(out, func(a, b messages.TenantView) int { return strings.Compare(a.TenantID, b.TenantID) })
	return out
}

// await waits until the record of key is no longer the in-flight life id
// (settled, replaced, or deleted), or until deadline, and returns the last
// record read (nil: deleted). Wake-ups come from the bucket watch (any
// replica's writes) and this replica's own writes; a slow poll covers a
// lost watch update.
func (r *Router) await(ctx context.Context, key, id string, deadline time.Time) (*Entry, error) {
	wake, unsubscribe := r.hub.subscribe(key)
	defer unsubscribe()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	for {
		cur, err := r.store.Get(ctx, key)
		if err != nil {
			return nil, err
		}
		if cur == nil || cur.Record.ID != id || !InFlight(cur.Record.Phase) || !time.Now().Before(deadline) {
			return cur, nil
		}
		select {
		case <-wake:
		case <-poll.C:
		case <-timer.C:
		case <-ctx.Done():
			return cur, nil
		case <-r.stopping:
			return cur, nil
		}
	}
}

// transition applies a pure step to key with compare-and-set (see
// [Store.Transition]), then wakes local waiters and, when reason is set,
// publishes the claim event. It returns the written entry, or the entry
// the step refused.
func (r *Router) transition(key, reason string, step func(*messages.ClaimRecord) (messages.ClaimRecord, error)) (*Entry, *Entry, error) {
	ctx, cancel := context.WithTimeout(r.runCtx, kvTimeout)
	defer cancel()
	written, cur, err := r.store.Transition(ctx, key, step)
	if err != nil {
		return nil, cur, err
	}
	if reason != "" {
		r.written(written, reason)
	}
	return written, cur, nil
}

// written wakes this replica's waiters on e's key and publishes e as a
// claim event.
func (r *Router) written(e *Entry, reason string) {
	r.hub.notify(e.Key)
	r.publish(e.Record, reason, fmt.Sprintf("%s@%d", e.Key, e.Revision))
}

// publish sends a claim event to the events stream without waiting for
// the ack; failures are logged by the async error handler.
func (r *Router) publish(rec messages.ClaimRecord, reason, msgID string) {
	view := rec.View()
	ev := messages.Event{
		Kind:     messages.EventClaim,
		TenantID: rec.TenantID,
		Workload: rec.Workload,
		Claim:    &view,
		Reason:   reason,
		At:       time.Now().UTC(),
	}
	b, err := json.Marshal(ev)
	if err != nil {
		r.logger.Error("encode claim event", "err", err)
		return
	}
	subject := messages.EventSubject(messages.EventClaim, rec.TenantID, rec.Workload)
	if _, err := r.events.PublishAsync(subject, b, jetstream.WithMsgID(msgID)); err != nil {
		r.logger.Warn("claim event not published", "subject", subject, "phase", rec.Phase, "err", err)
	}
}

// feedHub wakes waiting requests on every change of the bucket, written by
// any replica. Each new watch (natsx.Follow: after a reconnect, or a watch
// that closed) wakes every waiter too, as changes may have gone unseen.
func (r *Router) feedHub(ctx context.Context) {
	watch := func(ctx context.Context, _ ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
		w, err := r.store.WatchUpdates(ctx)
		if err == nil {
			r.hub.notifyAll()
		}
		return w, err
	}
	natsx.Follow(ctx, r.nc, r.logger.With("bucket", messages.BucketClaims), watch, func(e jetstream.KeyValueEntry) {
		if e != nil {
			r.hub.notify(e.Key())
		}
	})
}

func recordOf(e *Entry) *messages.ClaimRecord {
	if e == nil {
		return nil
	}
	return &e.Record
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// backoff is the pause before retry attempt n: 50ms doubling to 2s.
func backoff(n int) time.Duration {
	d := 50 * time.Millisecond
	for range min(n, 6) {
		d *= 2
	}
	return min(d, 2*time.Second)
}

// sleep waits d unless ctx ends first; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// newClaimID is a fresh claim ID: 16 lowercase hex digits (64 random
// bits), usable in a Pod name.
func newClaimID() string { return randomHex(8) }

// hub wakes the requests waiting on a key.
type hub struct {
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

func newHub() *hub { return &hub{waiters: map[string]map[chan struct{}]struct{}{}} }

func (h *hub) subscribe(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	set := h.waiters[key]
	if set == nil {
		set = map[chan struct{}]struct{}{}
		h.waiters[key] = set
	}
	set[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(set, ch)
		if len(h.waiters[key]) == 0 {
			delete(h.waiters, key)
		}
		h.mu.Unlock()
	}
}

// notifyAll wakes every waiter.
func (h *hub) notifyAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.waiters {
		wake(set)
	}
}

func (h *hub) notify(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	wake(h.waiters[key])
}

// wake signals every waiter of set without blocking (a signalled one is already due to read).
func wake(set map[chan struct{}]struct{}) {
	for ch := range set {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// sagaSet is the sagas running in this replica, by claim life and kind
// (a claim saga runs a Pending record, a release saga a Releasing one).
// Lives, not keys: the saga of a life that just ended may still be
// returning when the next life starts; and a claim saga may still be
// returning when the release saga of the same life starts.
type sagaSet struct {
	mu      sync.Mutex
	running map[sagaKey]chan struct{} // closed when the saga is removed
}

type sagaKey struct {
	key, id string
	kind    messages.ClaimPhase
}

func newSagaSet() *sagaSet { return &sagaSet{running: map[sagaKey]chan struct{}{}} }

// add registers a saga; when one of the same life and kind runs already it
// returns false and that saga's done channel.
func (s *sagaSet) add(key, id string, kind messages.ClaimPhase) (bool, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := sagaKey{key, id, kind}
	if done, ok := s.running[k]; ok {
		return false, done
	}
	s.running[k] = make(chan struct{})
	return true, nil
}

func (s *sagaSet) remove(key, id string, kind messages.ClaimPhase) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := sagaKey{key, id, kind}
	if done, ok := s.running[k]; ok {
		close(done)
		delete(s.running, k)
	}
}

// has reports whether any saga of the life (key, id) runs here.
func (s *sagaSet) has(key, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, claim := s.running[sagaKey{key, id, messages.PhasePending}]
	_, release := s.running[sagaKey{key, id, messages.PhaseReleasing}]
	return claim || release
}

// flights tracks the keys whose claim a request of this replica is
// starting. A request reads the record, then joins; a flight that ended in
// between wrote a record the request has not seen, so each flight's end
// bumps its key's epoch (one of flightShards counters: a collision only
// costs a read) and a join with an older epoch makes the request read again
// instead of starting a second claim. Epochs are atomic, so that every claim
// request (existing ones too) can take one without the lock.
type flights struct {
	mu    sync.Mutex
	m     map[string]chan struct{}
	ended [flightShards]atomic.Uint64
	seed  maphash.Seed
}

const flightShards = 256

// closedFlight is what join returns to a request whose read is stale.
var closedFlight = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func newFlights() *flights {
	return &flights{m: map[string]chan struct{}{}, seed: maphash.MakeSeed()}
}

func (f *flights) shard(key string) *atomic.Uint64 {
	return &f.ended[maphash.String(f.seed, key)%flightShards]
}

// epoch is key's epoch, to be taken before reading its record.
func (f *flights) epoch(key string) uint64 { return f.shard(key).Load() }

// join makes the caller the leader for key (leader true; it must call
// leave), or returns a channel closed when the caller should read the
// record again: once the current leader leaves, or at once when a flight
// ended since epoch was taken.
func (f *flights) join(key string, epoch uint64) (done <-chan struct{}, leader bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.m[key]; ok {
		return ch, false
	}
	if f.shard(key).Load() != epoch {
		return closedFlight, false
	}
	f.m[key] = make(chan struct{})
	return nil, true
}

func (f *flights) leave(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shard(key).Add(1)
	close(f.m[key])
	delete(f.m, key)
}
