package poolmanager

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

// ledger is the acquisition ledger (KV bucket messages.BucketInstances) with an in-memory view
// fed by a KV watch, so that acquisition and pool counting read memory, not NATS.
type ledger struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	// onChange is called (outside the lock) for every key whose entry changed.
	onChange func(key string, e LedgerEntry, deleted bool)

	mu      sync.RWMutex
	entries map[string]ledgerItem
	byClaim map[string]string // claim id -> key of its latest entry
}

type ledgerItem struct {
	entry LedgerEntry
	rev   uint64
}

func newLedger(kv jetstream.KeyValue, log *slog.Logger) *ledger {
	return &ledger{kv: kv, log: log, entries: map[string]ledgerItem{}, byClaim: map[string]string{}}
}

// watch keeps the view current until ctx ends (natsx.Follow: watched again after every
// reconnect). synced is closed once the first watch's initial values are in. The initial values
// of a new watch include the delete markers of keys removed while unwatched (the ledger deletes,
// never purges), so those keys leave the view as well.
func (l *ledger) watch(ctx context.Context, nc *nats.Conn, synced chan<- struct{}) {
	natsx.Follow(ctx, nc, l.log.With("bucket", messages.BucketInstances), l.kv.WatchAll, func(e jetstream.KeyValueEntry) {
		if e != nil {
			l.applyWatched(e)
		} else if synced != nil {
			close(synced)
			synced = nil
		}
	})
}

func (l *ledger) applyWatched(e jetstream.KeyValueEntry) {
	switch e.Operation() {
	case jetstream.KeyValuePut:
		var entry LedgerEntry
		if err := json.Unmarshal(e.Value(), &entry); err != nil {
			l.log.Error("malformed ledger entry; treating the Pod as held", "key", e.Key(), "err", err)
			entry = LedgerEntry{State: StateRetiring}
		}
		l.put(e.Key(), entry, e.Revision())
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		l.remove(e.Key(), e.Revision())
	}
}

// put records entry at rev unless a newer revision of the key is already known.
func (l *ledger) put(key string, entry LedgerEntry, rev uint64) {
	l.mu.Lock()
	if cur, ok := l.entries[key]; ok && cur.rev >= rev {
		l.mu.Unlock()
		return
	}
	l.entries[key] = ledgerItem{entry: entry, rev: rev}
	if entry.ClaimID != "" {
		l.byClaim[entry.ClaimID] = key
	}
	l.mu.Unlock()
	if l.onChange != nil {
		l.onChange(key, entry, false)
	}
}

func (l *ledger) remove(key string, rev uint64) {
	l.mu.Lock()
	cur, ok := l.entries[key]
	if !ok || cur.rev >= rev {
		l.mu.Unlock()
		return
	}
	delete(l.entries, key)
	if id := cur.entry.ClaimID; id != "" && l.byClaim[id] == key {
		delete(l.byClaim, id)
	}
	l.mu.Unlock()
	if l.onChange != nil {
		l.onChange(key, cur.entry, true)
	}
}

// Get returns the entry holding key, if any.
func (l *ledger) Get(key string) (LedgerEntry, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	it, ok := l.entries[key]
	return it.entry, ok
}

// snapshot copies the view: key -> entry.
func (l *ledger) snapshot() map[string]LedgerEntry {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make(map[string]LedgerEntry, len(l.entries))
	for k, it := range l.entries {
		out[k] = it.entry
	}
	return out
}

// Held reports whether key has an entry.
func (l *ledger) Held(key string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.entries[key]
	return ok
}

// ByClaim returns the latest entry written for a claim id.
func (l *ledger) ByClaim(claimID string) (string, LedgerEntry, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	key, ok := l.byClaim[claimID]
	if !ok {
		return "", LedgerEntry{}, false
	}
	it, ok := l.entries[key]
	return key, it.entry, ok
}

// Create writes entry under key if the key has none. It returns false, nil when another writer
// got there first. A successful Create is visible in the view at once.
func (l *ledger) Create(ctx context.Context, key string, entry LedgerEntry) (bool, error) {
	b, err := json.Marshal(entry)
	if err != nil {
		return false, err
	}
	rev, err := l.kv.Create(ctx, key, b)
	switch {
	case natsx.IsConflict(err):
		return false, nil
	case err != nil:
		return false, natsError("ledger create "+key, err)
	}
	l.put(key, entry, rev)
	return true, nil
}

// Update changes key's entry with a compare-and-swap on its revision, retrying when another
// writer got there first. mutate returns false to leave the entry as it is; an error from it
// ends the update with that error. A missing key is a conflict (the instance was retired).
func (l *ledger) Update(ctx context.Context, key string, mutate func(*LedgerEntry) (bool, error)) error {
	for {
		e, err := l.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return messages.Errorf(messages.CodeConflict, "instance %s is no longer held", key)
		case err != nil:
			return natsError("ledger read "+key, err)
		}
		var entry LedgerEntry
		if err := json.Unmarshal(e.Value(), &entry); err != nil {
			return messages.Errorf(messages.CodeInternal, "malformed ledger entry %s: %v", key, err)
		}
		change, err := mutate(&entry)
		if err != nil || !change {
			return err
		}
		b, err := json.Marshal(entry)
		if err != nil {
			return err
		}
		rev, err := l.kv.Update(ctx, key, b, e.Revision())
		switch {
		case natsx.IsConflict(err):
			continue
		case err != nil:
			return natsError("ledger update "+key, err)
		}
		l.put(key, entry, rev)
		return nil
	}
}

// Read reads key from the KV bucket itself (not the view).
func (l *ledger) Read(ctx context.Context, key string) (LedgerEntry, bool, error) {
	e, err := l.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return LedgerEntry{}, false, nil
	case err != nil:
		return LedgerEntry{}, false, natsError("ledger read "+key, err)
	}
	var entry LedgerEntry
	if err := json.Unmarshal(e.Value(), &entry); err != nil {
		return LedgerEntry{}, false, messages.Errorf(messages.CodeInternal, "malformed ledger entry %s: %v", key, err)
	}
	return entry, true, nil
}

// Delete removes key's entry; the view follows through the watch.
func (l *ledger) Delete(ctx context.Context, key string) error {
	if err := l.kv.Delete(ctx, key); err != nil {
		return natsError("ledger delete "+key, err)
	}
	return nil
}

func natsError(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return messages.Errorf(messages.CodeDeadlineExceeded, "%s: %v", op, err)
	}
	return messages.Errorf(messages.CodeUnavailable, "%s: %v", op, err)
}
