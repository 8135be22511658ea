package idlereaper

// The reaper's local schedule and its decisions, without I/O.
//
// Every tracked claim has at most one "check" timer (its deadline, the end of
// a debounce interval, or a retry after a failed write) and, with
// idle.watchDirs, one "probe" timer. They live in one min-heap indexed by
// (key, kind), so arming, moving and removing a timer cost O(log n) and a
// moved or removed timer leaves no stale entry behind; the loop sleeps on one
// time.Timer set to the earliest entry. A popped timer only means "look at
// this key now": [decide] reads the key's whole state again, so a timer that
// is early or no longer wanted does nothing.

import (
	"container/heap"
	"time"

	"boilerhouse.dev/messages"
)

type timerKind uint8

const (
	timerCheck timerKind = iota // deadline, end of a debounce interval, retry of a write
	timerProbe                  // the next idle.watchDirs probe
)

type timerID struct {
	key  string
	kind timerKind
}

type timerItem struct {
	id    timerID
	at    time.Time
	index int // position in the heap, kept by Swap/Push
}

// timerHeap implements heap.Interface, earliest first.
type timerHeap []*timerItem

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	return h[i].at.Before(h[j].at)
}
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *timerHeap) Push(x any) {
	it := x.(*timerItem)
	it.index = len(*h)
	*h = append(*h, it)
}
func (h *timerHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.index = -1
	return it
}

// timers is a set of due times, at most one per timerID. Not safe for
// concurrent use (the loop owns it).
type timers struct {
	h    timerHeap
	byID map[timerID]*timerItem
}

func newTimers() *timers { return &timers{byID: map[timerID]*timerItem{}} }

// set arms id at at, replacing its previous time.
func (t *timers) set(id timerID, at time.Time) {
	if it, ok := t.byID[id]; ok {
		it.at = at
		heap.Fix(&t.h, it.index)
		return
	}
	it := &timerItem{id: id, at: at}
	heap.Push(&t.h, it)
	t.byID[id] = it
}

// remove disarms id (a no-op when unarmed).
func (t *timers) remove(id timerID) {
	if it, ok := t.byID[id]; ok {
		heap.Remove(&t.h, it.index)
		delete(t.byID, id)
	}
}

func (t *timers) has(id timerID) bool {
	_, ok := t.byID[id]
	return ok
}

func (t *timers) len() int { return len(t.h) }

// next is the earliest armed time.
func (t *timers) next() (time.Time, bool) {
	if len(t.h) == 0 {
		return time.Time{}, false
	}
	return t.h[0].at, true
}

// popDue removes and returns the timers due at now, earliest first.
func (t *timers) popDue(now time.Time, into []timerID) []timerID {
	for len(t.h) > 0 && !t.h[0].at.After(now) {
		it := heap.Pop(&t.h).(*timerItem)
		delete(t.byID, it.id)
		into = append(into, it.id)
	}
	return into
}

// action is what the loop does about one tracked claim.
type action uint8

const (
	actNone action = iota
	actArm         // write the idle key with decision.last (a compare-and-set)
	actFire        // replace the idle key with a fired value, then ask for the release
)

// keyView is what the loop knows about one tracked claim.
type keyView struct {
	rec        messages.ClaimRecord
	st         idleState
	last       time.Time // best known last activity of this claim life
	pending    time.Time // debounced activity not yet written
	hasPending bool
	wrote      time.Time // when activity was last written
	retryAt    time.Time // no write before this (a write failed)
}

type decision struct {
	act         action
	last        time.Time // lastActivity to write (actArm, actFire)
	next        time.Time // look again then; zero: only when the state changes
	dropPending bool      // the pending activity is written now or can no longer matter
	fromPending bool      // actArm writes pending activity: a debounce interval starts
}

// decide is the reaper's whole policy for one claim at now.
func decide(v keyView, now time.Time, debounce, firedTTL time.Duration) decision {
	var d decision
	if now.Before(v.retryAt) {
		d.next = v.retryAt
		return d
	}
	to := timeout(v.rec)
	armed := v.st.live && v.st.val.ClaimID == v.rec.ID
	if v.st.val.ClaimID == v.rec.ID && v.st.val.Fired {
		// The release was asked; later activity is too late. The fired key's TTL marker
		// brings the claim back here if it is still Active then, to ask again. A marker
		// earlier than that is the expiry of the value the fired one replaced: the server
		// decides to expire a key and writes its marker in two steps, and a fired write
		// can land in between and be wiped. Releasing again on it would release twice,
		// so the retry waits for the fired value's own time.
		d.dropPending, v.hasPending = v.hasPending, false
		if armed {
			return d
		}
		if retry := v.st.at.Add(firedTTL); now.Before(retry) {
			d.next = retry
			return d
		}
	}
	if v.hasPending {
		at := v.pending
		switch {
		case armed && !at.After(v.st.val.LastActivity), !at.Add(to).After(now):
			d.dropPending = true // it cannot move the deadline
		case now.Sub(v.wrote) < debounce:
			// Not yet: and the deadline waits too, as this activity moves it.
			d.next = v.wrote.Add(debounce)
			return d
		default:
			last := at
			if v.last.After(last) {
				last = v.last
			}
			return decision{act: actArm, last: last, dropPending: true, fromPending: true}
		}
	}
	if armed {
		if dl := v.st.val.Deadline(); dl.After(now) {
			d.next = dl
			return d
		}
		d.act, d.last = actFire, v.last
		return d
	}
	// Not armed for this life (new claim, expired key, or a write that failed).
	d.last = v.last
	if v.last.Add(to).After(now) {
		d.act = actArm
	} else {
		d.act = actFire
	}
	return d
}
