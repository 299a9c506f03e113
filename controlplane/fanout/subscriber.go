package fanout

import (
	"sync"
)

// subscriber is one Sync stream's mailbox. The watch loop queues deltas into it without ever blocking;
// the stream goroutine drains it, merging what queued up into one message. Its memory is bounded by
// Config.MaxPending items: when the queued items exceed it, the queue is merged (coalescing repeated
// changes of the same object); if the merge is still too large, the backlog is dropped and the stream is
// owed a snapshot instead.
type subscriber struct {
	node   string
	notify chan struct{} // capacity 1: "there is something to drain"

	mu         sync.Mutex // guards the fields below
	pending    []*delta   // queued deltas, oldest first; shared read-only with other streams of the node
	items      int        // sum of the queued deltas' sizes, an upper bound of their merge's
	pendingRev int64      // newest revision the queue reflects
	resnapshot bool       // the backlog was dropped (or the hub reloaded): send a snapshot next
	peak       int        // largest queued item count seen, for tests
}

func newSubscriber(node string) *subscriber {
	return &subscriber{node: node, notify: make(chan struct{}, 1)}
}

// push queues d (revision rev). Called by the watch loop with Hub.mu held; never blocks. It reports
// whether the backlog overflowed into a snapshot.
func (s *subscriber) push(d *delta, rev int64, max int) (overflowed bool) {
	s.mu.Lock()
	if !s.resnapshot {
		s.pending = append(s.pending, d)
		s.items += d.size()
		s.pendingRev = rev
		if s.items > max {
			merged := mergeAll(s.pending)
			s.pending, s.items = []*delta{merged}, merged.size()
			if s.items > max {
				s.pending, s.items, s.resnapshot, overflowed = nil, 0, true, true
			}
		}
		s.peak = maxInt(s.peak, s.items)
	}
	s.mu.Unlock()
	s.wake()
	return overflowed
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// mergeAll returns the merge of ds into a new delta; ds are not modified.
func mergeAll(ds []*delta) *delta {
	if len(ds) == 1 {
		return ds[0]
	}
	m := newDelta()
	for _, d := range ds {
		m.merge(d)
	}
	return m
}

// requestSnapshot drops the backlog and asks for a snapshot (after a hub reload).
func (s *subscriber) requestSnapshot() {
	s.mu.Lock()
	s.pending, s.items, s.resnapshot = nil, 0, true
	s.mu.Unlock()
	s.wake()
}

func (s *subscriber) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// take returns the merged backlog and clears it, or (nil, 0, true) when a snapshot is owed.
func (s *subscriber) take() (*delta, int64, bool) {
	s.mu.Lock()
	if s.resnapshot {
		s.mu.Unlock()
		return nil, 0, true
	}
	ds, rev := s.pending, s.pendingRev
	s.pending, s.items = nil, 0
	s.mu.Unlock()
	if len(ds) == 0 {
		return nil, 0, false
	}
	return mergeAll(ds), rev, false
}

func (s *subscriber) pendingSize() (size, peak int, resnapshot bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.items, s.peak, s.resnapshot
}
