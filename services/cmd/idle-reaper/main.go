// Command idle-reaper runs the Boilerhouse idle-reaper: it releases (reason
// idle) Active claims whose workload sets idle.timeoutSeconds once nobody used
// them for that long. Deadlines live in the JetStream KV bucket "idle" as
// per-key TTLs (see services/idlereaper); activity arrives on
// bh.v1.activity.<tenant>.<workload>. Any number of replicas may run.
//
// Flags (each also read from the environment variable in brackets):
//
//	-nats-url        NATS server URL(s)                 [NATS_URL, default nats://127.0.0.1:4222]
//	-fired-ttl       retry interval of an unanswered release [IDLE_REAPER_FIRED_TTL, default 30s]
//	-provision       create/update buckets and streams  [IDLE_REAPER_PROVISION, default true]
//	-stream-replicas replicas of what -provision makes  [NATS_STREAM_REPLICAS, default 1; 3 in a cluster]
//	-kubeconfig      kubeconfig for probing idle.watchDirs [KUBECONFIG; empty: in-cluster, else watchDirs ignored]
//	-namespace       namespace of instance Pods         [K8S_NAMESPACE or BOILERHOUSE_NAMESPACE, default boilerhouse]
//	-health-addr     /healthz and /readyz listener      [IDLE_REAPER_HEALTH_ADDR, default :9091; 0: none]
//	-log-level       debug, info, warn or error         [LOG_LEVEL, default info]
package main

import (
	"flag"
	"fmt"
	"os"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/services/idlereaper"
	"boilerhouse.dev/services/overlaystore"
)

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "idle-reaper:", err)
		os.Exit(1)
	}
}

func mainErr(args []string) error {
	fs := flag.NewFlagSet("idle-reaper", flag.ContinueOnError)
	natsURL := fs.String("nats-url", svcmain.Env("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated")
	firedTTL := fs.Duration("fired-ttl", svcmain.EnvDuration("IDLE_REAPER_FIRED_TTL", idlereaper.DefaultFiredTTL), "how long before an idle release that left the claim Active is asked again")
	provision := fs.Bool("provision", svcmain.EnvBool("IDLE_REAPER_PROVISION", true), "create or update the KV buckets and streams at start")
	replicas := fs.Int("stream-replicas", svcmain.EnvInt("NATS_STREAM_REPLICAS", natsx.DefaultReplicas), "replicas of the buckets and streams created by -provision (3 in a cluster)")
	kubeconfig := fs.String("kubeconfig", svcmain.Env("KUBECONFIG", ""), "kubeconfig file for probing idle.watchDirs (default: in-cluster configuration; outside a cluster watchDirs are ignored)")
	namespace := fs.String("namespace", svcmain.Env("K8S_NAMESPACE", svcmain.Env("BOILERHOUSE_NAMESPACE", overlaystore.DefaultNamespace)), "namespace of instance Pods")
	healthAddr := fs.String("health-addr", svcmain.Env("IDLE_REAPER_HEALTH_ADDR", ":9091"), "/healthz and /readyz listener address, 0 for none")
	level := fs.String("log-level", svcmain.Env("LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger, err := svcmain.Logger(*level)
	if err != nil {
		return err
	}

	nc, err := svcmain.ConnectNATS(*natsURL, "idle-reaper", *provision, natsx.ProvisionConfig{Replicas: *replicas})
	if err != nil {
		return err
	}
	defer nc.Close()
	restConfig, err := svcmain.KubeConfig(*kubeconfig)
	if err != nil {
		if *kubeconfig != "" {
			return err
		}
		logger.Warn("no Kubernetes configuration; idle.watchDirs will not be probed", "err", err)
		restConfig = nil
	}
	reaper, err := idlereaper.New(idlereaper.Config{Conn: nc, Logger: logger, FiredTTL: *firedTTL,
		RestConfig: restConfig, Namespace: *namespace})
	if err != nil {
		return err
	}
	return svcmain.RunUntilSignal(logger, "idle-reaper", svcmain.WithHealth(*healthAddr, nc, reaper.Run))
}
