// Command edge serves Boilerhouse's REST API: claims go to the claim-router
// over NATS, workloads and pools are read and written in the Kubernetes API.
//
// Configuration (flag, else environment variable):
//
//	-addr          ADDR                 listen address (default :3000)
//	-nats-url      NATS_URL             NATS server(s) (default nats://127.0.0.1:4222)
//	-kubeconfig    KUBECONFIG           kubeconfig; empty: in-cluster or ~/.kube/config
//	-namespace     K8S_NAMESPACE        namespace of workloads, pools and Pods (default boilerhouse)
//	-log-level     LOG_LEVEL            debug, info, warn or error (default info)
//	-exec-timeout  EXEC_TIMEOUT         bound of POST /api/v1/instances/{id}/exec (default 30s)
//	-insecure-dev  INSECURE_DEV=true    serve without an API key (development only)
//	               BOILERHOUSE_API_KEY  API key required as "Authorization: Bearer <key>"
//
// The API key is read from the environment only, so it never shows in a
// process listing. Without it the edge refuses to start unless -insecure-dev
// is given.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/nats-io/nats.go"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/services/edge"
)

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "edge:", err)
		os.Exit(1)
	}
}

func mainErr(args []string) error {
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	insecureDefault, _ := strconv.ParseBool(os.Getenv("INSECURE_DEV"))
	var (
		addr        = fs.String("addr", svcmain.Env("ADDR", edge.DefaultAddr), "listen address")
		natsURL     = fs.String("nats-url", svcmain.Env("NATS_URL", nats.DefaultURL), "NATS server URL(s), comma separated")
		kubeconfig  = fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty: in-cluster or ~/.kube/config")
		namespace   = fs.String("namespace", svcmain.Env("K8S_NAMESPACE", edge.DefaultNamespace), "namespace of workloads, pools and Pods")
		logLevel    = fs.String("log-level", svcmain.Env("LOG_LEVEL", "info"), "log level: debug, info, warn, error")
		execTimeout = fs.Duration("exec-timeout", svcmain.EnvDuration("EXEC_TIMEOUT", edge.DefaultExecTimeout), "how long an instance exec may run")
		insecureDev = fs.Bool("insecure-dev", insecureDefault, "serve without an API key (development only)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger, err := svcmain.Logger(*logLevel)
	if err != nil {
		return err
	}

	apiKey := os.Getenv("BOILERHOUSE_API_KEY")
	if apiKey == "" && !*insecureDev {
		return errors.New("BOILERHOUSE_API_KEY is not set; set it, or pass -insecure-dev to serve without authentication")
	}
	if apiKey == "" {
		logger.Warn("serving without authentication (-insecure-dev)")
	}

	restConfig, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: *kubeconfig, Precedence: clientcmd.NewDefaultClientConfigLoadingRules().Precedence},
		&clientcmd.ConfigOverrides{},
	).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubernetes config: %w", err)
	}
	restConfig.QPS, restConfig.Burst = 50, 100
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	// A direct client: REST callers expect to read what they just wrote.
	kube, err := client.New(restConfig, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	nc, err := natsx.Connect(*natsURL, nats.Name("boilerhouse-edge"))
	if err != nil {
		return err
	}
	defer nc.Close()

	e, err := edge.New(edge.Config{
		NATS:        nc,
		Client:      kube,
		RestConfig:  restConfig,
		Namespace:   *namespace,
		Logger:      logger,
		Addr:        *addr,
		APIKey:      apiKey,
		ExecTimeout: *execTimeout,
	})
	if err != nil {
		return err
	}

	return svcmain.RunUntilSignal(logger, "edge", e.Run)
}
