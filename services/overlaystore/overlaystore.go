// Package overlaystore is Boilerhouse's overlay-store service: it saves a tenant's overlay
// directories out of a Pod as a new archive generation (bh.v1.overlays.extract), restores a
// generation into a Pod (bh.v1.overlays.restore), and lists and deletes the stored versions
// (bh.v1.overlays.list, bh.v1.overlays.delete), served over NATS in queue group
// "overlay-store" so that replicas share the work.
//
// Bytes move by exec'ing plain tar in the Pod's helper (or restore init) container through the
// API server, streamed through overlay.Pack into the store and out of the store through
// overlay.Sanitize: never whole in memory, and nothing of a hostile archive ever reaches a Pod.
// See docs/overlays.md.
package overlaystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/overlay"
)

// Defaults for zero Config fields.
const (
	DefaultNamespace = "boilerhouse"
	DefaultStoreDir  = "/snapshots"
	// DefaultTransferTimeout bounds one extract or restore.
	DefaultTransferTimeout = 10 * time.Minute
	// DefaultLabelWait is how long a request waits for an instance's tenant label to appear
	// (pool-manager labels an acquired pool Pod just after handing it out).
	DefaultLabelWait = 10 * time.Second
	// DefaultShutdownGrace is how long Run lets running transfers finish after its context
	// ends, so that a SIGTERM does not cut an extraction short.
	DefaultShutdownGrace = 2 * time.Minute
	// DefaultWorkers bounds concurrent requests per subject.
	DefaultWorkers = 32
)

// Config configures a Service.
type Config struct {
	// RestConfig reaches the Kubernetes API server (required unless Client and Executor are
	// both set).
	RestConfig *rest.Config
	// NATS is the connection Run serves on (required by Run).
	NATS *nats.Conn
	// Namespace holds the workloads and Pods (default "boilerhouse").
	Namespace string
	// StoreDir is the root of the directory store (default /snapshots), unless Store is set.
	StoreDir string
	// Store overrides the directory store (another backend).
	Store overlay.Store
	// Limits bound the archives (zero fields: overlay.DefaultLimits).
	Limits overlay.Limits
	// Metrics receives the extract and restore metrics; prometheus.DefaultRegisterer when nil.
	Metrics prometheus.Registerer
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Workers bounds concurrent requests per subject (default 32).
	Workers int
	// TransferTimeout bounds one extract or restore (default 10m).
	TransferTimeout time.Duration
	// LabelWait is how long to wait for an instance's tenant label (default 10s).
	LabelWait time.Duration
	// ShutdownGrace is how long Run waits for running requests when stopped (default 2m).
	ShutdownGrace time.Duration
	// Client reads Pods and workloads (default: an uncached client of RestConfig, so a
	// request always sees the Pod as it is now).
	Client client.Reader
	// Executor runs tar in the Pods (default: a KubeExecutor of RestConfig).
	Executor Executor
}

// Service is one overlay-store replica.
type Service struct {
	cfg     Config
	log     *slog.Logger
	metrics *storeMetrics
	kube    client.Reader
	exec    Executor
	store   overlay.Store
	// ledger is pool-manager's acquisition ledger (KV instances), nil until Run: it says who
	// holds a pool Pod before its tenant label (written asynchronously) arrives.
	ledger jetstream.KeyValue

	ready chan struct{}
	ran   atomic.Bool

	mu       sync.Mutex
	closing  bool
	inflight sync.WaitGroup
	// hard ends the requests still running when the shutdown grace is over.
	hard       context.Context
	cancelHard context.CancelFunc
}

// New prepares a Service; nothing talks to Kubernetes or NATS until a request or Run.
func New(cfg Config) (*Service, error) {
	if cfg.RestConfig == nil && (cfg.Client == nil || cfg.Executor == nil) {
		return nil, errors.New("overlaystore: Config.RestConfig is required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = DefaultStoreDir
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.TransferTimeout <= 0 {
		cfg.TransferTimeout = DefaultTransferTimeout
	}
	if cfg.LabelWait <= 0 {
		cfg.LabelWait = DefaultLabelWait
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = DefaultShutdownGrace
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.DefaultRegisterer
	}
	s := &Service{cfg: cfg, log: cfg.Logger.With("service", "overlay-store"), metrics: newStoreMetrics(cfg.Metrics), ready: make(chan struct{})}
	s.hard, s.cancelHard = context.WithCancel(context.Background())

	var rc *rest.Config
	if cfg.RestConfig != nil {
		rc = rest.CopyConfig(cfg.RestConfig)
		if rc.QPS == 0 {
			rc.QPS, rc.Burst = 100, 200
		}
		rc.UserAgent = "boilerhouse-overlay-store"
		// Pods in protobuf (its Pod watch sees every claim's label patch); see pool-manager.
		rc.ContentType = "application/vnd.kubernetes.protobuf"
		rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	}
	s.kube = cfg.Client
	if s.kube == nil {
		scheme := runtime.NewScheme()
		if err := clientgoscheme.AddToScheme(scheme); err != nil {
			return nil, err
		}
		if err := v1alpha1.AddToScheme(scheme); err != nil {
			return nil, err
		}
		c, err := client.New(rc, client.Options{Scheme: scheme})
		if err != nil {
			return nil, fmt.Errorf("overlaystore: kubernetes client: %w", err)
		}
		s.kube = c
	}
	s.exec = cfg.Executor
	if s.exec == nil {
		e, err := NewKubeExecutor(rc)
		if err != nil {
			return nil, fmt.Errorf("overlaystore: exec client: %w", err)
		}
		s.exec = e
	}
	s.store = cfg.Store
	if s.store == nil {
		ds, err := overlay.NewDirStore(cfg.StoreDir, overlay.DirStoreOptions{})
		if err != nil {
			return nil, fmt.Errorf("overlaystore: %w", err)
		}
		s.store = ds
	}
	return s, nil
}

// Store is the storage backend.
func (s *Service) Store() overlay.Store { return s.store }

// Ready is closed once Run serves requests.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run cleans up what crashed writers left in the store, serves the four subjects until ctx
// ends, then stops taking requests and lets running ones finish (up to ShutdownGrace).
func (s *Service) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("overlaystore: Run called twice")
	}
	if s.cfg.NATS == nil {
		return errors.New("overlaystore: Config.NATS is required to serve")
	}
	if js, err := jetstream.New(s.cfg.NATS); err == nil {
		kvCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if s.ledger, err = js.KeyValue(kvCtx, messages.BucketInstances); err != nil {
			s.log.Warn("no instances ledger: pool+data restores wait for the tenant label", "err", err)
		}
		cancel()
	}
	if c, ok := s.store.(interface{ Clean(context.Context) error }); ok {
		if err := c.Clean(ctx); err != nil {
			s.log.Warn("cleaning the store", "err", err)
		}
	}
	subs, err := Serve(s.cfg.NATS, MakeEndpoints(s), ServeOptions{
		Logger: s.log, Workers: s.cfg.Workers, TransferTimeout: s.cfg.TransferTimeout, track: s.track,
	})
	if err != nil {
		return err
	}
	s.log.Info("serving", "store", s.cfg.StoreDir, "namespace", s.cfg.Namespace)
	close(s.ready)
	<-ctx.Done()
	for _, sub := range subs {
		_ = sub.Unsubscribe()
	}
	s.drain()
	return nil
}

// track runs one request unless the service is shutting down, and ends it if the shutdown
// grace runs out.
func (s *Service) track(ctx context.Context, f func(context.Context) (any, error)) (any, error) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, messages.Errorf(messages.CodeUnavailable, "overlay-store is shutting down")
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.hard, cancel)
	defer stop()
	return f(ctx)
}

func (s *Service) drain() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(s.cfg.ShutdownGrace):
	}
	s.log.Warn("shutdown grace over: cancelling the requests still running")
	s.cancelHard()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

// extract is Extract, uncounted.
func (s *Service) extract(ctx context.Context, req messages.ExtractRequest) (messages.Snapshot, error) {
	if err := validateInstance(req.TenantID, req.Workload, req.InstanceID); err != nil {
		return messages.Snapshot{}, err
	}
	if req.RestoredGeneration < 0 {
		return messages.Snapshot{}, messages.Errorf(messages.CodeInvalidArgument, "restoredGeneration must not be negative")
	}
	pod, err := s.instance(ctx, req.InstanceID, req.TenantID, req.Workload)
	if err != nil {
		return messages.Snapshot{}, err
	}
	dirs, err := s.dirs(ctx, pod, req.Workload)
	if err != nil {
		return messages.Snapshot{}, err
	}
	empty := messages.Snapshot{TenantID: req.TenantID, Workload: req.Workload}
	if len(dirs) == 0 {
		return empty, nil // nothing to save, nothing stored
	}
	if err := helperReady(pod); err != nil {
		return messages.Snapshot{}, err
	}
	start := time.Now()
	var res overlay.PackResult
	snap, err := s.store.Put(ctx, req.TenantID, req.Workload, req.RestoredGeneration, req.Force, pod.Name, func(w io.Writer) error {
		ectx, cancel := context.WithCancel(ctx)
		defer cancel()
		pr, pw := io.Pipe()
		execDone := make(chan error, 1)
		go func() {
			err := s.exec.Exec(ectx, s.cfg.Namespace, pod.Name, overlay.HelperContainer, overlay.ExtractCommand, nil, pw)
			pw.CloseWithError(err) // nil: EOF
			execDone <- err
		}()
		r, perr := overlay.Pack(w, pr, dirs, s.cfg.Limits)
		if perr != nil {
			cancel()
			pr.CloseWithError(perr)
			if eerr := <-execDone; eerr != nil && !overlay.IsLimit(perr) {
				return s.execFailure(ctx, pod, eerr) // the Pod's side broke the stream
			}
			return packError(pod.Name, perr)
		}
		// Pack has read the stream to its end; the commit waits for tar's exit status (a tar
		// that could not read a file still ends its stream cleanly).
		if eerr := <-execDone; eerr != nil {
			return s.execFailure(ctx, pod, eerr)
		}
		res = r
		return nil
	})
	if err != nil {
		if messages.CodeOf(err) != messages.CodeConflict {
			s.log.Warn("extract failed", "tenant", req.TenantID, "workload", req.Workload, "instance", pod.Name, "err", err)
		}
		return messages.Snapshot{}, err
	}
	attrs := []any{"tenant", req.TenantID, "workload", req.Workload, "instance", pod.Name, "generation", snap.Generation,
		"restoredFrom", req.RestoredGeneration, "force", req.Force, "bytes", res.Bytes, "entries", res.Entries,
		"archiveBytes", snap.Size, "took", time.Since(start).Round(time.Millisecond)}
	if res.SkippedCount > 0 {
		attrs = append(attrs, "skipped", describeSkipped(res))
	}
	s.log.Info("overlay extracted", attrs...)
	return snap, nil
}

// restore is Restore, uncounted.
func (s *Service) restore(ctx context.Context, req messages.RestoreRequest) (messages.RestoreReply, error) {
	if err := validateInstance(req.TenantID, req.Workload, req.InstanceID); err != nil {
		return messages.RestoreReply{}, err
	}
	if req.Generation < 0 {
		return messages.RestoreReply{}, messages.Errorf(messages.CodeInvalidArgument, "generation must not be negative")
	}
	pod, err := s.instance(ctx, req.InstanceID, req.TenantID, req.Workload)
	if err != nil {
		return messages.RestoreReply{}, err
	}
	dirs, err := s.dirs(ctx, pod, req.Workload)
	if err != nil {
		return messages.RestoreReply{}, err
	}
	if len(dirs) == 0 {
		return messages.RestoreReply{}, nil
	}
	container, viaInit, err := RestoreTarget(pod)
	if err != nil {
		return messages.RestoreReply{}, err
	}
	first, snap, err := s.store.Open(ctx, req.TenantID, req.Workload, req.Generation)
	if messages.CodeOf(err) == messages.CodeNotFound && req.Generation == 0 {
		// Nothing stored: a Pod held by its restore init container still has to start.
		if viaInit {
			if err := s.markRestored(ctx, pod); err != nil {
				return messages.RestoreReply{}, err
			}
		}
		return messages.RestoreReply{}, nil
	}
	if err != nil {
		return messages.RestoreReply{}, restoreError(messages.Snapshot{TenantID: req.TenantID, Workload: req.Workload, Generation: req.Generation}, err)
	}
	opens := 0
	open := func() (io.ReadCloser, error) {
		if opens++; opens == 1 {
			return first, nil
		}
		rc, _, err := s.store.Open(ctx, req.TenantID, req.Workload, snap.Generation)
		return rc, err
	}

	start := time.Now()
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	execDone := make(chan error, 1)
	started := false
	// The exec starts with the first byte of the clean stream, i.e. only once the whole
	// archive passed validation (Sanitize's first pass).
	sink := writerFunc(func(p []byte) (int, error) {
		if !started {
			started = true
			go func() {
				err := s.exec.Exec(ectx, s.cfg.Namespace, pod.Name, container, overlay.RestoreCommand, pr, nil)
				pr.CloseWithError(fmt.Errorf("tar ended: %w", errOr(err, io.EOF)))
				execDone <- err
			}()
		}
		return pw.Write(p)
	})
	info, serr := overlay.Sanitize(sink, open, overlay.Info{Size: snap.Size, SHA256: snap.SHA256}, dirs, s.cfg.Limits)
	if opens == 0 {
		first.Close()
	}
	if !started {
		if serr == nil {
			serr = errors.New("no output") // unreachable: a tar stream always has a trailer
		}
		s.log.Error("stored overlay refused", "tenant", req.TenantID, "workload", req.Workload, "generation", snap.Generation, "err", serr)
		return messages.RestoreReply{}, restoreError(snap, serr)
	}
	if serr != nil {
		cancel()
		pw.CloseWithError(serr)
		if eerr := <-execDone; eerr != nil && overlay.RuleOf(serr) == "" {
			return messages.RestoreReply{}, s.execFailure(ctx, pod, eerr)
		}
		s.log.Error("restore failed part way", "tenant", req.TenantID, "workload", req.Workload, "instance", pod.Name, "generation", snap.Generation, "err", serr)
		return messages.RestoreReply{}, restoreError(snap, serr)
	}
	pw.Close()
	if err := <-execDone; err != nil {
		return messages.RestoreReply{}, s.execFailure(ctx, pod, err)
	}
	if viaInit {
		if err := s.markRestored(ctx, pod); err != nil {
			return messages.RestoreReply{}, err
		}
	}
	s.log.Info("overlay restored", "tenant", req.TenantID, "workload", req.Workload, "instance", pod.Name, "container", container,
		"generation", snap.Generation, "bytes", info.Bytes, "entries", info.Entries, "took", time.Since(start).Round(time.Millisecond))
	return messages.RestoreReply{Generation: snap.Generation, Restored: true}, nil
}

// markRestored releases a Pod's restore init container.
func (s *Service) markRestored(ctx context.Context, pod *corev1.Pod) error {
	if err := s.exec.Exec(ctx, s.cfg.Namespace, pod.Name, overlay.RestoreInitContainer, overlay.MarkRestoredCommand, nil, nil); err != nil {
		return s.execFailure(ctx, pod, err)
	}
	return nil
}

// List implements Service.
func (s *Service) List(ctx context.Context, req messages.OverlayListRequest) (messages.SnapshotList, error) {
	snaps, err := s.store.List(ctx, req.TenantID, req.Workload)
	if err != nil {
		return messages.SnapshotList{}, err
	}
	return messages.SnapshotList{Snapshots: snaps}, nil
}

// Delete implements Service.
func (s *Service) Delete(ctx context.Context, req messages.OverlayDeleteRequest) (messages.OverlayDeleteReply, error) {
	if err := validateKey(req.TenantID, req.Workload); err != nil {
		return messages.OverlayDeleteReply{}, err
	}
	n, err := s.store.Delete(ctx, req.TenantID, req.Workload)
	if err != nil {
		return messages.OverlayDeleteReply{}, err
	}
	if n > 0 {
		s.log.Info("overlay deleted", "tenant", req.TenantID, "workload", req.Workload, "versions", n)
	}
	return messages.OverlayDeleteReply{Deleted: n}, nil
}

// instance reads the Pod and checks that it belongs to tenant and workload, waiting up to
// LabelWait for a missing tenant label.
func (s *Service) instance(ctx context.Context, name, tenant, workload string) (*corev1.Pod, error) {
	deadline := time.Now().Add(s.cfg.LabelWait)
	for {
		pod := &corev1.Pod{}
		if err := s.kube.Get(ctx, types.NamespacedName{Namespace: s.cfg.Namespace, Name: name}, pod); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, messages.Errorf(messages.CodeNotFound, "instance %s not found", name)
			}
			return nil, kubeError("reading instance "+name, err)
		}
		err := CheckPod(pod, tenant, workload)
		if !errors.Is(err, errUnlabelled) {
			return pod, err
		}
		if s.heldFor(ctx, name, tenant) {
			return pod, nil
		}
		if time.Now().After(deadline) {
			return nil, messages.Errorf(messages.CodeConflict, "instance %s has no tenant label after %s: not handing it tenant %q's data", name, s.cfg.LabelWait, tenant)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// heldFor says whether pool-manager's ledger records the instance as acquired for tenant.
func (s *Service) heldFor(ctx context.Context, name, tenant string) bool {
	if s.ledger == nil {
		return false
	}
	e, err := s.ledger.Get(ctx, name)
	if err != nil {
		return false
	}
	var held struct {
		TenantID string `json:"tenantId"`
		State    string `json:"state"`
	}
	return json.Unmarshal(e.Value(), &held) == nil && held.State == "acquired" && held.TenantID == tenant
}

// dirs reads the workload and chooses the overlay dirs of the Pod.
func (s *Service) dirs(ctx context.Context, pod *corev1.Pod, workload string) ([]string, error) {
	w := &v1alpha1.BoilerhouseWorkload{}
	var declared []string
	err := s.kube.Get(ctx, types.NamespacedName{Namespace: s.cfg.Namespace, Name: workload}, w)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, kubeError("reading workload "+workload, err)
	case w.Spec.Filesystem != nil:
		declared = w.Spec.Filesystem.OverlayDirs
	}
	dirs, err := ChooseDirs(pod, declared)
	if err == nil && len(declared) > 0 && !equal(dirs, declared) {
		s.log.Warn("instance's overlay volumes differ from its workload's overlayDirs; using the instance's",
			"instance", pod.Name, "instanceDirs", dirs, "workloadDirs", declared)
	}
	return dirs, err
}

// execFailure classifies a failed exec: tar exiting non-zero is internal; a transport failure
// is not_found when the Pod is gone, unavailable otherwise.
func (s *Service) execFailure(ctx context.Context, pod *corev1.Pod, err error) error {
	var ee *ExecError
	if errors.As(err, &ee) && ee.ExitCode > 0 {
		return messages.Errorf(messages.CodeInternal, "instance %s: %v", pod.Name, err)
	}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return messages.Errorf(messages.CodeDeadlineExceeded, "instance %s: %v", pod.Name, err)
		}
		return messages.Errorf(messages.CodeUnavailable, "instance %s: cancelled: %v", pod.Name, err)
	}
	gctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := &corev1.Pod{}
	gerr := s.kube.Get(gctx, types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}, now)
	switch {
	case apierrors.IsNotFound(gerr) || gerr == nil && now.UID != pod.UID:
		return messages.Errorf(messages.CodeNotFound, "instance %s is gone: %v", pod.Name, err)
	case gerr == nil && now.DeletionTimestamp != nil:
		return messages.Errorf(messages.CodeNotFound, "instance %s is being deleted: %v", pod.Name, err)
	}
	return messages.Errorf(messages.CodeUnavailable, "instance %s: %v", pod.Name, err)
}

func kubeError(op string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return messages.Errorf(messages.CodeNotFound, "%s: %v", op, err)
	case errors.Is(err, context.DeadlineExceeded):
		return messages.Errorf(messages.CodeDeadlineExceeded, "%s: %v", op, err)
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsBadRequest(err):
		return messages.Errorf(messages.CodeInternal, "%s: %v", op, err)
	}
	return messages.Errorf(messages.CodeUnavailable, "%s: %v", op, err)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
