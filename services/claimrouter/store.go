package claimrouter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/natsx"
)

// Entry is one claim record with the key and revision it was read at. The
// revision is what a compare-and-set writes against.
type Entry struct {
	Key      string
	Record   messages.ClaimRecord
	Revision uint64
}

// Store is the KV bucket "claims": one [messages.ClaimRecord] per
// [messages.ClaimKey]. Writes are compare-and-set only: Create (the key must
// be absent) or Update/Delete at a revision.
type Store struct {
	kv     jetstream.KeyValue
	logger *slog.Logger
}

// NewStore wraps the claims bucket.
func NewStore(kv jetstream.KeyValue, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.Default()
	}
	return &Store{kv: kv, logger: logger}
}

// OpenStore opens the claims bucket, which must exist ([natsx.Provision]
// creates it). The router decides on what it reads, so its reads must see
// every acknowledged write: a replicated bucket must be bound with direct
// gets off ([natsx.ReadsFromLeader]); while a provisioning has them on, it
// binds again.
func OpenStore(ctx context.Context, js jetstream.JetStream, logger *slog.Logger) (*Store, error) {
	deadline := time.Now().Add(openStoreWait)
	for {
		kv, err := js.KeyValue(ctx, messages.BucketClaims)
		if err != nil {
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				return nil, fmt.Errorf("claimrouter: KV bucket %q does not exist (create it with natsx.Provision): %w", messages.BucketClaims, err)
			}
			return nil, fmt.Errorf("claimrouter: open KV bucket %q: %w", messages.BucketClaims, err)
		}
		leader, err := natsx.ReadsFromLeader(ctx, kv)
		if err != nil {
			return nil, fmt.Errorf("claimrouter: open KV bucket %q: %w", messages.BucketClaims, err)
		}
		if leader {
			return NewStore(kv, logger), nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("claimrouter: KV bucket %q is replicated with direct gets on, so reads may miss acknowledged writes (provision it with natsx.Provision)", messages.BucketClaims)
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
}

// openStoreWait is how long OpenStore waits for a provisioning to turn direct gets off.
const openStoreWait = 10 * time.Second

// decode turns a KV entry into an Entry.
func decode(e jetstream.KeyValueEntry) (*Entry, error) {
	var rec messages.ClaimRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, messages.Errorf(messages.CodeInternal, "claim record %s (revision %d) is not valid JSON: %v", e.Key(), e.Revision(), err)
	}
	return &Entry{Key: e.Key(), Record: rec, Revision: e.Revision()}, nil
}

// Get reads the record of key; nil (and no error) when there is none.
func (s *Store) Get(ctx context.Context, key string) (*Entry, error) {
	e, err := s.kv.Get(ctx, key)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return nil, nil
		}
		return nil, storeError("get", key, err)
	}
	return decode(e)
}

// Create writes rec under its key, which must not hold a record (a deleted
// key counts as absent). Losing the race is a conflict ([natsx.IsConflict]).
func (s *Store) Create(ctx context.Context, rec messages.ClaimRecord) (*Entry, error) {
	key := messages.ClaimKey(rec.TenantID, rec.Workload)
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	rev, err := s.kv.Create(ctx, key, b)
	if err != nil {
		return nil, storeError("create", key, err)
	}
	return &Entry{Key: key, Record: rec, Revision: rev}, nil
}

// Update writes rec under its key if the key is still at revision rev;
// otherwise it is a conflict ([natsx.IsConflict]).
func (s *Store) Update(ctx context.Context, rec messages.ClaimRecord, rev uint64) (*Entry, error) {
	key := messages.ClaimKey(rec.TenantID, rec.Workload)
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	next, err := s.kv.Update(ctx, key, b, rev)
	if err != nil {
		return nil, storeError("update", key, err)
	}
	return &Entry{Key: key, Record: rec, Revision: next}, nil
}

// Write writes rec over cur, the entry read before deciding: Create when there was none,
// else Update at its revision. A conflict means another writer came first.
func (s *Store) Write(ctx context.Context, rec messages.ClaimRecord, cur *Entry) (*Entry, error) {
	if cur == nil {
		return s.Create(ctx, rec)
	}
	return s.Update(ctx, rec, cur.Revision)
}

// Delete removes the record of key if it is still at revision rev.
func (s *Store) Delete(ctx context.Context, key string, rev uint64) error {
	if err := s.kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		return storeError("delete", key, err)
	}
	return nil
}

// maxTransitionAttempts bounds the compare-and-set loop of Transition; every
// loss means someone else wrote the key, so reaching it means a livelock
// (or a bug), reported as a conflict.
const maxTransitionAttempts = 64

// Transition applies step to the current record of key (nil when absent)
// and writes the result at the revision it read (Create when absent). A
// lost compare-and-set re-reads and re-applies step, so step must be a
// pure decision on the record it gets. An error from step (typically
// [ErrSuperseded]) stops the loop and is returned with the entry step
// refused. It returns the written entry.
func (s *Store) Transition(ctx context.Context, key string, step func(cur *messages.ClaimRecord) (messages.ClaimRecord, error)) (*Entry, *Entry, error) {
	for range maxTransitionAttempts {
		cur, err := s.Get(ctx, key)
		if err != nil {
			return nil, nil, err
		}
		next, err := step(recordOf(cur))
		if err != nil {
			return nil, cur, err
		}
		written, err := s.Write(ctx, next, cur)
		if err == nil {
			return written, cur, nil
		}
		if !natsx.IsConflict(err) {
			return nil, cur, err
		}
		if ctx.Err() != nil {
			return nil, cur, ctx.Err()
		}
	}
	return nil, nil, messages.Errorf(messages.CodeConflict, "claim %s keeps changing; gave up after %d attempts", key, maxTransitionAttempts)
}

// Watch watches one key; the first update is its current value (or a nil
// marker when it has none).
func (s *Store) Watch(ctx context.Context, key string) (jetstream.KeyWatcher, error) {
	w, err := s.kv.Watch(ctx, key)
	if err != nil {
		return nil, storeError("watch", key, err)
	}
	return w, nil
}

// WatchUpdates watches every key for changes from now on (no initial
// values).
func (s *Store) WatchUpdates(ctx context.Context) (jetstream.KeyWatcher, error) {
	w, err := s.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return nil, storeError("watch", ">", err)
	}
	return w, nil
}

// List reads every record in the bucket.
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	return s.list(ctx, jetstream.AllKeys)
}

// ListTenant reads every record of one tenant ([messages.TenantClaimsFilter]).
func (s *Store) ListTenant(ctx context.Context, tenant string) ([]Entry, error) {
	return s.list(ctx, messages.TenantClaimsFilter(tenant))
}

// list reads the current value of every key matching filter with one
// ordered consumer (one round trip per batch instead of one per key).
// Records that do not decode are logged and skipped, so that one bad value
// cannot stop the sweeper.
func (s *Store) list(ctx context.Context, filter string) ([]Entry, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, storeError("list", filter, err)
	}
	defer func() { _ = w.Stop() }()
	var out []Entry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, messages.Errorf(messages.CodeUnavailable, "claims: list %s: watch closed", filter)
			}
			if e == nil {
				return out, nil
			}
			d, err := decode(e)
			if err != nil {
				s.logger.Error("skipping undecodable claim record", "key", e.Key(), "revision", e.Revision(), "err", err)
				continue
			}
			out = append(out, *d)
		case <-ctx.Done():
			return nil, storeError("list", filter, ctx.Err())
		}
	}
}

// storeError keeps conflicts recognisable ([natsx.IsConflict]) and turns
// everything else into a typed error.
func storeError(op, key string, err error) error {
	if natsx.IsConflict(err) {
		return fmt.Errorf("claims: %s %s: %w", op, key, err)
	}
	var typed *messages.Error
	if errors.As(err, &typed) {
		return typed
	}
	code := messages.CodeUnavailable
	if errors.Is(err, context.DeadlineExceeded) {
		code = messages.CodeDeadlineExceeded
	}
	return messages.Errorf(code, "claims: %s %s: %v", op, key, err)
}
