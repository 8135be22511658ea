package overlay

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ent describes a tar entry to build in memory.
type ent struct {
	name string
	typ  byte // 0: regular file
	body string
	link string
	mode int64
	// size overrides len(body) when non-zero (a header lying about its size is corrupt).
	size int64
	pax  map[string]string
}

func file(name, body string) ent { return ent{name: name, typ: tar.TypeReg, body: body, mode: 0o644} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeLink, link: target, mode: 0o644}
}
func special(name string, typ byte) ent        { return ent{name: name, typ: typ, mode: 0o644} }
func withMode(e ent, mode int64) ent           { e.mode = mode; return e }
func withPAX(e ent, pax map[string]string) ent { e.pax = pax; return e }

var epoch = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// mkTar builds a tar stream. Names are written as given (PAX when needed).
func mkTar(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	lying := false
	for _, e := range ents {
		lying = lying || e.size != 0
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.link, Mode: e.mode, ModTime: epoch,
			Uid: 1000, Gid: 1000, Uname: "agent", Gname: "agent", PAXRecords: e.pax}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
			if e.size != 0 {
				h.Size = e.size
			}
		}
		if typ == tar.TypeXGlobalHeader {
			h = &tar.Header{Typeflag: typ, Name: e.name, PAXRecords: map[string]string{"path": "x"}}
		}
		if len(e.pax) > 0 || typ == tar.TypeXGlobalHeader {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("header %q: %v", e.name, err)
		}
		if typ == tar.TypeReg && e.body != "" {
			if _, err := io.WriteString(tw, e.body); err != nil && e.size == 0 {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil && !lying {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func stored(t testing.TB, ents ...ent) []byte { return gz(t, mkTar(t, ents...)) }

// opener serves b as the stored archive, counting opens.
func opener(b []byte, opens *int) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		if opens != nil {
			*opens++
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

// readTar lists a plain tar stream.
type tarEntry struct {
	hdr  *tar.Header
	body string
}

func readTar(t testing.TB, b []byte) []tarEntry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []tarEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{h, string(body)})
	}
}

func gunzip(t testing.TB, b []byte) []byte {
	t.Helper()
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func names(es []tarEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.hdr.Name)
	}
	return out
}

// extractGo extracts a clean stream the way a naive `tar -x -C root` would: following any
// symlink in the way. It fails the test when a write would land outside root/<i> for the
// volume i of the entry, and returns an error for operations the filesystem refuses.
func extractGo(t testing.TB, stream []byte, root string) error {
	t.Helper()
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	inside := func(p string, vol string) bool {
		base := filepath.Join(realRoot, vol)
		return p == base || strings.HasPrefix(p, base+string(filepath.Separator))
	}
	// resolve returns where p really is: its existing prefix resolved, the rest appended.
	resolve := func(p string) string {
		rest := ""
		for hops := 0; hops < 64; hops++ {
			if r, err := filepath.EvalSymlinks(p); err == nil {
				return filepath.Join(r, rest)
			}
			if _, err := os.Lstat(p); err == nil {
				// a dangling symlink: where it points is where a write through it would go
				target, _ := os.Readlink(p)
				if filepath.IsAbs(target) {
					return filepath.Join(target, rest)
				}
				p = filepath.Join(filepath.Dir(p), target)
				continue
			}
			rest = filepath.Join(filepath.Base(p), rest)
			p = filepath.Dir(p)
		}
		return filepath.Join(p, rest) // a symlink loop: nothing can be written through it
	}
	tr := tar.NewReader(bytes.NewReader(stream))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			t.Fatalf("clean stream unreadable: %v", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		vol, _, _ := strings.Cut(name, "/")
		p := root + "/" + name
		if r := resolve(p); !inside(r, vol) {
			t.Fatalf("entry %q (%c) would be written at %s, outside %s", h.Name, h.Typeflag, r, filepath.Join(realRoot, vol))
		}
		if h.Mode&^0o777 != 0 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Fatalf("entry %q: mode %o uid %d gid %d uname %q gname %q", h.Name, h.Mode, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			f.Close()
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
			if r := resolve(p); !inside(r, vol) {
				t.Fatalf("symlink %q -> %q resolves to %s, outside %s", h.Name, h.Linkname, r, filepath.Join(realRoot, vol))
			}
		case tar.TypeLink:
			target := root + "/" + h.Linkname
			if r := resolve(target); !inside(r, vol) {
				t.Fatalf("hard link %q -> %q targets %s, outside the volume", h.Name, h.Linkname, r)
			}
			if err := os.Link(target, p); err != nil {
				return err
			}
		default:
			t.Fatalf("entry %q has type %q in a clean stream", h.Name, h.Typeflag)
		}
	}
}

// checkOnly asserts that base holds nothing but root (and what is inside it).
func checkOnly(t testing.TB, base, root string) {
	t.Helper()
	ents, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if filepath.Join(base, e.Name()) != root {
			t.Fatalf("%s appeared outside the extraction root", filepath.Join(base, e.Name()))
		}
	}
}

// patchName overwrites the name field of the first header of a USTAR stream (a name the Go
// writer would refuse) and fixes the header checksum.
func patchName(b []byte, name string) []byte {
	b = append([]byte(nil), b...)
	for i := range 100 {
		b[i] = 0
	}
	copy(b[:100], name)
	for i := 148; i < 156; i++ {
		b[i] = ' '
	}
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], []byte(fmt.Sprintf("%06o\x00 ", sum)))
	return b
}

func newGzip(w io.Writer) *gzip.Writer { return gzip.NewWriter(w) }
