package overlay

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"path"
	"strconv"
	"strings"
)

// CompressionLevel is the gzip level of Pack: fast, since extraction sits on the release
// path and the store's CPU is shared by every tenant.
const CompressionLevel = gzip.BestSpeed

// Skipped is an entry of the Pod's stream that Pack left out of the archive.
type Skipped struct {
	Entry string
	Rule  Rule
}

// maxSkippedListed bounds PackResult.Skipped.
const maxSkippedListed = 100

// PackResult describes an archive written by Pack.
type PackResult struct {
	Info
	// Skipped lists (up to 100 of) the entries left out: things a tenant can legitimately
	// create but that a restore never writes (devices, fifos, symlinks pointing outside their
	// overlay dir, hard links to those, and content hidden under a nested overlay dir).
	Skipped      []Skipped
	SkippedCount int
}

// Pack reads the tar stream of `tar -c -f - -C /overlay .` run in the Pod's helper container
// (entries "<i>/..." for overlay dir i, with or without a leading "./") and writes the stored
// form to dst: gzip of a tar whose names are the overlay dirs without their leading "/"
// ("data/notes.txt"), with clean headers (permission bits only, no owner), checked by the same
// rules as Unpack so that whatever Pack stores, Unpack restores. It computes the archive's
// size and sha256 as it streams, never holding the archive in memory, and fails with an *Error
// when the stream breaks a rule that is not a mere skip (names with "..", entries outside the
// volumes, corrupt streams) or a limit of lim (dst then holds a partial archive to discard).
func Pack(dst io.Writer, src io.Reader, dirs []string, lim Limits) (PackResult, error) {
	lim = lim.WithDefaults()
	names, err := CheckDirs(dirs)
	if err != nil {
		return PackResult{}, err
	}
	out := &hashWriter{w: dst, h: sha256.New(), max: lim.MaxArchiveBytes}
	gz, err := gzip.NewWriterLevel(out, CompressionLevel)
	if err != nil {
		return PackResult{}, err
	}
	stream := &countWriter{w: gz}
	tw := tar.NewWriter(stream)
	in := &capReader{r: src, cap: lim.streamCap()}
	tr := tar.NewReader(in)
	v := newValidator(names, lim)
	var res PackResult
	var content int64
	roots := make([]bool, len(names))
	fail := func(err error) (PackResult, error) {
		if out.err != nil {
			return res, out.err
		}
		if in.err != nil {
			return res, in.err
		}
		var e *Error
		if errors.As(err, &e) {
			return res, err
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrHeader) {
			return res, &Error{Rule: RuleCorrupt, Detail: "the Pod's tar stream: " + err.Error()}
		}
		return res, err
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && h != nil) {
			return fail(err)
		}
		if over := in.n - content; over > int64(v.entries+1)*headerAllowance+streamAllowance {
			return fail(errorf(RuleRatio, h.Name, "%d bytes of headers for %d entries", over, v.entries+1))
		}
		if h.Typeflag == tar.TypeReg {
			content += max(h.Size, 0)
		}
		idx, name, root, err := podName(h.Name, names)
		if err != nil {
			return fail(err)
		}
		if root {
			continue
		}
		link := h.Linkname
		if h.Typeflag == tar.TypeLink {
			if _, l, _, err := podName(h.Linkname, names); err == nil {
				link = l
			} else {
				link = "/" + strings.TrimPrefix(h.Linkname, "/") // refused as an escape below
			}
		}
		if h.Typeflag == tar.TypeSymlink {
			if rel, ok := relativeTarget(name, h.Linkname, names[idx]); ok {
				hc := *h
				hc.Linkname = rel
				h = &hc
			}
		}
		e, err := v.check(h, name, link, idx)
		if err != nil {
			if skippable(RuleOf(err)) {
				res.SkippedCount++
				if len(res.Skipped) < maxSkippedListed {
					res.Skipped = append(res.Skipped, Skipped{Entry: h.Name, Rule: RuleOf(err)})
				}
				continue
			}
			return fail(err)
		}
		linkName := ""
		if e.typ == tar.TypeLink {
			linkName = names[e.dir] + "/" + e.link
		}
		if err := tw.WriteHeader(e.header(e.name, linkName)); err != nil {
			return fail(err)
		}
		res.Entries++
		res.Bytes += e.size
		if e.rel == "" {
			roots[e.dir] = true
		}
		if e.typ == tar.TypeReg {
			if _, err := io.CopyN(tw, tr, e.size); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return fail(err)
			}
		}
	}
	// tar pads its output to a record; anything much longer is not a tar stream's end.
	n, err := io.Copy(io.Discard, io.LimitReader(in, maxTrailer+1))
	if err != nil {
		return fail(err)
	}
	if n > maxTrailer {
		return fail(&Error{Rule: RuleCorrupt, Detail: "trailing data after the end of the Pod's tar stream"})
	}
	// Every volume must be in the stream: a missing one means the helper does not see it, and
	// storing its absence would lose whatever the tenant had there.
	for i, ok := range roots {
		if !ok {
			return fail(errorf(RuleCorrupt, "", "overlay volume %s/%d (%s) is missing from the Pod's tar stream", MountRoot, i, "/"+names[i]))
		}
	}
	if err := tw.Close(); err != nil {
		return fail(err)
	}
	if err := gz.Close(); err != nil {
		return fail(err)
	}
	if stream.n > lim.ratioBound(out.n) {
		return fail(errorf(RuleRatio, "", "%d bytes of archive expand to %d bytes (the limit is %d times)", out.n, stream.n, lim.MaxRatio))
	}
	res.Size, res.SHA256 = out.n, hex.EncodeToString(out.h.Sum(nil))
	return res, nil
}

// skippable rules make Pack leave an entry out instead of failing: a tenant can create such
// entries in their own dirs, and refusing to save the rest over them would lose their data.
// Anything else (a name with "..", a sparse or otherwise unsupported file, a limit) fails the
// extraction: a file's content is never dropped silently.
func skippable(r Rule) bool {
	switch r {
	case RuleDevice, RuleFifo, RuleSocket, RuleSymlinkEscape, RuleHardlinkMissing, ruleShadowed:
		return true
	}
	return false
}

// podName rewrites a name of the Pod's stream ("./<i>/x", "<i>/x", "./", ".") into the archive
// namespace ("<dir i>/x"). root reports the stream's own root, which is dropped.
func podName(raw string, names []string) (idx int, name string, root bool, err error) {
	s := strings.TrimPrefix(raw, "./")
	if s == "" || s == "." {
		return 0, "", true, nil
	}
	first, rest, _ := strings.Cut(s, "/")
	idx, perr := strconv.Atoi(first)
	if perr != nil || idx < 0 || idx >= len(names) || strconv.Itoa(idx) != first {
		if strings.HasPrefix(s, "/") {
			return 0, "", false, errorf(RuleAbsolutePath, raw, "absolute path in the Pod's tar stream")
		}
		if first == ".." {
			return 0, "", false, errorf(RuleDotDot, raw, "'..' component")
		}
		return 0, "", false, errorf(RuleOutsideDirs, raw, "not in an overlay volume (%s/0..%d)", MountRoot, len(names)-1)
	}
	if rest == "" {
		return idx, names[idx], false, nil
	}
	return idx, names[idx] + "/" + rest, false, nil
}

// relativeTarget rewrites the absolute target of a symlink at name (archive namespace) into
// a relative one when it points inside the link's own overlay dir dir, as the workload sees it
// ("/data/a/b" from "data/x/l" becomes "../a/b"); such a link then restores like any other.
// Other absolute targets are left for the validator to refuse.
func relativeTarget(name, target, dir string) (string, bool) {
	if !strings.HasPrefix(target, "/") || strings.IndexByte(target, 0) >= 0 {
		return "", false
	}
	clean := path.Clean(target)[1:]
	if clean != dir && !strings.HasPrefix(clean, dir+"/") {
		return "", false
	}
	if name != dir && !strings.HasPrefix(name, dir+"/") {
		return "", false
	}
	depth := strings.Count(strings.TrimSuffix(name, "/"), "/") - strings.Count(dir, "/") - 1
	rel := strings.TrimPrefix(strings.TrimPrefix(clean, dir), "/")
	up := strings.Repeat("../", max(depth, 0))
	switch {
	case rel == "" && up == "":
		return ".", true
	case rel == "":
		return strings.TrimSuffix(up, "/"), true
	}
	return up + rel, true
}

// hashWriter hashes and counts what is written through it and fails past max bytes.
type hashWriter struct {
	w   io.Writer
	h   hash.Hash
	n   int64
	max int64
	err error
}

func (w *hashWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.n+int64(len(p)) > w.max {
		w.err = errorf(RuleArchiveTooLarge, "", "the compressed archive exceeds %d bytes", w.max)
		return 0, w.err
	}
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (w *countWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n += int64(n)
	return n, err
}
