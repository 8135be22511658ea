// Command stalls prints the system calls that blocked longer than -min in a Go execution trace,
// and its garbage collections with their assists, e.g. for a trace of the dev stack taken during
// a load run:
//
//	curl -so run.trace 'localhost:6060/debug/pprof/trace?seconds=30'
//	stalls -min 10ms -match nats-server run.trace
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"boilerhouse.dev/loadtest/stalls"
)

func main() {
	min := flag.Duration("min", 10*time.Millisecond, "report system calls that blocked at least this long")
	match := flag.String("match", "", "only calls with a stack frame containing this (e.g. nats-server)")
	top := flag.Int("top", 5, "list this many of the longest")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: stalls [flags] TRACE")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "stalls:", err)
		os.Exit(1)
	}
	defer f.Close()
	rep, err := stalls.Read(f, *min, *match)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stalls:", err)
		os.Exit(1)
	}
	rep.Markdown(os.Stdout, *top)
}
