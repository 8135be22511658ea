package overlay

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"boilerhouse.dev/messages"
)

// DefaultKeep is how many generations DirStore keeps per (tenant, workload).
const DefaultKeep = 3

// Names inside a (tenant, workload) directory of a DirStore.
const (
	archiveExt = ".tar.gz"
	metaExt    = ".json"
	tempPrefix = ".tmp-"
	lockName   = ".lock"
)

// Meta is the metadata file <generation>.json of a DirStore generation. Its creation
// commits the generation.
type Meta struct {
	TenantID   string `json:"tenantId"`
	Workload   string `json:"workload"`
	Generation int64  `json:"generation"`
	// Size and SHA256 are those of <generation>.tar.gz.
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"createdAt"`
	// RestoredFrom is the generation the extracted instance had been restored from.
	RestoredFrom int64 `json:"restoredFrom"`
	// Forced: stored despite a stale RestoredFrom (a claim with resume: false).
	Forced bool `json:"forced,omitempty"`
	// Source is the instance the generation was extracted from.
	Source string `json:"source,omitempty"`
}

// DirStore is the directory backend of Store:
//
//	<root>/<EncodeToken(tenant)>/<EncodeToken(workload)>/<generation>.tar.gz
//	<root>/<EncodeToken(tenant)>/<EncodeToken(workload)>/<generation>.json   (Meta)
//
// A generation is written to a temp file in the same directory, fsynced and linked to its
// name; then its metadata is written the same way, and linking <generation>.json (which
// never replaces an existing file) commits it. A crash at any point leaves the committed
// generations intact, plus temp files or an uncommitted archive that the next Put (or
// Clean) of the directory removes. Writers of a directory are serialised in-process and
// across processes by flock(2) on <dir>/.lock.
type DirStore struct {
	root string
	keep int
	now  func() time.Time

	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

// DirStoreOptions tune a DirStore.
type DirStoreOptions struct {
	// Keep is how many generations are kept per (tenant, workload) (default 3).
	Keep int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

var _ Store = (*DirStore)(nil)

// NewDirStore opens (creating it if needed) a DirStore rooted at root.
func NewDirStore(root string, opts DirStoreOptions) (*DirStore, error) {
	if root == "" {
		return nil, errors.New("overlay: DirStore needs a root directory")
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("overlay: store root: %w", err)
	}
	if opts.Keep <= 0 {
		opts.Keep = DefaultKeep
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &DirStore{root: root, keep: opts.Keep, now: opts.Now, locks: make(map[string]*keyLock)}, nil
}

// Root is the store's directory.
func (s *DirStore) Root() string { return s.root }

func (s *DirStore) keyDir(tenant, workload string) string {
	return filepath.Join(s.root, messages.EncodeToken(tenant), messages.EncodeToken(workload))
}

func relPath(tenant, workload string, gen int64) string {
	return messages.EncodeToken(tenant) + "/" + messages.EncodeToken(workload) + "/" + strconv.FormatInt(gen, 10) + archiveExt
}

func checkKey(tenant, workload string) error {
	if tenant == "" {
		return messages.Errorf(messages.CodeInvalidArgument, "tenant id must not be empty")
	}
	if workload == "" {
		return messages.Errorf(messages.CodeInvalidArgument, "workload must not be empty")
	}
	return nil
}

// errNoDir: lock without create found no directory.
var errNoDir = errors.New("no such directory")

// lock serialises the writers of a (tenant, workload) directory: a channel per key in this
// process, flock on <dir>/.lock across processes. With create, the directory is created.
func (s *DirStore) lock(ctx context.Context, tenant, workload string, create bool) (string, func(), error) {
	key := messages.ClaimKey(tenant, workload)
	s.mu.Lock()
	kl := s.locks[key]
	if kl == nil {
		kl = &keyLock{ch: make(chan struct{}, 1)}
		s.locks[key] = kl
	}
	kl.refs++
	s.mu.Unlock()
	release := func() {
		s.mu.Lock()
		if kl.refs--; kl.refs == 0 {
			delete(s.locks, key)
		}
		s.mu.Unlock()
	}
	select {
	case kl.ch <- struct{}{}:
	case <-ctx.Done():
		release()
		return "", nil, ctx.Err()
	}
	unlockLocal := func() { <-kl.ch; release() }

	dir := s.keyDir(tenant, workload)
	path := filepath.Join(dir, lockName)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		if create {
			if err := s.makeDir(dir); err != nil {
				unlockLocal()
				return "", nil, err
			}
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if errors.Is(err, fs.ErrNotExist) {
			if !create {
				unlockLocal()
				return "", nil, errNoDir
			}
			continue // removed by a Delete in between
		}
		if err != nil {
			unlockLocal()
			return "", nil, err
		}
		ok, err := tryFlock(f)
		if err != nil {
			f.Close()
			unlockLocal()
			return "", nil, fmt.Errorf("overlay: flock %s: %w", path, err)
		}
		if ok && sameFile(f, path) {
			return dir, func() { f.Close(); unlockLocal() }, nil
		}
		f.Close()
		if ok {
			continue // the lock file was replaced while we waited: lock the new one
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			unlockLocal()
			return "", nil, ctx.Err()
		}
	}
}

// makeDir creates a (tenant, workload) directory durably: the new directory entries are
// fsynced too, so a committed generation cannot vanish with its directory in a crash.
func (s *DirStore) makeDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	return syncDir(s.root)
}

// generations lists the committed generations of dir, ascending.
func generations(dir string) ([]int64, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var gens []int64
	for _, e := range ents {
		if g, ok := genOf(e.Name(), metaExt); ok {
			gens = append(gens, g)
		}
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i] < gens[j] })
	return gens, nil
}

// genOf parses "<generation><ext>" with a canonical positive number.
func genOf(name, ext string) (int64, bool) {
	num, ok := strings.CutSuffix(name, ext)
	if !ok {
		return 0, false
	}
	g, err := strconv.ParseInt(num, 10, 64)
	if err != nil || g <= 0 || strconv.FormatInt(g, 10) != num {
		return 0, false
	}
	return g, true
}

func readMeta(dir string, gen int64) (Meta, error) {
	b, err := os.ReadFile(filepath.Join(dir, strconv.FormatInt(gen, 10)+metaExt))
	if err != nil {
		return Meta{}, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("overlay: metadata of generation %d in %s: %w", gen, dir, err)
	}
	if m.Generation != gen {
		return Meta{}, fmt.Errorf("overlay: metadata of generation %d in %s names generation %d", gen, dir, m.Generation)
	}
	return m, nil
}

// cleanDir removes what crashed or failed writers left in dir: temp files, and archives
// whose metadata was never committed (or was pruned). Call it holding the directory's lock.
func cleanDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	committed := make(map[int64]bool)
	for _, e := range ents {
		if g, ok := genOf(e.Name(), metaExt); ok {
			committed[g] = true
		}
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		g, isArchive := genOf(name, archiveExt)
		if strings.HasPrefix(name, tempPrefix) || (isArchive && !committed[g]) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Put implements Store.
func (s *DirStore) Put(ctx context.Context, tenant, workload string, restoredFrom int64, force bool, source string, write WriteFunc) (messages.Snapshot, error) {
	if err := checkKey(tenant, workload); err != nil {
		return messages.Snapshot{}, err
	}
	dir, unlock, err := s.lock(ctx, tenant, workload, true)
	if err != nil {
		return messages.Snapshot{}, storeError("lock", err)
	}
	defer unlock()
	if err := cleanDir(dir); err != nil {
		return messages.Snapshot{}, storeError("clean", err)
	}
	gens, err := generations(dir)
	if err != nil {
		return messages.Snapshot{}, storeError("list", err)
	}
	var newest int64
	var newestMeta Meta
	if len(gens) > 0 {
		newest = gens[len(gens)-1]
		newestMeta, _ = readMeta(dir, newest) // unreadable: only "force" can pass below
	}
	sameLineage := source != "" && newestMeta.Generation == newest && newestMeta.Source == source && newestMeta.RestoredFrom == restoredFrom
	if !force && newest != restoredFrom && !sameLineage {
		return messages.Snapshot{}, messages.Errorf(messages.CodeConflict,
			"overlay of tenant %q for workload %q: the newest stored generation is %d but the instance was restored from %d; not replacing it (invariant 3)",
			tenant, workload, newest, restoredFrom)
	}
	gen := newest + 1
	genName := strconv.FormatInt(gen, 10)

	tmp, err := os.CreateTemp(dir, tempPrefix+genName+"-*"+archiveExt)
	if err != nil {
		return messages.Snapshot{}, storeError("create", err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 256<<10)
	hw := &sumWriter{w: bw, h: sha256.New()}
	if err := write(hw); err != nil {
		return messages.Snapshot{}, err
	}
	if err := ctx.Err(); err != nil {
		return messages.Snapshot{}, err
	}
	if err := bw.Flush(); err != nil {
		return messages.Snapshot{}, storeError("write", err)
	}
	if err := tmp.Sync(); err != nil {
		return messages.Snapshot{}, storeError("fsync", err)
	}
	if err := tmp.Close(); err != nil {
		return messages.Snapshot{}, storeError("close", err)
	}
	archive := filepath.Join(dir, genName+archiveExt)
	if err := commitFile(tmp.Name(), archive, filepath.Join(dir, genName+metaExt)); err != nil {
		return messages.Snapshot{}, err
	}
	m := Meta{
		TenantID: tenant, Workload: workload, Generation: gen, Size: hw.n, SHA256: hex.EncodeToString(hw.h.Sum(nil)),
		CreatedAt: s.now().UTC(), RestoredFrom: restoredFrom, Forced: force && newest != restoredFrom, Source: source,
	}
	if err := writeMeta(dir, genName, m); err != nil {
		os.Remove(archive)
		return messages.Snapshot{}, err
	}
	committed = true
	if err := syncDir(dir); err != nil {
		return messages.Snapshot{}, storeError("fsync dir", err)
	}
	// Keep the newest generations: uncommit (metadata) first, then remove the archive, so a
	// crash in between leaves an orphan that cleanDir removes.
	gens = append(gens, gen)
	for _, old := range gens[:max(len(gens)-s.keep, 0)] {
		n := strconv.FormatInt(old, 10)
		if err := os.Remove(filepath.Join(dir, n+metaExt)); err == nil || errors.Is(err, fs.ErrNotExist) {
			os.Remove(filepath.Join(dir, n+archiveExt))
		}
	}
	return m.snapshot(), nil
}

// commitFile moves the synced temp file tmp to name without ever replacing a committed file:
// name is linked (link(2) fails if it exists). An existing name without its metadata is the
// leftover of a crashed writer and is replaced.
func commitFile(tmp, name, metaName string) error {
	for range 3 {
		err := os.Link(tmp, name)
		if err == nil {
			os.Remove(tmp)
			return nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return storeError("link", err)
		}
		if _, err := os.Stat(metaName); err == nil {
			return messages.Errorf(messages.CodeConflict, "generation %s was committed concurrently by another writer", filepath.Base(name))
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return storeError("remove stale", err)
		}
	}
	return messages.Errorf(messages.CodeConflict, "%s keeps being written concurrently", name)
}

func writeMeta(dir, genName string, m Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, tempPrefix+genName+"-*"+metaExt)
	if err != nil {
		return storeError("create", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return storeError("write", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return storeError("fsync", err)
	}
	if err := f.Close(); err != nil {
		return storeError("close", err)
	}
	if err := syncDir(dir); err != nil { // the archive's link is durable before the commit
		return storeError("fsync dir", err)
	}
	if err := os.Link(f.Name(), filepath.Join(dir, genName+metaExt)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return messages.Errorf(messages.CodeConflict, "generation %s was committed concurrently by another writer", genName)
		}
		return storeError("commit", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func storeError(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *messages.Error
	if errors.As(err, &e) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return messages.Errorf(messages.CodeInternal, "overlay store: %s: %v", op, err)
}

func (m Meta) snapshot() messages.Snapshot {
	return messages.Snapshot{
		TenantID: m.TenantID, Workload: m.Workload, Path: relPath(m.TenantID, m.Workload, m.Generation),
		Size: m.Size, SHA256: m.SHA256, Generation: m.Generation, CreatedAt: m.CreatedAt,
	}
}

// Meta returns the metadata of a generation (0: the newest).
func (s *DirStore) Meta(tenant, workload string, generation int64) (Meta, error) {
	if err := checkKey(tenant, workload); err != nil {
		return Meta{}, err
	}
	dir := s.keyDir(tenant, workload)
	if generation == 0 {
		gens, err := generations(dir)
		if err != nil {
			return Meta{}, storeError("list", err)
		}
		if len(gens) == 0 {
			return Meta{}, messages.Errorf(messages.CodeNotFound, "no overlay stored for tenant %q and workload %q", tenant, workload)
		}
		generation = gens[len(gens)-1]
	}
	m, err := readMeta(dir, generation)
	if errors.Is(err, fs.ErrNotExist) {
		return Meta{}, messages.Errorf(messages.CodeNotFound, "no generation %d of the overlay of tenant %q for workload %q", generation, tenant, workload)
	}
	if err != nil {
		return Meta{}, storeError("metadata", err)
	}
	return m, nil
}

// Open implements Store.
func (s *DirStore) Open(ctx context.Context, tenant, workload string, generation int64) (io.ReadCloser, messages.Snapshot, error) {
	for attempt := 0; ; attempt++ {
		m, err := s.Meta(tenant, workload, generation)
		if err != nil {
			return nil, messages.Snapshot{}, err
		}
		f, err := os.Open(filepath.Join(s.keyDir(tenant, workload), strconv.FormatInt(m.Generation, 10)+archiveExt))
		if errors.Is(err, fs.ErrNotExist) && generation == 0 && attempt < 3 {
			continue // pruned between the two reads: a newer one exists
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, messages.Snapshot{}, messages.Errorf(messages.CodeNotFound, "generation %d of the overlay of tenant %q for workload %q is gone", m.Generation, tenant, workload)
		}
		if err != nil {
			return nil, messages.Snapshot{}, storeError("open", err)
		}
		if st, err := f.Stat(); err == nil && st.Size() != m.Size {
			f.Close()
			return nil, messages.Snapshot{}, errorf(RuleChecksum, "", "generation %d has %d bytes on disk, its metadata says %d", m.Generation, st.Size(), m.Size)
		}
		return &verifyReader{f: f, h: sha256.New(), want: m}, m.snapshot(), nil
	}
}

// Latest implements Store.
func (s *DirStore) Latest(ctx context.Context, tenant, workload string) (messages.Snapshot, bool, error) {
	m, err := s.Meta(tenant, workload, 0)
	if messages.CodeOf(err) == messages.CodeNotFound {
		return messages.Snapshot{}, false, nil
	}
	if err != nil {
		return messages.Snapshot{}, false, err
	}
	return m.snapshot(), true, nil
}

// List implements Store. Directories whose names are not canonical tokens, and unreadable
// metadata, are left out.
func (s *DirStore) List(ctx context.Context, tenant, workload string) ([]messages.Snapshot, error) {
	var tenants []string
	if tenant != "" {
		tenants = []string{messages.EncodeToken(tenant)}
	} else {
		var err error
		if tenants, err = subdirs(s.root); err != nil {
			return nil, storeError("list", err)
		}
	}
	var out []messages.Snapshot
	for _, t := range tenants {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		tdir := filepath.Join(s.root, t)
		var workloads []string
		if workload != "" {
			workloads = []string{messages.EncodeToken(workload)}
		} else {
			var err error
			if workloads, err = subdirs(tdir); err != nil {
				return nil, storeError("list", err)
			}
		}
		for _, w := range workloads {
			dir := filepath.Join(tdir, w)
			gens, err := generations(dir)
			if err != nil {
				return nil, storeError("list", err)
			}
			for _, g := range gens {
				if m, err := readMeta(dir, g); err == nil {
					out = append(out, m.snapshot())
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		switch {
		case !a.CreatedAt.Equal(b.CreatedAt):
			return a.CreatedAt.After(b.CreatedAt)
		case a.TenantID != b.TenantID:
			return a.TenantID < b.TenantID
		case a.Workload != b.Workload:
			return a.Workload < b.Workload
		}
		return a.Generation > b.Generation
	})
	return out, nil
}

// subdirs lists the directories of dir whose names are canonical tokens.
func subdirs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if v, err := messages.DecodeToken(e.Name()); err != nil || v == "" {
			continue
		}
		out = append(out, e.Name())
	}
	return out, nil
}

// Delete implements Store.
func (s *DirStore) Delete(ctx context.Context, tenant, workload string) (int, error) {
	if err := checkKey(tenant, workload); err != nil {
		return 0, err
	}
	dir, unlock, err := s.lock(ctx, tenant, workload, false)
	if errors.Is(err, errNoDir) {
		return 0, nil
	}
	if err != nil {
		return 0, storeError("lock", err)
	}
	defer unlock()
	gens, err := generations(dir)
	if err != nil {
		return 0, storeError("list", err)
	}
	n := 0
	for _, g := range gens {
		if err := os.Remove(filepath.Join(dir, strconv.FormatInt(g, 10)+metaExt)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, storeError("delete", err)
		}
		n++
	}
	if err := cleanDir(dir); err != nil {
		return n, storeError("delete", err)
	}
	if err := syncDir(dir); err != nil { // a deleted overlay must not come back after a crash
		return n, storeError("fsync dir", err)
	}
	// The lock file goes last; writers waiting on it notice and lock a new one.
	os.Remove(filepath.Join(dir, lockName))
	if os.Remove(dir) == nil {
		tenantDir := filepath.Dir(dir)
		_ = syncDir(tenantDir)
		if os.Remove(tenantDir) == nil { // the tenant's directory, when it was the last workload
			_ = syncDir(s.root)
		}
	}
	return n, nil
}

// Clean removes the leftovers of crashed writers (temp files, uncommitted archives) in every
// directory of the store; overlay-store runs it at startup. Directories being written by
// another replica are waited for.
func (s *DirStore) Clean(ctx context.Context) error {
	tenants, err := subdirs(s.root)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tenants {
		tenant, _ := messages.DecodeToken(t)
		workloads, err := subdirs(filepath.Join(s.root, t))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, w := range workloads {
			workload, _ := messages.DecodeToken(w)
			dir, unlock, err := s.lock(ctx, tenant, workload, false)
			if errors.Is(err, errNoDir) {
				continue
			}
			if err != nil {
				return errors.Join(append(errs, err)...)
			}
			if err := cleanDir(dir); err != nil {
				errs = append(errs, err)
			}
			unlock()
		}
	}
	return errors.Join(errs...)
}

type sumWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (w *sumWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// verifyReader checks size and sha256 of a generation as it is read; at the end it returns
// an *Error (RuleChecksum) instead of io.EOF when they do not match the metadata.
type verifyReader struct {
	f    *os.File
	h    hash.Hash
	n    int64
	want Meta
	err  error
}

func (r *verifyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.f.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if r.n > r.want.Size {
		r.err = errorf(RuleChecksum, "", "generation %d is longer than its recorded %d bytes", r.want.Generation, r.want.Size)
		return n, r.err
	}
	if err == io.EOF {
		if sum := hex.EncodeToString(r.h.Sum(nil)); r.n != r.want.Size || sum != r.want.SHA256 {
			r.err = errorf(RuleChecksum, "", "generation %d: %d bytes with sha256 %s, recorded %d bytes with sha256 %s",
				r.want.Generation, r.n, sum, r.want.Size, r.want.SHA256)
			return n, r.err
		}
		r.err = io.EOF
	}
	return n, err
}

func (r *verifyReader) Close() error { return r.f.Close() }
