package edge

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Defaults of [Config].
const (
	DefaultAddr           = ":3000"
	DefaultNamespace      = "boilerhouse"
	DefaultDrainTimeout   = 15 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// Config configures an [Edge].
type Config struct {
	// NATS carries every claim and tenant request to the claim-router.
	// Required.
	NATS *nats.Conn
	// Client reads and writes BoilerhouseWorkloads and BoilerhousePools,
	// lists Pods for /stats and /instances, reads and deletes managed Pods;
	// its scheme must know the v1alpha1 types. A
	// cached client is fine but makes reads right after a write stale. If
	// nil, those routes answer 503 and the claim routes still work.
	Client client.Client
	// Namespace holds the workloads, pools and Pods (default "boilerhouse").
	Namespace string
	// Logger receives one line per request and errors (default
	// slog.Default()).
	Logger *slog.Logger
	// Addr is where [Edge.Run] listens (default ":3000").
	Addr string
	// APIKey, if set, is required as "Authorization: Bearer <key>" on every
	// /api/v1 route except /api/v1/health. Empty means no authentication
	// (development only; the edge binary refuses to start without a key
	// unless -insecure-dev is given).
	APIKey string
	// DrainTimeout bounds the graceful shutdown of [Edge.Run] (default 15s).
	// Half-way through it, requests still waiting for a claim are answered
	// 503 so that their callers retry elsewhere.
	DrainTimeout time.Duration
	// RequestTimeout bounds NATS requests other than claim and release and
	// each Kubernetes call (default 10s).
	RequestTimeout time.Duration
	// RestConfig reaches the API server's pods/log and pods/exec for the
	// instance logs and exec routes (client-go). If nil, those routes answer
	// 503; the other instance routes use Client.
	RestConfig *rest.Config
	// ExecTimeout bounds one exec (default 30s).
	ExecTimeout time.Duration
	// Registry receives the HTTP metrics and is served at /metrics. Default:
	// a new registry with the Go and process collectors.
	Registry *prometheus.Registry
}

// Edge is the REST API of Boilerhouse.
type Edge struct {
	cfg          Config
	log          *slog.Logger
	handler      http.Handler
	metrics      *httpMetrics
	apiKeyDigest []byte
	// draining is set once Run begins its shutdown.
	draining atomic.Bool
}

// New builds the edge: NATS clients for the claim-router's subjects (built
// once, reused by every request), the routes and the middleware.
func New(cfg Config) (*Edge, error) {
	if cfg.NATS == nil {
		return nil, errors.New("edge: Config.NATS is required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.ExecTimeout <= 0 {
		cfg.ExecTimeout = DefaultExecTimeout
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
		cfg.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	e := &Edge{cfg: cfg, log: cfg.Logger, metrics: newHTTPMetrics(cfg.Registry)}
	if cfg.APIKey != "" {
		sum := sha256.Sum256([]byte(cfg.APIKey))
		e.apiKeyDigest = sum[:]
	}
	b, err := newBackend(&cfg)
	if err != nil {
		return nil, err
	}
	mux := e.routes(b.endpoints(), cfg.Registry)
	e.handler = e.middleware(mux)
	return e, nil
}

// Handler is the whole REST API with its middleware, for tests or to mount
// elsewhere.
func (e *Edge) Handler() http.Handler { return e.handler }

// Run listens on Config.Addr and serves until ctx is done, then shuts down
// gracefully (see [Edge.Serve]).
func (e *Edge) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", e.cfg.Addr)
	if err != nil {
		return fmt.Errorf("edge: listen on %s: %w", e.cfg.Addr, err)
	}
	return e.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done. Shutdown stops accepting
// connections and waits up to Config.DrainTimeout for requests in flight;
// half-way through, requests still waiting (long claim waits) are canceled
// and answered 503; at the end the remaining connections are closed. A
// shutdown returns nil; a failure to serve returns the error.
func (e *Edge) Serve(ctx context.Context, ln net.Listener) error {
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           e.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		// No WriteTimeout: a claim may wait up to MaxWait; every
		// request is bounded by its own context instead.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(e.log.Handler(), slog.LevelWarn),
		BaseContext:    func(net.Listener) context.Context { return base },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	e.log.Info("edge listening", "addr", ln.Addr().String())

	select {
	case err := <-served:
		return fmt.Errorf("edge: serve: %w", err)
	case <-ctx.Done():
	}
	e.draining.Store(true)
	e.log.Info("edge shutting down", "drain", e.cfg.DrainTimeout.String())
	drainCtx, cancel := context.WithTimeout(context.Background(), e.cfg.DrainTimeout)
	defer cancel()
	stopWaiting := time.AfterFunc(e.cfg.DrainTimeout/2, cancelBase)
	defer stopWaiting.Stop()
	if err := srv.Shutdown(drainCtx); err != nil {
		e.log.Warn("edge drain timed out; closing the remaining connections", "err", err)
		_ = srv.Close()
	}
	<-served
	return nil
}
