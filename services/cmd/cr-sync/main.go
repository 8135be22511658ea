// Command cr-sync runs the Boilerhouse cr-sync service: one BoilerhouseClaim per
// (tenant, workload) kept in step with the claims KV bucket (see package crsync).
//
// Flags (each also read from the environment variable in brackets):
//
//	-nats-url      NATS server URL(s)                       [NATS_URL, default nats://127.0.0.1:4222]
//	-kubeconfig    kubeconfig file; empty: in-cluster config [KUBECONFIG]
//	-namespace     namespace of the BoilerhouseClaims       [BOILERHOUSE_NAMESPACE, default boilerhouse]
//	-leader-elect  run on one replica at a time             [CR_SYNC_LEADER_ELECT, default true]
//	-resync        anti-entropy period                      [CR_SYNC_RESYNC, default 30s]
//	-workers       claims reconciled at once                [CR_SYNC_WORKERS, default 4]
//	-metrics-addr  Prometheus metrics listener, 0: none     [CR_SYNC_METRICS_ADDR, default :9090]
//	-health-addr   /healthz and /readyz listener, 0: none   [CR_SYNC_HEALTH_ADDR, default :9091]
//	-log-level     debug, info, warn or error               [LOG_LEVEL, default info]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/services/crsync"
)

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cr-sync:", err)
		os.Exit(1)
	}
}

func mainErr(args []string) error {
	fs := flag.NewFlagSet("cr-sync", flag.ContinueOnError)
	natsURL := fs.String("nats-url", svcmain.Env("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated")
	kubeconfig := fs.String("kubeconfig", svcmain.Env("KUBECONFIG", ""), "kubeconfig file (default: in-cluster configuration)")
	namespace := fs.String("namespace", svcmain.Env("BOILERHOUSE_NAMESPACE", crsync.DefaultNamespace), "namespace of the BoilerhouseClaims")
	leaderElect := fs.Bool("leader-elect", svcmain.EnvBool("CR_SYNC_LEADER_ELECT", true), "run on one replica at a time")
	workers := fs.Int("workers", svcmain.EnvInt("CR_SYNC_WORKERS", crsync.DefaultWorkers), "claims reconciled at once")
	resync := fs.Duration("resync", svcmain.EnvDuration("CR_SYNC_RESYNC", crsync.DefaultResyncInterval), "anti-entropy period")
	metricsAddr := fs.String("metrics-addr", svcmain.Env("CR_SYNC_METRICS_ADDR", ":9090"), "metrics listener address, 0 for none")
	healthAddr := fs.String("health-addr", svcmain.Env("CR_SYNC_HEALTH_ADDR", ":9091"), "health probe listener address, 0 for none")
	level := fs.String("log-level", svcmain.Env("LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger, err := svcmain.Logger(*level)
	if err != nil {
		return err
	}

	restConfig, err := svcmain.KubeConfig(*kubeconfig)
	if err != nil {
		return err
	}
	nc, err := natsx.Connect(*natsURL, nats.Name("cr-sync"))
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := crsync.New(crsync.Config{
		RestConfig:     restConfig,
		NATS:           nc,
		Namespace:      *namespace,
		Logger:         logger,
		ResyncInterval: *resync,
		Workers:        *workers,
		LeaderElection: *leaderElect,
		MetricsAddr:    *metricsAddr,
		HealthAddr:     *healthAddr,
	})
	if err != nil {
		return err
	}
	return svcmain.RunUntilSignal(logger, "cr-sync", s.Run)
}
