// Package natsx holds Boilerhouse's NATS building blocks: an embedded
// nats-server with JetStream for the dev stack and tests ([StartEmbedded]),
// client connection helpers with reconnect defaults ([Connect],
// [ConnectInProcess]), and idempotent provisioning of every KV bucket and
// stream the system uses ([Provision]).
//
// # Durability of the claims bucket (sync policy)
//
// DESIGN.md requires that the claims bucket never loses an acknowledged
// write. What nats-server v2.15.2 offers, read from its source
// (github.com/nats-io/nats-server/v2@v2.15.2/server):
//
//   - The fsync policy is a server-wide setting only: Options.SyncInterval and
//     Options.SyncAlways (opts.go:491-492), set in a config file with
//     `jetstream { sync_interval: always }` (opts.go:2715-2721). Without it the
//     interval defaults to 2 minutes (filestore.go:339, opts.go:6243-6244).
//   - Every stream's file store copies both values from the server options when
//     the stream is created or recovered (stream.go:1106-1108). With SyncAlways
//     the message block is fsynced after every write, before the publish is
//     acknowledged (filestore.go:8925-8927); index and key files are written
//     with O_SYNC (filestore.go:14778-14782).
//   - Without SyncAlways a single-replica stream in the default persist mode
//     still calls write(2) before the ack ("flush in place",
//     filestore.go:482 and :7949), so an acknowledged write survives a crash of
//     the process, but not a kernel crash or power loss: the page cache reaches
//     the disk only on the periodic sync (filestore.go:8354, every
//     SyncInterval).
//   - There is no per-stream setting that turns fsync-per-write on. The only
//     per-stream durability knob is StreamConfig.PersistMode
//     (stream.go:186-197), and its one non-default value, AsyncPersistMode,
//     weakens durability: it may ack before the write and turns SyncAlways off
//     for that stream (stream.go:1113-1118, filestore.go:803-811). It is only
//     allowed on single-replica file streams (stream.go:2099-2105) and cannot be
//     changed after creation (stream.go:2621-2622). nats.go's KeyValueConfig
//     does not expose it, so buckets created through it, claims included, get
//     DefaultPersistMode. [Provision] checks this for the claims bucket and
//     returns an error if the stream is in async mode.
//   - In a cluster (Replicas > 1) SyncAlways is relaxed for the stream store to
//     "sync on flush" (stream.go:1120-1126, filestore.go:687-699) because the
//     stream is backed by its Raft log. The Raft WAL itself is a file store
//     created with the server's SyncAlways (jetstream_cluster.go:4068), and the
//     meta group commits with SyncCommit (jetstream_cluster.go:1352-1367). So
//     with three replicas and SyncAlways every acknowledged write has been
//     fsynced by a quorum.
//
// Reads: nats.go creates KV buckets with direct gets on, and a direct get may be answered by
// a follower that has not applied the latest write (nats-server issue 4710). claim-router
// decides on what it reads, so on a replicated claims bucket [Provision] turns direct gets off
// and a KV Get becomes a message get answered by the stream leader ([ReadsFromLeader]).
//
// Consequence: the only way to make the claims bucket fsync every write is to
// run the server with SyncAlways, which applies to every file-backed stream on
// that server (instances, leases, idle as well). The events stream opts out
// on a single server with AsyncPersistMode: events are notifications that
// consumers reconcile from the buckets, and an fsync per event would double
// the flushes on the claim path. [EmbeddedOptions]
// exposes it as SyncAlways; the dev stack sets it to true. BenchmarkKVUpdate in
// this package measures what it costs per compare-and-set on the claims bucket.
//
// # Conflicts
//
// A KV Update with a stale revision fails with an error matching
// jetstream.ErrKeyRevisionMismatch. On a single-replica bucket the same error
// also matches jetstream.ErrKeyExists (both carry JetStream error code 10071),
// but a replicated bucket reports code 10164, which matches only
// ErrKeyRevisionMismatch. [IsConflict] checks for both a failed Create and a
// failed Update so that callers need not know the difference.
package natsx
