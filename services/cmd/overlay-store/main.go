// Command overlay-store runs the Boilerhouse overlay-store: it saves tenants' overlay
// directories out of their Pods as versioned archives and restores them, served over NATS
// (bh.v1.overlays.extract, .restore, .list, .delete; queue group "overlay-store"). See
// docs/overlays.md.
//
// Flags (each also read from the environment variable in brackets):
//
//	-nats-url          NATS server URL(s)                        [NATS_URL, default nats://127.0.0.1:4222]
//	-kubeconfig        kubeconfig file; empty: in-cluster config  [KUBECONFIG]
//	-namespace         namespace of workloads and Pods            [K8S_NAMESPACE or BOILERHOUSE_NAMESPACE, default boilerhouse]
//	-snapshot-dir      root of the archive store                  [SNAPSHOT_DIR, default /snapshots]
//	-max-archive-bytes largest compressed archive                 [OVERLAY_MAX_ARCHIVE_BYTES, default 2 GiB]
//	-max-total-bytes   largest sum of file sizes in an overlay    [OVERLAY_MAX_TOTAL_BYTES, default 8 GiB]
//	-max-file-bytes    largest single file                        [OVERLAY_MAX_FILE_BYTES, default 4 GiB]
//	-max-entries       most files, dirs and links in an overlay   [OVERLAY_MAX_ENTRIES, default 500000]
//	-workers           concurrent requests per subject            [OVERLAY_STORE_WORKERS, default 32]
//	-transfer-timeout  bound of one extract or restore            [OVERLAY_STORE_TRANSFER_TIMEOUT, default 10m]
//	-shutdown-grace    time running transfers get on SIGTERM      [OVERLAY_STORE_SHUTDOWN_GRACE, default 2m]
//	-health-addr       /healthz and /readyz listener              [OVERLAY_STORE_HEALTH_ADDR, default :9091; 0: none]
//	-log-level         debug, info, warn or error                 [LOG_LEVEL, default info]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/overlay"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/services/overlaystore"
)

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "overlay-store:", err)
		os.Exit(1)
	}
}

func mainErr(args []string) error {
	d := overlay.DefaultLimits
	fs := flag.NewFlagSet("overlay-store", flag.ContinueOnError)
	natsURL := fs.String("nats-url", svcmain.Env("NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated")
	kubeconfig := fs.String("kubeconfig", svcmain.Env("KUBECONFIG", ""), "kubeconfig file (default: in-cluster configuration)")
	namespace := fs.String("namespace", svcmain.Env("K8S_NAMESPACE", svcmain.Env("BOILERHOUSE_NAMESPACE", overlaystore.DefaultNamespace)), "namespace of workloads and Pods")
	dir := fs.String("snapshot-dir", svcmain.Env("SNAPSHOT_DIR", overlaystore.DefaultStoreDir), "root directory of the archive store")
	maxArchive := fs.Int64("max-archive-bytes", svcmain.EnvInt("OVERLAY_MAX_ARCHIVE_BYTES", d.MaxArchiveBytes), "largest compressed archive")
	maxTotal := fs.Int64("max-total-bytes", svcmain.EnvInt("OVERLAY_MAX_TOTAL_BYTES", d.MaxTotalBytes), "largest sum of file sizes in an overlay")
	maxFile := fs.Int64("max-file-bytes", svcmain.EnvInt("OVERLAY_MAX_FILE_BYTES", d.MaxFileBytes), "largest single file")
	maxEntries := fs.Int64("max-entries", svcmain.EnvInt("OVERLAY_MAX_ENTRIES", int64(d.MaxEntries)), "most entries in an overlay")
	workers := fs.Int("workers", int(svcmain.EnvInt("OVERLAY_STORE_WORKERS", overlaystore.DefaultWorkers)), "concurrent requests per subject")
	transfer := fs.Duration("transfer-timeout", svcmain.EnvDuration("OVERLAY_STORE_TRANSFER_TIMEOUT", overlaystore.DefaultTransferTimeout), "bound of one extract or restore")
	grace := fs.Duration("shutdown-grace", svcmain.EnvDuration("OVERLAY_STORE_SHUTDOWN_GRACE", overlaystore.DefaultShutdownGrace), "time running transfers get to finish on SIGTERM")
	healthAddr := fs.String("health-addr", svcmain.Env("OVERLAY_STORE_HEALTH_ADDR", ":9091"), "/healthz and /readyz listener address, 0 for none")
	level := fs.String("log-level", svcmain.Env("LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
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
	nc, err := natsx.Connect(*natsURL, nats.Name("overlay-store"))
	if err != nil {
		return err
	}
	defer nc.Close()
	svc, err := overlaystore.New(overlaystore.Config{
		RestConfig: restConfig,
		NATS:       nc,
		Namespace:  *namespace,
		StoreDir:   *dir,
		Limits: overlay.Limits{
			MaxArchiveBytes: *maxArchive, MaxTotalBytes: *maxTotal, MaxFileBytes: *maxFile, MaxEntries: int(*maxEntries),
		},
		Logger:          logger,
		Workers:         *workers,
		TransferTimeout: *transfer,
		ShutdownGrace:   *grace,
	})
	if err != nil {
		return err
	}

	return svcmain.RunUntilSignal(logger, "overlay-store", svcmain.WithHealth(*healthAddr, nc, svc.Run))
}
