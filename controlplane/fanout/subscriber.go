package fanout

import (
	"sync"
)

// subscriber is one Sync stream's mailbox. The watch loop merges deltas into it without ever blocking;
// the stream goroutine drains it. Its memory is bounded by Config.MaxPending items: past that, the
// backlog is dropped and the stream is owed a snapshot instead.
type subscriber struct {
	node   string
	notify chan struct{} // capacity 1: "there is something to drain"

	mu         sync.Mutex // guards the fields below
	pending    *delta     // nil when nothing is pending
	pendingRev int64      // newest revision the pending delta reflects
	resnapshot bool       // the backlog was dropped (or the hub reloaded): send a snapshot next
	peak       int        // largest pending size seen, for tests
}

func newSubscriber(node string) *subscriber {
	return &subscriber{node: node, notify: make(chan struct{}, 1)}
}

// push merges d (revision rev) into the backlog. Called by the watch loop with Hub.mu held; never blocks.
// It reports whether the backlog overflowed into a snapshot.
func (s *subscriber) push(d *delta, rev int64, max int) (overflowed bool) {
	s.mu.Lock()
	if !s.resnapshot {
		if s.pending == nil {
			s.pending = newDelta()
		}
		s.pending.merge(d)
		s.pendingRev = rev
		if n := s.pending.size(); n > max {
			s.pending, s.resnapshot, overflowed = nil, true, true
		} else if n > s.peak {
			s.peak = n
		}
	}
	s.mu.Unlock()
	s.wake()
	return overflowed
}

// requestSnapshot drops the backlog and asks for a snapshot (after a hub reload).
func (s *subscriber) requestSnapshot() {
	s.mu.Lock()
	s.pending, s.resnapshot = nil, true
	s.mu.Unlock()
	s.wake()
}

func (s *subscriber) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// take returns the backlog and clears it, or (nil, 0, true) when a snapshot is owed.
func (s *subscriber) take() (*delta, int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resnapshot {
		return nil, 0, true
	}
	d, rev := s.pending, s.pendingRev
	s.pending = nil
	return d, rev, false
}

func (s *subscriber) pendingSize() (size, peak int, resnapshot bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending != nil {
		size = s.pending.size()
	}
	return size, s.peak, s.resnapshot
}
