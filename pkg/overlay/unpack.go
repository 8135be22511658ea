package overlay

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
)

// Info describes an archive read or written by the codec.
type Info struct {
	// Size is the size of the compressed archive and SHA256 the hex digest of its bytes.
	Size   int64
	SHA256 string
	// Entries is the number of entries kept, Bytes the sum of their regular files' sizes.
	Entries int
	Bytes   int64
}

// Validate reads a stored archive (gzip of a tar whose names are the overlay dirs without
// their leading "/") to its end and checks every entry against the rules of the package and
// lim. size is the archive's compressed size when known (it bounds the expansion ratio from
// the first byte; -1 when unknown). It returns the archive's digest and counts, or an *Error
// naming the first offending entry and rule. Nothing is written anywhere.
func Validate(src io.Reader, size int64, dirs []string, lim Limits) (Info, error) {
	return unpack(nil, src, size, dirs, lim)
}

// Unpack validates a stored archive like Validate and, entry by entry as each one passes,
// writes a clean tar stream to dst for `tar -x -f - -C /overlay` (MountRoot): names become
// "<i>/..." for overlay dir i, the overlay dirs themselves are left out (they are the
// volumes' mount points), and only directories, regular files, symlinks and hard links are
// written, with permission bits only and no owner. An error part way leaves dst with a prefix
// of clean entries; use Sanitize to reject a hostile archive before anything is written.
func Unpack(dst io.Writer, src io.Reader, size int64, dirs []string, lim Limits) (Info, error) {
	if dst == nil {
		return Info{}, errors.New("overlay: Unpack needs a destination")
	}
	return unpack(dst, src, size, dirs, lim)
}

// Sanitize reads a stored archive twice through open: first to validate it completely (and
// check its size and sha256 against want, when want.SHA256 is set), then to write the clean
// stream to dst as Unpack does. A hostile or corrupt archive fails in the first pass, before
// a single byte reaches dst. The second pass validates again, so an archive that changed in
// between still cannot get anything hostile through.
func Sanitize(dst io.Writer, open func() (io.ReadCloser, error), want Info, dirs []string, lim Limits) (Info, error) {
	size := want.Size
	if want.SHA256 == "" && size == 0 {
		size = -1
	}
	pass := func(w io.Writer) (Info, error) {
		rc, err := open()
		if err != nil {
			return Info{}, err
		}
		defer rc.Close()
		info, err := unpack(w, rc, size, dirs, lim)
		if err != nil {
			return info, err
		}
		if want.SHA256 != "" && (info.SHA256 != want.SHA256 || info.Size != want.Size) {
			return info, errorf(RuleChecksum, "", "archive has %d bytes with sha256 %s, want %d bytes with sha256 %s",
				info.Size, info.SHA256, want.Size, want.SHA256)
		}
		return info, nil
	}
	if _, err := pass(nil); err != nil {
		return Info{}, err
	}
	return pass(dst)
}

func unpack(dst io.Writer, src io.Reader, size int64, dirs []string, lim Limits) (Info, error) {
	lim = lim.WithDefaults()
	names, err := CheckDirs(dirs)
	if err != nil {
		return Info{}, err
	}
	raw := &hashReader{r: src, h: sha256.New(), max: lim.MaxArchiveBytes}
	if size > lim.MaxArchiveBytes {
		return Info{}, errorf(RuleArchiveTooLarge, "", "%d bytes, the limit is %d", size, lim.MaxArchiveBytes)
	}
	dec := &capReader{cap: lim.streamCap(), bound: func() (int64, int64) {
		if size >= 0 {
			return lim.ratioBound(size), size
		}
		return lim.ratioBound(raw.n), raw.n
	}}
	sticky := func(err error) error {
		switch {
		case raw.err != nil:
			return raw.err
		case dec.err != nil:
			return dec.err
		}
		var e *Error
		if errors.As(err, &e) {
			return err
		}
		return &Error{Rule: RuleCorrupt, Detail: err.Error()}
	}
	gz, err := gzip.NewReader(raw)
	if err != nil {
		return Info{}, sticky(err)
	}
	dec.r = gz
	tr := tar.NewReader(dec)
	var tw *tar.Writer
	if dst != nil {
		tw = tar.NewWriter(dst)
	}
	v := newValidator(names, lim)
	var info Info
	var content int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && h != nil) {
			return info, sticky(err)
		}
		if over := dec.n - content; over > int64(v.entries+1)*headerAllowance+streamAllowance {
			return info, errorf(RuleRatio, h.Name, "%d bytes of headers for %d entries", over, v.entries+1)
		}
		e, err := v.check(h, h.Name, h.Linkname, -1)
		if err != nil {
			return info, err
		}
		info.Entries++
		info.Bytes += e.size
		content += e.size
		if tw != nil && e.rel != "" {
			link := ""
			if e.typ == tar.TypeLink {
				link = volumeName(e.dir, e.link)
			}
			if err := tw.WriteHeader(e.header(volumeName(e.dir, e.rel), link)); err != nil {
				return info, err
			}
		}
		if e.typ != tar.TypeReg {
			continue
		}
		var w io.Writer = io.Discard
		if tw != nil && e.rel != "" {
			w = tw
		}
		if _, err := io.CopyN(w, tr, e.size); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return info, sticky(err)
		}
	}
	// The rest of the gzip stream (tar padding) and of the file: the digest covers every byte
	// and gzip checks its CRC at the end.
	if _, err := io.Copy(io.Discard, dec); err != nil {
		return info, sticky(err)
	}
	if err := gz.Close(); err != nil {
		return info, sticky(err)
	}
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return info, sticky(err)
	}
	info.Size, info.SHA256 = raw.n, hex.EncodeToString(raw.h.Sum(nil))
	if size >= 0 && raw.n != size {
		return info, errorf(RuleChecksum, "", "archive has %d bytes, want %d", raw.n, size)
	}
	if tw != nil {
		if err := tw.Close(); err != nil {
			return info, err
		}
	}
	return info, nil
}

// hashReader hashes and counts what is read through it and fails past max bytes.
type hashReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	max int64
	err error
}

func (r *hashReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if r.n > r.max {
		r.err = errorf(RuleArchiveTooLarge, "", "more than %d bytes", r.max)
		return n, r.err
	}
	return n, err
}

// capReader counts the uncompressed stream and fails once it exceeds cap or the ratio bound.
type capReader struct {
	r     io.Reader
	n     int64
	cap   int64
	bound func() (limit, compressed int64)
	err   error
}

func (r *capReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	if r.n > r.cap {
		r.err = errorf(RuleTotalTooLarge, "", "the uncompressed stream exceeds %d bytes", r.cap)
		return n, r.err
	}
	if r.bound != nil {
		if limit, compressed := r.bound(); r.n > limit {
			r.err = errorf(RuleRatio, "", "%d bytes of archive expand to more than %d bytes", compressed, r.n)
			return n, r.err
		}
	}
	return n, err
}
