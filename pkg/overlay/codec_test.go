package overlay

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

var twoDirs = []string{"/data", "/home/agent"}

// TestHostileArchivesRejected: every kind of hostile entry is refused with an *Error naming
// the entry and the rule, and Sanitize writes nothing at all.
func TestHostileArchivesRejected(t *testing.T) {
	long := strings.Repeat("x", 256)
	tests := []struct {
		name  string
		dirs  []string
		lim   Limits
		ents  []ent
		raw   []byte // a stored archive built by hand, instead of ents
		rule  Rule
		entry string // the entry the error must name ("" : archive-level)
	}{
		{name: "absolute path", ents: []ent{dir("data/"), file("/etc/passwd", "root::0:0")}, rule: RuleAbsolutePath, entry: "/etc/passwd"},
		{name: "absolute path inside a dir", ents: []ent{file("/data/x", "x")}, rule: RuleAbsolutePath, entry: "/data/x"},
		{name: "dot-dot escaping", ents: []ent{file("data/../etc/passwd", "x")}, rule: RuleDotDot, entry: "data/../etc/passwd"},
		{name: "dot-dot first", ents: []ent{file("../../etc/cron.d/x", "x")}, rule: RuleDotDot, entry: "../../etc/cron.d/x"},
		{name: "dot-dot staying inside", ents: []ent{file("data/a/../b", "x")}, rule: RuleDotDot, entry: "data/a/../b"},
		{name: "outside every dir", ents: []ent{file("etc/passwd", "x")}, rule: RuleOutsideDirs, entry: "etc/passwd"},
		{name: "sibling with a common prefix", ents: []ent{file("database/x", "x")}, rule: RuleOutsideDirs, entry: "database/x"},
		{name: "parent of a dir", ents: []ent{dir("home/")}, rule: RuleOutsideDirs, entry: "home/"},
		{name: "empty component", ents: []ent{file("data//x", "x")}, rule: RuleBadName, entry: "data//x"},
		{name: "dot component", ents: []ent{file("data/./x", "x")}, rule: RuleBadName, entry: "data/./x"},
		{name: "leading dot-slash", ents: []ent{file("./data/x", "x")}, rule: RuleBadName, entry: "./data/x"},
		{name: "file with a trailing slash", raw: gz(t, patchName(mkTar(t, file("data/x_", "x")), "data/x/")), rule: RuleBadName, entry: "data/x/"},
		{name: "component too long", ents: []ent{file("data/"+long, "x")}, rule: RuleNameTooLong, entry: "data/" + long},
		{name: "name too long", ents: []ent{file("data/"+strings.Repeat("abcdefgh/", 460)+"x", "x")}, rule: RuleNameTooLong},

		{name: "symlink to an absolute path", ents: []ent{symlink("data/etc", "/etc")}, rule: RuleSymlinkEscape, entry: "data/etc"},
		{name: "symlink climbing out", ents: []ent{symlink("data/up", "..")}, rule: RuleSymlinkEscape, entry: "data/up"},
		{name: "symlink climbing out from depth", ents: []ent{dir("data/a/"), symlink("data/a/up", "../../etc")}, rule: RuleSymlinkEscape, entry: "data/a/up"},
		{name: "symlink dot-dot after a name", ents: []ent{symlink("data/l", "a/../../x")}, rule: RuleSymlinkEscape, entry: "data/l"},
		// u resolves to data itself, so z really is data/../.. though it looks like data/p.
		{name: "symlink chain through another link", ents: []ent{
			dir("data/p/q/"), symlink("data/p/q/u", "../.."), symlink("data/p/q/z", "u/../.."),
		}, rule: RuleSymlinkEscape, entry: "data/p/q/z"},
		{name: "symlink from a nested dir into its parent dir", dirs: []string{"/home", "/home/agent"},
			ents: []ent{symlink("home/agent/l", "../x")}, rule: RuleSymlinkEscape, entry: "home/agent/l"},
		{name: "symlink with an empty target", ents: []ent{symlink("data/l", "")}, rule: RuleSymlinkEscape, entry: "data/l"},
		{name: "write through a symlink", ents: []ent{symlink("data/l", "sub"), file("data/l/x", "x")}, rule: RuleThroughSymlink, entry: "data/l/x"},
		{name: "write through a symlink to the dir itself", ents: []ent{symlink("data/l", "."), dir("data/l/d/")}, rule: RuleThroughSymlink, entry: "data/l/d/"},

		{name: "hard link to an absolute path", ents: []ent{hardlink("data/h", "/etc/shadow")}, rule: RuleHardlinkEscape, entry: "data/h"},
		{name: "hard link with dot-dot", ents: []ent{hardlink("data/h", "data/../etc/shadow")}, rule: RuleHardlinkEscape, entry: "data/h"},
		{name: "hard link outside every dir", ents: []ent{hardlink("data/h", "etc/shadow")}, rule: RuleHardlinkEscape, entry: "data/h"},
		{name: "hard link into another overlay dir", ents: []ent{file("home/agent/f", "x"), hardlink("data/h", "home/agent/f")}, rule: RuleHardlinkEscape, entry: "data/h"},
		{name: "hard link to nothing", ents: []ent{hardlink("data/h", "data/missing")}, rule: RuleHardlinkMissing, entry: "data/h"},
		{name: "hard link to a later entry", ents: []ent{hardlink("data/h", "data/f"), file("data/f", "x")}, rule: RuleHardlinkMissing, entry: "data/h"},
		{name: "hard link to a dir", ents: []ent{dir("data/d/"), hardlink("data/h", "data/d")}, rule: RuleHardlinkMissing, entry: "data/h"},
		{name: "hard link to a symlink", ents: []ent{symlink("data/s", "f"), hardlink("data/h", "data/s")}, rule: RuleHardlinkMissing, entry: "data/h"},

		{name: "char device", ents: []ent{special("data/mem", tar.TypeChar)}, rule: RuleDevice, entry: "data/mem"},
		{name: "block device", ents: []ent{special("data/sda", tar.TypeBlock)}, rule: RuleDevice, entry: "data/sda"},
		{name: "fifo", ents: []ent{special("data/pipe", tar.TypeFifo)}, rule: RuleFifo, entry: "data/pipe"},
		{name: "socket", ents: []ent{withMode(file("data/sock", ""), 0o140755)}, rule: RuleSocket, entry: "data/sock"},
		{name: "global PAX header", ents: []ent{special("pax_global_header", tar.TypeXGlobalHeader)}, rule: RuleUnsupportedType},

		{name: "overlay dir as a file", ents: []ent{file("data", "x")}, rule: RuleOverlayRoot, entry: "data"},
		{name: "overlay dir as a symlink", ents: []ent{symlink("data", "x")}, rule: RuleOverlayRoot, entry: "data"},
		{name: "duplicate file", ents: []ent{file("data/f", "a"), file("data/f", "b")}, rule: RuleDuplicate, entry: "data/f"},
		{name: "symlink replacing a file", ents: []ent{file("data/f", "a"), symlink("data/f", "g")}, rule: RuleDuplicate, entry: "data/f"},
		{name: "symlink replacing a dir in use", ents: []ent{file("data/a/x", "a"), symlink("data/a", "b")}, rule: RuleParentNotDir, entry: "data/a"},
		{name: "entry below a file", ents: []ent{file("data/f", "a"), file("data/f/x", "b")}, rule: RuleParentNotDir, entry: "data/f/x"},

		{name: "too many entries", lim: Limits{MaxEntries: 3}, ents: []ent{dir("data/"), file("data/a", ""), file("data/b", ""), file("data/c", "")}, rule: RuleTooManyEntries, entry: "data/c"},
		{name: "file too large", lim: Limits{MaxFileBytes: 10}, ents: []ent{file("data/big", strings.Repeat("x", 11))}, rule: RuleFileTooLarge, entry: "data/big"},
		{name: "total too large", lim: Limits{MaxTotalBytes: 15}, ents: []ent{file("data/a", strings.Repeat("x", 10)), file("data/b", strings.Repeat("x", 10))}, rule: RuleTotalTooLarge, entry: "data/b"},
		{name: "compression bomb", lim: Limits{MaxRatio: 10, RatioFloor: 1 << 20}, ents: []ent{file("data/zeros", strings.Repeat("\x00", 4<<20))}, rule: RuleRatio},
		{name: "header bomb", ents: []ent{
			withPAX(file("data/a", "x"), map[string]string{"BH.junk": strings.Repeat("j", 900<<10)}),
			withPAX(file("data/b", "x"), map[string]string{"BH.junk": strings.Repeat("j", 900<<10)}),
			withPAX(file("data/c", "x"), map[string]string{"BH.junk": strings.Repeat("j", 900<<10)}),
		}, rule: RuleRatio},
		{name: "archive too large", lim: Limits{MaxArchiveBytes: 100}, ents: []ent{file("data/r", pseudoRandom(1000))}, rule: RuleArchiveTooLarge},

		{name: "not gzip", raw: []byte("PK\x03\x04 definitely not a tar.gz"), rule: RuleCorrupt},
		{name: "truncated gzip", raw: truncate(stored(t, file("data/a", pseudoRandom(5000))), 300), rule: RuleCorrupt},
		{name: "truncated tar", raw: gz(t, truncate(mkTar(t, file("data/a", pseudoRandom(5000))), 1024)), rule: RuleCorrupt},
		{name: "size field lies", raw: gz(t, mkTar(t, ent{name: "data/a", typ: tar.TypeReg, body: "abc", size: 1 << 20, mode: 0o644})), rule: RuleCorrupt},
		{name: "garbage after the gzip stream", raw: append(stored(t, file("data/a", "x")), "trailing garbage"...), rule: RuleCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dirs := tt.dirs
			if dirs == nil {
				dirs = twoDirs
			}
			archive := tt.raw
			if archive == nil {
				archive = stored(t, tt.ents...)
			}
			check := func(what string, err error) {
				t.Helper()
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("%s: error %v (%T), want an *Error with rule %s", what, err, err, tt.rule)
				}
				if e.Rule != tt.rule {
					t.Fatalf("%s: rule %s (%v), want %s", what, e.Rule, err, tt.rule)
				}
				if tt.entry != "" && e.Entry != tt.entry {
					t.Fatalf("%s: entry %q, want %q (%v)", what, e.Entry, tt.entry, err)
				}
				if !errors.Is(err, &Error{Rule: tt.rule}) {
					t.Fatalf("%s: errors.Is does not match the rule", what)
				}
			}
			_, err := Validate(bytes.NewReader(archive), int64(len(archive)), dirs, tt.lim)
			check("Validate", err)

			var out bytes.Buffer
			opens := 0
			_, err = Sanitize(&out, opener(archive, &opens), Info{Size: int64(len(archive))}, dirs, tt.lim)
			check("Sanitize", err)
			if out.Len() != 0 {
				t.Fatalf("Sanitize wrote %d bytes of a hostile archive", out.Len())
			}
			if opens != 1 {
				t.Fatalf("Sanitize opened the archive %d times, want only the validating pass", opens)
			}
		})
	}
}

func pseudoRandom(n int) string {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return string(b)
}

func truncate(b []byte, n int) []byte { return append([]byte(nil), b[:n]...) }

// TestSanitizeCleanStream: a legitimate archive comes out with volume names, permission bits
// only, no owner, no overlay roots, and links rewritten.
func TestSanitizeCleanStream(t *testing.T) {
	long := "data/" + strings.Repeat("d", 120) + "/" + strings.Repeat("f", 200)
	archive := stored(t,
		dir("data/"),
		dir("data/a/"),
		file("data/a/notes.txt", "hello"),
		withMode(file("data/a/setuid", "#!/bin/sh"), 0o4755),
		withMode(dir("data/sticky/"), 0o1555),
		symlink("data/a/up", "../b"),
		symlink("data/a/self", "."),
		symlink("data/deep", "a/notes.txt"),
		hardlink("data/a/hard", "data/a/notes.txt"),
		file(long, "long name"),
		dir("home/agent/"),
		file("home/agent/.bashrc", "export X=1"),
		file("home/agent/x y/ünï", "utf8"),
	)
	sum := sha256.Sum256(archive)
	want := Info{Size: int64(len(archive)), SHA256: hex.EncodeToString(sum[:])}
	var out bytes.Buffer
	info, err := Sanitize(&out, opener(archive, nil), want, twoDirs, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if info.SHA256 != want.SHA256 || info.Size != want.Size || info.Entries != 13 || info.Bytes != int64(5+9+9+10+4) {
		t.Fatalf("info = %+v", info)
	}
	got := readTar(t, out.Bytes())
	wantNames := []string{"0/a/", "0/a/notes.txt", "0/a/setuid", "0/sticky/", "0/a/up", "0/a/self", "0/deep", "0/a/hard",
		"0/" + long[len("data/"):], "1/.bashrc", "1/x y/ünï"}
	if strings.Join(names(got), "|") != strings.Join(wantNames, "|") {
		t.Fatalf("names:\n got %q\nwant %q", names(got), wantNames)
	}
	byName := map[string]tarEntry{}
	for _, e := range got {
		byName[e.hdr.Name] = e
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || e.hdr.Uname != "" || e.hdr.Gname != "" || len(e.hdr.PAXRecords) > 0 && e.hdr.PAXRecords["path"] == "" {
			t.Errorf("%s: owner or extra records left: %+v", e.hdr.Name, e.hdr)
		}
	}
	if m := byName["0/a/setuid"].hdr.Mode; m != 0o755 {
		t.Errorf("setuid file mode %o, want 0755", m)
	}
	if m := byName["0/sticky/"].hdr.Mode; m != 0o755 {
		t.Errorf("sticky read-only dir mode %o, want 0755 (no sticky bit, owner can fill it)", m)
	}
	if h := byName["0/a/hard"].hdr; h.Typeflag != tar.TypeLink || h.Linkname != "0/a/notes.txt" {
		t.Errorf("hard link %+v", h)
	}
	if h := byName["0/a/up"].hdr; h.Typeflag != tar.TypeSymlink || h.Linkname != "../b" {
		t.Errorf("symlink %+v", h)
	}
	if byName["0/a/notes.txt"].body != "hello" || byName["1/x y/ünï"].body != "utf8" {
		t.Errorf("bodies wrong")
	}

	// A checksum mismatch is caught before anything is written.
	out.Reset()
	bad := want
	bad.SHA256 = strings.Repeat("0", 64)
	if _, err := Sanitize(&out, opener(archive, nil), bad, twoDirs, Limits{}); RuleOf(err) != RuleChecksum || out.Len() != 0 {
		t.Fatalf("checksum mismatch: err %v, %d bytes written", err, out.Len())
	}
	// So is an archive for other overlay dirs.
	if _, err := Sanitize(&out, opener(archive, nil), want, []string{"/data"}, Limits{}); RuleOf(err) != RuleOutsideDirs || out.Len() != 0 {
		t.Fatalf("undeclared dir: err %v, %d bytes written", err, out.Len())
	}
}

// TestSanitizeSecondPassRevalidates: an archive swapped for a hostile one between the two
// passes still gets nothing hostile through.
func TestSanitizeSecondPassRevalidates(t *testing.T) {
	good := stored(t, file("data/a", "a"))
	evil := stored(t, file("data/b", "b"), file("/etc/passwd", "x"))
	n := 0
	open := func() (io.ReadCloser, error) {
		n++
		if n == 1 {
			return io.NopCloser(bytes.NewReader(good)), nil
		}
		return io.NopCloser(bytes.NewReader(evil)), nil
	}
	var out bytes.Buffer
	_, err := Sanitize(&out, open, Info{}, twoDirs, Limits{})
	if RuleOf(err) != RuleAbsolutePath {
		t.Fatalf("err %v", err)
	}
	for _, e := range readTarPrefix(out.Bytes()) {
		if strings.Contains(e, "passwd") {
			t.Fatalf("hostile entry %q written", e)
		}
	}
}

// readTarPrefix lists the names of a possibly unfinished tar stream.
func readTarPrefix(b []byte) []string {
	tr := tar.NewReader(bytes.NewReader(b))
	var out []string
	for {
		h, err := tr.Next()
		if err != nil {
			return out
		}
		out = append(out, h.Name)
	}
}

// TestPackRoundTrip: the Pod's stream (as tar -c -C /overlay . writes it) is stored under the
// overlay dirs' names and restored under the volume numbers, byte for byte.
func TestPackRoundTrip(t *testing.T) {
	for _, prefix := range []string{"./", ""} {
		t.Run("prefix "+prefix, func(t *testing.T) {
			root := []ent{dir(prefix)}
			if prefix == "" {
				root = []ent{dir(".")}
			}
			pod := mkTar(t, append(root,
				dir(prefix+"0/"),
				file(prefix+"0/notes.txt", "my notes"),
				dir(prefix+"0/sub/"),
				withMode(file(prefix+"0/sub/run.sh", "#!/bin/sh\necho hi\n"), 0o6755),
				symlink(prefix+"0/latest", "sub/run.sh"),
				hardlink(prefix+"0/sub/again.sh", prefix+"0/sub/run.sh"),
				dir(prefix+"1/"),
				file(prefix+"1/.profile", "PS1=$ "),
				file(prefix+"1/big", pseudoRandom(300<<10)),
			)...)
			var archive bytes.Buffer
			res, err := Pack(&archive, bytes.NewReader(pod), twoDirs, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(archive.Bytes())
			if res.Size != int64(archive.Len()) || res.SHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("result %+v does not describe the %d bytes written", res.Info, archive.Len())
			}
			if res.Entries != 9 || res.SkippedCount != 0 {
				t.Fatalf("result %+v", res)
			}
			storedNames := names(readTar(t, gunzip(t, archive.Bytes())))
			want := "data/|data/notes.txt|data/sub/|data/sub/run.sh|data/latest|data/sub/again.sh|home/agent/|home/agent/.profile|home/agent/big"
			if strings.Join(storedNames, "|") != want {
				t.Fatalf("stored names %q, want %q", storedNames, want)
			}
			var out bytes.Buffer
			if _, err := Sanitize(&out, opener(archive.Bytes(), nil), res.Info, twoDirs, Limits{}); err != nil {
				t.Fatal(err)
			}
			got := readTar(t, out.Bytes())
			want = "0/notes.txt|0/sub/|0/sub/run.sh|0/latest|0/sub/again.sh|1/.profile|1/big"
			if strings.Join(names(got), "|") != want {
				t.Fatalf("restored names %q, want %q", names(got), want)
			}
			if got[0].body != "my notes" || got[6].body != pseudoRandom(300<<10) || got[2].hdr.Mode != 0o755 || got[4].hdr.Linkname != "0/sub/run.sh" {
				t.Fatalf("restored entries differ: %+v", got)
			}
		})
	}
}

// TestPackSkipsAndRefuses: what a tenant can create but a restore never writes is left out
// and reported; a stream that is not what the helper's tar writes fails.
func TestPackSkipsAndRefuses(t *testing.T) {
	pod := mkTar(t,
		dir("./"), dir("./0/"),
		file("./0/keep", "k"),
		special("./0/pipe", tar.TypeFifo),
		special("./0/null", tar.TypeChar),
		symlink("./0/python", "/usr/bin/python3"),
		symlink("./0/out", "../../etc"),
		symlink("./0/fine", "keep"),
		symlink("./0/abs", "/data/keep"),
		dir("./0/sub/"),
		symlink("./0/sub/home", "/data"),
		symlink("./0/sub/sideways", "/data/sub/../keep"),
		symlink("./0/other-dir", "/home/agent/x"),
		dir("./1/"),
	)
	var archive bytes.Buffer
	res, err := Pack(&archive, bytes.NewReader(pod), twoDirs, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if res.SkippedCount != 5 || len(res.Skipped) != 5 {
		t.Fatalf("skipped %+v", res.Skipped)
	}
	wantRules := []Rule{RuleFifo, RuleDevice, RuleSymlinkEscape, RuleSymlinkEscape, RuleSymlinkEscape}
	for i, s := range res.Skipped {
		if s.Rule != wantRules[i] {
			t.Errorf("skipped[%d] = %+v, want rule %s", i, s, wantRules[i])
		}
	}
	stored := readTar(t, gunzip(t, archive.Bytes()))
	if got := strings.Join(names(stored), "|"); got != "data/|data/keep|data/fine|data/abs|data/sub/|data/sub/home|data/sub/sideways|home/agent/" {
		t.Fatalf("stored %s", got)
	}
	// Absolute targets inside the link's own overlay dir are made relative.
	for i, want := range map[int]string{3: "keep", 5: "..", 6: "../keep"} {
		if stored[i].hdr.Linkname != want {
			t.Errorf("%s -> %q, want %q", stored[i].hdr.Name, stored[i].hdr.Linkname, want)
		}
	}

	// Nested overlay dirs: what volume 0 holds under the inner dir's mount point is hidden by
	// volume 1 in the workload's container, so only volume 1's copy is kept.
	nested := []string{"/home", "/home/agent"}
	pod = mkTar(t, dir("./"), dir("./0/"), file("./0/top", "t"), dir("./0/agent/"), file("./0/agent/hidden", "h"),
		dir("./1/"), file("./1/mine", "m"))
	archive.Reset()
	res, err = Pack(&archive, bytes.NewReader(pod), nested, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(readTar(t, gunzip(t, archive.Bytes()))), "|"); got != "home/|home/top|home/agent/|home/agent/mine" || res.SkippedCount != 2 {
		t.Fatalf("nested: stored %s, skipped %+v", got, res.Skipped)
	}
	var out bytes.Buffer
	if _, err := Sanitize(&out, opener(archive.Bytes(), nil), res.Info, nested, Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(readTar(t, out.Bytes())), "|"); got != "0/top|1/mine" {
		t.Fatalf("nested restore %s", got)
	}

	refuse := []struct {
		name string
		pod  []byte
		lim  Limits
		rule Rule
	}{
		{"not a volume", mkTar(t, dir("./"), file("./etc/passwd", "x")), Limits{}, RuleOutsideDirs},
		{"volume out of range", mkTar(t, dir("./"), file("./2/x", "x")), Limits{}, RuleOutsideDirs},
		{"non-canonical volume", mkTar(t, dir("./"), file("./01/x", "x")), Limits{}, RuleOutsideDirs},
		{"dot-dot", mkTar(t, dir("./"), file("./0/../../etc/x", "x")), Limits{}, RuleDotDot},
		{"leading dot-dot", mkTar(t, file("../x", "x")), Limits{}, RuleDotDot},
		{"absolute", mkTar(t, file("/etc/x", "x")), Limits{}, RuleAbsolutePath},
		{"volume root as a file", mkTar(t, file("./0", "x")), Limits{}, RuleOverlayRoot},
		{"sparse file", mkTar(t, special("./0/sparse", tar.TypeCont)), Limits{}, RuleUnsupportedType},
		{"file too large", mkTar(t, file("./0/a", "12345678901")), Limits{MaxFileBytes: 10}, RuleFileTooLarge},
		{"total too large", mkTar(t, file("./0/a", "123456"), file("./1/b", "123456")), Limits{MaxTotalBytes: 10}, RuleTotalTooLarge},
		{"too many entries", mkTar(t, dir("./0/"), file("./0/a", ""), file("./0/b", "")), Limits{MaxEntries: 2}, RuleTooManyEntries},
		{"archive too large", mkTar(t, file("./0/r", pseudoRandom(64<<10))), Limits{MaxArchiveBytes: 32 << 10}, RuleArchiveTooLarge},
		{"compression ratio", mkTar(t, dir("./0/"), dir("./1/"), file("./0/z", strings.Repeat("\x00", 8<<20))), Limits{MaxRatio: 20, RatioFloor: 1 << 20}, RuleRatio},
		{"empty stream", nil, Limits{}, RuleCorrupt},
		{"a volume missing", mkTar(t, dir("./"), dir("./0/"), file("./0/a", "x")), Limits{}, RuleCorrupt},
		{"truncated stream", truncate(mkTar(t, file("./0/a", pseudoRandom(4096))), 2048), Limits{}, RuleCorrupt},
		{"trailing data", append(mkTar(t, file("./0/a", "x")), pseudoRandom(2<<20)...), Limits{}, RuleCorrupt},
	}
	for _, tt := range refuse {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Pack(io.Discard, bytes.NewReader(tt.pod), twoDirs, tt.lim)
			if RuleOf(err) != tt.rule {
				t.Fatalf("err %v, want rule %s", err, tt.rule)
			}
		})
	}
}

// TestPackedArchivesPassUnpackLimits: whatever Pack accepts under some limits, Unpack accepts
// under the same limits (so a stored overlay can always be restored).
func TestPackedArchivesPassUnpackLimits(t *testing.T) {
	lim := Limits{MaxRatio: 20, RatioFloor: 1 << 20, MaxEntries: 50}
	var ents []ent
	ents = append(ents, dir("./0/"), dir("./1/"))
	for i := 0; i < 40; i++ {
		ents = append(ents, file("./0/"+strings.Repeat("n", 90+i)+"/"+strings.Repeat("f", 150), strings.Repeat("\x00", 20<<10)))
	}
	ents = append(ents, file("./0/r", pseudoRandom(64<<10)))
	var archive bytes.Buffer
	res, err := Pack(&archive, bytes.NewReader(mkTar(t, ents...)), twoDirs, lim)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Validate(bytes.NewReader(archive.Bytes()), res.Size, twoDirs, lim); err != nil {
		t.Fatalf("Unpack refuses what Pack stored: %v", err)
	}
}

func TestCheckDirs(t *testing.T) {
	for _, bad := range [][]string{{"data"}, {"/a/../b"}, {"/x/"}, {"/"}, {"/a", "/a"}} {
		if _, err := CheckDirs(bad); RuleOf(err) != RuleBadDirs {
			t.Errorf("CheckDirs(%q) = %v", bad, err)
		}
	}
	got, err := CheckDirs([]string{"/data", "/home/agent"})
	if err != nil || strings.Join(got, ",") != "data,home/agent" {
		t.Fatalf("CheckDirs = %q, %v", got, err)
	}
}
