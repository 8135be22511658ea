package natsx_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startServer starts an embedded server on dir and stops it at the end of
// the test (stopping twice is harmless).
func startServer(t testing.TB, dir string, syncAlways bool) *server.Server {
	t.Helper()
	s, err := natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: dir, ServerName: "natsx-test", SyncAlways: syncAlways})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() { natsx.Shutdown(s) })
	return s
}

func connectJS(t testing.TB, s *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := natsx.ConnectInProcess(s)
	if err != nil {
		t.Fatalf("ConnectInProcess: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return nc, js
}

func provisioned(t *testing.T, syncAlways bool) jetstream.JetStream {
	t.Helper()
	s := startServer(t, t.TempDir(), syncAlways)
	_, js := connectJS(t, s)
	if err := natsx.Provision(testContext(t), js, natsx.ProvisionConfig{}); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return js
}

func TestProvisionSurvivesRestart(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()
	key := messages.ClaimKey("org.acme", "demo")
	subject := messages.EventSubject(messages.EventClaim, "org.acme", "demo")
	value := []byte(`{"phase":"Active"}`)

	s1 := startServer(t, dir, true)
	nc1, js1 := connectJS(t, s1)
	if err := natsx.Provision(ctx, js1, natsx.ProvisionConfig{}); err != nil {
		t.Fatalf("first Provision: %v", err)
	}
	claims, err := js1.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatalf("claims bucket: %v", err)
	}
	rev, err := claims.Create(ctx, key, value)
	if err != nil {
		t.Fatalf("Create %q: %v", key, err)
	}
	ack, err := js1.Publish(ctx, subject, []byte(`{"kind":"claim"}`))
	if err != nil {
		t.Fatalf("Publish %q: %v", subject, err)
	}
	if ack.Stream != messages.StreamEvents {
		t.Fatalf("event stored in stream %q, want %q", ack.Stream, messages.StreamEvents)
	}

	// A second Provision against the live server is a no-op.
	if err := natsx.Provision(ctx, js1, natsx.ProvisionConfig{}); err != nil {
		t.Fatalf("second Provision on the same server: %v", err)
	}
	if e, err := claims.Get(ctx, key); err != nil || e.Revision() != rev {
		t.Fatalf("after second Provision: Get %q = %v, %v; want revision %d", key, e, err, rev)
	}
	nc1.Close()
	natsx.Shutdown(s1)

	// A new server on the same store recovers everything.
	s2 := startServer(t, dir, true)
	_, js2 := connectJS(t, s2)
	if err := natsx.Provision(ctx, js2, natsx.ProvisionConfig{}); err != nil {
		t.Fatalf("Provision after restart: %v", err)
	}
	claims2, err := js2.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatalf("claims bucket after restart: %v", err)
	}
	e, err := claims2.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get %q after restart: %v", key, err)
	}
	if string(e.Value()) != string(value) || e.Revision() != rev {
		t.Fatalf("after restart %q = %q rev %d, want %q rev %d", key, e.Value(), e.Revision(), value, rev)
	}
	events, err := js2.Stream(ctx, messages.StreamEvents)
	if err != nil {
		t.Fatalf("events stream after restart: %v", err)
	}
	msg, err := events.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("event %q after restart: %v", subject, err)
	}
	if msg.Sequence != ack.Sequence || string(msg.Data) != `{"kind":"claim"}` {
		t.Fatalf("event after restart: seq %d data %q, want seq %d", msg.Sequence, msg.Data, ack.Sequence)
	}

	// Bucket and stream configuration.
	wantBuckets := []struct {
		bucket    string
		history   int64
		ttl       time.Duration
		markerTTL time.Duration
	}{
		{messages.BucketClaims, natsx.ClaimsHistory, 0, 0},
		{messages.BucketInstances, 1, 0, 0},
		{messages.BucketLeases, 1, natsx.DefaultLeaseTTL, 0},
		{messages.BucketIdle, 1, 0, natsx.DefaultIdleMarkerTTL},
	}
	for _, w := range wantBuckets {
		kv, err := js2.KeyValue(ctx, w.bucket)
		if err != nil {
			t.Fatalf("bucket %q: %v", w.bucket, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatalf("bucket %q status: %v", w.bucket, err)
		}
		cfg := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config
		if st.History() != w.history || st.TTL() != w.ttl || st.LimitMarkerTTL() != w.markerTTL {
			t.Errorf("bucket %q: history %d ttl %s marker ttl %s; want %d %s %s",
				w.bucket, st.History(), st.TTL(), st.LimitMarkerTTL(), w.history, w.ttl, w.markerTTL)
		}
		if cfg.Storage != jetstream.FileStorage || cfg.Replicas != 1 || cfg.PersistMode != jetstream.DefaultPersistMode {
			t.Errorf("bucket %q: storage %s replicas %d persist mode %s; want file, 1, default",
				w.bucket, cfg.Storage, cfg.Replicas, cfg.PersistMode)
		}
	}
	scfg := events.CachedInfo().Config
	if scfg.Storage != jetstream.FileStorage || scfg.Retention != jetstream.LimitsPolicy ||
		scfg.MaxAge != natsx.DefaultEventsMaxAge || scfg.Replicas != 1 ||
		len(scfg.Subjects) != 1 || scfg.Subjects[0] != messages.EventsWildcard {
		t.Errorf("events stream config: storage %s retention %s max age %s replicas %d subjects %v",
			scfg.Storage, scfg.Retention, scfg.MaxAge, scfg.Replicas, scfg.Subjects)
	}
	if n := events.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("events stream holds %d messages after restart, want 1", n)
	}
}

func TestProvisionUpdatesAndValidates(t *testing.T) {
	ctx := testContext(t)
	js := provisioned(t, false)

	// Changing a setting updates the existing bucket in place.
	if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{LeaseTTL: 30 * time.Second}); err != nil {
		t.Fatalf("Provision with a new lease TTL: %v", err)
	}
	leases, err := js.KeyValue(ctx, messages.BucketLeases)
	if err != nil {
		t.Fatalf("leases bucket: %v", err)
	}
	st, err := leases.Status(ctx)
	if err != nil {
		t.Fatalf("leases status: %v", err)
	}
	if st.TTL() != 30*time.Second {
		t.Fatalf("leases TTL = %s after update, want 30s", st.TTL())
	}

	// Three replicas cannot be placed on one server; the error names the
	// bucket.
	err = natsx.Provision(ctx, js, natsx.ProvisionConfig{Replicas: 3})
	if err == nil || !strings.Contains(err.Error(), `"claims"`) {
		t.Fatalf("Provision with 3 replicas on one server: err = %v, want an error naming the claims bucket", err)
	}

	for _, bad := range []natsx.ProvisionConfig{
		{Replicas: 7},
		{Replicas: -1},
		{IdleMarkerTTL: 500 * time.Millisecond},
		{LeaseTTL: -time.Second},
		{EventsMaxAge: -time.Hour},
	} {
		if err := natsx.Provision(ctx, js, bad); err == nil {
			t.Errorf("Provision(%+v) succeeded, want an error", bad)
		}
	}
	if err := natsx.Provision(ctx, nil, natsx.ProvisionConfig{}); err == nil {
		t.Error("Provision with nil JetStream succeeded, want an error")
	}
}

func TestIdleKeyTTLLeavesMarker(t *testing.T) {
	ctx := testContext(t)
	js := provisioned(t, false)
	idle, err := js.KeyValue(ctx, messages.BucketIdle)
	if err != nil {
		t.Fatalf("idle bucket: %v", err)
	}
	key := messages.ClaimKey("org.acme", "demo")
	w, err := idle.Watch(ctx, key)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer w.Stop()

	start := time.Now()
	if _, err := idle.Create(ctx, key, []byte("deadline"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatalf("Create with KeyTTL: %v", err)
	}

	var sawPut bool
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // end of initial values
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValuePut:
				sawPut = true
				continue
			case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
				if !sawPut {
					t.Fatalf("marker %s before the put", e.Operation())
				}
				if d := time.Since(start); d < 900*time.Millisecond {
					t.Fatalf("key expired after %s, want about 1s", d)
				}
			}
			if _, err := idle.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Fatalf("Get after expiry: err = %v, want ErrKeyNotFound", err)
			}
			// The key can be created again once it has expired.
			if _, err := idle.Create(ctx, key, []byte("again"), jetstream.KeyTTL(time.Minute)); err != nil {
				t.Fatalf("Create after expiry: %v", err)
			}
			return
		case <-timeout:
			t.Fatalf("no delete/purge marker within 10s of a 1s key TTL (saw put: %v)", sawPut)
		}
	}
}

func TestClaimsCompareAndSet(t *testing.T) {
	ctx := testContext(t)
	js := provisioned(t, true)
	claims, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		t.Fatalf("claims bucket: %v", err)
	}
	key := messages.ClaimKey("org.acme", "demo")

	rev1, err := claims.Create(ctx, key, []byte("Pending"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	_, err = claims.Create(ctx, key, []byte("Pending again"))
	if !errors.Is(err, jetstream.ErrKeyExists) || !natsx.IsConflict(err) {
		t.Fatalf("second Create: err = %v, want ErrKeyExists", err)
	}
	rev2, err := claims.Update(ctx, key, []byte("Active"), rev1)
	if err != nil {
		t.Fatalf("Update at current revision: %v", err)
	}

	_, err = claims.Update(ctx, key, []byte("Releasing"), rev1)
	if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("stale Update: err = %v, want ErrKeyRevisionMismatch", err)
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("stale Update: err = %v, want API error code %d (wrong last sequence)", err, jetstream.JSErrCodeStreamWrongLastSequence)
	}
	if !natsx.IsConflict(err) {
		t.Fatalf("IsConflict(%v) = false", err)
	}
	if natsx.IsConflict(nil) || natsx.IsConflict(jetstream.ErrKeyNotFound) {
		t.Fatal("IsConflict is true for nil or ErrKeyNotFound")
	}

	e, err := claims.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if string(e.Value()) != "Active" || e.Revision() != rev2 {
		t.Fatalf("after the rejected update: %q rev %d, want %q rev %d", e.Value(), e.Revision(), "Active", rev2)
	}
}

func TestStartEmbeddedOptions(t *testing.T) {
	s := startServer(t, t.TempDir(), true)
	if !s.JetStreamEnabled() {
		t.Fatal("JetStream not enabled")
	}
	if jsc := s.JetStreamConfig(); jsc == nil || !jsc.SyncAlways {
		t.Fatalf("JetStream config %+v, want SyncAlways", jsc)
	}
	if !strings.HasPrefix(s.ClientURL(), "nats://127.0.0.1:") || strings.HasSuffix(s.ClientURL(), ":4222") {
		t.Fatalf("ClientURL %q, want a random port on 127.0.0.1", s.ClientURL())
	}
	off := startServer(t, t.TempDir(), false)
	if jsc := off.JetStreamConfig(); jsc == nil || jsc.SyncAlways {
		t.Fatalf("JetStream config %+v, want SyncAlways off", jsc)
	}
}

func TestStartEmbeddedFailures(t *testing.T) {
	if _, err := natsx.StartEmbedded(natsx.EmbeddedOptions{}); err == nil || !strings.Contains(err.Error(), "StoreDir") {
		t.Fatalf("no StoreDir: err = %v, want an error naming StoreDir", err)
	}

	// The port is taken: fail fast with the listener's error.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	start := time.Now()
	_, err = natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: t.TempDir(), Port: port})
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("port in use: err = %v, want a listen error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("port in use: failed after %s, want it fast", d)
	}

	// The store directory is a file.
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = natsx.StartEmbedded(natsx.EmbeddedOptions{StoreDir: file})
	if err == nil || !strings.Contains(err.Error(), "JetStream") {
		t.Fatalf("store dir is a file: err = %v, want a JetStream error", err)
	}
}

func TestConnect(t *testing.T) {
	s := startServer(t, t.TempDir(), false)

	nc, err := natsx.Connect(s.ClientURL())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	if nc.Opts.Name != natsx.DefaultClientName || nc.Opts.MaxReconnect != -1 ||
		!nc.Opts.RetryOnFailedConnect || nc.Opts.ReconnectWait != natsx.ReconnectWait {
		t.Fatalf("options: name %q max reconnect %d retry %v wait %s",
			nc.Opts.Name, nc.Opts.MaxReconnect, nc.Opts.RetryOnFailedConnect, nc.Opts.ReconnectWait)
	}
	if _, err := nc.Request("no.responders", nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("request on a connected conn: err = %v, want ErrNoResponders", err)
	}

	inproc, err := natsx.ConnectInProcess(s, nats.Name("claim-router"))
	if err != nil {
		t.Fatalf("ConnectInProcess: %v", err)
	}
	defer inproc.Close()
	if inproc.Opts.Name != "claim-router" {
		t.Fatalf("caller's name not applied: %q", inproc.Opts.Name)
	}
	if !inproc.IsConnected() {
		t.Fatalf("in-process connection status %v", inproc.Status())
	}

	if _, err := natsx.Connect(""); err == nil {
		t.Fatal("Connect with an empty URL succeeded")
	}
	if _, err := natsx.ConnectInProcess(nil); err == nil {
		t.Fatal("ConnectInProcess(nil) succeeded")
	}
}

// The events stream skips per-write fsync on a single server, and a stream
// created before that choice is updated in place, not refused.
func TestEventsStreamPersistMode(t *testing.T) {
	ctx := testContext(t)
	js := provisioned(t, true)
	st, err := js.Stream(ctx, messages.StreamEvents)
	if err != nil {
		t.Fatalf("events stream: %v", err)
	}
	if pm := st.CachedInfo().Config.PersistMode; pm != jetstream.AsyncPersistMode {
		t.Fatalf("events stream persist mode = %s, want async", pm)
	}
	if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{}); err != nil {
		t.Fatalf("second Provision: %v", err)
	}

	s := startServer(t, t.TempDir(), true)
	_, js2 := connectJS(t, s)
	if _, err := js2.CreateStream(ctx, jetstream.StreamConfig{Name: messages.StreamEvents, Subjects: []string{messages.EventsWildcard}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatalf("create old-style stream: %v", err)
	}
	if err := natsx.Provision(ctx, js2, natsx.ProvisionConfig{EventsMaxAge: time.Hour}); err != nil {
		t.Fatalf("Provision over an existing default-mode stream: %v", err)
	}
	old, err := js2.Stream(ctx, messages.StreamEvents)
	if err != nil {
		t.Fatalf("events stream: %v", err)
	}
	if cfg := old.CachedInfo().Config; cfg.PersistMode != jetstream.DefaultPersistMode || cfg.MaxAge != time.Hour {
		t.Fatalf("existing stream after Provision: persist %s, max age %s; want default, 1h", cfg.PersistMode, cfg.MaxAge)
	}
}
