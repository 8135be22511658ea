// Package svcmain holds what every service binary's main needs: flag defaults from the
// environment and the Kubernetes client configuration.
package svcmain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/tracing"
)

// Env is the variable's value, or def when it is unset or empty.
func Env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// EnvDuration parses the variable as a Go duration; a malformed value is reported and ignored.
func EnvDuration(name string, def time.Duration) time.Duration {
	if v := Env(name, ""); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		fmt.Fprintf(os.Stderr, "ignoring %s=%q: not a duration\n", name, v)
	}
	return def
}

// EnvInt parses the variable as an integer; a malformed value is reported and ignored.
func EnvInt[T int | int64](name string, def T) T {
	if v := Env(name, ""); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return T(n)
		}
		fmt.Fprintf(os.Stderr, "ignoring %s=%q: not an integer\n", name, v)
	}
	return def
}

// EnvBool parses the variable as a boolean; a malformed value is reported and ignored.
func EnvBool(name string, def bool) bool {
	if v := Env(name, ""); v != "" {
		if b, err := strconv.ParseBool(v); err == nil {
			return b
		}
		fmt.Fprintf(os.Stderr, "ignoring %s=%q: not a boolean\n", name, v)
	}
	return def
}

// KubeConfig loads the kubeconfig file, or the in-cluster configuration when path is empty.
func KubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		c, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no -kubeconfig given and not running in a cluster: %w", err)
	}
	return c, nil
}

// Logger is the JSON logger at level ("debug", "info", "warn", "error"), also made the default.
func Logger(level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	l := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	UseLogger(l)
	return l, nil
}

// UseLogger makes l the process's default logger, for slog, klog and controller-runtime, whose
// clients log the API server's warnings through a global logger that, left unset, drops them
// and prints a complaint with a stack trace instead.
func UseLogger(l *slog.Logger) {
	slog.SetDefault(l)
	ctrllog.SetLogger(logr.FromSlogHandler(l.Handler()))
	klog.SetSlogLogger(l) // client-go's own lines (leader election, event broadcaster)
}

// StopTimeout bounds how long a service may take to stop once asked. It is below Kubernetes'
// default termination grace period (30 s), so that a service stuck in its stop exits with an
// error of its own instead of being killed: controller-runtime v0.25.2's manager, stopped while
// its caches cannot sync (API server unreachable), spins and never returns (upstream PR #3440).
const StopTimeout = 20 * time.Second

// RunUntilSignal runs service until it fails or SIGINT/SIGTERM asks it to stop; a stop by
// signal is a clean exit, unless the service takes longer than StopTimeout to return. Traces
// are exported as name while it runs when the environment configures an OTLP endpoint
// (tracing.Setup).
func RunUntilSignal(logger *slog.Logger, name string, service func(context.Context) error) error {
	shutdown, err := tracing.Setup(context.Background(), name)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() {
		if err := shutdown(); err != nil {
			logger.Warn("flushing traces", "err", err)
		}
	}()
	signals := func() (func() error, func(error)) {
		return run.SignalHandler(context.Background(), os.Interrupt, syscall.SIGTERM)
	}
	err = runUntil(signals, name, service, StopTimeout)
	if errors.Is(err, run.ErrSignal) {
		logger.Info(name+" stopped", "reason", err.Error())
		return nil
	}
	return err
}

// runUntil runs service until it fails or stopper's actor returns, then gives it stopTimeout to
// return before abandoning it with an error.
func runUntil(stopper func() (func() error, func(error)), name string, service func(context.Context) error, stopTimeout time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck := false
	var g run.Group
	g.Add(func() error {
		done := make(chan error, 1)
		go func() { done <- service(ctx) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
		}
		select {
		case err := <-done:
			return err
		case <-time.After(stopTimeout):
			stuck = true
			return nil
		}
	}, func(error) { cancel() })
	g.Add(stopper())
	err := g.Run() // returns once every actor has: stuck is settled
	if stuck {
		return fmt.Errorf("%s did not stop within %s of being asked to (%v)", name, stopTimeout, err)
	}
	return err
}

// ConnectNATS connects to url under name and, when provision is set, creates or updates every
// KV bucket and stream first (natsx.Provision with cfg, 30 s at most), so that a service can be
// the first to start.
func ConnectNATS(url, name string, provision bool, cfg natsx.ProvisionConfig) (*nats.Conn, error) {
	nc, err := natsx.Connect(url, nats.Name(name))
	if err != nil {
		return nil, err
	}
	if !provision {
		return nc, nil
	}
	js, err := jetstream.New(nc)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = natsx.Provision(ctx, js, cfg)
		cancel()
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return nc, nil
}

// WithHealth runs service and, when addr is set (not "" or "0"), an HTTP listener on addr for
// Kubernetes probes: /healthz answers while the process runs, /readyz while the NATS
// connection is up (a replica without NATS can serve nothing); /metrics serves Prometheus's
// default registry, where the services register their metrics.
func WithHealth(addr string, nc *nats.Conn, service func(context.Context) error) func(context.Context) error {
	if addr == "" || addr == "0" {
		return service
	}
	return func(ctx context.Context) error {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			if err := natsx.Ready(nc); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		mux.Handle("GET /metrics", promhttp.Handler())
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("health listener: %w", err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		return service(ctx)
	}
}
