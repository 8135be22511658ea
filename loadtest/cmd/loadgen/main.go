// Command loadgen runs one open-loop claim scenario against a running Boilerhouse and prints
// latency per claim source, throughput and errors by code.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"boilerhouse.dev/loadtest/loadgen"
	"boilerhouse.dev/pkg/natsx"
)

func main() {
	target := flag.String("target", "rest", "rest or nats")
	base := flag.String("url", "http://localhost:3000", "edge base URL (rest)")
	natsURL := flag.String("nats", "nats://127.0.0.1:4222", "NATS URL (nats)")
	workload := flag.String("workload", "demo", "workload to claim")
	rate := flag.Float64("rate", 200, "claims started per second")
	duration := flag.Duration("duration", 30*time.Second, "how long to start claims")
	tenants := flag.Int("tenants", 0, "reuse this many tenants round robin (0: a new tenant per claim)")
	prefix := flag.String("prefix", fmt.Sprintf("load-%d", time.Now().Unix()), "tenant id prefix")
	release := flag.Bool("release", false, "release each claim after it answered")
	out := flag.String("out", "", "append the result as markdown to this file")
	dataBytes := flag.Int("data-bytes", 0, "overlay scenario (rest only): write this many bytes into each instance, release, claim again, release")
	dataTenants := flag.Int("data-tenants", 20, "tenants of the overlay scenario")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	var client loadgen.Client
	switch *target {
	case "rest":
		client = loadgen.NewREST(strings.TrimRight(*base, "/"))
	case "nats":
		nc, err := natsx.Connect(*natsURL)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		defer nc.Close()
		client = loadgen.NewNATS(nc)
	default:
		fmt.Fprintln(os.Stderr, "loadgen: -target must be rest or nats")
		os.Exit(2)
	}
	names := loadgen.TenantSeq(*prefix)
	if *tenants > 0 {
		names = loadgen.TenantCycle(*prefix, *tenants)
	}
	var rec loadgen.Recorder
	var elapsed time.Duration
	if *dataBytes > 0 {
		w, ok := client.(loadgen.Writer)
		if !ok {
			fmt.Fprintln(os.Stderr, "loadgen: -data-bytes needs -target rest")
			os.Exit(2)
		}
		elapsed = loadgen.RunData(ctx, w, client, loadgen.DataScenario{Workload: *workload, Tenants: *dataTenants,
			Rate: *rate, Bytes: *dataBytes, Path: "/data/blob", Prefix: *prefix}, &rec)
	} else {
		sc := loadgen.Scenario{Workload: *workload, Rate: *rate, Duration: *duration, Tenants: names, Release: *release}
		elapsed = loadgen.Run(ctx, client, sc, &rec)
	}
	rep := rec.Summarise(elapsed)

	var b strings.Builder
	fmt.Fprintf(&b, "`loadgen %s`\n\n", strings.Join(os.Args[1:], " "))
	rep.WriteMarkdown(&b)
	fmt.Print(b.String())
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = fmt.Fprintf(f, "\n%s", b.String())
			f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	}
	if rep.OK == 0 {
		os.Exit(1)
	}
}
