// Command claim-router runs the Boilerhouse claim-router: it serves
// bh.v1.claims.* and bh.v1.tenants.* over NATS and keeps claim state in the
// JetStream KV bucket "claims" (see docs/claim-path.md).
//
// Flags (each also read from the environment variable in brackets):
//
//	-nats-url        NATS server URL(s)                 [NATS_URL, default nats://127.0.0.1:4222]
//	-replica-id      owner name of this replica         [CLAIM_ROUTER_REPLICA_ID, default random]
//	-claim-timeout   how long a claim may stay Pending  [CLAIM_ROUTER_CLAIM_TIMEOUT, default 2m]
//	-stale-after     takeover age of an owner's refresh [CLAIM_ROUTER_STALE_AFTER, default 15s]
//	-sweep-interval  recovery scan period               [CLAIM_ROUTER_SWEEP_INTERVAL, default 5s]
//	-workers         concurrent sagas                   [CLAIM_ROUTER_WORKERS, default 256]
//	-overlay-timeout bound of one extract or restore    [CLAIM_ROUTER_OVERLAY_TIMEOUT, default 5m]
//	-extract-backoff pauses before extract retries      [CLAIM_ROUTER_EXTRACT_BACKOFF, default 1s,4s,16s; "none": no retries]
//	-provision       create/update buckets and streams  [CLAIM_ROUTER_PROVISION, default true]
//	-stream-replicas replicas of what -provision makes  [NATS_STREAM_REPLICAS, default 1; 3 in a cluster]
//	-health-addr     /healthz and /readyz listener      [CLAIM_ROUTER_HEALTH_ADDR, default :9091; 0: none]
//	-log-level       debug, info, warn or error         [LOG_LEVEL, default info]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/services/claimrouter"
)

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "claim-router:", err)
		os.Exit(1)
	}
}

func mainErr(args []string) error {
	fs := flag.NewFlagSet("claim-router", flag.ContinueOnError)
	natsURL := fs.String("nats-url", svcmain.Env("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated")
	replica := fs.String("replica-id", svcmain.Env("CLAIM_ROUTER_REPLICA_ID", ""), "owner name of this replica (default random)")
	claimTimeout := fs.Duration("claim-timeout", svcmain.EnvDuration("CLAIM_ROUTER_CLAIM_TIMEOUT", claimrouter.DefaultClaimTimeout), "how long a claim may stay Pending")
	staleAfter := fs.Duration("stale-after", svcmain.EnvDuration("CLAIM_ROUTER_STALE_AFTER", claimrouter.DefaultStaleAfter), "age of an owner's last refresh after which its claim is taken over")
	sweep := fs.Duration("sweep-interval", svcmain.EnvDuration("CLAIM_ROUTER_SWEEP_INTERVAL", claimrouter.DefaultSweepInterval), "how often claims are scanned for takeover and expiry")
	workers := fs.Int("workers", svcmain.EnvInt("CLAIM_ROUTER_WORKERS", claimrouter.DefaultWorkers), "sagas running at once")
	overlayTimeout := fs.Duration("overlay-timeout", svcmain.EnvDuration("CLAIM_ROUTER_OVERLAY_TIMEOUT", claimrouter.DefaultOverlayTimeout), "bound of one overlay extract or restore request")
	extractBackoff := fs.String("extract-backoff", svcmain.Env("CLAIM_ROUTER_EXTRACT_BACKOFF", formatDurations(claimrouter.DefaultExtractBackoff)),
		`comma-separated pauses before each retry of a release's failed overlay extract ("none": no retries)`)
	provision := fs.Bool("provision", svcmain.EnvBool("CLAIM_ROUTER_PROVISION", true), "create or update the KV buckets and streams at start")
	replicas := fs.Int("stream-replicas", svcmain.EnvInt("NATS_STREAM_REPLICAS", natsx.DefaultReplicas), "replicas of the buckets and streams created by -provision (3 in a cluster)")
	healthAddr := fs.String("health-addr", svcmain.Env("CLAIM_ROUTER_HEALTH_ADDR", ":9091"), "/healthz and /readyz listener address, 0 for none")
	level := fs.String("log-level", svcmain.Env("LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}

	backoff, err := parseDurations(*extractBackoff)
	if err != nil {
		return fmt.Errorf("extract backoff %q: %w", *extractBackoff, err)
	}
	logger, err := svcmain.Logger(*level)
	if err != nil {
		return err
	}

	nc, err := svcmain.ConnectNATS(*natsURL, "claim-router", *provision, natsx.ProvisionConfig{Replicas: *replicas})
	if err != nil {
		return err
	}
	defer nc.Close()
	router, err := claimrouter.New(claimrouter.Config{
		Conn:           nc,
		ReplicaID:      *replica,
		ClaimTimeout:   *claimTimeout,
		StaleAfter:     *staleAfter,
		SweepInterval:  *sweep,
		Workers:        *workers,
		OverlayTimeout: *overlayTimeout,
		ExtractBackoff: backoff,
		Logger:         logger,
	})
	if err != nil {
		return err
	}

	return svcmain.RunUntilSignal(logger, "claim-router", svcmain.WithHealth(*healthAddr, nc, router.Run))
}

// parseDurations reads a comma-separated list of durations; "none" (or
// nothing) is the empty, non-nil list.
func parseDurations(s string) ([]time.Duration, error) {
	out := []time.Duration{}
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return out, nil
	}
	for _, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		if d < 0 {
			return nil, fmt.Errorf("negative pause %s", d)
		}
		out = append(out, d)
	}
	return out, nil
}

func formatDurations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	return strings.Join(parts, ",")
}
