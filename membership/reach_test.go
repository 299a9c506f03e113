package membership

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// noAnswerFrom makes m's reachability dials of addr get no answer, as from a host that is cut off
// (on loopback a stopped member's port answers with a reset, which proves its host is up). The
// host's ReachFallbackPort goes silent with it: on loopback it would reset the dial too, and a
// check during which the gossip port answered (a suspicion under load, before the cut) would go on
// finding the cut host up.
func noAnswerFrom(m *Member, addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fallback := fallbackAddr(addr)
	m.dial = func(ctx context.Context, a string) bool {
		if a == addr || a == fallback {
			<-ctx.Done()
			return false
		}
		return DialHost(ctx, a)
	}
}

// startCluster starts size members named prefix0, prefix1, ... joined through the first, and waits
// until each sees every other alive.
func startCluster(t *testing.T, prefix string, size int) []*Member {
	t.Helper()
	ms := make([]*Member, size)
	for i := range ms {
		var seeds []string
		if i > 0 {
			seeds = []string{ms[0].LocalAddr().String()}
		}
		ms[i] = startMember(t, fmt.Sprintf("%s%02d", prefix, i), memberOpts{seeds: seeds})
	}
	for _, m := range ms {
		for _, o := range ms {
			waitState(t, m, o.Name(), StateAlive, 20*time.Second)
		}
	}
	return ms
}

func waitDown(t *testing.T, m *Member, peer string, within time.Duration) Peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var got Peer
	err := m.WaitFor(ctx, func(ps []Peer) bool {
		for _, p := range ps {
			if p.Name == peer && p.Down() {
				got = p
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("%s: %s not down within %s: members %v", m.Name(), peer, within, m.Members())
	}
	return got
}

// cutOff makes every observer's dials of victim go unanswered, stops victim (a host cut off) and
// returns, per observer, the state the victim was in when that observer first found it Down, and
// how long after the cut; the test fails unless every observer does so within limit.
func cutOff(t *testing.T, victim *Member, observers []*Member, limit time.Duration) map[string]firstDown {
	t.Helper()
	downs := make(chan firstDown, len(observers))
	cut := time.Now()
	for _, m := range observers {
		noAnswerFrom(m, victim.LocalAddr().String())
		events, cancel := m.Subscribe()
		t.Cleanup(cancel)
		go func() {
			for ev := range events {
				if ev.Peer.Name == victim.Name() && ev.Peer.Down() {
					downs <- firstDown{m.Name(), ev.Peer.State, ev.Peer.Unreachable, time.Since(cut)}
					return
				}
			}
		}()
	}
	_ = victim.Shutdown()
	got := map[string]firstDown{}
	timeout := time.After(limit)
	for range observers {
		select {
		case d := <-downs:
			got[d.observer] = d
		case <-timeout:
			t.Fatalf("only %d of %d observers found the cut-off member down within %s", len(got), len(observers), limit)
		}
	}
	return got
}

type firstDown struct {
	observer    string
	state       State
	unreachable bool
	after       time.Duration
}

// TestUnreachableSuspectIsDownBeforeDead: a member whose host stops answering is Down at every
// other member well before memberlist's suspicion timeout declares it dead, and up again when it
// comes back.
func TestUnreachableSuspectIsDownBeforeDead(t *testing.T) {
	const size = 5
	ms := startCluster(t, "r-m", size)
	victim, observers := ms[size-1], ms[:size-1]
	addr := victim.LocalAddr()
	var worst time.Duration
	for _, d := range cutOff(t, victim, observers, 10*time.Second) {
		if d.state != StateSuspect || !d.unreachable {
			t.Fatalf("%s: victim down as %s (unreachable %v), want an unreachable suspect (before memberlist's death)", d.observer, d.state, d.unreachable)
		}
		worst = max(worst, d.after)
	}
	t.Logf("an unreachable member was down at every observer after %s (dead would take 4.1-4.4 s)", worst)
	// Declared dead later, it stays down: the dials' verdict carries over.
	for _, m := range observers {
		waitState(t, m, victim.Name(), StateDead, 10*time.Second)
		if p := waitDown(t, m, victim.Name(), time.Second); p.State != StateDead {
			t.Fatalf("%s: victim %s, want dead and down", m.Name(), p.State)
		}
	}

	back := startMember(t, victim.Name(), memberOpts{seeds: []string{ms[0].LocalAddr().String()}, bind: addr.String()})
	for _, m := range observers {
		waitState(t, m, back.Name(), StateAlive, 10*time.Second)
		for _, p := range m.Members() {
			if p.Name == back.Name() && (p.Down() || p.Unreachable) {
				t.Fatalf("%s: member back but still down: %+v", m.Name(), p)
			}
		}
	}
}

// TestStoppedMemberOnLiveHostIsNeverDown: a member that stops while its host answers (on loopback its
// closed port answers with a reset) is suspected and declared dead by memberlist, but never Down: its
// host's kernel would still forward to its VMs.
func TestStoppedMemberOnLiveHostIsNeverDown(t *testing.T) {
	a := startMember(t, "l-a", memberOpts{})
	b := startMember(t, "l-b", memberOpts{seeds: []string{a.LocalAddr().String()}})
	v := startMember(t, "l-v", memberOpts{seeds: []string{a.LocalAddr().String()}})
	for _, m := range []*Member{a, b} {
		waitState(t, m, v.Name(), StateAlive, 10*time.Second)
	}
	events, cancel := a.Subscribe()
	defer cancel()
	_ = v.Shutdown()
	deadline := time.After(10 * time.Second)
	var settle <-chan time.Time // after the death: long enough for two dead rechecks
	for {
		select {
		case ev := <-events:
			if ev.Peer.Name != v.Name() {
				continue
			}
			if ev.Peer.Down() {
				t.Fatalf("member on a live host is down as %s (unreachable %v)", ev.Peer.State, ev.Peer.Unreachable)
			}
			if ev.Peer.State == StateDead && settle == nil {
				settle = time.After(3 * deadRecheck * a.cfg.ReachTimeout)
			}
		case <-settle:
			for _, p := range a.Members() {
				if p.Name == v.Name() && (p.State != StateDead || p.Down()) {
					t.Fatalf("stopped member: %+v, want dead and not down", p)
				}
			}
			return
		case <-deadline:
			t.Fatal("stopped member not declared dead within 10 s")
		}
	}
}

// TestHintsReachEveryMemberOfALargerFabric: in a fabric of 16 members a member probes each other one
// only every 1.5 s, so most observers learn of a suspicion from hints; every observer finds a cut-off
// member Down while it is still SUSPECT, before memberlist's suspicion (4 s x log10 16) declares it
// dead. Measured on a quiet machine with 24 members: 0.9 s with relayed hints, 1.6 s when only the
// first suspecting member sends them.
func TestHintsReachEveryMemberOfALargerFabric(t *testing.T) {
	if testing.Short() {
		t.Skip("16 gossip members")
	}
	size := 16
	if v, err := strconv.Atoi(os.Getenv("VXFAB_GOSSIP_MEMBERS")); err == nil && v > 1 {
		size = v // a larger fabric, measured by hand: VXFAB_GOSSIP_MEMBERS=100 go test -run ...
	}
	ms := startCluster(t, "big-", size)
	victim, observers := ms[size-1], ms[:size-1]
	var worst time.Duration
	for _, d := range cutOff(t, victim, observers, 10*time.Second) {
		if d.state != StateSuspect {
			t.Fatalf("%s: victim down only once %s, want while suspect (before memberlist's death)", d.observer, d.state)
		}
		worst = max(worst, d.after)
	}
	t.Logf("a cut-off member was down at all %d observers after %s", len(observers), worst)
}

// A hint that starts a check is relayed, once per relayAfter: a large fabric learns of a suspicion
// from the members that heard of it, not only from the one that suspected.
func TestHintRelayedOnce(t *testing.T) {
	a := startMember(t, "relay-a", memberOpts{})
	b := startMember(t, "relay-b", memberOpts{seeds: []string{a.LocalAddr().String()}})
	waitState(t, a, b.Name(), StateAlive, 10*time.Second)
	noAnswerFrom(a, b.LocalAddr().String())
	hint := newSuspectHint(b.Name()).Message()
	a.hinted(hint)
	if n := a.hints.NumQueued(); n != 1 {
		t.Fatalf("%d hints queued after a hint that started a check, want 1 (relayed)", n)
	}
	a.hints.Prune(0)
	a.hinted(hint) // the check still runs: nothing new to tell
	if n := a.hints.NumQueued(); n != 0 {
		t.Fatalf("%d hints queued for a member already being checked, want 0", n)
	}
	a.hinted(newSuspectHint(a.Name()).Message()) // about itself: memberlist refutes, no relay
	if n := a.hints.NumQueued(); n != 0 {
		t.Fatalf("%d hints queued about the member itself, want 0", n)
	}
}

// TestFallbackForAFullAcceptQueue: the gossip socket of a paused process stops completing
// handshakes once its accept queue is full; its host's kernel still resets a dial of a port nobody
// listens on, which counts once the gossip port has answered in the same check (and not before: a
// firewall rejecting other ports would answer it for a host that is gone).
func TestFallbackForAFullAcceptQueue(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // a queue of one; nobody ever accepts
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	full := false
	for range 8 {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		answered := DialHost(ctx, addr)
		cancel()
		if !answered {
			full = true
			break
		}
	}
	if !full {
		t.Fatal("the accept queue never filled")
	}
	m := startMember(t, "fb-a", memberOpts{})
	if answered, _ := m.dialRound(m.life, DialHost, addr, false, nil); answered {
		t.Error("a round without the fallback answered for a full queue")
	}
	if answered, _ := m.dialRound(m.life, DialHost, addr, true, nil); !answered {
		t.Error("a round with the fallback: no answer from a host whose gossip socket's queue is full")
	}
}

// TestStaleAliveDoesNotRestoreADownSuspect: memberlist hands every alive message to NotifyAlive before
// it compares incarnations, so a stale one (a push-pull from a member that has not heard of the
// suspicion) must not bring back a suspect whose host does not answer.
func TestStaleAliveDoesNotRestoreADownSuspect(t *testing.T) {
	a := startMember(t, "sa-a", memberOpts{})
	b := startMember(t, "sa-b", memberOpts{seeds: []string{a.LocalAddr().String()}})
	waitState(t, a, b.Name(), StateAlive, 10*time.Second)
	cutOff(t, b, []*Member{a}, 10*time.Second) // b's host is gone: a finds it a suspect that does not answer

	node := &memberlist.Node{Name: b.Name()}
	if err := (&delegates{m: a}).NotifyAlive(node); err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Members() {
		if p.Name == b.Name() && !p.Down() {
			t.Fatalf("a stale alive message restored a suspect that does not answer: %+v", p)
		}
	}
}

// TestLeftMemberDownOnceItsHostStopsAnswering: a member that left gracefully is still watched (as a
// dead one is): while its host answers it is not Down, once its host stops answering it is Down
// within the failover target (its entries must go although no suspicion will ever come), and back
// alive it is up again.
func TestLeftMemberDownOnceItsHostStopsAnswering(t *testing.T) {
	a := startMember(t, "lf-a", memberOpts{})
	b := startMember(t, "lf-b", memberOpts{seeds: []string{a.LocalAddr().String()}})
	waitState(t, a, b.Name(), StateAlive, 10*time.Second)
	addr := b.LocalAddr().String()
	var cut atomic.Bool
	dialled := make(chan struct{}, 1)
	a.mu.Lock()
	a.dial = func(ctx context.Context, x string) bool {
		if x != addr && x != fallbackAddr(addr) {
			return DialHost(ctx, x)
		}
		select {
		case dialled <- struct{}{}:
		default:
		}
		if cut.Load() {
			<-ctx.Done()
			return false
		}
		return DialHost(ctx, x)
	}
	a.mu.Unlock()

	if err := b.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	_ = b.Shutdown()
	waitState(t, a, b.Name(), StateLeft, 5*time.Second)
	select {
	case <-dialled: // nothing dials b while it is alive: this is the LEFT member's check
	case <-time.After(2 * time.Second):
		t.Fatal("a member that left is not checked")
	}
	// On loopback its closed port resets the dial: its host answers.
	time.Sleep(2 * a.cfg.ReachTimeout)
	if p := peerOf(a, b.Name()); p.Down() || p.Unreachable {
		t.Fatalf("a member that left from a live host is down: %+v", p)
	}

	cut.Store(true) // its host dies later
	cutAt := time.Now()
	p := waitDown(t, a, b.Name(), 2*time.Second)
	if p.State != StateLeft {
		t.Fatalf("down as %s, want left", p.State)
	}
	t.Logf("a member that left was down %s after its host stopped answering", time.Since(cutAt))

	cut.Store(false)
	back := startMember(t, b.Name(), memberOpts{seeds: []string{a.LocalAddr().String()}, bind: addr})
	waitState(t, a, back.Name(), StateAlive, 10*time.Second)
	if p := peerOf(a, b.Name()); p.Down() || p.Unreachable {
		t.Fatalf("member back but still down: %+v", p)
	}
}

func peerOf(m *Member, name string) Peer {
	for _, p := range m.Members() {
		if p.Name == name {
			return p
		}
	}
	return Peer{}
}

// ghost makes m know a member memberlist never heard of (so memberlist never probes it nor tells
// anything about it), at addr, as NotifyJoin would; its delegates drive it from there.
func ghost(t *testing.T, m *Member, name string, role Role, addr netip.AddrPort) (*delegates, *memberlist.Node) {
	t.Helper()
	meta := Meta{Role: role, Node: name}
	if role == RoleServer {
		meta.GRPCAddr = "127.0.0.1:7499"
	}
	b, err := encodeMeta(meta)
	if err != nil {
		t.Fatal(err)
	}
	n := &memberlist.Node{Name: name, Addr: addr.Addr().AsSlice(), Port: addr.Port(), Meta: b}
	d := &delegates{m: m}
	d.NotifyJoin(n)
	return d, n
}

// TestStaleAliveMidRoundStillFindsTheHostDown: a suspect's check is in its first round (no answer
// yet, not yet Unreachable) when a stale alive message arrives (memberlist calls NotifyAlive before
// it compares incarnations). The suspicion ends, but the check runs one more round and finds the
// host gone: Down, as a suspect, without waiting for another failed probe (which, in a large
// fabric, comes only a probe round later).
func TestStaleAliveMidRoundStillFindsTheHostDown(t *testing.T) {
	a := startMember(t, "mr-a", memberOpts{})
	addr := netip.MustParseAddrPort("127.0.0.1:9") // never dialled: a's dials of it get no answer
	d, n := ghost(t, a, "mr-ghost", RoleAgent, addr)
	dialling := make(chan struct{})
	var once sync.Once
	a.mu.Lock()
	a.dial = func(ctx context.Context, x string) bool {
		if x == addr.String() || x == fallbackAddr(addr.String()) {
			once.Do(func() { close(dialling) })
			<-ctx.Done()
			return false
		}
		return DialHost(ctx, x)
	}
	a.mu.Unlock()
	events, cancel := a.Subscribe()
	defer cancel()

	// a's own probe failed, as memberlist logs it.
	if _, err := (&logWriter{m: a}).Write([]byte("[INFO] memberlist: Suspect mr-ghost has failed, no acks received")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dialling:
	case <-time.After(5 * time.Second):
		t.Fatal("the suspect's check did not start")
	}
	if p := peerOf(a, n.Name); p.State != StateSuspect || p.Unreachable {
		t.Fatalf("mid-round: %+v, want a suspect not yet unreachable", p)
	}
	if err := d.NotifyAlive(&memberlist.Node{Name: n.Name}); err != nil {
		t.Fatal(err)
	}
	if st := stateOf(a, n.Name); st != StateAlive {
		t.Fatalf("after an alive message mid-round: %s, want alive", st)
	}
	stale := time.Now()
	limit := time.After(3 * time.Second) // the rest of the round and one more: 0.4-0.8 s
	for {
		select {
		case ev := <-events:
			if ev.Peer.Name != n.Name || !ev.Peer.Down() {
				continue
			}
			if ev.Peer.State != StateSuspect {
				t.Fatalf("down as %s, want suspect", ev.Peer.State)
			}
			t.Logf("down %s after a stale alive message mid-round", time.Since(stale))
			return
		case <-limit:
			t.Fatalf("a stale alive message mid-round ended the check: %+v", peerOf(a, n.Name))
		}
	}
}

// TestDownServerNotListed: a server whose host is cut off leaves Servers() as soon as it is Down (an
// agent fails over about a second after the cut), not when memberlist declares it dead.
func TestDownServerNotListed(t *testing.T) {
	srv := startMember(t, "ds-srv", memberOpts{role: RoleServer})
	a := startMember(t, "ds-a", memberOpts{seeds: []string{srv.LocalAddr().String()}})
	waitState(t, a, srv.Name(), StateAlive, 10*time.Second)
	if got := a.Servers(); len(got) != 1 {
		t.Fatalf("Servers() = %v, want the server", got)
	}
	cutOff(t, srv, []*Member{a}, 10*time.Second)
	got := a.Servers()
	if p := peerOf(a, srv.Name()); p.State != StateSuspect || !p.Down() {
		t.Fatalf("server %+v, want a suspect that is down (too slow a machine?)", p)
	}
	if len(got) != 0 {
		t.Fatalf("Servers() = %v while the only server is down", got)
	}
}

// ownLinkDown starts a member whose own link is down until the returned flag is cleared: its dials
// of a peer get no answer (the SYN goes nowhere; the dial waits out its window, as in the lab) and it
// hears from nobody. Its probe of that peer has just failed. It returns the member, the peer's name,
// the flag and the member's events. Clearing the flag does not make it hear from anyone: the test
// calls heard.
func ownLinkDown(t *testing.T, prefix string) (a *Member, peer string, down *atomic.Bool, events <-chan Event) {
	t.Helper()
	a = startMember(t, prefix+"-a", memberOpts{})
	addr := netip.MustParseAddrPort("127.0.0.1:9")
	_, n := ghost(t, a, prefix+"-peer", RoleAgent, addr)
	down = &atomic.Bool{}
	down.Store(true)
	a.mu.Lock()
	a.dial = func(ctx context.Context, x string) bool {
		if x != addr.String() && x != fallbackAddr(addr.String()) {
			return DialHost(ctx, x)
		}
		if down.Load() {
			<-ctx.Done()
			return false
		}
		return true
	}
	a.mu.Unlock()
	events, cancel := a.Subscribe()
	t.Cleanup(cancel)
	if _, err := (&logWriter{m: a}).Write([]byte("[INFO] memberlist: Suspect " + n.Name + " has failed, no acks received")); err != nil {
		t.Fatal(err)
	}
	return a, n.Name, down, events
}

// heard makes m hear from another member, as when it answers a ping.
func heard(m *Member) { (&delegates{m: m}).AckPayload() }

// TestOwnLinkBackMidRoundFindsThePeer: this member's own link is down when a suspicion starts a
// check, and comes back in the round's last window: the last dial went out while the link was down
// and waits out its window unanswered, but the member heard from another after that window began.
// The round is dropped and dialled again, so the peer, which was never gone, is never Down.
func TestOwnLinkBackMidRoundFindsThePeer(t *testing.T) {
	a, peer, down, events := ownLinkDown(t, "ol")
	time.AfterFunc(a.cfg.ReachTimeout*time.Duration(a.cfg.ReachAttempts)*3/4, func() {
		down.Store(false)
		heard(a)
	})
	limit := time.After(2 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Peer.Name == peer && ev.Peer.Down() {
				t.Fatalf("down after this member's own link came back mid-round: %+v", ev.Peer)
			}
		case <-limit:
			if p := peerOf(a, peer); p.Unreachable {
				t.Fatalf("after the round: %+v, want reachable", p)
			}
			return
		}
	}
}

// TestOwnLinkBackFindsThePeerAtOnce: this member's own link was down for a whole round, in which it
// heard from nobody, so the suspect peer is Down (nothing can reach it from here anyway). Once the
// link is back and the member hears from another, the check dials again at once: the peer is up
// within a few milliseconds, not a wait and a round later.
func TestOwnLinkBackFindsThePeerAtOnce(t *testing.T) {
	a, peer, down, events := ownLinkDown(t, "ob")
	waitDown(t, a, peer, 5*time.Second)
	down.Store(false)
	back := time.Now()
	heard(a)
	limit := time.After(2 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Peer.Name != peer || ev.Peer.Down() || !ev.PreviousDown {
				continue
			}
			took := time.Since(back)
			t.Logf("up %s after the member heard from another", took)
			if took > a.cfg.ReachTimeout/2 {
				t.Fatalf("up %s after the member heard from another, want under %s", took, a.cfg.ReachTimeout/2)
			}
			return
		case <-limit:
			t.Fatalf("still down 2 s after the link came back: %+v", peerOf(a, peer))
		}
	}
}

// A member that hears from others while its check's round finds no answer keeps the verdict: the
// link was up when the dials went out, so the host is gone (the failover path).
func TestHeardFromOthersVerdictStands(t *testing.T) {
	a, peer, _, _ := ownLinkDown(t, "hv")
	stop := make(chan struct{})
	defer close(stop)
	go func() { // others' pings, several a second
		for {
			heard(a)
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	waitDown(t, a, peer, 5*time.Second)
	if took := time.Since(start); took > 2*a.cfg.ReachTimeout*time.Duration(a.cfg.ReachAttempts) {
		t.Fatalf("down after %s while hearing from others, want one round (%s)", took, a.cfg.ReachTimeout*time.Duration(a.cfg.ReachAttempts))
	}
}
