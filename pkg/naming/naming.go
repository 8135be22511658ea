// Package naming derives the names of Boilerhouse objects from the identifiers they stand for.
package naming

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// maxReadable bounds the readable part of a claim name.
const maxReadable = 40

// ClaimName is the name of the BoilerhouseClaim of (tenant, workload):
// "claim-<readable>-<hash>", where readable is "<tenant>-<workload>" lowercased with every
// character outside [a-z0-9] turned into '-', runs of '-' collapsed and cut to 40 characters,
// and hash is the first 10 hex digits of sha256(tenant NUL workload). The hash covers the exact
// pair, so pairs whose readable parts coincide ("a-b"/"c" and "a"/"b-c", "Alice"/"w" and
// "alice"/"w") still get distinct names. The result is at most 57 characters, a valid DNS-1123
// label (and so a valid object name).
func ClaimName(tenant, workload string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + workload))
	return "claim-" + readable(tenant+"-"+workload) + hex.EncodeToString(sum[:])[:10]
}

// readable is s reduced to [a-z0-9-], cut to maxReadable and followed by '-' (or "" when
// nothing readable is left).
func readable(s string) string {
	var b strings.Builder
	dash := true // no leading '-'
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= maxReadable {
			break
		}
	}
	out := strings.TrimRight(b.String(), "-")
	if len(out) > maxReadable {
		out = strings.TrimRight(out[:maxReadable], "-")
	}
	if out == "" {
		return ""
	}
	return out + "-"
}
