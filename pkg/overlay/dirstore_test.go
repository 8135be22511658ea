package overlay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"boilerhouse.dev/messages"
)

func newStore(t *testing.T) *DirStore {
	t.Helper()
	s, err := NewDirStore(t.TempDir(), DirStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeBytes(b string) WriteFunc {
	return func(w io.Writer) error { _, err := io.WriteString(w, b); return err }
}

func put(t *testing.T, s Store, tenant, workload string, restoredFrom int64, body string) messages.Snapshot {
	t.Helper()
	snap, err := s.Put(context.Background(), tenant, workload, restoredFrom, false, "", writeBytes(body))
	if err != nil {
		t.Fatalf("Put(restoredFrom %d): %v", restoredFrom, err)
	}
	return snap
}

func readAll(t *testing.T, s Store, tenant, workload string, gen int64) (string, messages.Snapshot) {
	t.Helper()
	rc, snap, err := s.Open(context.Background(), tenant, workload, gen)
	if err != nil {
		t.Fatalf("Open(%d): %v", gen, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading generation %d: %v", gen, err)
	}
	return string(b), snap
}

// dirFiles lists the files of a (tenant, workload) directory.
func dirFiles(t *testing.T, s *DirStore, tenant, workload string) []string {
	t.Helper()
	ents, err := os.ReadDir(s.keyDir(tenant, workload))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func TestDirStoreLayoutAndMetadata(t *testing.T) {
	s := newStore(t)
	clock := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	snap := put(t, s, "org.acme", "my-agent", 0, "archive bytes")
	sum := sha256.Sum256([]byte("archive bytes"))
	want := messages.Snapshot{TenantID: "org.acme", Workload: "my-agent", Path: "org_2eacme/my-agent/1.tar.gz",
		Size: 13, SHA256: hex.EncodeToString(sum[:]), Generation: 1, CreatedAt: clock}
	if snap != want {
		t.Fatalf("snapshot\n got %+v\nwant %+v", snap, want)
	}
	if got := dirFiles(t, s, "org.acme", "my-agent"); strings.Join(got, ",") != ".lock,1.json,1.tar.gz" {
		t.Fatalf("files %v", got)
	}
	b, err := os.ReadFile(filepath.Join(s.Root(), "org_2eacme", "my-agent", "1.tar.gz"))
	if err != nil || string(b) != "archive bytes" {
		t.Fatalf("archive file: %q %v", b, err)
	}
	m, err := s.Meta("org.acme", "my-agent", 1)
	if err != nil || m.Size != 13 || m.SHA256 != want.SHA256 || !m.CreatedAt.Equal(clock) || m.RestoredFrom != 0 || m.Generation != 1 {
		t.Fatalf("meta %+v %v", m, err)
	}
	body, got := readAll(t, s, "org.acme", "my-agent", 0)
	if body != "archive bytes" || got != want {
		t.Fatalf("Open(latest) = %q %+v", body, got)
	}
	latest, ok, err := s.Latest(context.Background(), "org.acme", "my-agent")
	if !ok || err != nil || latest != want {
		t.Fatalf("Latest = %+v %v %v", latest, ok, err)
	}
	if _, ok, err := s.Latest(context.Background(), "org.acme", "other"); ok || err != nil {
		t.Fatalf("Latest of nothing = %v %v", ok, err)
	}
	if _, _, err := s.Open(context.Background(), "org.acme", "other", 0); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("Open of nothing: %v", err)
	}
	if _, _, err := s.Open(context.Background(), "org.acme", "my-agent", 7); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("Open of a missing generation: %v", err)
	}
}

// TestDirStoreInvariant3: a Put whose restoredFrom is not the newest generation is refused
// and writes nothing, unless forced; older versions stay.
func TestDirStoreInvariant3(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	put(t, s, "t", "w", 0, "one")
	put(t, s, "t", "w", 1, "two")

	called := false
	for _, from := range []int64{0, 1, 3} {
		_, err := s.Put(ctx, "t", "w", from, false, "", func(w io.Writer) error { called = true; return nil })
		if messages.CodeOf(err) != messages.CodeConflict {
			t.Fatalf("Put(restoredFrom %d) = %v, want conflict", from, err)
		}
	}
	if called {
		t.Fatal("the write function ran for a refused Put")
	}
	if got := dirFiles(t, s, "t", "w"); strings.Join(got, ",") != ".lock,1.json,1.tar.gz,2.json,2.tar.gz" {
		t.Fatalf("files after refusals %v", got)
	}
	// Nothing stored yet: only restoredFrom 0 passes.
	if _, err := s.Put(ctx, "t", "fresh", 2, false, "", writeBytes("x")); messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("Put on an empty key with restoredFrom 2: %v", err)
	}
	// force: a resume:false claim's state becomes a new generation, the old ones stay.
	snap, err := s.Put(ctx, "t", "w", 0, true, "", writeBytes("clean start"))
	if err != nil || snap.Generation != 3 {
		t.Fatalf("forced Put = %+v %v", snap, err)
	}
	if m, _ := s.Meta("t", "w", 3); !m.Forced {
		t.Fatalf("forced generation not marked: %+v", m)
	}
	if body, _ := readAll(t, s, "t", "w", 1); body != "one" {
		t.Fatalf("generation 1 = %q", body)
	}
	// A retried extraction of the same instance continues its own lineage...
	if _, err := s.Put(ctx, "t", "w", 3, false, "pod-a", writeBytes("four")); err != nil {
		t.Fatal(err)
	}
	if snap, err := s.Put(ctx, "t", "w", 3, false, "pod-a", writeBytes("four again")); err != nil || snap.Generation != 5 {
		t.Fatalf("retry from the same instance: %+v %v", snap, err)
	}
	// ...but another instance restored from 3 cannot.
	if _, err := s.Put(ctx, "t", "w", 3, false, "pod-b", writeBytes("stale")); messages.CodeOf(err) != messages.CodeConflict {
		t.Fatalf("stale instance: %v", err)
	}
}

// TestDirStoreCrashMidWrite: a write that fails part way commits nothing; the previous
// generation is intact and readable; the next Put cleans up and takes the next number.
func TestDirStoreCrashMidWrite(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	put(t, s, "t", "w", 0, "good data")
	boom := errors.New("pod went away mid-stream")
	_, err := s.Put(ctx, "t", "w", 1, false, "", func(w io.Writer) error {
		if _, err := io.WriteString(w, strings.Repeat("partial", 100000)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Put = %v", err)
	}
	if body, snap := readAll(t, s, "t", "w", 0); body != "good data" || snap.Generation != 1 {
		t.Fatalf("after a failed Put: %q gen %d", body, snap.Generation)
	}
	if got := dirFiles(t, s, "t", "w"); strings.Join(got, ",") != ".lock,1.json,1.tar.gz" {
		t.Fatalf("files after a failed Put %v", got)
	}

	// A crash (process killed): a temp file, and an archive linked but never committed.
	dir := s.keyDir("t", "w")
	os.WriteFile(filepath.Join(dir, ".tmp-2-123.tar.gz"), []byte("half"), 0o600)
	os.WriteFile(filepath.Join(dir, ".tmp-2-456.json"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(dir, "2.tar.gz"), []byte("uncommitted"), 0o600)
	if body, snap := readAll(t, s, "t", "w", 0); body != "good data" || snap.Generation != 1 {
		t.Fatalf("after a crash: %q gen %d", body, snap.Generation)
	}
	if list, _ := s.List(ctx, "t", "w"); len(list) != 1 {
		t.Fatalf("List after a crash: %+v", list)
	}
	// A fresh store (restart) cleans up at startup.
	s2, _ := NewDirStore(s.Root(), DirStoreOptions{})
	if err := s2.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	if got := dirFiles(t, s, "t", "w"); strings.Join(got, ",") != ".lock,1.json,1.tar.gz" {
		t.Fatalf("files after Clean %v", got)
	}
	os.WriteFile(filepath.Join(dir, "2.tar.gz"), []byte("uncommitted"), 0o600)
	snap := put(t, s, "t", "w", 1, "second")
	if body, _ := readAll(t, s, "t", "w", 2); snap.Generation != 2 || body != "second" {
		t.Fatalf("Put after a crash: gen %d %q", snap.Generation, body)
	}

	// A cancelled context commits nothing either.
	cctx, cancel := context.WithCancel(ctx)
	_, err = s.Put(cctx, "t", "w", 2, false, "", func(w io.Writer) error { cancel(); _, err := io.WriteString(w, "x"); return err })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Put = %v", err)
	}
	if _, snap := readAll(t, s, "t", "w", 0); snap.Generation != 2 {
		t.Fatalf("cancelled Put committed generation %d", snap.Generation)
	}
}

func TestDirStoreKeepsThree(t *testing.T) {
	s := newStore(t)
	for g := int64(0); g < 6; g++ {
		put(t, s, "t", "w", g, fmt.Sprintf("gen %d", g+1))
	}
	if got := dirFiles(t, s, "t", "w"); strings.Join(got, ",") != ".lock,4.json,4.tar.gz,5.json,5.tar.gz,6.json,6.tar.gz" {
		t.Fatalf("files %v", got)
	}
	list, err := s.List(context.Background(), "t", "w")
	if err != nil || len(list) != 3 || list[0].Generation != 6 || list[2].Generation != 4 {
		t.Fatalf("List = %+v %v", list, err)
	}
	if body, _ := readAll(t, s, "t", "w", 4); body != "gen 4" {
		t.Fatalf("gen 4 = %q", body)
	}
	if _, _, err := s.Open(context.Background(), "t", "w", 3); messages.CodeOf(err) != messages.CodeNotFound {
		t.Fatalf("pruned generation: %v", err)
	}
}

// TestDirStoreConcurrentPuts: Puts for one key serialise (also across two stores sharing the
// directory, as two replicas would): each sees the previous one's generation, generations stay
// dense, and exactly one Put per generation number wins.
func TestDirStoreConcurrentPuts(t *testing.T) {
	root := t.TempDir()
	a, _ := NewDirStore(root, DirStoreOptions{Keep: 100})
	b, _ := NewDirStore(root, DirStoreOptions{Keep: 100})
	ctx := context.Background()

	// Forced writers (no lineage check): all succeed, one generation each.
	var wg sync.WaitGroup
	var mu sync.Mutex
	gens := map[int64]string{}
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			body := fmt.Sprintf("writer %d", i)
			snap, err := s.Put(ctx, "t", "w", 0, true, "", func(w io.Writer) error {
				time.Sleep(time.Millisecond) // hold the lock a little
				_, err := io.WriteString(w, body)
				return err
			})
			if err != nil {
				t.Errorf("writer %d: %v", i, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if prev, dup := gens[snap.Generation]; dup {
				t.Errorf("generation %d committed twice (%s, %s)", snap.Generation, prev, body)
			}
			gens[snap.Generation] = body
		}()
	}
	wg.Wait()
	for g := int64(1); g <= 20; g++ {
		body, ok := gens[g]
		if !ok {
			t.Fatalf("generation %d missing: %v", g, gens)
		}
		if got, _ := readAll(t, a, "t", "w", g); got != body {
			t.Fatalf("generation %d holds %q, its writer wrote %q", g, got, body)
		}
	}

	// Writers that all restored from the same generation: exactly one wins.
	wins := 0
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			_, err := s.Put(ctx, "t", "w", 20, false, "", writeBytes("from 20"))
			mu.Lock()
			defer mu.Unlock()
			switch messages.CodeOf(err) {
			case "":
				wins++
			case messages.CodeConflict:
			default:
				t.Errorf("Put: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d writers restored from generation 20 committed, want exactly 1", wins)
	}
}

// TestDirStoreTamper: a changed archive fails its checksum at the end of the read.
func TestDirStoreTamper(t *testing.T) {
	s := newStore(t)
	put(t, s, "t", "w", 0, "original content")
	path := filepath.Join(s.keyDir("t", "w"), "1.tar.gz")
	if err := os.WriteFile(path, []byte("Original content"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc, _, err := s.Open(context.Background(), "t", "w", 1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	rc.Close()
	if RuleOf(err) != RuleChecksum {
		t.Fatalf("tampered read: %v", err)
	}
	// A different length is caught at Open.
	os.WriteFile(path, []byte("short"), 0o600)
	if _, _, err := s.Open(context.Background(), "t", "w", 1); RuleOf(err) != RuleChecksum {
		t.Fatalf("truncated archive: %v", err)
	}
	// And the codec's restore pass refuses it before writing anything.
	s2 := newStore(t)
	var archive bytes.Buffer
	res, err := Pack(&archive, bytes.NewReader(mkTar(t, dir("./0/"), file("./0/f", "data"))), []string{"/data"}, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Put(context.Background(), "t", "w", 0, false, "", writeBytes(archive.String())); err != nil {
		t.Fatal(err)
	}
	p2 := filepath.Join(s2.keyDir("t", "w"), "1.tar.gz")
	raw, _ := os.ReadFile(p2)
	raw[len(raw)-9] ^= 0xff // inside the gzip trailer: still a readable file
	os.WriteFile(p2, raw, 0o600)
	var out bytes.Buffer
	open := func() (io.ReadCloser, error) {
		rc, _, err := s2.Open(context.Background(), "t", "w", 1)
		return rc, err
	}
	if _, err := Sanitize(&out, open, res.Info, []string{"/data"}, Limits{}); err == nil || out.Len() != 0 {
		t.Fatalf("Sanitize of a tampered archive: %v, %d bytes out", err, out.Len())
	}
}

func TestDirStoreListAndDelete(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	clock := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { clock = clock.Add(time.Minute); return clock }
	put(t, s, "org.acme", "agent", 0, "a1")
	put(t, s, "bob", "agent", 0, "b1")
	put(t, s, "org.acme", "agent", 1, "a2")
	put(t, s, "org.acme", "other", 0, "o1")
	os.MkdirAll(filepath.Join(s.Root(), "not.a.token", "x"), 0o755) // ignored

	all, err := s.List(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sn := range all {
		got = append(got, fmt.Sprintf("%s/%s/%d", sn.TenantID, sn.Workload, sn.Generation))
	}
	if strings.Join(got, " ") != "org.acme/other/1 org.acme/agent/2 bob/agent/1 org.acme/agent/1" {
		t.Fatalf("List all = %v", got)
	}
	for _, tc := range []struct {
		tenant, workload string
		n                int
	}{{"org.acme", "", 3}, {"", "agent", 3}, {"bob", "agent", 1}, {"nobody", "", 0}, {"", "nothing", 0}} {
		l, err := s.List(ctx, tc.tenant, tc.workload)
		if err != nil || len(l) != tc.n {
			t.Errorf("List(%q, %q) = %d snapshots, %v; want %d", tc.tenant, tc.workload, len(l), err, tc.n)
		}
	}

	n, err := s.Delete(ctx, "org.acme", "agent")
	if err != nil || n != 2 {
		t.Fatalf("Delete = %d, %v", n, err)
	}
	if _, err := os.Stat(s.keyDir("org.acme", "agent")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory left after Delete: %v", err)
	}
	if n, err := s.Delete(ctx, "org.acme", "agent"); n != 0 || err != nil {
		t.Fatalf("second Delete = %d, %v", n, err)
	}
	if l, _ := s.List(ctx, "org.acme", ""); len(l) != 1 {
		t.Fatalf("after Delete: %+v", l)
	}
	// After a delete the key starts again from nothing.
	if snap := put(t, s, "org.acme", "agent", 0, "again"); snap.Generation != 1 {
		t.Fatalf("Put after Delete: generation %d", snap.Generation)
	}
	// Delete racing Puts never loses the lock.
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(2)
		go func() { defer wg.Done(); s.Put(ctx, "r", "w", 0, true, "", writeBytes("x")) }()
		go func() { defer wg.Done(); s.Delete(ctx, "r", "w") }()
	}
	wg.Wait()
	if _, err := s.Put(ctx, "r", "w", 0, true, "", writeBytes("last")); err != nil {
		t.Fatal(err)
	}
	if body, _ := readAll(t, s, "r", "w", 0); body != "last" {
		t.Fatalf("after the race: %q", body)
	}
	if _, err := s.Put(ctx, "", "w", 0, true, "", writeBytes("x")); messages.CodeOf(err) != messages.CodeInvalidArgument {
		t.Fatalf("empty tenant: %v", err)
	}
}
