package devstack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/oklog/run"

	"boilerhouse.dev/tools/devnode"
)

// addDevNode runs the dev node for the local control plane: as the child process
// cfg.DevNodeCommand names, or in this process when it is empty.
func addDevNode(g *run.Group, ctx context.Context, cancel context.CancelFunc, cfg Config, k *kube) error {
	stateDir := filepath.Join(cfg.StateDir, "devnode")
	if len(cfg.DevNodeCommand) == 0 {
		node, err := devnode.New(devnode.Config{RestConfig: k.config, StateDir: stateDir, Logger: cfg.Logger.With("part", "devnode")})
		if err != nil {
			return err
		}
		g.Add(func() error { return node.Run(ctx) }, func(error) { cancel() })
		return nil
	}
	args := append(slices.Clone(cfg.DevNodeCommand[1:]), "-kubeconfig", k.kubeconfig, "-state-dir", stateDir, "-log-part", "devnode")
	cmd := exec.Command(cfg.DevNodeCommand[0], args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = childAttrs()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dev node: %w", err)
	}
	exited := make(chan struct{})
	g.Add(func() error {
		err := cmd.Wait()
		close(exited)
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("dev node exited: %v", err)
	}, func(error) {
		cancel()
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	return nil
}
