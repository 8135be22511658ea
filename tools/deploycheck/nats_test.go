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
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/kubeapply"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/natsx"
)

// TestNATSClusterFromDeployConfig runs the three servers of deploy/base/nats.yaml
// (startNATSCluster). The services' provisioning with NATS_STREAM_REPLICAS 3 must place every
// bucket and stream on all three, durably (SyncAlways, no async persistence), and
// compare-and-set writes to the claims bucket must go on while one server is down (retried
// across its leader elections, as the services retry), and every acknowledged write must be
// there once it is back.
func TestNATSClusterFromDeployConfig(t *testing.T) {
	cl := startNATSCluster(t) // provisioned with three replicas
	const n = natsServers
	js := connect(t, cl.url())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
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
	// Provisioning again (every service does at start) leaves the claims bucket reading from its
	// leader.
	if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{Replicas: n}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatal(err)
	}
	if leader, err := natsx.ReadsFromLeader(ctx, kv); err != nil || !leader {
		t.Fatalf("claims bucket reads from its leader: %v (%v), want true", leader, err)
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
	cl.stop(t, 0)
	write(2)
	cl.start(t, 0)
	write(3)

	// The last acknowledged writes, read through clients of each server (the restarted one too).
	for i, u := range cl.urls {
		ckv, err := connect(t, u).KeyValue(ctx, messages.BucketClaims)
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

// natsServers is the NATS StatefulSet's replicas.
const natsServers = 3

// natsCluster is the NATS StatefulSet of deploy/base run from its ConfigMap's nats.conf,
// parsed by nats-server itself, with what Kubernetes would give the servers (the Pod name, the
// headless Service's names) replaced by loopback ports and temporary directories.
type natsCluster struct {
	confs []string         // each server's config file
	names []string         // the Pod names
	urls  []string         // the client URLs
	srvs  []*server.Server // nil while stopped
}

// startNATSCluster starts the three servers and waits until the cluster has a JetStream meta
// leader (provisioning with three replicas works); they are shut down when the test ends.
func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	conf := natsConf(t)
	cl := &natsCluster{srvs: make([]*server.Server, natsServers)}
	routes := make([]string, natsServers)
	for i := range natsServers {
		cl.names = append(cl.names, fmt.Sprintf("nats-%d", i))
		cl.urls = append(cl.urls, fmt.Sprintf("nats://127.0.0.1:%d", freePort(t)))
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	}
	for i := range natsServers {
		c := conf
		for old, repl := range map[string]string{
			"$POD_NAME":        cl.names[i],
			"port: 4222":       "port: " + strings.TrimPrefix(cl.urls[i], "nats://127.0.0.1:"),
			"http_port: 8222":  fmt.Sprintf("http_port: %d", freePort(t)),
			"store_dir: /data": "store_dir: " + t.TempDir(),
			"port: 6222":       "port: " + strings.TrimPrefix(routes[i], "nats://127.0.0.1:"),
		} {
			if !strings.Contains(c, old) {
				t.Fatalf("nats.conf has no %q to replace", old)
			}
			c = strings.ReplaceAll(c, old, repl)
		}
		for j := range natsServers {
			svc := fmt.Sprintf("nats://nats-%d.nats-headless.boilerhouse.svc:6222", j)
			if !strings.Contains(c, svc) {
				t.Fatalf("nats.conf does not route to %s", svc)
			}
			c = strings.ReplaceAll(c, svc, routes[j])
		}
		path := filepath.Join(t.TempDir(), "nats.conf")
		if err := os.WriteFile(path, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		cl.confs = append(cl.confs, path)
	}
	t.Cleanup(func() { // registered first: a server that fails to start leaves none running
		for i := range natsServers {
			if cl.srvs[i] != nil {
				cl.srvs[i].Shutdown()
			}
		}
	})
	for i := range natsServers {
		cl.start(t, i)
	}

	// The meta leader comes some time after the servers start. Until then the JetStream API
	// does not answer: each attempt gets a few seconds.
	js := connect(t, cl.url())
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := natsx.Provision(ctx, js, natsx.ProvisionConfig{Replicas: natsServers})
		cancel()
		if err == nil {
			return cl
		}
		if time.Now().After(deadline) {
			t.Fatalf("provisioning with %d replicas: %v", natsServers, err)
		}
	}
}

// url is the client URL list of the cluster, as the services take it.
func (cl *natsCluster) url() string { return strings.Join(cl.urls, ",") }

// start runs server i from its config file.
func (cl *natsCluster) start(t *testing.T, i int) {
	t.Helper()
	opts, err := server.ProcessConfigFile(cl.confs[i])
	if err != nil {
		t.Fatalf("nats-server rejects nats.conf: %v", err)
	}
	if !opts.JetStream || !opts.SyncAlways || opts.Cluster.Name != "boilerhouse" || opts.ServerName != cl.names[i] {
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
		t.Fatalf("%s not ready", cl.names[i])
	}
	cl.srvs[i] = s
}

// stop shuts server i down.
func (cl *natsCluster) stop(t *testing.T, i int) {
	t.Helper()
	cl.srvs[i].Shutdown()
	cl.srvs[i].WaitForShutdown()
	cl.srvs[i] = nil
}

// connect is JetStream through a client of url, closed when the test ends.
func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := natsx.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
