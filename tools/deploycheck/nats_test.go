package deploycheck_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/kubeapply"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/natsx"
)

// TestNATSClusterFromDeployConfig runs the three servers of deploy/base/nats.yaml from its
// ConfigMap's nats.conf, parsed by nats-server itself, with what Kubernetes would give them
// (the Pod name, the headless Service's names) replaced by loopback ports and temporary
// directories. The services' provisioning with NATS_STREAM_REPLICAS 3 must place every bucket
// and stream on all three, durably (SyncAlways, no async persistence), and compare-and-set
// writes to the claims bucket must go on while one server is down (retried across its leader
// elections, as the services retry), and every acknowledged write must be there once it is back.
func TestNATSClusterFromDeployConfig(t *testing.T) {
	conf := natsConf(t)
	const n = 3
	type node struct {
		name, conf string
		client     int
		srv        *server.Server
	}
	nodes := make([]*node, n)
	routes := make([]string, n)
	for i := range nodes {
		nodes[i] = &node{name: fmt.Sprintf("nats-%d", i), client: freePort(t)}
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	}
	for i, nd := range nodes {
		c := conf
		for old, repl := range map[string]string{
			"$POD_NAME":        nd.name,
			"port: 4222":       fmt.Sprintf("port: %d", nd.client),
			"http_port: 8222":  fmt.Sprintf("http_port: %d", freePort(t)),
			"store_dir: /data": "store_dir: " + t.TempDir(),
			"port: 6222":       "port: " + strings.TrimPrefix(routes[i], "nats://127.0.0.1:"),
		} {
			if !strings.Contains(c, old) {
				t.Fatalf("nats.conf has no %q to replace", old)
			}
			c = strings.ReplaceAll(c, old, repl)
		}
		for j := range n {
			svc := fmt.Sprintf("nats://nats-%d.nats-headless.boilerhouse.svc:6222", j)
			if !strings.Contains(c, svc) {
				t.Fatalf("nats.conf does not route to %s", svc)
			}
			c = strings.ReplaceAll(c, svc, routes[j])
		}
		nd.conf = filepath.Join(t.TempDir(), "nats.conf")
		if err := os.WriteFile(nd.conf, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start := func(nd *node) {
		t.Helper()
		opts, err := server.ProcessConfigFile(nd.conf)
		if err != nil {
			t.Fatalf("nats-server rejects nats.conf: %v", err)
		}
		if !opts.JetStream || !opts.SyncAlways || opts.Cluster.Name != "boilerhouse" || opts.ServerName != nd.name {
			t.Fatalf("nats.conf gives JetStream %v, SyncAlways %v, cluster %q, name %q: want JetStream flushing every write in cluster boilerhouse",
				opts.JetStream, opts.SyncAlways, opts.Cluster.Name, opts.ServerName)
		}
		opts.NoSigs, opts.NoLog = true, true
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("%s not ready", nd.name)
		}
		nd.srv = s
	}
	for _, nd := range nodes {
		start(nd)
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			if nd.srv != nil {
				nd.srv.Shutdown()
			}
		}
	})

	urls := make([]string, n)
	for i, nd := range nodes {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", nd.client)
	}
	nc, err := natsx.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The cluster elects its JetStream meta leader some time after the servers start.
	// Until then the JetStream API does not answer: each attempt gets a few seconds.
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		err := natsx.Provision(actx, js, natsx.ProvisionConfig{Replicas: n})
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("provisioning with %d replicas: %v", n, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		if cfg.Replicas != n || cfg.PersistMode != jetstream.DefaultPersistMode {
			t.Errorf("stream %s: %d replicas, persist mode %v; want %d, flushed", name, cfg.Replicas, cfg.PersistMode, n)
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatal(err)
	}

	// Compare-and-set writes before, during and after one server's absence.
	acked := map[string]uint64{}
	write := func(round int) {
		t.Helper()
		for k := range 20 {
			key := fmt.Sprintf("t%d.demo", k)
			val := []byte(fmt.Sprintf("round %d", round))
			var rev uint64
			var err error
			for try := 0; ; try++ { // a write in flight when a leader goes is retried, as the services do
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				if prev, ok := acked[key]; ok {
					rev, err = kv.Update(wctx, key, val, prev)
				} else {
					rev, err = kv.Create(wctx, key, val)
				}
				wcancel()
				if err == nil || try == 20 {
					break
				}
				gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
				got, gerr := kv.Get(gctx, key)
				gcancel()
				if gerr == nil && bytes.Equal(got.Value(), val) {
					rev, err = got.Revision(), nil // it was written after all
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("round %d: write %s: %v", round, key, err)
			}
			acked[key] = rev
		}
	}
	write(1)
	down := nodes[0]
	down.srv.Shutdown()
	down.srv.WaitForShutdown()
	down.srv = nil
	write(2)
	start(down)
	write(3)

	// The last acknowledged writes, read through clients of each server (the restarted one too).
	for i, u := range urls {
		c, err := nats.Connect(u)
		if err != nil {
			t.Fatal(err)
		}
		cjs, _ := jetstream.New(c)
		ckv, err := cjs.KeyValue(ctx, messages.BucketClaims)
		if err != nil {
			t.Fatal(err)
		}
		for key, rev := range acked {
			var got jetstream.KeyValueEntry
			for ctx.Err() == nil { // a restarted server catches up
				if got, err = ckv.Get(ctx, key); err == nil && got.Revision() == rev {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if got == nil || got.Revision() != rev || string(got.Value()) != "round 3" {
				t.Errorf("through nats-%d: %s = %v, want revision %d of round 3 (%v)", i, key, got, rev, err)
			}
		}
		c.Close()
	}
}

// natsConf is the nats.conf of deploy/base/nats.yaml's ConfigMap.
func natsConf(t *testing.T) string {
	t.Helper()
	root, err := localkube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "base", "nats.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := kubeapply.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" {
			if conf, ok, _ := unstructured.NestedString(o.Object, "data", "nats.conf"); ok {
				return conf
			}
		}
	}
	t.Fatal("deploy/base/nats.yaml has no ConfigMap with nats.conf")
	return ""
}
