package natsx

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FollowRetry is how long [Follow] waits before it watches again after a watch failed to
// start or closed.
const FollowRetry = time.Second

// Follow keeps a KV watch going until ctx ends. It passes every entry of the watch to apply,
// nil included: the watch's marker that its initial values are in, sent again by every new
// watch. watch starts a watch: kv.WatchAll, for instance (Follow passes no options).
//
// Follow watches again at once after every reconnect of nc: a restarted server forgets the
// watch's consumer, and nats.go would notice only after 10-20 s without heartbeats, while
// other processes go on writing. It watches again after FollowRetry when a watch fails to
// start or closes. A new watch delivers the current values again (unless watch asks for
// updates only), so apply must take an entry it has seen before.
func Follow(ctx context.Context, nc *nats.Conn, log *slog.Logger, watch func(context.Context, ...jetstream.WatchOpt) (jetstream.KeyWatcher, error), apply func(jetstream.KeyValueEntry)) {
	// Registered before the first watch, so that no reconnect goes unseen.
	reconnected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnected)
	for ctx.Err() == nil {
		w, err := watch(ctx)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("KV watch failed to start; watching again", "err", err)
			}
			sleep(ctx, FollowRetry)
			continue
		}
		switch followOne(ctx, w, reconnected, apply) {
		case watchClosed:
			log.Warn("KV watch closed; watching again")
			sleep(ctx, FollowRetry)
		case watchReconnected:
			log.Info("KV watched again after a reconnect")
		}
	}
}

type watchEnd int

const (
	watchDone watchEnd = iota
	watchClosed
	watchReconnected
)

func followOne(ctx context.Context, w jetstream.KeyWatcher, reconnected <-chan nats.Status, apply func(jetstream.KeyValueEntry)) watchEnd {
	updates := w.Updates()
	defer func() {
		_ = w.Stop()
		// Never leave the watch's delivery goroutine blocked on a full channel.
		go func() {
			for range updates {
			}
		}()
	}()
	for {
		select {
		case <-ctx.Done():
			return watchDone
		case <-reconnected:
			return watchReconnected
		case e, ok := <-updates:
			if !ok {
				return watchClosed
			}
			apply(e)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
