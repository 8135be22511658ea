package messages

import (
	"strings"
	"testing"
)

func TestEncodeTokenExamples(t *testing.T) {
	tests := []struct{ in, want string }{
		{"org.acme", "org_2eacme"},
		{"a_b", "a_5fb"},
		{"a-b", "a-b"},
		{"A.B_c-9", "A_2eB_5fc-9"},
		{"user-123", "user-123"},
		{"a b", "a_20b"},
		{"x*>", "x_2a_3e"},
		{"é", "_c3_a9"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := EncodeToken(tt.in); got != tt.want {
			t.Errorf("EncodeToken(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTokenRoundTrip(t *testing.T) {
	ids := []string{
		"org.acme", "a_b", "a-b", "A.B_c-9", "user-123", "tg-jane", "a", "Z", "0",
		"a.b", "a_2eb", "a..b", "a__b", "a_.b", "my.org.with.dots", "UPPER_case.Mixed-1",
		"_", "__", "_2e", ".", "-", "a-", "9.9.9", strings.Repeat("a.", 31) + "b",
		"a b", "a*b", "a>b", "a\tb", "a/b", "ü", "\x00\xff",
	}
	seen := map[string]string{}
	for _, id := range ids {
		enc := EncodeToken(id)
		if enc == "" {
			t.Errorf("EncodeToken(%q) is empty", id)
		}
		if strings.ContainsAny(enc, ".*> \t\r\n") {
			t.Errorf("EncodeToken(%q) = %q contains a NATS separator, wildcard or whitespace", id, enc)
		}
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; !keep(c) && c != '_' {
				t.Errorf("EncodeToken(%q) = %q has byte %q outside [A-Za-z0-9_-]", id, enc, c)
			}
		}
		if prev, ok := seen[enc]; ok && prev != id {
			t.Errorf("EncodeToken collision: %q and %q both encode to %q", prev, id, enc)
		}
		seen[enc] = id
		dec, err := DecodeToken(enc)
		if err != nil {
			t.Errorf("DecodeToken(%q): %v", enc, err)
			continue
		}
		if dec != id {
			t.Errorf("DecodeToken(EncodeToken(%q)) = %q", id, dec)
		}
	}
	if EncodeToken("a.b") == EncodeToken("a_2eb") {
		t.Errorf("a.b and a_2eb collide")
	}
}

func TestTokenRoundTripAllBytes(t *testing.T) {
	seen := map[string]byte{}
	for b := 0; b < 256; b++ {
		s := string([]byte{'x', byte(b), 'y'})
		enc := EncodeToken(s)
		if prev, ok := seen[enc]; ok {
			t.Fatalf("bytes %d and %d collide as %q", prev, b, enc)
		}
		seen[enc] = byte(b)
		dec, err := DecodeToken(enc)
		if err != nil || dec != s {
			t.Fatalf("round trip of byte %d: got %q, %v", b, dec, err)
		}
	}
}

func TestDecodeTokenRejectsMalformed(t *testing.T) {
	for _, in := range []string{
		"_", "_zz", "_2", "a_", "a_2", "_2E", "_G0", "a.b", "a b", "a*", "a>", "_61", "_2d", "_30",
	} {
		got, err := DecodeToken(in)
		if err == nil {
			t.Errorf("DecodeToken(%q) = %q, want error", in, got)
			continue
		}
		if CodeOf(err) != CodeInvalidArgument {
			t.Errorf("DecodeToken(%q) code = %q, want %q", in, CodeOf(err), CodeInvalidArgument)
		}
	}
}

func TestClaimKey(t *testing.T) {
	tests := []struct{ tenant, workload, key string }{
		{"alice", "my-agent", "alice.my-agent"},
		{"org.acme", "my-agent", "org_2eacme.my-agent"},
		{"a_b", "w", "a_5fb.w"},
		{"A.B_c-9", "x1", "A_2eB_5fc-9.x1"},
	}
	for _, tt := range tests {
		key := ClaimKey(tt.tenant, tt.workload)
		if key != tt.key {
			t.Errorf("ClaimKey(%q, %q) = %q, want %q", tt.tenant, tt.workload, key, tt.key)
		}
		if n := strings.Count(key, "."); n != 1 {
			t.Errorf("ClaimKey(%q, %q) = %q has %d dots, want 1", tt.tenant, tt.workload, key, n)
		}
		if !strings.HasPrefix(key, strings.TrimSuffix(TenantClaimsFilter(tt.tenant), "*")) {
			t.Errorf("key %q not matched by filter %q", key, TenantClaimsFilter(tt.tenant))
		}
		tenant, workload, err := ParseClaimKey(key)
		if err != nil || tenant != tt.tenant || workload != tt.workload {
			t.Errorf("ParseClaimKey(%q) = %q, %q, %v", key, tenant, workload, err)
		}
	}
	for _, bad := range []string{"", "alice", ".w", "alice.", "a.b.c", "a_zz.w", "a.w_"} {
		if _, _, err := ParseClaimKey(bad); CodeOf(err) != CodeInvalidArgument {
			t.Errorf("ParseClaimKey(%q) err = %v, want invalid_argument", bad, err)
		}
	}
}

func TestSubjects(t *testing.T) {
	tests := []struct{ got, want string }{
		{SubjectClaimsClaim, "bh.v1.claims.claim"},
		{SubjectClaimsRelease, "bh.v1.claims.release"},
		{SubjectClaimsGet, "bh.v1.claims.get"},
		{SubjectTenantsGet, "bh.v1.tenants.get"},
		{SubjectTenantsList, "bh.v1.tenants.list"},
		{SubjectPoolAcquire, "bh.v1.pool.acquire"},
		{SubjectInstancesBoot, "bh.v1.instances.boot"},
		{SubjectInstancesRetire, "bh.v1.instances.retire"},
		{SubjectOverlaysRestore, "bh.v1.overlays.restore"},
		{SubjectOverlaysExtract, "bh.v1.overlays.extract"},
		{SubjectOverlaysList, "bh.v1.overlays.list"},
		{SubjectOverlaysDelete, "bh.v1.overlays.delete"},
		{ActivityWildcard, "bh.v1.activity.>"},
		{EventsWildcard, "bh.v1.events.>"},
		{ActivitySubject("org.acme", "my-agent"), "bh.v1.activity.org_2eacme.my-agent"},
		{EventSubject(EventClaim, "org.acme", "my-agent"), "bh.v1.events.claim.org_2eacme.my-agent"},
		{EventSubject(EventPool, "", "my-agent"), "bh.v1.events.pool._.my-agent"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
