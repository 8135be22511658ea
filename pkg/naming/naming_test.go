package naming

import (
	"regexp"
	"strings"
	"testing"
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func TestClaimName(t *testing.T) {
	seen := map[string][2]string{}
	pairs := [][2]string{{"a-b", "c"}, {"a", "b-c"}, {"Alice", "web"}, {"alice", "web"}, {"org.acme", "web"},
		{"org-acme", "web"}, {"A_b.c-9", "x"}, {"_", "w"}, {strings.Repeat("z", 63), strings.Repeat("w", 63)}}
	for _, p := range pairs {
		n := ClaimName(p[0], p[1])
		if len(n) > 63 || !dnsLabel.MatchString(n) || !strings.HasPrefix(n, "claim-") {
			t.Errorf("%v: %q is not a valid claim name", p, n)
		}
		if other, dup := seen[n]; dup {
			t.Errorf("%v and %v both named %q", p, other, n)
		}
		seen[n] = p
		if ClaimName(p[0], p[1]) != n {
			t.Errorf("%v: name not deterministic", p)
		}
	}
	if n := ClaimName("alice", "web"); !strings.HasPrefix(n, "claim-alice-web-") {
		t.Errorf("readable prefix missing: %q", n)
	}
}
