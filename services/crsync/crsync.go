// Package crsync is Boilerhouse's cr-sync service: it keeps one BoilerhouseClaim per
// (tenant, workload) in step with the claims KV bucket, which stays the source of truth.
//
//   - A BoilerhouseClaim created with kubectl becomes a claim request on bh.v1.claims.claim
//     (short WaitMillis, so a reconcile never waits for the instance); its status then follows
//     the KV record.
//   - Status follows the record: a watch on the claims bucket enqueues the pair, whose
//     reconcile copies the record into the status subresource and records an Event per phase
//     change.
//   - Deleting a claim object: the finalizer boilerhouse.dev/cleanup holds it; cr-sync sends
//     bh.v1.claims.release {reason: claim-deleted} and removes the finalizer once the record is
//     Released, Error or absent. A ReleaseFailed record keeps the object, its status saying why.
//   - A claim made over REST or NATS gets an object named naming.ClaimName(tenant, workload),
//     labelled with tenant and workload. When that claim is released the object stays and shows
//     Released; a later claim of the pair reuses it and its status moves on.
//   - One object acts per pair: the oldest (creation time, then name). Any other object naming
//     the same pair gets phase Error with a detail naming the acting one, and never claims or
//     releases anything.
//   - Anti-entropy at start and ResyncInterval after each pass ends: every pair with a record or
//     an object is reconciled, at most ResyncRate pairs a second. Missing objects are created
//     for non-terminal records, stale status is fixed, objects whose record vanished are
//     marked. cr-sync releases a claim only when its object is deleted, never on its own.
//
// Reconciles are keyed by the pair's messages.ClaimKey, so that everything about one pair is
// decided by one worker at a time.
package crsync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmanager "sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/naming"
	"boilerhouse.dev/pkg/natsx"
)

// Defaults for zero Config fields.
const (
	DefaultNamespace      = "boilerhouse"
	DefaultResyncInterval = 30 * time.Second
	// ResyncRate bounds how fast anti-entropy enqueues pairs. Each pair's reconcile reads its
	// record from the claims bucket; all of them at once, every interval, stalled the claim
	// path that shares the bucket (tens of thousands of reads in a burst).
	ResyncRate = 200
	// DefaultWorkers is how many pairs are reconciled at once. More than one, so that one slow
	// pair does not hold up the rest; few, because each new claim's object costs the API server
	// three writes (object, status, Event), and on a small control plane 16 workers at 200
	// claims/s delayed pool-manager's tenant labels from milliseconds to seconds.
	DefaultWorkers = 4
	// DefaultClaimWait is the WaitMillis of the claim requests cr-sync sends.
	DefaultClaimWait = 200 * time.Millisecond
	// LeaderElectionID names the Lease the replicas compete for.
	LeaderElectionID = "boilerhouse-cr-sync"
	// AnnotationOrigin marks objects cr-sync created for claims made over REST or NATS
	// (value OriginAPI): such an object never sends a claim request itself.
	AnnotationOrigin = "boilerhouse.dev/origin"
	OriginAPI        = "api"

	indexPair = "bh.pair" // BoilerhouseClaim -> messages.ClaimKey of its spec
)

// Detail texts cr-sync writes itself.
const (
	detailClaimRequested = "claim requested by cr-sync"
	detailVanished       = "the claim's record vanished from the claims KV bucket"
)

// claimRetry is how soon a claim request without an answer is sent again.
const claimRetry = 2 * time.Second

// Config configures a Syncer.
type Config struct {
	// RestConfig reaches the Kubernetes API server (required).
	RestConfig *rest.Config
	// NATS reaches claim-router and JetStream (required); the claims bucket must exist.
	NATS *nats.Conn
	// Namespace holds the BoilerhouseClaims (default "boilerhouse").
	Namespace string
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// ResyncInterval is the anti-entropy period (default 30s).
	ResyncInterval time.Duration
	// ClaimWait is the WaitMillis of claim requests (default 200ms).
	ClaimWait time.Duration
	// RequestTimeout bounds a claim request (default 10s) and a release request (6x that).
	RequestTimeout time.Duration
	// Workers is how many pairs are reconciled at once (default DefaultWorkers); one pair is
	// never reconciled by two at once.
	Workers int
	// LeaderElection runs the syncer on one replica at a time.
	LeaderElection bool
	// MetricsAddr and HealthAddr are the controller-runtime listeners ("" or "0": none).
	MetricsAddr string
	HealthAddr  string
}

// Syncer is the cr-sync service.
type Syncer struct {
	cfg      Config
	log      *slog.Logger
	mgr      ctrlmanager.Manager
	client   client.Client
	recorder recorder.EventRecorder
	claim    bus.Handler[messages.ClaimRequest, messages.ClaimView]
	release  bus.Handler[messages.ReleaseRequest, messages.ClaimView]

	kvOnce sync.Once
	kv     jetstream.KeyValue
	kvErr  error

	releasing sync.Map // claim key -> struct{}: release requests in flight
	ready     chan struct{}
	readyOnce sync.Once
}

// New prepares a Syncer; nothing talks to Kubernetes or NATS until Run.
func New(cfg Config) (*Syncer, error) {
	if cfg.RestConfig == nil {
		return nil, errors.New("crsync: Config.RestConfig is required")
	}
	if cfg.NATS == nil {
		return nil, errors.New("crsync: Config.NATS is required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.ClaimWait <= 0 {
		cfg.ClaimWait = DefaultClaimWait
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.MetricsAddr == "" {
		cfg.MetricsAddr = "0"
	}
	if cfg.HealthAddr == "" {
		cfg.HealthAddr = "0"
	}
	log := cfg.Logger.With("service", "cr-sync")
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	rc := rest.CopyConfig(cfg.RestConfig)
	rc.UserAgent = "boilerhouse-cr-sync"
	mgr, err := ctrlmanager.New(rc, ctrlmanager.Options{
		Scheme:                        scheme,
		Logger:                        logr.FromSlogHandler(log.Handler()),
		LeaderElection:                cfg.LeaderElection,
		LeaderElectionID:              LeaderElectionID,
		LeaderElectionNamespace:       cfg.Namespace,
		LeaderElectionReleaseOnCancel: true,
		Metrics:                       metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:        cfg.HealthAddr,
		Cache: cache.Options{
			DefaultNamespaces: map[string]cache.Config{cfg.Namespace: {}},
			DefaultTransform:  cache.TransformStripManagedFields(),
		},
		Controller: config.Controller{SkipNameValidation: new(true)},
	})
	if err != nil {
		return nil, fmt.Errorf("crsync: controller manager: %w", err)
	}
	s := &Syncer{
		cfg:      cfg,
		log:      log,
		mgr:      mgr,
		client:   mgr.GetClient(),
		recorder: mgr.GetEventRecorder("cr-sync"),
		claim:    bus.Client[messages.ClaimRequest, messages.ClaimView](cfg.NATS, messages.SubjectClaimsClaim, cfg.RequestTimeout),
		release:  bus.Client[messages.ReleaseRequest, messages.ClaimView](cfg.NATS, messages.SubjectClaimsRelease, 6*cfg.RequestTimeout),
		ready:    make(chan struct{}),
	}
	if cfg.HealthAddr != "0" {
		if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return nil, err
		}
		// Ready while NATS is reachable: every replica, leader or not, needs it to take over.
		if err := mgr.AddReadyzCheck("nats", func(*http.Request) error { return natsx.Ready(cfg.NATS) }); err != nil {
			return nil, err
		}
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.BoilerhouseClaim{}, indexPair, func(o client.Object) []string {
		c := o.(*v1alpha1.BoilerhouseClaim)
		return []string{messages.ClaimKey(c.Spec.TenantID, c.Spec.WorkloadRef)}
	}); err != nil {
		return nil, err
	}
	toPair := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		c := o.(*v1alpha1.BoilerhouseClaim)
		return []reconcile.Request{s.request(messages.ClaimKey(c.Spec.TenantID, c.Spec.WorkloadRef))}
	})
	if err := ctrl.NewControllerManagedBy(mgr).Named("cr-sync").
		WithOptions(controller.Options{MaxConcurrentReconciles: cfg.Workers}).
		Watches(&v1alpha1.BoilerhouseClaim{}, toPair).
		WatchesRawSource(source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			go s.feed(ctx, q)
			return nil
		})).
		Complete(reconcile.Func(s.reconcile)); err != nil {
		return nil, fmt.Errorf("crsync: controller: %w", err)
	}
	return s, nil
}

// Ready is closed once the KV watch delivered the bucket's initial contents.
func (s *Syncer) Ready() <-chan struct{} { return s.ready }

// Run syncs until ctx ends.
func (s *Syncer) Run(ctx context.Context) error {
	if _, err := s.bucket(ctx); err != nil {
		return err
	}
	err := s.mgr.Start(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *Syncer) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.kvOnce.Do(func() {
		js, err := jetstream.New(s.cfg.NATS)
		if err != nil {
			s.kvErr = err
			return
		}
		s.kv, s.kvErr = js.KeyValue(ctx, messages.BucketClaims)
		if s.kvErr != nil {
			s.kvErr = fmt.Errorf("crsync: bucket %s: %w", messages.BucketClaims, s.kvErr)
		}
	})
	return s.kv, s.kvErr
}

func (s *Syncer) request(key string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: s.cfg.Namespace, Name: key}}
}

// recordBatch delays the reconcile of a changed record a little, so that a claim's Pending and
// Active, usually milliseconds apart, cost one status write (and Event) between them, not two.
const recordBatch = 200 * time.Millisecond

// feed enqueues the pair of every change in the claims bucket, and every pair in a resync pass
// ResyncInterval after the last one ended. The watch is kept going by natsx.Follow (watched
// again after a reconnect; its initial values enqueue every pair again).
func (s *Syncer) feed(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	go func() {
		limit := rate.NewLimiter(ResyncRate, ResyncRate/4)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(s.cfg.ResyncInterval):
				s.resync(ctx, q, limit)
			}
		}
	}()
	natsx.Follow(ctx, s.cfg.NATS, s.log.With("bucket", messages.BucketClaims), s.kv.WatchAll, func(e jetstream.KeyValueEntry) {
		if e == nil {
			s.readyOnce.Do(func() { close(s.ready) })
			return
		}
		q.AddAfter(s.request(e.Key()), recordBatch)
	})
}

// resync enqueues every pair with a record or an object, no faster than limit allows.
func (s *Syncer) resync(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], limit *rate.Limiter) {
	pairs := map[string]bool{}
	keys, err := s.kv.ListKeys(ctx)
	if err == nil {
		for k := range keys.Keys() {
			pairs[k] = true
		}
	} else if !errors.Is(err, jetstream.ErrNoKeysFound) {
		s.log.Warn("resync: listing claim keys", "err", err)
	}
	var list v1alpha1.BoilerhouseClaimList
	if err := s.client.List(ctx, &list, client.InNamespace(s.cfg.Namespace)); err != nil {
		s.log.Warn("resync: listing claims", "err", err)
	}
	for i := range list.Items {
		pairs[messages.ClaimKey(list.Items[i].Spec.TenantID, list.Items[i].Spec.WorkloadRef)] = true
	}
	for k := range pairs {
		if limit.Wait(ctx) != nil {
			return
		}
		q.Add(s.request(k))
	}
}

// record reads the pair's record; nil when absent.
func (s *Syncer) record(ctx context.Context, key string) (*messages.ClaimRecord, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec messages.ClaimRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("record %s: %w", key, err)
	}
	return &rec, nil
}

// reconcile brings the objects of one pair (req.Name is its claim key) in step with its record.
func (s *Syncer) reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	key := req.Name
	tenant, workload, err := messages.ParseClaimKey(key)
	if err != nil {
		return reconcile.Result{}, nil // not a claim key: nothing to do
	}
	rec, err := s.record(ctx, key)
	if err != nil {
		return reconcile.Result{}, err
	}
	var list v1alpha1.BoilerhouseClaimList
	if err := s.client.List(ctx, &list, client.InNamespace(s.cfg.Namespace), client.MatchingFields{indexPair: key}); err != nil {
		return reconcile.Result{}, err
	}
	objs := list.Items
	// The exact pair only (the index key is exact already; this guards against stale caches).
	sort.Slice(objs, func(i, j int) bool {
		a, b := objs[i].CreationTimestamp, objs[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return objs[i].Name < objs[j].Name
	})
	if len(objs) == 0 {
		if rec == nil || rec.Phase.Terminal() {
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, s.createFor(ctx, tenant, workload, rec)
	}
	for i := 1; i < len(objs); i++ {
		if err := s.duplicate(ctx, &objs[i], objs[0].Name); err != nil {
			return reconcile.Result{}, err
		}
	}
	return s.sync(ctx, &objs[0], key, rec)
}

// createFor creates the object of a claim made over REST or NATS.
func (s *Syncer) createFor(ctx context.Context, tenant, workload string, rec *messages.ClaimRecord) error {
	resume := rec.Resume
	obj := &v1alpha1.BoilerhouseClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:        naming.ClaimName(tenant, workload),
			Namespace:   s.cfg.Namespace,
			Labels:      map[string]string{v1alpha1.LabelTenant: tenant, v1alpha1.LabelWorkload: workload},
			Annotations: map[string]string{AnnotationOrigin: OriginAPI},
			Finalizers:  []string{v1alpha1.Finalizer},
		},
		Spec: v1alpha1.ClaimSpec{TenantID: tenant, WorkloadRef: workload, Resume: &resume},
	}
	if err := s.client.Create(ctx, obj); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil // the cache lags; the object's own event brings the pair back
		}
		return fmt.Errorf("creating claim %s: %w", obj.Name, err)
	}
	s.log.Info("created claim object", "claim", obj.Name, "tenant", tenant, "workload", workload)
	// No Event of its own: the first status Event says where the object came from (one API
	// write less per claim, at hundreds of claims a second).
	return s.setStatus(ctx, obj, statusOf(rec))
}

// duplicate marks an object that names a pair another object already acts for.
func (s *Syncer) duplicate(ctx context.Context, obj *v1alpha1.BoilerhouseClaim, owner string) error {
	if obj.DeletionTimestamp != nil {
		return s.dropFinalizer(ctx, obj) // it never claimed, so there is nothing to release
	}
	detail := fmt.Sprintf("tenant %q already has BoilerhouseClaim %q for workload %q: this object is ignored; delete it",
		obj.Spec.TenantID, owner, obj.Spec.WorkloadRef)
	return s.setStatus(ctx, obj, v1alpha1.ClaimStatus{Phase: v1alpha1.ClaimError, Detail: detail})
}

// sync handles the object that acts for the pair.
func (s *Syncer) sync(ctx context.Context, obj *v1alpha1.BoilerhouseClaim, key string, rec *messages.ClaimRecord) (reconcile.Result, error) {
	if obj.DeletionTimestamp != nil {
		return s.finalize(ctx, obj, key, rec)
	}
	if !controllerutil.ContainsFinalizer(obj, v1alpha1.Finalizer) {
		controllerutil.AddFinalizer(obj, v1alpha1.Finalizer)
		if err := s.client.Update(ctx, obj); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
	}
	// fresh: created with kubectl and not claimed yet, or asked for without a claim to show
	// for it: no record, or only the ended record of an earlier life. The request is
	// idempotent, so asking again is safe.
	fresh := obj.Annotations[AnnotationOrigin] != OriginAPI && (obj.Status.Phase == "" ||
		(obj.Status.Phase == v1alpha1.ClaimPending && obj.Status.Detail == detailClaimRequested))
	switch {
	case fresh && (rec == nil || rec.Phase.Terminal()):
		// Created with kubectl: ask for the claim. The reply comes after at most ClaimWait,
		// usually Pending; the record's changes bring the pair back. Without an answer, ask
		// again shortly.
		answered, err := s.requestClaim(ctx, obj)
		if err != nil || answered {
			return reconcile.Result{}, err
		}
		return reconcile.Result{RequeueAfter: claimRetry}, nil
	case rec != nil:
		return reconcile.Result{}, s.setStatus(ctx, obj, statusOf(rec))
	case obj.Status.Phase == v1alpha1.ClaimReleased || obj.Status.Phase == v1alpha1.ClaimError || obj.Status.Phase == "":
		return reconcile.Result{}, nil
	default:
		// The record vanished under a live claim: say so, release nothing.
		st := obj.Status
		st.Phase, st.Detail = v1alpha1.ClaimError, detailVanished
		return reconcile.Result{}, s.setStatus(ctx, obj, st)
	}
}

// requestClaim asks claim-router for obj's claim; answered is false when the outcome is
// unknown (no claim-router, NATS down, no reply in time).
func (s *Syncer) requestClaim(ctx context.Context, obj *v1alpha1.BoilerhouseClaim) (answered bool, err error) {
	// Mark the request first so that a crash or a lagging cache never sends it twice.
	if obj.Status.Phase == "" {
		if err := s.setStatus(ctx, obj, v1alpha1.ClaimStatus{Phase: v1alpha1.ClaimPending, Detail: detailClaimRequested}); err != nil {
			return false, err
		}
	}
	v, err := s.claim(ctx, messages.ClaimRequest{TenantID: obj.Spec.TenantID, Workload: obj.Spec.WorkloadRef,
		Resume: obj.Spec.Resume, RequestID: "cr-sync/" + obj.Name, WaitMillis: s.cfg.ClaimWait.Milliseconds()})
	if err != nil {
		var me *messages.Error
		if errors.As(err, &me) && me.Code != messages.CodeDeadlineExceeded && me.Code != messages.CodeUnavailable {
			return true, s.setStatus(ctx, obj, v1alpha1.ClaimStatus{Phase: v1alpha1.ClaimError, Detail: "claim refused: " + err.Error()})
		}
		// Unknown outcome: the record, once written, drives the status; until then the
		// object stays "claim requested" and is asked for again.
		s.log.Warn("claim request", "claim", obj.Name, "err", err)
		return false, nil
	}
	s.log.Info("claim requested", "claim", obj.Name, "phase", v.Phase)
	return true, nil
}

// finalize releases the pair's claim and lets the object go once the release is over.
func (s *Syncer) finalize(ctx context.Context, obj *v1alpha1.BoilerhouseClaim, key string, rec *messages.ClaimRecord) (reconcile.Result, error) {
	if !controllerutil.ContainsFinalizer(obj, v1alpha1.Finalizer) {
		return reconcile.Result{}, nil
	}
	if rec != nil {
		if err := s.setStatus(ctx, obj, statusOf(rec)); err != nil {
			return reconcile.Result{}, err
		}
	}
	switch {
	case rec == nil || rec.Phase == messages.PhaseReleased || rec.Phase == messages.PhaseError:
		return reconcile.Result{}, s.dropFinalizer(ctx, obj)
	case rec.Phase == messages.PhaseReleaseFailed:
		// Kept: the status says why; a retry over the API (or a force release) ends it.
		return reconcile.Result{}, nil
	case rec.Phase == messages.PhaseReleasing:
		return reconcile.Result{}, nil // the record's next change brings the pair back
	}
	s.sendRelease(obj.Spec.TenantID, obj.Spec.WorkloadRef, key)
	return reconcile.Result{}, nil
}

// sendRelease asks for the release without blocking the reconcile; one request per pair at a
// time. The record's changes drive the rest.
func (s *Syncer) sendRelease(tenant, workload, key string) {
	if _, busy := s.releasing.LoadOrStore(key, struct{}{}); busy {
		return
	}
	go func() {
		defer s.releasing.Delete(key)
		v, err := s.release(context.Background(), messages.ReleaseRequest{TenantID: tenant, Workload: workload, Reason: messages.ReasonClaimDeleted})
		if err != nil {
			s.log.Warn("release request", "tenant", tenant, "workload", workload, "err", err)
			return
		}
		s.log.Info("released", "tenant", tenant, "workload", workload, "phase", v.Phase)
	}()
}

func (s *Syncer) dropFinalizer(ctx context.Context, obj *v1alpha1.BoilerhouseClaim) error {
	if !controllerutil.RemoveFinalizer(obj, v1alpha1.Finalizer) {
		return nil
	}
	if err := s.client.Update(ctx, obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	s.log.Info("claim object released", "claim", obj.Name)
	return nil
}

// setStatus writes st when it differs from the object's status, with an Event on a phase change.
func (s *Syncer) setStatus(ctx context.Context, obj *v1alpha1.BoilerhouseClaim, st v1alpha1.ClaimStatus) error {
	if statusEqual(obj.Status, st) {
		return nil
	}
	old := obj.Status.Phase
	obj.Status = st
	if err := s.client.Status().Update(ctx, obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	if old != st.Phase {
		kind := corev1.EventTypeNormal
		if st.Phase == v1alpha1.ClaimError || st.Phase == v1alpha1.ClaimReleaseFailed {
			kind = corev1.EventTypeWarning
		}
		note := string(st.Phase)
		switch {
		case old != "":
			note = string(old) + " -> " + note
		case obj.Annotations[AnnotationOrigin] == OriginAPI:
			note = "created for a claim made over the API: " + note
		}
		if st.Detail != "" {
			note += ": " + st.Detail
		}
		s.event(obj, kind, string(st.Phase), "Sync", "%s", note)
	}
	return nil
}

func (s *Syncer) event(obj runtime.Object, kind, reason, action, format string, args ...any) {
	s.recorder.Eventf(obj, nil, kind, reason, action, format, args...)
}

// statusOf is the status a record shows.
func statusOf(rec *messages.ClaimRecord) v1alpha1.ClaimStatus {
	st := v1alpha1.ClaimStatus{
		Phase:      v1alpha1.ClaimPhase(rec.Phase),
		InstanceID: rec.InstanceID,
		Source:     v1alpha1.ClaimSource(rec.Source),
		Detail:     rec.Detail,
	}
	if rec.Endpoint != nil {
		st.Endpoint = &v1alpha1.Endpoint{Host: rec.Endpoint.Host, Port: rec.Endpoint.Port}
	}
	if rec.ClaimedAt != nil {
		t := metav1.NewTime(rec.ClaimedAt.UTC().Truncate(time.Second))
		st.ClaimedAt = &t
	}
	return st
}

func statusEqual(a, b v1alpha1.ClaimStatus) bool {
	if a.Phase != b.Phase || a.InstanceID != b.InstanceID || a.Source != b.Source || a.Detail != b.Detail {
		return false
	}
	if (a.Endpoint == nil) != (b.Endpoint == nil) || (a.Endpoint != nil && *a.Endpoint != *b.Endpoint) {
		return false
	}
	if (a.ClaimedAt == nil) != (b.ClaimedAt == nil) || (a.ClaimedAt != nil && !a.ClaimedAt.Time.Equal(b.ClaimedAt.Time)) {
		return false
	}
	return true
}
