package natsx

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"boilerhouse.dev/messages"
)

// Defaults applied by [Provision] to zero fields of [ProvisionConfig].
const (
	DefaultReplicas      = 1
	DefaultLeaseTTL      = 15 * time.Second
	DefaultIdleMarkerTTL = time.Hour
	DefaultEventsMaxAge  = 7 * 24 * time.Hour

	// ClaimsHistory is how many revisions of each claim the claims bucket
	// keeps.
	ClaimsHistory = 5
)

// ProvisionConfig sizes the KV buckets and streams created by [Provision].
// The zero value is the single-server setup.
type ProvisionConfig struct {
	// Replicas for every bucket and stream; default 1. Use 3 in a cluster so
	// that the claims bucket survives the loss of a server.
	Replicas int
	// LeaseTTL is the age after which an entry of the leases bucket expires
	// unless it was updated; default 15s.
	LeaseTTL time.Duration
	// IdleMarkerTTL is how long the idle bucket keeps the delete marker left
	// when a key's per-key TTL expires, so that a watcher that was down at
	// the time still sees it; default 1h, minimum 1s.
	IdleMarkerTTL time.Duration
	// EventsMaxAge is how long events stay in the events stream; default 7
	// days.
	EventsMaxAge time.Duration
	// EventsMaxBytes caps the events stream's size (oldest dropped first);
	// 0 means unlimited.
	EventsMaxBytes int64
}

func (c ProvisionConfig) withDefaults() (ProvisionConfig, error) {
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.IdleMarkerTTL == 0 {
		c.IdleMarkerTTL = DefaultIdleMarkerTTL
	}
	if c.EventsMaxAge == 0 {
		c.EventsMaxAge = DefaultEventsMaxAge
	}
	if c.EventsMaxBytes == 0 {
		c.EventsMaxBytes = -1
	}
	switch {
	case c.Replicas < 1 || c.Replicas > 5:
		return c, fmt.Errorf("natsx: provision: replicas must be 1..5, got %d", c.Replicas)
	case c.LeaseTTL < 0:
		return c, fmt.Errorf("natsx: provision: negative lease TTL %s", c.LeaseTTL)
	case c.IdleMarkerTTL < time.Second:
		return c, fmt.Errorf("natsx: provision: idle marker TTL must be at least 1s, got %s", c.IdleMarkerTTL)
	case c.EventsMaxAge < 0:
		return c, fmt.Errorf("natsx: provision: negative events max age %s", c.EventsMaxAge)
	case c.EventsMaxBytes < -1:
		return c, fmt.Errorf("natsx: provision: negative events max bytes %d", c.EventsMaxBytes)
	}
	return c, nil
}

// bucketConfigs lists every KV bucket the system uses.
func bucketConfigs(c ProvisionConfig) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{
			Bucket:      messages.BucketClaims,
			Description: "Boilerhouse claim state, one key per (tenant, workload); source of truth",
			History:     ClaimsHistory,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
		},
		{
			Bucket:      messages.BucketInstances,
			Description: "Boilerhouse pool inventory",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
		},
		{
			Bucket:      messages.BucketLeases,
			Description: "Boilerhouse single-writer leases",
			History:     1,
			TTL:         c.LeaseTTL,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
		},
		{
			Bucket:      messages.BucketIdle,
			Description: "Boilerhouse idle deadlines (per-key TTL)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			// Enables per-message TTL (Create with jetstream.KeyTTL) and
			// leaves a delete marker, seen by watchers, when a key expires.
			LimitMarkerTTL: c.IdleMarkerTTL,
		},
	}
}

// eventsStreamConfig describes BH_EVENTS. Events are notifications; the KV
// buckets are the truth and every consumer reconciles from them, so a
// single-replica events stream persists asynchronously: under SyncAlways
// each event would otherwise cost an fsync that competes with the claim
// path's own (an event per claim transition). Replicated streams cannot use the
// async mode, and are flushed by their Raft log anyway.
func eventsStreamConfig(c ProvisionConfig) jetstream.StreamConfig {
	persist := jetstream.DefaultPersistMode
	if c.Replicas == 1 {
		persist = jetstream.AsyncPersistMode
	}
	return jetstream.StreamConfig{
		PersistMode: persist,
		Name:        messages.StreamEvents,
		Description: "Boilerhouse claim, pool and instance transitions",
		Subjects:    []string{messages.EventsWildcard},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.EventsMaxAge,
		MaxBytes:    c.EventsMaxBytes,
		MaxMsgs:     -1,
	}
}

// Provision creates, or updates to the configuration below, every KV bucket
// and stream Boilerhouse uses. It is idempotent and keeps existing data, so
// every service may call it at start-up.
//
//   - KV claims: file, history 5, cfg.Replicas; must be in the default
//     persist mode (checked; see the package doc for the sync policy).
//   - KV instances: file, history 1.
//   - KV leases: file, history 1, TTL cfg.LeaseTTL.
//   - KV idle: file, history 1, per-key TTL enabled (LimitMarkerTTL), so that
//     Create(ctx, key, val, jetstream.KeyTTL(d)) works and watchers receive
//     a purge entry when the key expires.
//   - stream BH_EVENTS on bh.v1.events.>: file, limits retention, MaxAge
//     cfg.EventsMaxAge; asynchronous persistence with one replica (see
//     [eventsStreamConfig]), kept as created on later runs.
func Provision(ctx context.Context, js jetstream.JetStream, cfg ProvisionConfig) error {
	if js == nil {
		return errors.New("natsx: provision: nil JetStream")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	for _, kvc := range bucketConfigs(cfg) {
		kv, err := provisionBucket(ctx, js, kvc)
		if err != nil {
			return fmt.Errorf("natsx: provision KV bucket %q: %w", kvc.Bucket, err)
		}
		if kvc.Bucket == messages.BucketClaims {
			scfg, err := streamConfig(ctx, kv)
			if err != nil {
				return fmt.Errorf("natsx: provision KV bucket %q: %w", kvc.Bucket, err)
			}
			if err := checkDurable(kvc.Bucket, scfg); err != nil {
				return err
			}
			if err := leaderReads(ctx, js, kvc.Bucket, scfg); err != nil {
				return err
			}
		}
	}
	scfg := eventsStreamConfig(cfg)
	// The persist mode is fixed when a stream is created: keep what an
	// existing stream has so that updating it does not fail.
	if s, err := js.Stream(ctx, scfg.Name); err == nil {
		scfg.PersistMode = s.CachedInfo().Config.PersistMode
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("natsx: provision stream %q: %w", scfg.Name, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, scfg); err != nil {
		return fmt.Errorf("natsx: provision stream %q: %w", scfg.Name, err)
	}
	return nil
}

// streamConfig is the configuration of kv's stream, as the server has it now.
func streamConfig(ctx context.Context, kv jetstream.KeyValue) (jetstream.StreamConfig, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return jetstream.StreamConfig{}, fmt.Errorf("status: %w", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return jetstream.StreamConfig{}, fmt.Errorf("unexpected status type %T", st)
	}
	return bs.StreamInfo().Config, nil
}

// checkDurable refuses a claims bucket whose stream acknowledges writes
// before persisting them.
func checkDurable(bucket string, cfg jetstream.StreamConfig) error {
	if pm := cfg.PersistMode; pm != jetstream.DefaultPersistMode {
		return fmt.Errorf("natsx: provision KV bucket %q: stream %q has persist mode %s; the claims bucket must use the default persist mode (recreate it)", bucket, cfg.Name, pm)
	}
	return nil
}

// provisionBucket creates the bucket or updates it to kvc. A bucket whose settings already
// match is left as it is: an update through nats.go would turn the claims bucket's direct gets
// back on (see [leaderReads]) until provisioning turns them off again.
func provisionBucket(ctx context.Context, js jetstream.JetStream, kvc jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if kv, err := js.KeyValue(ctx, kvc.Bucket); err == nil {
		if st, err := kv.Status(ctx); err == nil {
			if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && sameBucket(bs.Config(), kvc) {
				return kv, nil
			}
		}
	}
	return js.CreateOrUpdateKeyValue(ctx, kvc)
}

// sameBucket reports whether have already has the settings that Provision gives want.
func sameBucket(have, want jetstream.KeyValueConfig) bool {
	return have.Description == want.Description && have.History == max(want.History, 1) && have.TTL == want.TTL &&
		have.Storage == want.Storage && have.Replicas == max(want.Replicas, 1) && have.LimitMarkerTTL == want.LimitMarkerTTL
}

// followerReads reports whether a stream's gets may be answered by a follower: it is
// replicated and has direct gets on. A follower may not have applied a write yet, so a read
// right after the write can come back stale (nats-server issue 4710).
func followerReads(cfg jetstream.StreamConfig) bool { return cfg.Replicas > 1 && cfg.AllowDirect }

// leaderReads turns direct gets off on the claims bucket's stream when followers could answer
// them (nats.go's KV configuration turns them on, and on again at each update): claim-router
// decides on what it reads. Without direct gets a KV Get is a message get, answered by the
// stream leader. A single server keeps its direct gets.
func leaderReads(ctx context.Context, js jetstream.JetStream, bucket string, cfg jetstream.StreamConfig) error {
	if !followerReads(cfg) {
		return nil
	}
	cfg.AllowDirect = false
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("natsx: provision KV bucket %q: turning direct gets off: %w", bucket, err)
	}
	return nil
}

// ReadsFromLeader reports whether kv's stream answers gets from its leader only: one replica,
// or direct gets off ([Provision] turns them off on a replicated claims bucket; a handle bound
// while another provisioning had them on keeps using them).
func ReadsFromLeader(ctx context.Context, kv jetstream.KeyValue) (bool, error) {
	cfg, err := streamConfig(ctx, kv)
	if err != nil {
		return false, fmt.Errorf("natsx: KV bucket %q: %w", kv.Bucket(), err)
	}
	return !followerReads(cfg), nil
}

// IsConflict reports whether err is an optimistic-concurrency conflict from
// a KV write: a Create on a key that exists, or an Update (or Delete/Purge
// with a last-revision check) with a stale revision. It covers both the
// single-replica (code 10071) and replicated (code 10164) forms.
func IsConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}
