package membership

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// Reachability check of suspects and the dead.
//
// memberlist judges processes: all it has is a process's answers, so a paused agent, a crashed one
// and a host that is gone look the same to it, and it needs the whole suspicion timeout (4 s by
// default) before it declares any of them DEAD. Forwarding needs to know about the host: its kernel
// keeps forwarding to its VMs while its agent is paused, crashed or restarting, and withdrawing its
// entries then would cut those VMs off. The host's kernel answers for itself: a paused or crashed
// process's kernel still completes a TCP handshake on the gossip port (the listening socket's backlog
// answers without the process, until it is full) or answers it with a reset, and resets a dial of a
// port nobody listens on (see DialHost); a host that is cut off or powered off answers nothing.
//
// So as soon as a member is suspected, and for as long as it is SUSPECT or DEAD, this member dials
// its gossip address; when ReachAttempts dials in a row get no answer within ReachTimeout (while this
// member hears from others: see "Hearing from others" below) the member is marked Unreachable, and a
// peer is Down (its entries are withheld) when it is SUSPECT, DEAD or
// LEFT and Unreachable. A host cut off is Down about half a second after the suspicion reaches this
// member; a host whose kernel answers is never Down, whatever memberlist concludes about its process;
// and after a partition heals, the stale suspicions the healed member's memberlist still holds (their
// gossip was lost in the partition, so nobody refuted them) cannot make it withdraw peers that answer.
//
// A member that LEFT (its agent stopped gracefully, for an upgrade or for good) is dialled too, as a
// DEAD one is: its host keeps forwarding to its VMs until it dies or is powered off, and then its
// entries must go although no suspicion will ever come. A DEAD member whose host answers again after
// it was Unreachable may be the other side of a healed partition: the check asks for a reconnect at
// once (see reconnect.go).
//
// A check ends when the member is alive and its host answers (or the member is forgotten). An alive
// message in the middle of an unanswered round (a refutation, or a stale one, see NotifyAlive) gets
// one more round rather than the end of the check: a stale message must not hide a host that is gone
// until another probe fails, which in a large fabric may be seconds away.
//
// memberlist gossips suspicions but tells its delegates nothing about them, and a member probes each
// other member only once per round (n probe intervals). So the member whose probe failed gossips a
// hint ("X is suspect") as a user message; every member that receives it dials X itself. A hint
// alone changes nothing: each member acts on its own dials, so one confused member cannot make the
// others withdraw a healthy host.

// msgSuspectHint is the user message "the member named in the rest of the message is suspect".
const msgSuspectHint byte = 1

// ReachDialer dials a member's gossip address and reports whether its host's kernel answered.
type ReachDialer func(ctx context.Context, addr string) (answered bool)

// DialHost is the default Config.ReachDialer: a TCP dial of addr; a completed handshake or a refusal
// (a reset) both prove the host is there.
func DialHost(ctx context.Context, addr string) bool {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// ReachFallbackPort is the port a check dials on a host whose gossip port answered earlier in the
// same check and answers no more: tcpmux, which no host of a fabric serves, so the host's kernel
// resets the dial. A paused process's kernel completes handshakes on its gossip socket only until
// the socket's accept queue is full (every member dials a suspect several times a second, and nobody
// accepts). The fallback is not trusted alone: a firewall between the hosts that rejects other ports
// would answer it for a host that is gone, so a host whose gossip port never answered stays
// unanswered.
const ReachFallbackPort = "1"

// fallbackAddr is addr's host at ReachFallbackPort ("" when addr has no host part).
func fallbackAddr(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(host, ReachFallbackPort)
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
	m.hints.QueueBroadcast(newSuspectHint(name))
	m.checkReach(name)
}

// hinted handles a user message from another member. A hint that starts a check here is passed on,
// as memberlist passes on the suspicions it learns: the sender's own retransmissions reach only a
// few members of a large fabric. relayAfter bounds how often one member relays hints about one name.
func (m *Member) hinted(msg []byte) {
	if len(msg) < 2 || msg[0] != msgSuspectHint {
		return // unknown messages come from newer versions: ignore them
	}
	name := string(msg[1:])
	if name == m.cfg.Name || !m.checkReach(name) {
		return
	}
	m.mu.Lock()
	relay := time.Since(m.relayed[name]) > relayAfter
	if relay {
		m.relayed[name] = time.Now()
	}
	m.mu.Unlock()
	if relay {
		m.hints.QueueBroadcast(newSuspectHint(name))
	}
}

// relayAfter is how long a member waits before it relays another hint about the same member.
const relayAfter = 5 * time.Second

// checkReach starts dialling the named member's gossip address, unless a check of it is running; it
// reports whether it started one. A check runs while the member is SUSPECT, DEAD or LEFT (every
// ReachTimeout while suspect, every deadRecheck ReachTimeouts while dead or left, every deadSlow once
// so for deadSlowAfter); a hint about an alive member that answers ends after one round.
// Called from memberlist's delegates and log (suspicions, hints, deaths, leaves): it never blocks.
func (m *Member) checkReach(name string) bool {
	m.mu.Lock()
	p, ok := m.peers[name]
	if !ok || m.closed || m.checking[name] {
		m.mu.Unlock()
		return false
	}
	m.checking[name] = true
	addr := p.Addr.String()
	m.wg.Add(1) // under m.mu, before Shutdown sets closed and waits
	m.mu.Unlock()

	go func() {
		defer m.wg.Done()
		answeredOnce := false // the gossip port answered during this check: the fallback counts
		recheck := true       // one more round may follow an unanswered one the member came back during
		for {
			since, ok := m.stateSince(name)
			if !ok {
				m.endCheck(name)
				return
			}
			m.mu.Lock()
			dial := m.dial // read each round: a test cuts a host by replacing it, also mid-check
			back := m.back
			m.mu.Unlock()
			answered, heard, ok := m.roundHeard(back, dial, addr, answeredOnce)
			if !ok {
				if m.life.Err() != nil {
					return // shutting down
				}
				continue // this member hears from others again: the round's dials said nothing
			}
			answeredOnce = answeredOnce || answered
			if !answered {
				switch heard {
				case heardLate:
					continue // this member's link came back during the round: dial again
				case heardNone:
					m.isolatedVerdict.Store(true) // dial again once this member hears from someone
				}
			}
			next, again := m.setReach(name, since, answered, &recheck)
			if !again {
				return
			}
			select {
			case <-m.stop:
				return
			case <-back.Done():
			case <-time.After(next):
			}
		}
	}()
	return true
}

// Hearing from others. A dial that got no answer says nothing about the peer when this member's
// own link was down meanwhile: a host cut off, or one whose switch port went down for a moment,
// dials its peers in vain as long as it is cut, and those rounds would find every peer
// unreachable. Withdrawing them while cut costs nothing (no frame could reach them anyway), but a
// verdict still standing once the link is back would withdraw healthy peers until the next round
// (up to a round and a wait, about 0.6 s, measured 0.3 s in the lab). So a member notes when it
// last heard from another (a ping it answered, an ack of its own probe: several a second in a
// fabric of three or more; a hint, a state exchange) and judges each unanswered round by it:
//   - heard during the round, before its last window began: the link was up when the last dial
//     went out, and the verdict stands;
//   - heard only after the last window began: the link came back during the round; the round is
//     dropped and dialled again at once;
//   - heard from nobody: the verdict stands (this member may be cut off, or be the fabric's only
//     other member), and as soon as the member hears from someone again every check starts a new
//     round, cancelling the windows in flight.

// roundHeard is one round of dials of addr (dialRound) that the first thing heard after an
// isolated verdict (back) cancels (ok false, as when Shutdown does), and how this member heard from
// others during it.
func (m *Member) roundHeard(back context.Context, dial ReachDialer, addr string, fallback bool) (answered bool, heard roundHearing, ok bool) {
	ctx, cancel := context.WithCancel(m.life) // Shutdown cancels m.life
	defer cancel()
	stop := context.AfterFunc(back, cancel)
	defer stop()
	start := time.Now().Add(-m.cfg.ReachTimeout) // a moment heard just before the round counts
	var lastWindow int64
	answered, ok = m.dialRound(ctx, dial, addr, fallback, func() { lastWindow = m.heard.Load() })
	switch last := m.heard.Load(); {
	case lastWindow >= start.UnixNano():
		heard = heardInTime
	case last >= start.UnixNano():
		heard = heardLate
	default:
		heard = heardNone
	}
	return answered, heard, ok
}

// roundHearing is when this member heard from others during a round of dials.
type roundHearing int

const (
	heardInTime roundHearing = iota // before the round's last window began
	heardLate                       // only after it began
	heardNone
)

// heardFrom records that this member heard from another; the first time after an isolated verdict,
// every check dials again at once.
func (m *Member) heardFrom() {
	m.heard.Store(time.Now().UnixNano())
	if !m.isolatedVerdict.Swap(false) {
		return
	}
	m.mu.Lock()
	m.hearAgain()
	m.back, m.hearAgain = context.WithCancel(context.Background())
	m.mu.Unlock()
}

// dialRound dials addr up to ReachAttempts times and reports whether the host answered; ok is false
// when ctx ends meanwhile. lastWindow, when set, is called as the last window begins. With fallback
// (its gossip port answered earlier in this check), each dial also tries the host's
// ReachFallbackPort, and either answer counts.
func (m *Member) dialRound(ctx context.Context, dial ReachDialer, addr string, fallback bool, lastWindow func()) (answered, ok bool) {
	fb := ""
	if fallback {
		fb = fallbackAddr(addr)
	}
	for i := range m.cfg.ReachAttempts {
		if i == m.cfg.ReachAttempts-1 && lastWindow != nil {
			lastWindow()
		}
		dctx, cancel := context.WithTimeout(ctx, m.cfg.ReachTimeout)
		answered = dialEither(dctx, dial, addr, fb)
		if !answered {
			// A dial that fails fast (no route, host unreachable) still waits out the timeout, so that
			// ReachAttempts unanswered dials span the same time whatever the failure.
			<-dctx.Done()
		}
		cancel()
		if ctx.Err() != nil {
			return false, false
		}
		if answered {
			return true, true
		}
	}
	return false, true
}

// HostAnswers reports whether the host at addr answers a reachability check as this member's checks
// dial (Config.ReachDialer, ReachAttempts dials of ReachTimeout each): for a host this member does
// not know from gossip, such as a node recorded before this member started whose host died
// meanwhile. It returns ctx's error when ctx ends first.
func (m *Member) HostAnswers(ctx context.Context, addr string) (bool, error) {
	m.mu.Lock()
	dial := m.dial
	m.mu.Unlock()
	answered, ok := m.dialRound(ctx, dial, addr, false, nil)
	if !ok {
		return false, ctx.Err()
	}
	return answered, nil
}

// dialEither dials a, and b too unless it is "", at the same time; either answer counts.
func dialEither(ctx context.Context, dial ReachDialer, a, b string) bool {
	if b == "" {
		return dial(ctx, a)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // the first answer ends the other dial
	answers := make(chan bool, 2)
	go func() { answers <- dial(ctx, a) }()
	go func() { answers <- dial(ctx, b) }()
	return <-answers || <-answers
}

// endCheck marks the named member's check finished.
func (m *Member) endCheck(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.checking, name)
}

// deadRecheck is how often a DEAD or LEFT member's host is dialled again, in ReachTimeouts: a host
// whose agent died or stopped but whose kernel answers is not Down until it stops answering, and
// then within the failover target (2 s: one recheck interval, then ReachAttempts dials). After
// deadSlowAfter in that state the member is dialled every deadSlow only: most such hosts are gone
// for good or stay up for good, and each check costs every other member a dial.
const (
	deadRecheck   = 4
	deadSlowAfter = time.Minute
	deadSlow      = 5 * time.Second
)

// stateSince returns when the named member's current state began; false when it is gone.
func (m *Member) stateSince(name string) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.peers[name]
	if !ok {
		return time.Time{}, false
	}
	return p.Since, true
}

// setReach records a round of dials that began while the member was in the state that began at
// since. An unanswered round makes it Unreachable, and SUSPECT if it was alive (another member's
// hint). recheck is the check's own: whether it may still run one more round for a member that came
// back during an unanswered round (setReach clears it when it does). It returns whether to check
// again, and when; when not, the check ends here, under the same lock, so that a new suspicion right
// after starts a new check.
func (m *Member) setReach(name string, since time.Time, answered bool, recheck *bool) (next time.Duration, again bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer func() {
		if !again {
			delete(m.checking, name)
		}
	}()
	if m.closed {
		return 0, false
	}
	p, ok := m.peers[name]
	if !ok {
		return 0, false
	}
	if p.State == StateAlive && !p.Since.Equal(since) {
		// The member came back during this round (it refuted, answered a probe, or a stale alive
		// message arrived: NotifyAlive cannot tell), so the round says nothing about it now. An
		// answered round ends the check; an unanswered one gets one more round, at once, from the
		// member's new state: Unreachable and SUSPECT again if its host is gone.
		if answered || !*recheck {
			return 0, false
		}
		*recheck = false
		return 0, true
	}
	if p.State == StateAlive && answered {
		return 0, false // an alive member that answers needs no check
	}
	next = m.cfg.ReachTimeout
	switch p.State {
	case StateDead, StateLeft:
		next *= deadRecheck
		if time.Since(p.Since) > deadSlowAfter {
			next = deadSlow
		}
	}
	if p.Unreachable == !answered {
		return next, true
	}
	if p.State == StateDead && answered {
		m.requestReconnect() // a partition may have healed: its other side is there again
	}
	prev, wasDown := p.State, p.Down()
	p.Unreachable = !answered
	if p.State == StateAlive {
		p.State, p.Since = StateSuspect, time.Now()
	}
	m.log.Info("gossip member reachability", "peer", name, "node", p.Meta.Node, "unreachable", p.Unreachable, "state", p.State.String())
	m.publish(Event{Peer: *p, Previous: prev, PreviousDown: wasDown})
	return next, true
}
