package devnode

import (
	"net/netip"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

func TestIPAllocator(t *testing.T) {
	r, err := ParseIPRange("127.1.0.254-127.1.1.2")
	if err != nil {
		t.Fatal(err)
	}
	a := newIPAllocator(r)
	var got []string
	for _, uid := range []types.UID{"a", "b", "c"} {
		ip, err := a.allocate(uid)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ip.String())
	}
	// .255 and .0 are skipped.
	if want := []string{"127.1.0.254", "127.1.1.1", "127.1.1.2"}; !equal(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	if ip, err := a.allocate("a"); err != nil || ip.String() != "127.1.0.254" {
		t.Errorf("allocate again for a = %v, %v; want its own IP", ip, err)
	}
	if _, err := a.allocate("d"); err == nil {
		t.Error("allocation beyond the range succeeded")
	}
	a.release("b")
	if ip, err := a.allocate("d"); err != nil || ip.String() != "127.1.1.1" {
		t.Errorf("after release: %v, %v", ip, err)
	}

	// Reservations (adoption): never one IP for two UIDs, nor two IPs for one UID.
	taken := netip.MustParseAddr("127.1.0.254")
	if a.reserve("x", taken) {
		t.Error("reserved an IP held by another pod")
	}
	if !a.reserve("a", taken) {
		t.Error("re-reserving a pod's own IP failed")
	}
	out := netip.MustParseAddr("127.9.9.9") // outside the range: adoptable
	if !a.reserve("x", out) {
		t.Error("reserving a free loopback IP outside the range failed")
	}
	if a.reserve("x", netip.MustParseAddr("127.9.9.10")) {
		t.Error("reserved a second IP for one pod")
	}
	for _, bad := range []string{"127.0.0.7", "10.0.0.1", "127.1.2.0", "127.1.2.255", "::1"} {
		if a.reserve("y", netip.MustParseAddr(bad)) {
			t.Errorf("reserved unusable IP %s", bad)
		}
	}
	if a.len() != 4 {
		t.Errorf("len %d, want 4", a.len())
	}

	for _, bad := range []string{"127.0.0.1-127.1.0.1", "127.1.0.1-10.0.0.1", "127.2.0.0-127.1.0.0", "127.1.0.1"} {
		if _, err := ParseIPRange(bad); err == nil {
			t.Errorf("ParseIPRange(%q) accepted", bad)
		}
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
