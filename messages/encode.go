package messages

import "strings"

const hexDigits = "0123456789abcdef"

// EncodeToken turns an arbitrary string (typically a tenant id, which may
// contain '.') into a single NATS subject token that is also a legal KV key
// token. Bytes in [A-Za-z0-9-] are kept; every other byte, including '_',
// is written as '_' followed by two lowercase hex digits ("org.acme" ->
// "org_2eacme", "a_b" -> "a_5fb").
//
// The encoding is injective and reversible with [DecodeToken]. Because '_'
// itself is escaped, distinct inputs never produce the same token. The
// empty string encodes to the empty string, which is not a legal token;
// validate ids before encoding them.
func EncodeToken(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if !keep(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if keep(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0x0f])
	}
	return b.String()
}

// DecodeToken reverses [EncodeToken]. It accepts only canonical encodings
// (what EncodeToken produces): a '_' must be followed by two lowercase hex
// digits naming a byte that EncodeToken would have escaped, and no other
// byte outside [A-Za-z0-9-] may appear. Anything else is an
// [CodeInvalidArgument] error, so one string has exactly one encoding.
func DecodeToken(s string) (string, error) {
	if strings.IndexByte(s, '_') < 0 {
		for i := 0; i < len(s); i++ {
			if !keep(s[i]) {
				return "", Errorf(CodeInvalidArgument, "malformed token %s: byte %q at %d must be escaped", quote(s), s[i], i)
			}
		}
		return s, nil
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if keep(c) {
			out = append(out, c)
			continue
		}
		if c != '_' {
			return "", Errorf(CodeInvalidArgument, "malformed token %s: byte %q at %d must be escaped", quote(s), c, i)
		}
		if i+2 >= len(s) {
			return "", Errorf(CodeInvalidArgument, "malformed token %s: '_' at %d must be followed by two hex digits", quote(s), i)
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", Errorf(CodeInvalidArgument, "malformed token %s: '_' at %d must be followed by two lowercase hex digits", quote(s), i)
		}
		b := hi<<4 | lo
		if keep(b) {
			return "", Errorf(CodeInvalidArgument, "malformed token %s: %q at %d is escaped but must be literal", quote(s), b, i)
		}
		out = append(out, b)
		i += 2
	}
	return string(out), nil
}

// ClaimKey is the key of a claim in [BucketClaims]:
// EncodeToken(tenant) + "." + EncodeToken(workload). Putting the tenant
// first lets a watch on [TenantClaimsFilter] see one tenant's claims.
func ClaimKey(tenant, workload string) string {
	return EncodeToken(tenant) + "." + EncodeToken(workload)
}

// TenantClaimsFilter is the KV key filter matching every [ClaimKey] of one
// tenant ("<enc tenant>.*").
func TenantClaimsFilter(tenant string) string {
	return EncodeToken(tenant) + ".*"
}

// ParseClaimKey splits and decodes a key made by [ClaimKey]. It fails with
// [CodeInvalidArgument] unless the key has exactly two non-empty, well-formed
// tokens.
func ParseClaimKey(key string) (tenant, workload string, err error) {
	t, w, ok := strings.Cut(key, ".")
	if !ok || t == "" || w == "" || strings.IndexByte(w, '.') >= 0 {
		return "", "", Errorf(CodeInvalidArgument, "malformed claim key %s: want <tenant>.<workload>", quote(key))
	}
	if tenant, err = DecodeToken(t); err != nil {
		return "", "", err
	}
	if workload, err = DecodeToken(w); err != nil {
		return "", "", err
	}
	return tenant, workload, nil
}

// keep reports whether EncodeToken copies c unchanged.
func keep(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-'
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
