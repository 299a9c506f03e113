package membership

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// Reachability check of suspects.
//
// memberlist needs the whole suspicion timeout (3.4 s by default) to tell a dead host from a paused
// process, because all it has is the process's answers. The host's kernel can tell them apart much
// sooner: a paused or crashed process's kernel still completes a TCP handshake on the gossip port (the
// listening socket's backlog answers without the process), or answers it with a reset; a host that is
// cut off or powered off answers nothing. So as soon as a member is suspected, this member dials the
// suspect's gossip address; when ReachAttempts dials in a row get no answer within ReachTimeout, the
// suspect is marked Unreachable, and a peer is Down (its entries are withheld) when it is DEAD or
// SUSPECT and Unreachable. Down ends when the member is alive again (it refuted the suspicion or
// answered a probe) or a later dial gets an answer.
//
// memberlist gossips suspicions but tells its delegates nothing about them, and a member probes each
// other member only once per round (n probe intervals). So the member whose probe failed gossips a
// hint ("X is suspect") as a user message; every member that receives it dials X itself. A hint
// alone changes nothing: each member acts on its own dials, so one confused member cannot make the
// others withdraw a healthy host.

// msgSuspectHint is the user message "the member named in the rest of the message is suspect".
const msgSuspectHint byte = 1

// reachDialer dials a TCP address and reports whether the host's kernel answered: a completed
// handshake or a refusal (a reset) both prove the host is there.
type reachDialer func(ctx context.Context, addr string) bool

func dialAnswered(ctx context.Context, addr string) bool {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// suspectHint is a broadcast of msgSuspectHint; a newer hint about the same member replaces an older
// one in the queue.
type suspectHint struct {
	name string
	msg  []byte
}

func newSuspectHint(name string) *suspectHint {
	return &suspectHint{name: name, msg: append([]byte{msgSuspectHint}, name...)}
}

func (h *suspectHint) Invalidates(b memberlist.Broadcast) bool {
	o, ok := b.(*suspectHint)
	return ok && o.name == h.name
}
func (h *suspectHint) Message() []byte { return h.msg }
func (h *suspectHint) Finished()       {}

// suspected is called when this member's own probe of name failed: it tells the others and checks
// the suspect's host.
func (m *Member) suspected(name string) {
	if m.hints != nil {
		m.hints.QueueBroadcast(newSuspectHint(name))
	}
	m.checkReach(name)
}

// hinted handles a user message from another member.
func (m *Member) hinted(msg []byte) {
	if len(msg) < 2 || msg[0] != msgSuspectHint {
		return // unknown messages come from newer versions: ignore them
	}
	if name := string(msg[1:]); name != m.cfg.Name {
		m.checkReach(name)
	}
}

// checkReach starts dialling the named member's gossip address, unless a check of it is running. It
// runs until the member is no longer suspected or, if its first round found it reachable and this
// member does not suspect it, right after that round.
func (m *Member) checkReach(name string) {
	m.mu.Lock()
	p, ok := m.peers[name]
	if !ok || m.closed || m.checking[name] || p.State == StateDead || p.State == StateLeft {
		m.mu.Unlock()
		return
	}
	m.checking[name] = true
	addr, dial := p.Addr.String(), m.dial
	m.wg.Add(1) // under m.mu, before Shutdown sets closed and waits
	m.mu.Unlock()

	go func() {
		defer m.wg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.checking, name)
			m.mu.Unlock()
		}()
		for {
			answered := false
			for range m.cfg.ReachAttempts {
				ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ReachTimeout)
				answered = dial(ctx, addr)
				// A dial that fails fast (no route, host unreachable) still waits out the timeout, so
				// that ReachAttempts dials span the same time whatever the failure.
				select {
				case <-ctx.Done():
				case <-m.stop:
				}
				cancel()
				if answered {
					break
				}
			}
			if !m.setReach(name, answered) {
				return
			}
			select {
			case <-m.stop:
				return
			case <-time.After(m.cfg.ReachTimeout):
			}
		}
	}()
}

// setReach records the outcome of a round of dials. An unanswered round makes the member SUSPECT
// (if it was alive: another member's hint) and Unreachable. It returns whether to keep checking: while
// the member stays suspect.
func (m *Member) setReach(name string, answered bool) bool {
	select {
	case <-m.stop:
		return false
	default:
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.peers[name]
	if !ok || p.State == StateDead || p.State == StateLeft {
		return false
	}
	if answered && p.State == StateAlive {
		return false // a hint about a host that answers: nothing to do
	}
	if p.Unreachable == !answered {
		return p.State == StateSuspect
	}
	prev, wasDown := p.State, p.Down()
	p.Unreachable = !answered
	if p.State != StateSuspect {
		p.State, p.Since = StateSuspect, time.Now()
	}
	m.log.Info("gossip member reachability", "peer", name, "node", p.Meta.Node, "unreachable", p.Unreachable, "state", p.State.String())
	m.publish(Event{Peer: *p, Previous: prev, PreviousDown: wasDown})
	return true
}
