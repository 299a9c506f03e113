package membership

import (
	"math/rand/v2"
)

// Reconnecting to the dead, after a partition.
//
// memberlist gossips to a dead member for GossipToTheDeadTime (30 s) after its death and then forgets
// it: it never probes the dead, and pushes and pulls state only with live members. When a partition
// outlasts that, each half holds the other half dead for good, and nothing brings them together
// again: a member re-joins its seeds only while it is alone. So, as Serf does, a member joins one
// DEAD member every ReconnectInterval: a state exchange with it brings each side the other side's
// members, which memberlist no longer knows and so takes as new, and gossip spreads them to the rest
// of each half.
//
// Only a DEAD member whose host answers this member's dials (not Unreachable, see reach.go) is
// joined: a host that does not answer would only hold the attempt up. A DEAD member's check dials its
// host every deadRecheck ReachTimeouts (deadSlow after a minute), and asks for a reconnect at once
// when the host answers again after it did not: that is how a healed partition looks from here. LEFT
// members are never joined: they left on purpose.
//
// One attempt runs at a time, in its own goroutine: a Join of a peer that accepts the connection and
// never answers (a paused process) blocks for memberlist's TCPTimeout (10 s), and maintain must not
// wait for it. Shutdown ends an attempt in flight (see transport).

// requestReconnect asks the maintain loop for a reconnect now (once, however often it is asked
// meanwhile). It never blocks; callers may hold m.mu.
func (m *Member) requestReconnect() {
	select {
	case m.redial <- struct{}{}:
	default:
	}
}

// reconnect starts a Join of one DEAD member whose host answers, chosen at random, unless an attempt
// is in flight or there is none. Called from maintain; it does not wait for the Join.
func (m *Member) reconnect() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.reconnecting {
		return
	}
	var dead []*Peer
	for _, p := range m.peers {
		if p.State == StateDead && !p.Unreachable && p.Addr.IsValid() && p.Name != m.cfg.Name {
			dead = append(dead, p)
		}
	}
	if len(dead) == 0 {
		return
	}
	p := dead[rand.IntN(len(dead))]
	name, node, addr := p.Name, p.Meta.Node, p.Addr.String()
	m.reconnecting = true
	m.wg.Add(1) // under m.mu, before Shutdown sets closed and waits
	go func() {
		defer m.wg.Done()
		_, err := m.ml.Join([]string{addr})
		m.mu.Lock()
		m.reconnecting = false
		m.mu.Unlock()
		if err != nil {
			m.log.Debug("gossip reconnect failed", "peer", name, "node", node, "addr", addr, "err", err)
			return
		}
		m.log.Info("gossip reconnected to a dead member", "peer", name, "node", node, "addr", addr)
	}()
}
