package overlay

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestRealTarRoundTrip: directories archived by the real `tar -c -f - -C <root> .` (as in
// the Pod's helper container), packed, sanitized and extracted by the real `tar -x` into
// fresh volumes, come back identical, minus what a restore never writes.
func TestRealTarRoundTrip(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Fatal("tar not found: the tests use the real tar")
	}
	src := t.TempDir()
	write := func(p, body string, mode os.FileMode) {
		t.Helper()
		full := filepath.Join(src, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("0/notes.txt", "my notes\n", 0o644)
	write("0/project/main.go", "package main\n", 0o600)
	write("0/project/bin/run", "#!/bin/sh\n", 0o4755)
	write("0/"+strings.Repeat("long-name-", 20)+"/f", "deep", 0o644)
	write("1/.bashrc", "export PS1='$ '\n", 0o644)
	write("1/big.bin", pseudoRandom(2<<20), 0o644)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("project/main.go", filepath.Join(src, "0/main-link")))
	must(os.Symlink("../notes.txt", filepath.Join(src, "0/project/notes")))
	must(os.Symlink("/data/notes.txt", filepath.Join(src, "0/project/abs"))) // made relative
	must(os.Symlink("/usr/bin/python3", filepath.Join(src, "0/python")))     // skipped
	must(os.Symlink("../../etc/passwd", filepath.Join(src, "1/passwd")))     // skipped
	must(os.Link(filepath.Join(src, "0/notes.txt"), filepath.Join(src, "0/project/notes-hard")))
	must(syscall.Mkfifo(filepath.Join(src, "0/pipe"), 0o644)) // skipped
	must(os.MkdirAll(filepath.Join(src, "1/empty"), 0o700))

	cmd := exec.Command(tarBin, "-c", "-f", "-", "-C", src, ".")
	var podStream, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &podStream, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tar -c: %v: %s", err, stderr.String())
	}
	var archive bytes.Buffer
	res, err := Pack(&archive, &podStream, twoDirs, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if res.SkippedCount != 3 {
		t.Fatalf("skipped %+v, want the fifo and the two escaping symlinks", res.Skipped)
	}

	dst := t.TempDir()
	must(os.MkdirAll(filepath.Join(dst, "0"), 0o755))
	must(os.MkdirAll(filepath.Join(dst, "1"), 0o755))
	var clean bytes.Buffer
	if _, err := Sanitize(&clean, opener(archive.Bytes(), nil), res.Info, twoDirs, Limits{}); err != nil {
		t.Fatal(err)
	}
	x := exec.Command(tarBin, "-x", "-f", "-", "-C", dst)
	x.Stdin = &clean
	if out, err := x.CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v: %s", err, out)
	}

	for _, f := range []string{"0/notes.txt", "0/project/main.go", "0/project/bin/run", "0/" + strings.Repeat("long-name-", 20) + "/f", "1/.bashrc", "1/big.bin", "0/project/notes-hard"} {
		a, err := os.ReadFile(filepath.Join(src, f))
		must(err)
		b, err := os.ReadFile(filepath.Join(dst, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: restored content differs (%v)", f, err)
		}
	}
	if st, err := os.Stat(filepath.Join(dst, "0/project/bin/run")); err != nil || st.Mode().Perm() != 0o755 || st.Mode()&os.ModeSetuid != 0 {
		t.Errorf("setuid file restored as %v (%v)", st.Mode(), err)
	}
	if st, err := os.Stat(filepath.Join(dst, "0/project/main.go")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("0600 file restored as %v", st.Mode())
	}
	a, _ := os.Stat(filepath.Join(dst, "0/notes.txt"))
	b, _ := os.Stat(filepath.Join(dst, "0/project/notes-hard"))
	if !os.SameFile(a, b) {
		t.Errorf("hard link not restored as a hard link")
	}
	if l, err := os.Readlink(filepath.Join(dst, "0/main-link")); err != nil || l != "project/main.go" {
		t.Errorf("symlink: %q %v", l, err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "0/project/abs")); err != nil || string(b) != "my notes\n" {
		t.Errorf("absolute symlink into its own dir: %q %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(dst, "1/empty")); err != nil || !st.IsDir() {
		t.Errorf("empty dir not restored: %v", err)
	}
	for _, gone := range []string{"0/pipe", "0/python", "1/passwd"} {
		if _, err := os.Lstat(filepath.Join(dst, gone)); err == nil {
			t.Errorf("%s restored", gone)
		}
	}
}
