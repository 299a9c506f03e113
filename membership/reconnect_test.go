package membership

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// partition cuts a fabric of loopback members in two. Every member drops the gossip it sends to the
// other group (its transport is wrapped, see Config.wrapTransport), so nothing crosses either way,
// and its reachability dials of the other group's hosts go unanswered, as across a real partition.
type partition struct {
	mu     sync.Mutex
	cut    bool
	groups map[string]string // gossip address -> group
}

// apart reports whether a member of group may not reach addr now.
func (p *partition) apart(group, addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.groups[addr]
	return p.cut && ok && g != group
}

func (p *partition) set(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
}

// join starts a member in group, its gossip and its dials subject to the partition.
func (p *partition) join(t *testing.T, name, group string, o memberOpts) *Member {
	t.Helper()
	mod := o.mod
	o.mod = func(c *Config) {
		c.wrapTransport = func(tr memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
			return &partitioned{NodeAwareTransport: tr, p: p, group: group}
		}
		if mod != nil {
			mod(c)
		}
	}
	m := startMember(t, name, o)
	p.mu.Lock()
	p.groups[m.LocalAddr().String()] = group
	p.mu.Unlock()
	m.mu.Lock()
	m.dial = func(ctx context.Context, addr string) bool {
		p.mu.Lock()
		// On loopback every host's ReachFallbackPort is the same: silent while cut.
		fallback := p.cut && addr == fallbackAddr(m.LocalAddr().String())
		p.mu.Unlock()
		if fallback || p.apart(group, addr) {
			<-ctx.Done()
			return false
		}
		return DialHost(ctx, addr)
	}
	m.mu.Unlock()
	return m
}

// partitioned drops what its member sends across the partition: packets are lost, dials fail.
type partitioned struct {
	memberlist.NodeAwareTransport
	p     *partition
	group string
}

var errPartitioned = errors.New("partitioned")

func (t *partitioned) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.p.apart(t.group, addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *partitioned) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.p.apart(t.group, a.Addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, a)
}

func (t *partitioned) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.p.apart(t.group, addr) {
		return nil, errPartitioned
	}
	return t.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (t *partitioned) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.p.apart(t.group, a.Addr) {
		return nil, errPartitioned
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, timeout)
}

// TestHalvesMergeAfterALongPartition: a partition that outlasts memberlist's GossipToTheDeadTime
// leaves each half holding the other dead, and memberlist never contacts the dead again; once it
// heals, the members reconnect to the dead whose hosts answer and the halves merge. The periodic
// reconnect is set beyond the test's reach: the merge comes from the reconnect that a DEAD member's
// check asks for when its host answers again (TestReconnectRunsApartFromMaintain covers the timer).
func TestHalvesMergeAfterALongPartition(t *testing.T) {
	const toTheDead = time.Second
	p := &partition{groups: map[string]string{}}
	fast := func(c *Config) {
		c.SuspicionMult = 5 // dead 0.5 s after the suspicion, not 4 s
		c.gossipToTheDead = toTheDead
		c.ReconnectInterval = time.Hour
	}
	var ms []*Member
	for i, group := range []string{"east", "east", "west", "west"} {
		var seeds []string
		if i > 0 {
			seeds = []string{ms[0].LocalAddr().String()}
		}
		ms = append(ms, p.join(t, "pt-"+group+string(rune('0'+i)), group, memberOpts{seeds: seeds, mod: fast}))
	}
	for _, m := range ms {
		for _, o := range ms {
			waitState(t, m, o.Name(), StateAlive, 10*time.Second)
		}
	}
	east, west := ms[:2], ms[2:]

	p.set(true)
	for _, side := range [][2][]*Member{{east, west}, {west, east}} {
		for _, m := range side[0] {
			for _, o := range side[1] {
				waitState(t, m, o.Name(), StateDead, 10*time.Second)
			}
		}
	}
	// The partition lasts: memberlist stops gossiping to the dead and forgets them (at the end of
	// its next probe round after GossipToTheDeadTime).
	time.Sleep(toTheDead + 2*time.Second)
	for _, m := range ms {
		if n := m.ml.NumMembers(); n != 2 {
			t.Fatalf("%s: memberlist knows %d live members during the partition, want its own half (2)", m.Name(), n)
		}
	}

	p.set(false)
	healed := time.Now()
	for _, m := range ms {
		for _, o := range ms {
			waitState(t, m, o.Name(), StateAlive, 8*time.Second)
		}
	}
	t.Logf("halves merged %s after the partition healed", time.Since(healed))
	for _, m := range ms {
		for _, p := range m.Members() {
			if p.Down() || p.Unreachable {
				t.Fatalf("%s: %s still down after the merge: %+v", m.Name(), p.Name, p)
			}
		}
	}
}

// TestReconnectRunsApartFromMaintain: a reconnect to a DEAD member whose host answers, but whose
// process accepts the connection and never replies (a paused process), runs in its own goroutine:
// maintain goes on meanwhile, no second attempt starts while it is in flight, and Shutdown ends it
// rather than waiting out memberlist's TCPTimeout (10 s).
func TestReconnectRunsApartFromMaintain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ghost := netip.MustParseAddrPort(ln.Addr().String())

	var asked atomic.Int32 // maintain asks for seeds on every RejoinInterval while alone
	a := startMember(t, "rc-a", memberOpts{
		seedsFn: func() []string { asked.Add(1); return nil },
		mod:     func(c *Config) { c.ReconnectInterval = 100 * time.Millisecond },
	})
	a.mu.Lock()
	a.dial = func(ctx context.Context, addr string) bool {
		if addr == ghost.String() {
			return true // its host answers (without a connection: the listener sees reconnects only)
		}
		return DialHost(ctx, addr)
	}
	a.mu.Unlock()
	meta, err := encodeMeta(Meta{Role: RoleAgent, Node: "rc-ghost"})
	if err != nil {
		t.Fatal(err)
	}
	node := &memberlist.Node{Name: "rc-ghost", Addr: ghost.Addr().AsSlice(), Port: ghost.Port(), Meta: meta}
	d := &delegates{m: a}
	d.NotifyJoin(node)
	d.NotifyLeave(node) // DEAD, as memberlist tells it
	if st := stateOf(a, "rc-ghost"); st != StateDead {
		t.Fatalf("ghost is %s, want dead", st)
	}

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	var held net.Conn
	select {
	case held = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnect to the dead member whose host answers within 5 s")
	}
	if held == nil {
		t.Fatal("listener failed")
	}
	defer held.Close()
	if err := held.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := held.Read(buf); err != nil {
		t.Fatalf("the reconnect sent nothing: %v", err)
	}

	// The attempt is in flight (it waits for an answer that never comes): maintain runs on ...
	before := asked.Load()
	waitFor := time.Now().Add(5 * time.Second)
	for asked.Load() < before+2 {
		if time.Now().After(waitFor) {
			t.Fatal("maintain stopped while a reconnect was in flight")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ... and starts no other attempt (ReconnectInterval is 100 ms).
	if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Fatal("a second reconnect started while the first was in flight")
	}

	start := time.Now()
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Shutdown took %s with a reconnect in flight, want it ended at once", took)
	}
	// The attempt's connection is closed: the reader sees its end.
	if err := held.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := held.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the reconnect's connection is still open after Shutdown")
			}
			break
		}
	}
}
