package translate

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"strings"
)

// MaxWorkloadPrefix is how much of the workload name starts an instance id.
const MaxWorkloadPrefix = 40

// lowerBase32 is RFC 4648 base32 in lowercase without padding: [a-z2-7], valid in DNS labels.
var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// PoolInstanceID names a new pool Pod of workload: "<workload cut to 40>-p-<10 random base32>",
// at most 53 characters. 50 random bits make a collision among a workload's Pods negligible.
func PoolInstanceID(workload string) string {
	var b [7]byte // 56 bits, 10 base32 characters use 50 of them
	if _, err := rand.Read(b[:]); err != nil {
		panic("translate: crypto/rand failed: " + err.Error())
	}
	return prefix(workload) + "-p-" + lowerBase32.EncodeToString(b[:])[:10]
}

// ClaimInstanceID names the cold-booted Pod of one claim life:
// "<workload cut to 40>-c-<first 12 hex of sha256(claimID)>", at most 55 characters. It is
// deterministic, so a retried boot finds the Pod it created before; the tenant is not part of
// the name, so any (tenant, workload) pair yields a valid DNS label.
func ClaimInstanceID(workload, claimID string) string {
	sum := sha256.Sum256([]byte(claimID))
	return prefix(workload) + "-c-" + hex.EncodeToString(sum[:])[:12]
}

// prefix cuts the workload name to MaxWorkloadPrefix characters. Workload names are DNS labels,
// so the result is lowercase alphanumerics and '-' starting with an alphanumeric; a trailing '-'
// is fine inside the id.
func prefix(workload string) string {
	w := strings.ToLower(workload)
	if len(w) > MaxWorkloadPrefix {
		w = w[:MaxWorkloadPrefix]
	}
	return w
}
