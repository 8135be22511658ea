package overlay

import (
	"archive/tar"
	"crypto/sha256"
	"strconv"
	"strings"
	"time"
)

// Name limits of Linux (PATH_MAX, NAME_MAX).
const (
	maxNameBytes      = 4096
	maxComponentBytes = 255
)

// kind is what the validator remembers about a name it has accepted.
type kind uint8

const (
	kindNone        kind = iota
	kindImplicitDir      // a parent of an accepted entry, created by tar -x if not listed
	kindDir
	kindFile // a regular file, or a hard link to one
	kindSymlink
)

// pathKey is a 128-bit digest of a name: the validator remembers every accepted name (for hard
// link targets and parent checks) without holding the names themselves, so memory stays
// bounded by MaxEntries whatever the names' lengths.
type pathKey [16]byte

func keyOf(s string) pathKey {
	sum := sha256.Sum256([]byte(s))
	var k pathKey
	copy(k[:], sum[:16])
	return k
}

// entry is a validated archive entry.
type entry struct {
	// name is the archive name without trailing slash, e.g. "data/notes.txt".
	name string
	// dir is the index of the overlay dir holding the entry; rel its name inside that dir
	// ("" for the dir itself).
	dir int
	rel string
	// typ is tar.TypeReg, TypeDir, TypeSymlink or TypeLink.
	typ  byte
	mode int64
	size int64
	mod  time.Time
	// link is a symlink's target as stored, or a hard link target's name inside dir.
	link string
}

// validator checks entries one by one, in archive order, against the rules of the package.
// It is the single implementation used by Pack and Unpack.
type validator struct {
	dirs    []string // archive names of the overlay dirs ("data", "home/user")
	lim     Limits
	seen    map[pathKey]kind
	entries int
	total   int64
}

func newValidator(dirs []string, lim Limits) *validator {
	return &validator{dirs: dirs, lim: lim, seen: make(map[pathKey]kind)}
}

// owner returns the index of the most specific overlay dir holding name, or -1.
func (v *validator) owner(name string) int {
	best, bestLen := -1, -1
	for i, d := range v.dirs {
		if (name == d || strings.HasPrefix(name, d+"/")) && len(d) > bestLen {
			best, bestLen = i, len(d)
		}
	}
	return best
}

// errShadowed: in Pack, an entry of volume i that falls under another, nested overlay dir
// (its content is hidden by that dir's own volume in the workload's container).
const ruleShadowed Rule = "shadowed-by-nested-dir"

// check validates h, whose archive name is name (and hard link target linkname, both already
// rewritten into the archive namespace by the caller). from is the overlay dir the entry must
// belong to, or -1 for any. Accepted entries are remembered; rejected ones are not.
func (v *validator) check(h *tar.Header, name, linkname string, from int) (entry, error) {
	v.entries++
	if v.entries > v.lim.MaxEntries {
		return entry{}, errorf(RuleTooManyEntries, name, "more than %d entries", v.lim.MaxEntries)
	}
	typ := h.Typeflag // tar.Reader has already turned the legacy TypeRegA into TypeReg or TypeDir
	// Entry types first: a device or fifo is refused whatever its name.
	if h.Mode&0o170000 == 0o140000 {
		return entry{}, errorf(RuleSocket, name, "sockets are not restored")
	}
	switch typ {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	case tar.TypeChar, tar.TypeBlock:
		return entry{}, errorf(RuleDevice, name, "device files are not restored")
	case tar.TypeFifo:
		return entry{}, errorf(RuleFifo, name, "named pipes are not restored")
	default:
		return entry{}, errorf(RuleUnsupportedType, name, "entry type %q is not supported", typ)
	}
	clean, err := cleanName(name, typ == tar.TypeDir)
	if err != nil {
		return entry{}, err
	}
	e := entry{name: clean, typ: typ, mod: h.ModTime}
	e.dir = v.owner(clean)
	if e.dir < 0 {
		return entry{}, errorf(RuleOutsideDirs, name, "not under any declared overlay dir (%s)", strings.Join(v.dirs, ", "))
	}
	if from >= 0 && e.dir != from {
		return entry{}, errorf(ruleShadowed, name, "hidden by the nested overlay dir %s", quote(v.dirs[e.dir]))
	}
	if clean != v.dirs[e.dir] {
		e.rel = clean[len(v.dirs[e.dir])+1:]
	}

	if e.rel == "" && typ != tar.TypeDir {
		return entry{}, errorf(RuleOverlayRoot, name, "the overlay dir itself must be a directory")
	}

	// Parents: none may be a symlink or a file of the archive.
	var parents []pathKey
	if e.rel != "" {
		for i := 0; i < len(e.rel); i++ {
			if e.rel[i] != '/' {
				continue
			}
			p := v.dirs[e.dir] + "/" + e.rel[:i]
			k := keyOf(p)
			switch v.seen[k] {
			case kindSymlink:
				return entry{}, errorf(RuleThroughSymlink, name, "parent %s is a symlink of the archive", quote(p))
			case kindFile:
				return entry{}, errorf(RuleParentNotDir, name, "parent %s is a file of the archive", quote(p))
			case kindNone:
				parents = append(parents, k)
			}
		}
	}
	self := keyOf(clean)
	switch prev := v.seen[self]; {
	case prev == kindNone:
	case typ == tar.TypeDir && (prev == kindDir || prev == kindImplicitDir):
	case prev == kindImplicitDir:
		return entry{}, errorf(RuleParentNotDir, name, "replaces a directory that earlier entries are in")
	default:
		return entry{}, errorf(RuleDuplicate, name, "a second entry for the same name")
	}

	switch typ {
	case tar.TypeSymlink:
		if err := checkSymlink(name, e.rel, h.Linkname, v.dirs[e.dir]); err != nil {
			return entry{}, err
		}
		e.link = h.Linkname
	case tar.TypeLink:
		target, err := cleanName(linkname, false)
		if err != nil {
			r := RuleOf(err)
			if r == RuleAbsolutePath || r == RuleDotDot || r == RuleBadName {
				r = RuleHardlinkEscape
			}
			return entry{}, errorf(r, name, "hard link target %s: %s", quote(linkname), err.(*Error).Detail)
		}
		if v.owner(target) != e.dir || target == v.dirs[e.dir] {
			return entry{}, errorf(RuleHardlinkEscape, name, "hard link target %s is not in the overlay dir %s", quote(linkname), quote(v.dirs[e.dir]))
		}
		if v.seen[keyOf(target)] != kindFile {
			return entry{}, errorf(RuleHardlinkMissing, name, "hard link target %s is not an earlier regular file of the archive", quote(linkname))
		}
		e.link = target[len(v.dirs[e.dir])+1:]
	case tar.TypeReg:
		if h.Size < 0 {
			return entry{}, errorf(RuleCorrupt, name, "negative size")
		}
		if h.Size > v.lim.MaxFileBytes {
			return entry{}, errorf(RuleFileTooLarge, name, "%d bytes, the limit is %d", h.Size, v.lim.MaxFileBytes)
		}
		if v.total+h.Size > v.lim.MaxTotalBytes {
			return entry{}, errorf(RuleTotalTooLarge, name, "the files exceed %d bytes in total", v.lim.MaxTotalBytes)
		}
		e.size = h.Size
	}

	// Accepted.
	v.total += e.size
	for _, k := range parents {
		v.seen[k] = kindImplicitDir
	}
	switch typ {
	case tar.TypeDir:
		v.seen[self] = kindDir
		e.mode = h.Mode&0o777 | 0o700 // tar -x must be able to fill it
	case tar.TypeSymlink:
		v.seen[self] = kindSymlink
		e.mode = 0o777
	default:
		v.seen[self] = kindFile
		e.mode = h.Mode & 0o777 // no setuid, setgid or sticky bit
	}
	return e, nil
}

// cleanName checks that name is a canonical relative path: no leading "/", no "..", no empty
// or "." component, within the Linux name limits. A directory may end with one "/", which is
// removed.
func cleanName(name string, isDir bool) (string, error) {
	switch {
	case name == "":
		return "", errorf(RuleBadName, name, "empty name")
	case strings.IndexByte(name, 0) >= 0:
		return "", errorf(RuleBadName, name, "NUL byte in name")
	case len(name) > maxNameBytes:
		return "", errorf(RuleNameTooLong, name, "%d bytes, the limit is %d", len(name), maxNameBytes)
	case strings.HasPrefix(name, "/"):
		return "", errorf(RuleAbsolutePath, name, "absolute path")
	}
	clean := name
	if isDir {
		clean = strings.TrimSuffix(clean, "/")
	}
	comps := strings.Split(clean, "/")
	for _, c := range comps {
		if c == ".." {
			return "", errorf(RuleDotDot, name, "'..' component")
		}
	}
	for _, c := range comps {
		switch {
		case c == "" || c == ".":
			return "", errorf(RuleBadName, name, "empty or '.' component (not a canonical path)")
		case len(c) > maxComponentBytes:
			return "", errorf(RuleNameTooLong, name, "a component of %d bytes, the limit is %d", len(c), maxComponentBytes)
		}
	}
	return clean, nil
}

// checkSymlink accepts a symlink at rel (inside the overlay dir dir) only if its target stays
// inside dir however the other symlinks of the archive resolve: the target is relative, its
// ".." components all come first, and they climb no higher than the dir. (A ".." after a name
// could climb back out through another symlink, so it is refused.)
func checkSymlink(name, rel, target, dir string) error {
	switch {
	case target == "":
		return errorf(RuleSymlinkEscape, name, "empty target")
	case strings.IndexByte(target, 0) >= 0:
		return errorf(RuleSymlinkEscape, name, "NUL byte in target")
	case len(target) > maxNameBytes:
		return errorf(RuleNameTooLong, name, "target of %d bytes, the limit is %d", len(target), maxNameBytes)
	case strings.HasPrefix(target, "/"):
		return errorf(RuleSymlinkEscape, name, "absolute target %s", quote(target))
	}
	ups, named := 0, false
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if named {
				return errorf(RuleSymlinkEscape, name, "target %s has '..' after a name component", quote(target))
			}
			ups++
		default:
			named = true
		}
	}
	if depth := strings.Count(rel, "/"); ups > depth {
		return errorf(RuleSymlinkEscape, name, "target %s climbs out of the overlay dir %s", quote(target), quote("/"+dir))
	}
	return nil
}

// header is the clean tar header written for e under name (and hard link target linkname):
// no owner, no extended attributes, permission bits only, a USTAR-representable mtime.
func (e entry) header(name, linkname string) *tar.Header {
	h := &tar.Header{Typeflag: e.typ, Name: name, Mode: e.mode, ModTime: clampTime(e.mod)}
	switch e.typ {
	case tar.TypeReg:
		h.Size = e.size
	case tar.TypeDir:
		h.Name += "/"
	case tar.TypeSymlink:
		h.Linkname = e.link
	case tar.TypeLink:
		h.Linkname = linkname
	}
	return h
}

func clampTime(t time.Time) time.Time {
	const maxUSTAR = 1<<33 - 1 // 11 octal digits
	switch s := t.Unix(); {
	case t.IsZero() || s < 0:
		return time.Unix(0, 0)
	case s > maxUSTAR:
		return time.Unix(maxUSTAR, 0)
	}
	return t.Truncate(time.Second)
}

// volumeName is the name of entry rel of overlay dir i in the Pod's helper container
// (relative to MountRoot).
func volumeName(i int, rel string) string {
	if rel == "" {
		return strconv.Itoa(i)
	}
	return strconv.Itoa(i) + "/" + rel
}
