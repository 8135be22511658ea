package overlay

import (
	"path"
	"strings"
)

// Limits bound what an archive may hold. Pack enforces the same limits as Unpack, so an
// archive that Pack stored is always accepted by Unpack under the same (or larger) limits.
// Zero fields take the value of DefaultLimits.
type Limits struct {
	// MaxArchiveBytes bounds the compressed archive.
	MaxArchiveBytes int64
	// MaxTotalBytes bounds the sum of the regular files' sizes.
	MaxTotalBytes int64
	// MaxFileBytes bounds one regular file.
	MaxFileBytes int64
	// MaxEntries bounds the number of entries (files, dirs, links).
	MaxEntries int
	// MaxRatio bounds the uncompressed tar stream to MaxRatio times the compressed archive
	// size, once the stream exceeds RatioFloor: a small archive cannot expand to gigabytes.
	MaxRatio int64
	// RatioFloor is the uncompressed size below which the ratio is not checked.
	RatioFloor int64
}

// DefaultLimits are generous for a tenant's working directories and still bound what a
// hostile archive can make the store and a Pod do.
var DefaultLimits = Limits{
	MaxArchiveBytes: 2 << 30,
	MaxTotalBytes:   8 << 30,
	MaxFileBytes:    4 << 30,
	MaxEntries:      500_000,
	MaxRatio:        200,
	RatioFloor:      16 << 20,
}

// WithDefaults returns l with every zero field set from DefaultLimits.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits
	if l.MaxArchiveBytes <= 0 {
		l.MaxArchiveBytes = d.MaxArchiveBytes
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = d.MaxTotalBytes
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = d.MaxFileBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxRatio <= 0 {
		l.MaxRatio = d.MaxRatio
	}
	if l.RatioFloor <= 0 {
		l.RatioFloor = d.RatioFloor
	}
	return l
}

// Per-entry allowance for tar headers (header block, PAX or GNU long-name records, padding)
// in the uncompressed stream; anything beyond is a header bomb.
const (
	headerAllowance = 16 << 10
	streamAllowance = 1 << 20
	// maxTrailer is how much data may follow the end-of-archive marker of the Pod's tar
	// stream (tar pads to its record size, 10 KiB for GNU tar).
	maxTrailer = 1 << 20
)

// streamCap is the most bytes an uncompressed tar stream may hold under l.
func (l Limits) streamCap() int64 {
	return l.MaxTotalBytes + int64(l.MaxEntries)*headerAllowance + streamAllowance
}

// ratioBound is the most uncompressed bytes an archive of compressed size n may expand to.
func (l Limits) ratioBound(n int64) int64 {
	if n > (1<<62)/l.MaxRatio {
		return 1 << 62
	}
	return max(l.RatioFloor, l.MaxRatio*n)
}

// CheckDirs validates overlay dirs as the translator does (absolute, clean, not "/", no
// duplicates) and returns their archive names: the dir without its leading "/".
func CheckDirs(dirs []string) ([]string, error) {
	out := make([]string, len(dirs))
	seen := make(map[string]bool, len(dirs))
	for i, d := range dirs {
		switch {
		case !strings.HasPrefix(d, "/"):
			return nil, errorf(RuleBadDirs, "", "overlay dir %d %s is not absolute", i, quote(d))
		case path.Clean(d) != d:
			return nil, errorf(RuleBadDirs, "", "overlay dir %d %s is not a clean path", i, quote(d))
		case d == "/":
			return nil, errorf(RuleBadDirs, "", "overlay dir %d is the root directory", i)
		case seen[d]:
			return nil, errorf(RuleBadDirs, "", "overlay dir %s is listed twice", quote(d))
		case strings.ContainsRune(d, 0):
			return nil, errorf(RuleBadDirs, "", "overlay dir %d contains a NUL byte", i)
		}
		seen[d] = true
		out[i] = d[1:]
	}
	return out, nil
}
