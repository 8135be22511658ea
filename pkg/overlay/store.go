package overlay

import (
	"context"
	"io"

	"boilerhouse.dev/messages"
)

// WriteFunc writes an archive into the store (for the overlay-store: Pack, reading from the
// Pod). An error makes Put discard what was written.
type WriteFunc func(w io.Writer) error

// Store keeps the versions (generations) of the tenants' overlay archives, per (tenant,
// workload). Implementations are safe for concurrent use, also by several processes sharing
// the same storage (overlay-store replicas).
type Store interface {
	// Put stores a new generation, newest+1, with the bytes write writes. It enforces
	// invariant 3 first, under a per-(tenant, workload) lock: unless force, the newest stored
	// generation must be restoredFrom (0 when none is stored), or have been stored from the
	// same source (instance) with the same restoredFrom (a retried extraction of an instance
	// continues its own lineage); otherwise it fails with messages.CodeConflict and writes
	// nothing. The generation is committed atomically after write returns nil and the data is
	// on disk; on any error nothing is committed and the previous generations are intact.
	// Only the newest Keep generations are kept.
	Put(ctx context.Context, tenant, workload string, restoredFrom int64, force bool, source string, write WriteFunc) (messages.Snapshot, error)
	// Open reads a generation (0: the newest). The reader verifies size and sha256 as it
	// reads and fails at the end (an *Error with RuleChecksum) on a mismatch, so read it to
	// io.EOF before trusting what came out. A missing generation is messages.CodeNotFound.
	Open(ctx context.Context, tenant, workload string, generation int64) (io.ReadCloser, messages.Snapshot, error)
	// Latest is the newest generation; false when none is stored.
	Latest(ctx context.Context, tenant, workload string) (messages.Snapshot, bool, error)
	// List returns the stored generations, newest first, of one tenant and/or workload
	// ("" matches all).
	List(ctx context.Context, tenant, workload string) ([]messages.Snapshot, error)
	// Delete removes every generation of (tenant, workload) and returns how many there were.
	Delete(ctx context.Context, tenant, workload string) (int, error)
}
