package devnode

import (
	"context"
	"flag"
	"io"
	"log/slog"

	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// Command runs a dev node from command-line arguments until ctx ends: the devnode command, and
// the dev stack's child process (devstack devnode ...). Logs go to logs.
func Command(ctx context.Context, args []string, logs io.Writer) error {
	fs := flag.NewFlagSet("devnode", flag.ContinueOnError)
	fs.SetOutput(logs)
	kubeconfig := fs.String("kubeconfig", "", "path of the kubeconfig to use (default $KUBECONFIG, then ~/.kube/config)")
	nodeName := fs.String("node-name", DefaultNodeName, "name of the Node object")
	ipRange := fs.String("ip-range", DefaultIPRange.String(), "loopback range for Pod IPs, FIRST-LAST")
	workers := fs.Int("workers", DefaultWorkers, "Pod sync workers")
	stateDir := fs.String("state-dir", "", "directory for Pod filesystems and container logs (default <user cache dir>/boilerhouse/devnode/<node-name>)")
	kubeletPort := fs.Int("kubelet-port", 0, "port of the kubelet API endpoint (exec, logs) on 127.0.0.1; 0 picks a free one")
	verbose := fs.Bool("v", false, "debug logging")
	part := fs.String("log-part", "", "add part=VALUE to every log line")
	if err := fs.Parse(args); err != nil {
		return err
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
	if *part != "" {
		log = log.With("part", *part)
	}
	klog.SetSlogLogger(log) // the Kubernetes streaming libraries log through klog

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	restConfig, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return err
	}
	r, err := ParseIPRange(*ipRange)
	if err != nil {
		return err
	}
	node, err := New(Config{
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
	return node.Run(ctx)
}
