package natsx_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/natsx/natstest"
)

// seen records what Follow passed on.
type seen struct {
	mu      sync.Mutex
	keys    map[string]string
	markers int
}

func (s *seen) apply(e jetstream.KeyValueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e == nil {
		s.markers++
		return
	}
	s.keys[e.Key()] = string(e.Value())
}

func (s *seen) has(key, val string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[key] == val
}

func (s *seen) markerCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.markers
}

func eventually(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(within); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not within %s: %s", within, what)
		}
	}
}

// bucket connects twice to srv and opens the KV bucket "follow" on each connection: one for the
// test's writes, the other for the watch under test. Both close when the test ends.
func bucket(t *testing.T, ctx context.Context, srv *natstest.Server) (writer, watched jetstream.KeyValue, nc *nats.Conn) {
	t.Helper()
	open := func() (*nats.Conn, jetstream.KeyValue) {
		nc, js := srv.Connect()
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "follow", Storage: jetstream.FileStorage})
		if err != nil {
			t.Fatal(err)
		}
		return nc, kv
	}
	_, writer = open()
	nc, watched = open()
	return writer, watched, nc
}

// After the server restarts, Follow watches again at once: writes made after the restart arrive
// without waiting for nats.go to miss the old watch's heartbeats (10-20 s).
func TestFollowAcrossServerRestart(t *testing.T) {
	srv := natstest.Start(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, watched, nc := bucket(t, ctx, srv)
	if _, err := kv.Put(ctx, "old", []byte("1")); err != nil {
		t.Fatal(err)
	}

	s := &seen{keys: map[string]string{}}
	done := make(chan struct{})
	go func() {
		natsx.Follow(ctx, nc, slog.New(slog.DiscardHandler), watched.WatchAll, s.apply)
		close(done)
	}()
	eventually(t, 5*time.Second, "initial value and marker", func() bool { return s.has("old", "1") && s.markerCount() == 1 })
	if _, err := kv.Put(ctx, "before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "update before the restart", func() bool { return s.has("before", "1") })

	srv.Stop()
	time.Sleep(300 * time.Millisecond)
	srv.Restart()
	eventually(t, 10*time.Second, "writer reconnected", func() bool {
		_, err := kv.Put(ctx, "after", []byte("1"))
		return err == nil
	})
	restarted := time.Now()
	eventually(t, 3*time.Second, "update after the restart", func() bool { return s.has("after", "1") })
	t.Logf("followed %s after the first write past the restart; %d initial-value markers", time.Since(restarted).Round(time.Millisecond), s.markerCount())
	if s.markerCount() < 2 {
		t.Errorf("markers = %d, want a second watch's marker after the reconnect", s.markerCount())
	}

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return after ctx ended")
	}
}

// A watch that fails to start is tried again.
func TestFollowRetriesFailedWatch(t *testing.T) {
	srv := natstest.Start(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, watched, nc := bucket(t, ctx, srv)
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	watch := func(ctx context.Context, _ ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
		if calls.Add(1) == 1 {
			return nil, errors.New("refused")
		}
		return watched.WatchAll(ctx)
	}
	s := &seen{keys: map[string]string{}}
	go natsx.Follow(ctx, nc, slog.New(slog.DiscardHandler), watch, s.apply)
	eventually(t, 3*natsx.FollowRetry+5*time.Second, "value after a failed first watch", func() bool { return s.has("k", "v") })
	if n := calls.Load(); n != 2 {
		t.Errorf("watch called %d times, want 2", n)
	}
}
