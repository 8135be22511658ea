package svcmain

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/natsx/natstest"
)

func TestEnvDefaultsAndParsing(t *testing.T) {
	t.Setenv("BH_T_STR", "x")
	t.Setenv("BH_T_EMPTY", "")
	t.Setenv("BH_T_DUR", "3s")
	t.Setenv("BH_T_BAD_DUR", "soon")
	t.Setenv("BH_T_INT", "42")
	t.Setenv("BH_T_BOOL", "false")
	if Env("BH_T_STR", "d") != "x" || Env("BH_T_EMPTY", "d") != "d" || Env("BH_T_UNSET", "d") != "d" {
		t.Error("Env")
	}
	if EnvDuration("BH_T_DUR", time.Second) != 3*time.Second || EnvDuration("BH_T_BAD_DUR", time.Second) != time.Second {
		t.Error("EnvDuration")
	}
	if EnvInt("BH_T_INT", 1) != 42 || EnvInt[int64]("BH_T_STR", 7) != 7 {
		t.Error("EnvInt")
	}
	if EnvBool("BH_T_BOOL", true) != false || EnvBool("BH_T_STR", true) != true {
		t.Error("EnvBool")
	}
	if _, err := KubeConfig("/nonexistent/kubeconfig"); err == nil {
		t.Error("KubeConfig accepted a missing file")
	}
}

// ConnectNATS provisions the buckets only when asked to.
func TestConnectNATSProvisions(t *testing.T) {
	srv := natstest.Start(t, false)
	nc, err := ConnectNATS(srv.URL, "svcmain-test", false, natsx.ProvisionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.KeyValue(ctx, messages.BucketClaims); err == nil {
		t.Fatal("claims bucket exists without provisioning")
	}
	nc.Close()
	nc, err = ConnectNATS(srv.URL, "svcmain-test", true, natsx.ProvisionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.Opts.Name != "svcmain-test" {
		t.Errorf("connection name %q", nc.Opts.Name)
	}
	if js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	if _, err := js.KeyValue(ctx, messages.BucketClaims); err != nil {
		t.Fatalf("claims bucket after provisioning: %v", err)
	}
	if _, err := ConnectNATS(srv.URL, "svcmain-test", true, natsx.ProvisionConfig{Replicas: 9}); err == nil {
		t.Fatal("invalid provisioning config accepted")
	}
}

// TestWithHealth: /healthz answers while the service runs, /readyz only while NATS is connected;
// the listener goes with the service.
func TestWithHealth(t *testing.T) {
	srv := natstest.Start(t, false)
	nc, err := natsx.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- WithHealth(addr, nc, func(ctx context.Context) error { <-ctx.Done(); return nil })(ctx)
	}()
	status := func(path string) int {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitStatus := func(path string, want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for status(path) != want {
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %d, want %d", path, status(path), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitStatus("/healthz", http.StatusOK)
	waitStatus("/readyz", http.StatusOK)
	// /metrics serves the default registry, where the services put theirs.
	probe := prometheus.NewCounter(prometheus.CounterOpts{Name: "svcmain_test_probe_total", Help: "test"})
	prometheus.MustRegister(probe)
	defer prometheus.Unregister(probe)
	probe.Add(3)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "svcmain_test_probe_total 3") {
		t.Errorf("GET /metrics: %d, without the registered counter:\n%.500s", resp.StatusCode, body)
	}
	srv.Stop()
	waitStatus("/readyz", http.StatusServiceUnavailable)
	waitStatus("/healthz", http.StatusOK)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := status("/healthz"); s != 0 {
		t.Errorf("listener still answers %d after the service stopped", s)
	}
	if run := WithHealth("0", nc, nil); run != nil {
		t.Error(`WithHealth("0") wraps the service`)
	}
}

// TestUseLogger: controller-runtime's global logger (its clients' API server warnings) and
// client-go's klog write through the logger given.
func TestUseLogger(t *testing.T) {
	var buf bytes.Buffer
	UseLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	ctrllog.Log.WithName("client").Info("a warning from the API server")
	if !strings.Contains(buf.String(), "a warning from the API server") {
		t.Fatalf("controller-runtime's log went elsewhere: %q", buf.String())
	}
	klog.ErrorS(errors.New("broadcaster is shut down"), "Unable to write event")
	klog.Flush()
	if !strings.Contains(buf.String(), "Unable to write event") {
		t.Fatalf("klog went elsewhere: %q", buf.String())
	}
}

// TestRunUntilStopTimeout: a service that returns when asked to stop ends the run with the
// stop's reason; one that ignores the request is abandoned after the stop timeout with an
// error naming it; one that fails ends the run with its error.
func TestRunUntilStopTimeout(t *testing.T) {
	asked := errors.New("asked to stop")
	stopper := func(after time.Duration) func() (func() error, func(error)) {
		return func() (func() error, func(error)) {
			quit := make(chan struct{})
			return func() error {
					select {
					case <-time.After(after):
						return asked
					case <-quit:
						return nil
					}
				}, func(error) {
					close(quit)
				}
		}
	}
	obedient := func(ctx context.Context) error { <-ctx.Done(); return nil }
	stuckForever := make(chan struct{})
	t.Cleanup(func() { close(stuckForever) })
	deaf := func(context.Context) error { <-stuckForever; return nil }
	failed := errors.New("boom")
	failing := func(context.Context) error { return failed }

	if err := runUntil(stopper(10*time.Millisecond), "svc", obedient, time.Minute); !errors.Is(err, asked) {
		t.Fatalf("obedient service: %v, want the stop's reason", err)
	}
	start := time.Now()
	err := runUntil(stopper(10*time.Millisecond), "svc", deaf, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "svc did not stop within 200ms") {
		t.Fatalf("deaf service: %v, want a stop timeout", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("deaf service abandoned after %s", took)
	}
	if err := runUntil(stopper(time.Minute), "svc", failing, time.Minute); !errors.Is(err, failed) {
		t.Fatalf("failing service: %v, want its error", err)
	}
}
