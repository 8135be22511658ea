package devnode

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// ipAllocator hands out Pod IPs from an IPRange, one per Pod UID, never one address to two Pods.
// Allocation walks a cursor round the range, so a freed address is not reused until the rest of
// the range has been handed out (stale endpoints rarely hit a new Pod). Reserve adopts addresses
// recorded in Pod status, including ones outside the range (after a range change).
type ipAllocator struct {
	mu          sync.Mutex
	first, last uint32
	next        uint32
	byIP        map[netip.Addr]types.UID
	byUID       map[types.UID]netip.Addr
}

func newIPAllocator(r IPRange) *ipAllocator {
	first, last := addrToU32(r.First), addrToU32(r.Last)
	return &ipAllocator{
		first: first, last: last, next: first,
		byIP:  map[netip.Addr]types.UID{},
		byUID: map[types.UID]netip.Addr{},
	}
}

func addrToU32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func u32ToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// usable reports whether a may be handed to a Pod: allowed at all and not a .0 or .255 host part.
func usable(a netip.Addr) bool {
	if !podIPAllowed(a) {
		return false
	}
	last := a.As4()[3]
	return last != 0 && last != 255
}

// reserve records ip as uid's address. It fails if ip is unusable, held by another Pod, or uid
// already holds a different address. Reserving the address uid already holds succeeds.
func (a *ipAllocator) reserve(uid types.UID, ip netip.Addr) bool {
	if !usable(ip) {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if owner, ok := a.byIP[ip]; ok {
		return owner == uid
	}
	if _, ok := a.byUID[uid]; ok {
		return false
	}
	a.byIP[ip] = uid
	a.byUID[uid] = ip
	return true
}

// allocate returns uid's address, assigning the next free one if it has none.
func (a *ipAllocator) allocate(uid types.UID) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byUID[uid]; ok {
		return ip, nil
	}
	size := uint64(a.last) - uint64(a.first) + 1
	for i := uint64(0); i < size; i++ {
		v := a.next
		if a.next == a.last {
			a.next = a.first
		} else {
			a.next++
		}
		ip := u32ToAddr(v)
		if !usable(ip) {
			continue
		}
		if _, used := a.byIP[ip]; used {
			continue
		}
		a.byIP[ip] = uid
		a.byUID[uid] = ip
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("devnode: no free Pod IP left in %s-%s", u32ToAddr(a.first), u32ToAddr(a.last))
}

// release frees uid's address, if any.
func (a *ipAllocator) release(uid types.UID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byUID[uid]; ok {
		delete(a.byUID, uid)
		delete(a.byIP, ip)
	}
}

// len returns the number of addresses held.
func (a *ipAllocator) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byIP)
}
