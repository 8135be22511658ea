// Command devnode runs the Boilerhouse dev node (a stand-in kubelet, see package
// boilerhouse.dev/tools/devnode) against an API server until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"boilerhouse.dev/tools/devnode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := devnode.Command(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "devnode:", err)
		os.Exit(1)
	}
}
