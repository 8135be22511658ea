// Package poolmanager is Boilerhouse's pool-manager service: warm pools per BoilerhousePool,
// cold boots, the acquisition ledger (KV bucket "instances"), Pod labels and Pod deletion.
//
// Every replica serves bh.v1.pool.acquire, bh.v1.instances.boot and bh.v1.instances.retire
// (NATS queue group "pool-manager") from an informer cache and an in-memory view of the ledger;
// acquisition writes one KV key and nothing to Kubernetes. The reconcilers (workload status,
// pools, instance labels) run on the leader when leader election is on. See docs/claim-path.md.
package poolmanager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmanager "sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/overlay"
)

// Defaults for zero Config fields.
const (
	DefaultNamespace      = "boilerhouse"
	DefaultBootTimeout    = 2 * time.Minute
	DefaultWarmingTimeout = 5 * time.Minute
	// DefaultRestoreRepeatGrace: see Config.RestoreRepeatGrace.
	DefaultRestoreRepeatGrace = 10 * time.Second
	// LeaderElectionID names the Lease the replicas compete for.
	LeaderElectionID = "boilerhouse-pool-manager"
)

// Config configures a Manager.
type Config struct {
	// RestConfig reaches the Kubernetes API server (required).
	RestConfig *rest.Config
	// NATS is the connection to serve requests on and to reach JetStream (required). The KV
	// bucket and the events stream must exist (natsx.Provision).
	NATS *nats.Conn
	// Namespace holds the workloads, pools and Pods (default "boilerhouse").
	Namespace string
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// ReplicaID names this replica in logs and ledger entries (default: the NATS client name).
	ReplicaID string
	// LeaderElection runs the reconcilers on one replica at a time (Lease LeaderElectionID in
	// Namespace). Off in the dev stack, which runs one replica.
	LeaderElection bool
	// BootTimeout bounds how long a boot request waits for its Pod to be Ready (default 2m);
	// the caller's own deadline applies too.
	BootTimeout time.Duration
	// WarmingTimeout is how long a pool Pod may stay unready before it is replaced (default 5m).
	WarmingTimeout time.Duration
	// MetricsAddr is the controller-runtime metrics listener ("" or "0": none).
	MetricsAddr string
	// HealthAddr is the /healthz and /readyz listener ("" or "0": none).
	HealthAddr string
	// Workers bounds concurrent NATS handlers per subject (default 256).
	Workers int
	// HelperImage is the image of the overlay helper and restore init containers of Pods of
	// workloads with overlay directories (default overlay.DefaultHelperImage).
	HelperImage string
	// RestoreRepeatGrace is how long a repeated boot of a claim whose Pod still waits for its
	// restore waits for the restore init container to finish before it answers
	// awaiting-restore again (default 10s; see Manager.Boot).
	RestoreRepeatGrace time.Duration
	// OrphanGrace is how old a hold must be before the orphan sweep looks at it (default 1m;
	// see OrphanedHold); OrphanSweep is how often it looks (default 30s). The sweep runs where
	// the reconcilers run (the leader).
	OrphanGrace time.Duration
	OrphanSweep time.Duration
}

// Manager is one pool-manager replica. It implements Service.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	mgr    ctrlmanager.Manager
	client client.Client // reads from the cache, writes to the API server
	js     jetstream.JetStream

	ledger *ledger
	ready  chan struct{}

	// Queues of the leader-gated controllers, set when they start; nil elsewhere.
	poolQueue     atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
	instanceQueue atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
	// labelQueue relabels Pods this replica acquired, on every replica (not leader-gated).
	labelQueue workqueue.TypedRateLimitingInterface[string]

	expect   *expectations
	failures failureTracker
	waiters  *waiters
	claims   claimLocks
	inflight sync.Map // pod name -> struct{}: acquisitions being tried by this replica
	// pods indexes the cached Pods by pool, and the acquirable ones by workload; podsSynced
	// reports when it holds every Pod of the cache.
	pods       *podIndex
	podsSynced func() bool
	events     chan eventMsg

	ran atomic.Bool
	// lastPoolWalk is how long the last pool reconcile took to walk its Pods (see poolDelay).
	lastPoolWalk atomic.Int64
}

// New prepares a Manager; nothing talks to Kubernetes or NATS until Run.
func New(cfg Config) (*Manager, error) {
	if cfg.RestConfig == nil {
		return nil, errors.New("poolmanager: Config.RestConfig is required")
	}
	if cfg.NATS == nil {
		return nil, errors.New("poolmanager: Config.NATS is required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = cfg.NATS.Opts.Name
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	if cfg.WarmingTimeout <= 0 {
		cfg.WarmingTimeout = DefaultWarmingTimeout
	}
	if cfg.RestoreRepeatGrace <= 0 {
		cfg.RestoreRepeatGrace = DefaultRestoreRepeatGrace
	}
	if cfg.OrphanGrace <= 0 {
		cfg.OrphanGrace = DefaultOrphanGrace
	}
	if cfg.OrphanSweep <= 0 {
		cfg.OrphanSweep = DefaultOrphanSweep
	}
	if cfg.HelperImage == "" {
		cfg.HelperImage = overlay.DefaultHelperImage
	}
	if cfg.MetricsAddr == "" {
		cfg.MetricsAddr = "0"
	}
	if cfg.HealthAddr == "" {
		cfg.HealthAddr = "0"
	}
	log := cfg.Logger.With("service", "pool-manager", "replica", cfg.ReplicaID)

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	rc := rest.CopyConfig(cfg.RestConfig)
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 200, 400
	}
	rc.UserAgent = "boilerhouse-pool-manager/" + cfg.ReplicaID
	// Pods in protobuf: the Pod watch and the tenant-label patches come at the claim rate, and
	// protobuf costs the API server and this cache a fraction of JSON's CPU. controller-runtime
	// keeps JSON for the custom resources, which have no protobuf form.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	managed := labels.SelectorFromSet(labels.Set{v1alpha1.LabelManaged: "true"})
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
			// Pods are read at the claim rate and only read: Get and List hand out the cache's own
			// objects instead of deep copies, and writers copy first (syncInstance).
			ByObject: map[client.Object]cache.ByObject{&corev1.Pod{}: {Label: managed, UnsafeDisableDeepCopy: new(true)}},
		},
		// Tests run several managers in one process.
		Controller: config.Controller{SkipNameValidation: new(true)},
	})
	if err != nil {
		return nil, fmt.Errorf("poolmanager: controller manager: %w", err)
	}
	m := &Manager{
		cfg:     cfg,
		log:     log,
		mgr:     mgr,
		client:  mgr.GetClient(),
		ready:   make(chan struct{}),
		expect:  newExpectations(),
		waiters: newWaiters(),
		events:  make(chan eventMsg, 4096),
		pods:    newPodIndex(),
		labelQueue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "pool-manager-labels"}),
	}
	if cfg.HealthAddr != "0" {
		if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("serving", func(*http.Request) error {
			select {
			case <-m.ready:
				return nil
			default:
				return errors.New("not serving yet")
			}
		}); err != nil {
			return nil, err
		}
	}
	if err := m.setupIndexes(); err != nil {
		return nil, err
	}
	if err := m.setupControllers(); err != nil {
		return nil, err
	}
	// A runnable of the manager, so that it runs on the leader only.
	if err := mgr.Add(ctrlmanager.RunnableFunc(m.sweepOrphans)); err != nil {
		return nil, err
	}
	return m, nil
}

// Ready is closed once the replica serves requests.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Run runs the replica until ctx ends: ledger watch, informer cache, reconcilers and NATS
// handlers. It returns nil after a clean shutdown, or the error that stopped it.
func (m *Manager) Run(ctx context.Context) error {
	if !m.ran.CompareAndSwap(false, true) {
		return errors.New("poolmanager: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	js, err := jetstream.New(m.cfg.NATS, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, err error) {
		m.log.Warn("instance event not stored", "subject", msg.Subject, "err", err)
	}))
	if err != nil {
		return fmt.Errorf("poolmanager: jetstream: %w", err)
	}
	m.js = js
	kvCtx, kvCancel := context.WithTimeout(ctx, 30*time.Second)
	kv, err := js.KeyValue(kvCtx, messages.BucketInstances)
	kvCancel()
	if err != nil {
		return fmt.Errorf("poolmanager: KV bucket %s (run natsx.Provision first): %w", messages.BucketInstances, err)
	}
	m.ledger = newLedger(kv, m.log)
	m.ledger.onChange = m.onLedgerChange

	var wg sync.WaitGroup
	stop := func(err error) error {
		cancel()
		m.labelQueue.ShutDown()
		wg.Wait()
		return err
	}
	errs := make(chan error, 4)
	synced := make(chan struct{})
	wg.Go(func() { m.ledger.watch(ctx, m.cfg.NATS, synced) })
	select {
	case <-synced:
	case <-ctx.Done():
		return stop(nil)
	}

	if m.podsSynced, err = m.watchPods(ctx); err != nil {
		return stop(err)
	}
	// syncCtx ends when the controller manager fails, so a failed start does not leave the
	// cache wait below hanging.
	syncCtx, syncCancel := context.WithCancel(ctx)
	defer syncCancel()
	wg.Go(func() {
		if err := m.mgr.Start(ctx); err != nil {
			errs <- fmt.Errorf("poolmanager: controller manager: %w", err)
			syncCancel()
		}
	})
	if !m.mgr.GetCache().WaitForCacheSync(syncCtx) || !toolscache.WaitForCacheSync(syncCtx.Done(), m.podsSynced) {
		select {
		case err := <-errs:
			return stop(err)
		default:
			return stop(nil)
		}
	}
	wg.Go(func() { m.publishEvents(ctx) })
	for range labelWorkers {
		wg.Go(func() {
			for m.processLabel(ctx) {
			}
		})
	}
	subs, err := Serve(m.cfg.NATS, MakeEndpoints(m), ServeOptions{
		Logger: m.log, Workers: m.cfg.Workers, BootTimeout: m.cfg.BootTimeout,
	})
	if err != nil {
		return stop(err)
	}
	close(m.ready)
	m.log.Info("pool-manager serving", "namespace", m.cfg.Namespace, "leaderElection", m.cfg.LeaderElection)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	return stop(runErr)
}

// expectations remembers the Pods a pool reconcile created that the cache has not shown yet,
// so that the next reconcile counts them and never overshoots.
type expectations struct {
	mu    sync.Mutex
	pools map[string]map[string]time.Time
}

// expectationTTL drops an expectation the cache never confirmed (the Pod was deleted at once).
const expectationTTL = 30 * time.Second

func newExpectations() *expectations {
	return &expectations{pools: map[string]map[string]time.Time{}}
}

func (e *expectations) add(pool, pod string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pools[pool] == nil {
		e.pools[pool] = map[string]time.Time{}
	}
	e.pools[pool][pod] = time.Now()
}

func (e *expectations) remove(pool, pod string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.pools[pool], pod)
}

// pending returns the expected Pods not in seen, forgetting those seen or expired.
func (e *expectations) pending(pool string, seen map[string]bool) []PodInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []PodInfo
	for name, at := range e.pools[pool] {
		if seen[name] || time.Since(at) > expectationTTL {
			delete(e.pools[pool], name)
			continue
		}
		out = append(out, PodInfo{Name: name, Created: at})
	}
	if len(e.pools[pool]) == 0 {
		delete(e.pools, pool)
	}
	return out
}

// waiters wake boot requests when their Pod changes.
type waiters struct {
	mu sync.Mutex
	m  map[string]map[chan struct{}]struct{}
}

func newWaiters() *waiters { return &waiters{m: map[string]map[chan struct{}]struct{}{}} }

// wait registers interest in a Pod; call cancel when done.
func (w *waiters) wait(name string) (ch chan struct{}, cancel func()) {
	ch = make(chan struct{}, 1)
	w.mu.Lock()
	if w.m[name] == nil {
		w.m[name] = map[chan struct{}]struct{}{}
	}
	w.m[name][ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.m[name], ch)
		if len(w.m[name]) == 0 {
			delete(w.m, name)
		}
		w.mu.Unlock()
	}
}

func (w *waiters) notify(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.m[name] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
