// Command devstack is `make run`: all of Boilerhouse from one command on the embedded default
// (embedded NATS and the services in this process; a local control plane and the dev node as
// its child processes), or against the cluster that KUBECONFIG names.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"

	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/pkg/tracing"
	"boilerhouse.dev/tools/devnode"
	"boilerhouse.dev/tools/devstack"
)

// gcPercent is the dev stack's default GOGC. It holds thousands of Pods in several informer
// caches, and its control plane holds them again; at the default of 100 the collector took a
// fifth of the CPU of this process and of kube-apiserver at 200 claims/s, and 400 lowered
// the claim latency in alternating runs (docs/benchmarks.md).
const gcPercent = 400

// devNodeCommand as the first argument runs the dev node (the child process of a dev stack).
const devNodeCommand = "devnode"

func main() {
	// The dev node's child process (see -devnode-process) is this program too.
	if len(os.Args) > 1 && os.Args[1] == devNodeCommand {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := devnode.Command(ctx, os.Args[2:], os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "devstack devnode:", err)
			os.Exit(1)
		}
		return
	}
	if os.Getenv("GOGC") == "" {
		os.Setenv("GOGC", strconv.Itoa(gcPercent)) // for etcd and kube-apiserver, which inherit it
		debug.SetGCPercent(gcPercent)
	}
	var cfg devstack.Config
	flag.StringVar(&cfg.HTTPAddr, "http", ":3000", "REST listen address")
	flag.IntVar(&cfg.NATSPort, "nats-port", 4222, "embedded NATS client port")
	flag.StringVar(&cfg.StateDir, "state", "", "state directory (default <repo>/.devstack)")
	flag.StringVar(&cfg.Root, "root", "", "repository root (default: found from the working directory)")
	flag.StringVar(&cfg.Namespace, "namespace", "boilerhouse", "namespace of managed objects")
	flag.BoolVar(&cfg.Examples, "examples", true, "apply deploy/examples")
	flag.BoolVar(&cfg.NoSync, "no-sync", false, "do not flush every JetStream write (measurement only: loses acknowledged writes on power loss)")
	// On a cluster the API server has machines of its own; here it shares the cores with the
	// claim path, which at 200 claims/s it would slow (docs/benchmarks.md).
	flag.IntVar(&cfg.ControlPlaneNice, "control-plane-nice", 19, "nice value of the local etcd and kube-apiserver (0: unchanged)")
	devNodeProcess := flag.Bool("devnode-process", true, "run the dev node as a child process, as a kubelet runs apart from the services (false: in this process)")
	jsonLogs := flag.Bool("json", false, "JSON logs")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060)")
	flag.Parse()
	// KUBECONFIG selects a real cluster: then no local control plane and no dev node start.
	cfg.Kubeconfig = os.Getenv("KUBECONFIG")
	if *devNodeProcess {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, "devstack:", err)
			os.Exit(1)
		}
		cfg.DevNodeCommand = []string{exe, devNodeCommand}
	}

	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})
	if *jsonLogs {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	cfg.Logger = slog.New(h)
	svcmain.UseLogger(cfg.Logger)
	cfg.Ready = func(i devstack.Info) {
		fmt.Printf("\nBoilerhouse is up.\n  REST        %s\n  NATS        %s\n  kubeconfig  %s\n  tools       export PATH=%s/bin:$PATH\n\n",
			i.REST, i.NATS, i.Kubeconfig, i.StateDir)
	}
	if *pprofAddr != "" {
		// Lock contention is what stalls a saturated stack; sample one in ten.
		runtime.SetMutexProfileFraction(10)
		go func() { _ = http.ListenAndServe(*pprofAddr, nil) }() // DefaultServeMux carries pprof
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Every service runs in this process: one tracer provider for all (OTEL_EXPORTER_OTLP_ENDPOINT).
	shutdown, err := tracing.Setup(ctx, "boilerhouse-devstack")
	if err == nil {
		err = devstack.Run(ctx, cfg)
		_ = shutdown()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}
