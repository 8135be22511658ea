// Command pool-manager runs the Boilerhouse pool-manager: warm pools per BoilerhousePool, cold
// boots and retirement of instances, served over NATS (bh.v1.pool.acquire,
// bh.v1.instances.boot, bh.v1.instances.retire) with the acquisition ledger in the JetStream
// KV bucket "instances" (see docs/claim-path.md).
//
// Flags (each also read from the environment variable in brackets):
//
//	-nats-url        NATS server URL(s)                       [NATS_URL, default nats://127.0.0.1:4222]
//	-kubeconfig      kubeconfig file; empty: in-cluster config [KUBECONFIG]
//	-namespace       namespace of workloads, pools and Pods   [BOILERHOUSE_NAMESPACE, default boilerhouse]
//	-replica-id      name of this replica                     [POOL_MANAGER_REPLICA_ID, default hostname]
//	-leader-elect    run the reconcilers on one replica only  [POOL_MANAGER_LEADER_ELECT, default true]
//	-boot-timeout    how long a boot waits for Ready          [POOL_MANAGER_BOOT_TIMEOUT, default 2m]
//	-warming-timeout replace pool Pods unready for this long  [POOL_MANAGER_WARMING_TIMEOUT, default 5m]
//	-metrics-addr    Prometheus metrics listener, 0: none     [POOL_MANAGER_METRICS_ADDR, default :9090]
//	-health-addr     /healthz and /readyz listener, 0: none   [POOL_MANAGER_HEALTH_ADDR, default :9091]
//	-helper-image    image of the overlay helper containers   [OVERLAY_HELPER_IMAGE, default busybox:1.36]
//	-provision       create/update buckets and streams        [POOL_MANAGER_PROVISION, default true]
//	-stream-replicas replicas of what -provision makes        [NATS_STREAM_REPLICAS, default 1; 3 in a cluster]
//	-log-level       debug, info, warn or error               [LOG_LEVEL, default info]
package main

import (
	"flag"
	"fmt"
	"os"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/overlay"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/services/poolmanager"
)

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pool-manager:", err)
		os.Exit(1)
	}
}

func mainErr(args []string) error {
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("pool-manager", flag.ContinueOnError)
	natsURL := fs.String("nats-url", svcmain.Env("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated")
	kubeconfig := fs.String("kubeconfig", svcmain.Env("KUBECONFIG", ""), "kubeconfig file (default: in-cluster configuration)")
	namespace := fs.String("namespace", svcmain.Env("BOILERHOUSE_NAMESPACE", poolmanager.DefaultNamespace), "namespace of workloads, pools and Pods")
	replica := fs.String("replica-id", svcmain.Env("POOL_MANAGER_REPLICA_ID", host), "name of this replica")
	leaderElect := fs.Bool("leader-elect", svcmain.EnvBool("POOL_MANAGER_LEADER_ELECT", true), "run the reconcilers on one replica at a time")
	bootTimeout := fs.Duration("boot-timeout", svcmain.EnvDuration("POOL_MANAGER_BOOT_TIMEOUT", poolmanager.DefaultBootTimeout), "how long a boot waits for its Pod to be Ready")
	warmingTimeout := fs.Duration("warming-timeout", svcmain.EnvDuration("POOL_MANAGER_WARMING_TIMEOUT", poolmanager.DefaultWarmingTimeout), "replace pool Pods that stay unready this long")
	metricsAddr := fs.String("metrics-addr", svcmain.Env("POOL_MANAGER_METRICS_ADDR", ":9090"), "metrics listener address, 0 for none")
	healthAddr := fs.String("health-addr", svcmain.Env("POOL_MANAGER_HEALTH_ADDR", ":9091"), "health probe listener address, 0 for none")
	helperImage := fs.String("helper-image", svcmain.Env("OVERLAY_HELPER_IMAGE", overlay.DefaultHelperImage), "image of the overlay helper and restore init containers (needs sh, sleep, tar, touch)")
	provision := fs.Bool("provision", svcmain.EnvBool("POOL_MANAGER_PROVISION", true), "create or update the KV buckets and streams at start")
	replicas := fs.Int("stream-replicas", svcmain.EnvInt("NATS_STREAM_REPLICAS", natsx.DefaultReplicas), "replicas of the buckets and streams created by -provision (3 in a cluster)")
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
	nc, err := svcmain.ConnectNATS(*natsURL, "pool-manager", *provision, natsx.ProvisionConfig{Replicas: *replicas})
	if err != nil {
		return err
	}
	defer nc.Close()
	m, err := poolmanager.New(poolmanager.Config{
		RestConfig:     restConfig,
		NATS:           nc,
		Namespace:      *namespace,
		Logger:         logger,
		ReplicaID:      *replica,
		LeaderElection: *leaderElect,
		BootTimeout:    *bootTimeout,
		WarmingTimeout: *warmingTimeout,
		MetricsAddr:    *metricsAddr,
		HealthAddr:     *healthAddr,
		HelperImage:    *helperImage,
	})
	if err != nil {
		return err
	}

	return svcmain.RunUntilSignal(logger, "pool-manager", m.Run)
}
