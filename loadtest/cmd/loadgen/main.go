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

	"github.com/nats-io/nats.go"
	"k8s.io/client-go/tools/clientcmd"

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
	idleClaims := flag.Int("idle-claims", 0, "idle scenario: claim this many new tenants at -rate (the workload needs idle.timeoutSeconds), "+
		"touch none of them, and measure each release lag from its idle deadline to Releasing (watches the KV buckets over -nats)")
	idleGrace := flag.Duration("idle-grace", time.Minute, "idle scenario: how long releases are waited for after the last deadline")
	fsyncDir := flag.String("fsync-probe", "", "also measure fsync latency in this directory (the NATS store's) during the run")
	timeline := flag.Duration("timeline", 0, "also print claim latency per interval of the run (0: no)")
	labelLag := flag.String("label-lag", "", "also measure how long the new claims' Pod tenant labels and BoilerhouseClaim objects trail their answers, "+
		"watching them through the API server of this kubeconfig (not with -release)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	// The NATS connection serves -target nats and the idle scenario's bucket watches.
	var nc *nats.Conn
	if *target == "nats" || *idleClaims > 0 {
		var err error
		if nc, err = natsx.Connect(*natsURL); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		defer nc.Close()
	}
	var client loadgen.Client
	switch *target {
	case "rest":
		client = loadgen.NewREST(strings.TrimRight(*base, "/"))
	case "nats":
		client = loadgen.NewNATS(nc)
	default:
		fmt.Fprintln(os.Stderr, "loadgen: -target must be rest or nats")
		os.Exit(2)
	}
	if *idleClaims > 0 {
		res, err := loadgen.RunIdle(ctx, client, nc, loadgen.IdleScenario{Workload: *workload, Claims: *idleClaims,
			Rate: *rate, Prefix: *prefix, Grace: *idleGrace, Progress: os.Stderr})
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		var b strings.Builder
		res.WriteMarkdown(&b)
		emit(b.String(), *out)
		if res.Failed() {
			os.Exit(1)
		}
		return
	}
	names := loadgen.TenantSeq(*prefix)
	if *tenants > 0 {
		names = loadgen.TenantCycle(*prefix, *tenants)
	}
	var rec loadgen.Recorder
	var elapsed time.Duration
	var probe *loadgen.FsyncProbe
	if *fsyncDir != "" {
		probe = loadgen.StartFsyncProbe(ctx, *fsyncDir, 10*time.Millisecond)
	}
	var labels *loadgen.LabelWatch
	if *labelLag != "" {
		if *release || *dataBytes > 0 {
			fmt.Fprintln(os.Stderr, "loadgen: -label-lag measures claims that stay claimed: not with -release or -data-bytes")
			os.Exit(2)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", *labelLag)
		if err == nil {
			labels, err = loadgen.StartLabelWatch(ctx, cfg, *prefix+"-")
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	}
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
	rep.WriteMarkdown(&b)
	if probe != nil {
		if err := probe.Stop(&b); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	}
	if labels != nil {
		labels.Lags(ctx, rec.NewClaims(), labelWait).WriteMarkdown(&b)
	}
	if *timeline > 0 {
		fmt.Fprintf(&b, "\nper %s of the run, by scheduled start:\n\n", *timeline)
		rec.WriteTimeline(&b, *timeline)
	}
	emit(b.String(), *out)
	if rep.OK == 0 {
		os.Exit(1)
	}
}

// labelWait bounds the wait for the last tenant labels and claim objects after a run.
const labelWait = 5 * time.Minute

// scenarioArgs drops -out and its file from args: where the result is written is not part of
// the scenario.
func scenarioArgs(args []string) []string {
	var kept []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-out" || a == "--out":
			i++
		case strings.HasPrefix(a, "-out=") || strings.HasPrefix(a, "--out="):
		default:
			kept = append(kept, a)
		}
	}
	return kept
}

// emit prints the result under the command line that produced it, and appends both to out.
func emit(result, out string) {
	text := fmt.Sprintf("`loadgen %s`\n\n%s", strings.Join(scenarioArgs(os.Args[1:]), " "), result)
	fmt.Print(text)
	if out == "" {
		return
	}
	f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		_, err = fmt.Fprint(f, text)
		f.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
