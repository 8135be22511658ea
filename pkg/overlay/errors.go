package overlay

import (
	"errors"
	"fmt"
	"strconv"
)

// Rule names the check an archive broke. Every rejection of the codec is an *Error carrying
// one, so that callers (and tests) can tell a hostile entry from a size limit or a corrupt
// stream without parsing messages.
type Rule string

// Rules of entry names.
const (
	// RuleBadName: empty name, NUL byte, empty or "." component, trailing slash on a non-dir.
	RuleBadName Rule = "bad-name"
	// RuleNameTooLong: a name longer than 4096 bytes or a component longer than 255.
	RuleNameTooLong Rule = "name-too-long"
	// RuleAbsolutePath: a name (or hard link target) beginning with "/".
	RuleAbsolutePath Rule = "absolute-path"
	// RuleDotDot: a ".." component in a name (or hard link target).
	RuleDotDot Rule = "dot-dot"
	// RuleOutsideDirs: a name under none of the declared overlay dirs (in Pack: a top-level
	// entry of the Pod's stream that is not an overlay volume index).
	RuleOutsideDirs Rule = "outside-overlay-dirs"
	// RuleOverlayRoot: an overlay dir itself archived as something other than a directory.
	RuleOverlayRoot Rule = "overlay-root-not-dir"
	// RuleDuplicate: a second entry for a name already extracted (other than dir over dir).
	RuleDuplicate Rule = "duplicate-entry"
	// RuleThroughSymlink: an entry below a symlink of the archive (extracting it would write
	// through the link).
	RuleThroughSymlink Rule = "through-symlink"
	// RuleParentNotDir: an entry below a regular file of the archive, or a non-directory
	// replacing a directory that earlier entries live in.
	RuleParentNotDir Rule = "parent-not-dir"
)

// Rules of entry types and links.
const (
	// RuleSymlinkEscape: a symlink whose target is absolute, climbs out of its overlay dir, or
	// has ".." after a name component (which could climb through another link).
	RuleSymlinkEscape Rule = "symlink-escape"
	// RuleHardlinkEscape: a hard link whose target is absolute, has "..", or lies in another
	// overlay dir.
	RuleHardlinkEscape Rule = "hardlink-escape"
	// RuleHardlinkMissing: a hard link to a name that is not an earlier regular file.
	RuleHardlinkMissing Rule = "hardlink-target-missing"
	// RuleDevice: a character or block device.
	RuleDevice Rule = "device"
	// RuleFifo: a named pipe.
	RuleFifo Rule = "fifo"
	// RuleSocket: a socket (mode bits of a socket on any entry).
	RuleSocket Rule = "socket"
	// RuleUnsupportedType: any other entry type (sparse, contiguous, global PAX header, ...).
	RuleUnsupportedType Rule = "unsupported-type"
)

// Rules of sizes (decompression bombs) and of the stream itself.
const (
	RuleTooManyEntries  Rule = "too-many-entries"
	RuleFileTooLarge    Rule = "file-too-large"
	RuleTotalTooLarge   Rule = "total-too-large"
	RuleArchiveTooLarge Rule = "archive-too-large"
	// RuleRatio: the archive expands more than Limits.MaxRatio times its compressed size, or
	// its headers take more room than its entries justify.
	RuleRatio Rule = "compression-ratio"
	// RuleCorrupt: the gzip or tar stream cannot be read, is truncated, or has trailing data.
	RuleCorrupt Rule = "corrupt"
	// RuleChecksum: the archive's sha256 or size is not the recorded one.
	RuleChecksum Rule = "checksum-mismatch"
	// RuleBadDirs: the declared overlay dirs themselves are invalid.
	RuleBadDirs Rule = "bad-overlay-dirs"
)

// Error is a rejection by the codec: which entry, which rule, and why.
type Error struct {
	Rule Rule
	// Entry is the offending entry's name as it appears in the archive ("" when the archive as
	// a whole is at fault).
	Entry  string
	Detail string
}

func (e *Error) Error() string {
	s := "overlay: "
	if e.Entry != "" {
		s += "entry " + quote(e.Entry) + ": "
	}
	s += string(e.Rule)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Is makes errors.Is(err, &Error{Rule: r}) match any *Error with rule r.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Rule == e.Rule && t.Entry == "" && t.Detail == ""
}

// RuleOf returns the rule of the *Error in err's chain, or "".
func RuleOf(err error) Rule {
	var e *Error
	if errors.As(err, &e) {
		return e.Rule
	}
	return ""
}

// IsLimit reports whether err is a size limit (entries, file, total, archive, ratio) rather
// than a hostile or corrupt entry.
func IsLimit(err error) bool {
	switch RuleOf(err) {
	case RuleTooManyEntries, RuleFileTooLarge, RuleTotalTooLarge, RuleArchiveTooLarge, RuleRatio:
		return true
	}
	return false
}

func errorf(rule Rule, entry, format string, args ...any) *Error {
	return &Error{Rule: rule, Entry: entry, Detail: fmt.Sprintf(format, args...)}
}

// quote quotes s for a message, cut short so a hostile name cannot blow up logs.
func quote(s string) string {
	const max = 200
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
