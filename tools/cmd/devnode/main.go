// Command devnode runs the Boilerhouse dev node (a stand-in kubelet, see package
// boilerhouse.dev/tools/devnode) against an API server until SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"boilerhouse.dev/tools/devnode"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devnode:", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "path of the kubeconfig to use (default $KUBECONFIG, then ~/.kube/config)")
	nodeName := flag.String("node-name", devnode.DefaultNodeName, "name of the Node object")
	ipRange := flag.String("ip-range", devnode.DefaultIPRange.String(), "loopback range for Pod IPs, FIRST-LAST")
	workers := flag.Int("workers", devnode.DefaultWorkers, "Pod sync workers")
	stateDir := flag.String("state-dir", "", "directory for Pod filesystems and container logs (default <user cache dir>/boilerhouse/devnode/<node-name>)")
	kubeletPort := flag.Int("kubelet-port", 0, "port of the kubelet API endpoint (exec, logs) on 127.0.0.1; 0 picks a free one")
	verbose := flag.Bool("v", false, "debug logging")
	flag.Parse()

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	klog.SetSlogLogger(log) // the Kubernetes streaming libraries log through klog

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	restConfig, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	r, err := devnode.ParseIPRange(*ipRange)
	if err != nil {
		return err
	}
	node, err := devnode.New(devnode.Config{
		RestConfig:  restConfig,
		NodeName:    *nodeName,
		IPRange:     r,
		Logger:      log,
		Workers:     *workers,
		StateDir:    *stateDir,
		KubeletPort: *kubeletPort,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return node.Run(ctx)
}
