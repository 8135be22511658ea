package overlay

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// randomArchive builds a stored archive from a small alphabet of names and link targets,
// mixing legitimate entries with every trick the validator must catch.
func randomArchive(r *rand.Rand) []byte {
	rare := func(p int) bool { return r.Intn(100) < p }
	pick := func(common, hostile []string, p int) string {
		if rare(p) {
			return hostile[r.Intn(len(hostile))]
		}
		return common[r.Intn(len(common))]
	}
	prefixes := []string{"data", "data", "home/agent"}
	badPrefixes := []string{"home", "", "/data", "etc", "data/..", "database"}
	comps := []string{"a", "b", "c", "d e"}
	badComps := []string{"..", ".", ""}
	targets := []string{".", "a", "b/c", "../a", "./a", "c", "a/b", "x/./y", "..", "../.."}
	badTargets := []string{"/etc", "/data/a", "a/../..", "a/..", "../../..", "../home", "..//..", "", "../../../x"}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var names []string
	n := 1 + r.Intn(14)
	for i := 0; i < n; i++ {
		name := pick(prefixes, badPrefixes, 3)
		for d := r.Intn(4); d >= 0; d-- {
			name += "/" + pick(comps, badComps, 2)
		}
		name = strings.TrimPrefix(name, "/")
		if rare(2) {
			name = "/" + name
		}
		h := &tar.Header{Name: name, Mode: int64(r.Intn(0o10000)), ModTime: epoch, Uid: r.Intn(2000)}
		body := ""
		switch k := r.Intn(100); {
		case k < 35:
			h.Typeflag = tar.TypeReg
			body = "content of " + name
		case k < 60:
			h.Typeflag = tar.TypeDir
			h.Name = strings.TrimSuffix(name, "/") + "/"
		case k < 85:
			h.Typeflag = tar.TypeSymlink
			h.Linkname = pick(targets, badTargets, 15)
		case k < 97:
			h.Typeflag = tar.TypeLink
			if len(names) > 0 && !rare(10) {
				h.Linkname = names[r.Intn(len(names))]
			} else {
				h.Linkname = pick(prefixes, badPrefixes, 50) + "/a"
			}
		default:
			h.Typeflag = []byte{tar.TypeFifo, tar.TypeChar, tar.TypeBlock}[r.Intn(3)]
		}
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			continue // a name the writer refuses: skip it
		}
		tw.Write([]byte(body))
		names = append(names, strings.TrimSuffix(h.Name, "/"))
	}
	tw.Close()
	var out bytes.Buffer
	gzw := newGzip(&out)
	gzw.Write(buf.Bytes())
	gzw.Close()
	return out.Bytes()
}

// TestSanitizeNeverEscapes: whatever Sanitize lets through, extracted by a naive extractor
// that follows every symlink, never writes outside the volume of each entry, and leaves no
// symlink that resolves outside it.
func TestSanitizeNeverEscapes(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	iterations := 2000
	if testing.Short() {
		iterations = 500
	}
	accepted, rejected := 0, map[Rule]int{}
	for i := 0; i < iterations; i++ {
		archive := randomArchive(r)
		var out bytes.Buffer
		_, err := Sanitize(&out, opener(archive, nil), Info{Size: int64(len(archive))}, twoDirs, Limits{})
		if err != nil {
			if out.Len() != 0 {
				t.Fatalf("archive %d: rejected (%v) after writing %d bytes", i, err, out.Len())
			}
			rejected[RuleOf(err)]++
			continue
		}
		accepted++
		checkExtraction(t, out.Bytes(), func(root string) error { return extractGo(t, out.Bytes(), root) })
	}
	t.Logf("%d accepted, rejected by rule: %v", accepted, rejected)
	if accepted < iterations/20 {
		t.Fatalf("only %d of %d random archives accepted: the generator does not exercise the emitter", accepted, iterations)
	}
}

// TestSanitizeNeverEscapesGNUTar: the same with the real tar -x (GNU tar here; busybox in the
// Pods), which unlinks and re-creates as it goes.
func TestSanitizeNeverEscapesGNUTar(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Fatal("tar not found: the tests use the real tar")
	}
	r := rand.New(rand.NewSource(2))
	runs := 0
	for i := 0; i < 3000 && runs < 150; i++ {
		archive := randomArchive(r)
		var out bytes.Buffer
		if _, err := Sanitize(&out, opener(archive, nil), Info{Size: int64(len(archive))}, twoDirs, Limits{}); err != nil {
			continue
		}
		runs++
		checkExtraction(t, out.Bytes(), func(root string) error {
			cmd := exec.Command(tarBin, "-x", "-f", "-", "-C", root)
			cmd.Stdin = bytes.NewReader(out.Bytes())
			_, err := cmd.CombinedOutput()
			return err
		})
	}
	if runs < 50 {
		t.Fatalf("only %d archives extracted", runs)
	}
}

// checkExtraction extracts a clean stream into base/root (volumes root/0 and root/1) and
// checks that nothing appeared beside root and no symlink resolves out of its volume.
func checkExtraction(t *testing.T, stream []byte, extract func(root string) error) {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	for _, v := range []string{"0", "1"} {
		if err := os.MkdirAll(filepath.Join(root, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_ = extract(root) // refusals by the filesystem are fine; escapes are not
	checkOnly(t, base, root)
	realRoot, _ := filepath.EvalSymlinks(root)
	for _, v := range []string{"0", "1"} {
		vol := filepath.Join(realRoot, v)
		filepath.WalkDir(vol, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Type()&fs.ModeSymlink == 0 {
				return nil
			}
			target, _ := os.Readlink(p)
			if filepath.IsAbs(target) {
				t.Fatalf("absolute symlink %s -> %s extracted\n%q", p, target, readTarPrefix(stream))
			}
			lexical := filepath.Join(filepath.Dir(p), target)
			if lexical != vol && !strings.HasPrefix(lexical, vol+"/") {
				t.Fatalf("symlink %s -> %s points out of %s\n%q", p, target, vol, readTarPrefix(stream))
			}
			if res, err := filepath.EvalSymlinks(p); err == nil && res != vol && !strings.HasPrefix(res, vol+"/") {
				t.Fatalf("symlink %s -> %s resolves to %s, out of %s\n%q", p, target, res, vol, readTarPrefix(stream))
			}
			return nil
		})
	}
}

// FuzzSanitize: the property above for any input bytes (go test -fuzz=FuzzSanitize).
func FuzzSanitize(f *testing.F) {
	r := rand.New(rand.NewSource(3))
	for i := 0; i < 20; i++ {
		f.Add(randomArchive(r))
	}
	f.Fuzz(func(t *testing.T, archive []byte) {
		var out bytes.Buffer
		_, err := Sanitize(&out, opener(archive, nil), Info{Size: int64(len(archive))}, twoDirs, Limits{MaxTotalBytes: 1 << 20})
		if err != nil {
			if out.Len() != 0 {
				t.Fatalf("rejected (%v) after writing", err)
			}
			return
		}
		checkExtraction(t, out.Bytes(), func(root string) error { return extractGo(t, out.Bytes(), root) })
	})
}
