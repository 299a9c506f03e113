// Package membership is vxfabric's gossip layer over hashicorp/memberlist: every agent and every
// server is a member; the metadata says who is what (role, node name, VTEP, a server's gRPC address,
// version), and memberlist's failure detector says who is alive. Agents use it to find servers and to
// stop sending to dead hosts; servers use it to publish node status. It never touches the kernel or
// etcd.
//
// # States
//
// memberlist tells joins, leaves and metadata updates, but neither suspicion nor the difference
// between a dead and a departed member. This package adds both:
//   - SUSPECT: this member's own probe of a peer failed (memberlist logs "Suspect X has failed"), or
//     another member's failed probe was hinted to it and its own dials of the peer's host got no
//     answer; until an alive message (a refutation) or a successful probe of that peer arrives.
//   - Unreachable (a flag of SUSPECT, DEAD and LEFT, see reach.go): the member's host's kernel does
//     not answer TCP dials on its gossip address. SUSPECT, DEAD or LEFT, and Unreachable, is Down: a
//     host that is cut off is Down in about a second, a host whose agent left gracefully is Down
//     within 2 s once it stops answering too (5 s from a minute after it left), while a paused or
//     crashed process on a live host is never Down, even once memberlist declares it DEAD.
//   - LEFT rather than DEAD: a member that leaves gracefully first gossips metadata with Leaving set.
//
// # Partitions
//
// memberlist forgets the dead GossipToTheDeadTime (30 s) after their death and never contacts them
// again, so the halves of a longer partition would stay apart once it heals. A member therefore joins
// one DEAD member whose host answers every ReconnectInterval, as Serf does (see reconnect.go).
//
// # Timing (Config defaults)
//
// Withdrawal does not wait for DEAD: a host that is cut off is Down about half a second after the
// first failed probe (see reach.go). DEAD is memberlist's verdict on the process: a dead host is
// found by the first probe that reaches it (within about one ProbeInterval, 100 ms), becomes suspect
// when that probe's interval ends (another 100 ms, after the direct ProbeTimeout of 50 ms and the
// indirect probes through other members), and dead SuspicionMult * max(1, log10(n)) * ProbeInterval
// later (40 * 100 ms = 4 s up to 10 members); the dead message then reaches everyone within a
// GossipInterval or two (100 ms). Expected 4.1-4.4 s.
//
// The same numbers bound the pause a member survives: it is suspected at the earliest one probe
// interval after it stops answering and declared dead 4 s later, i.e. 4.1 s after the pause began.
// A process stopped for 3 s (SIGSTOP) finds the suspect messages queued in its socket when it resumes
// and refutes them at once (a new incarnation, gossiped within ~100-200 ms). With a suspicion of
// 3.4 s the margin was 0.4-0.6 s and a loaded test machine saw one death in a 3 s
// pause; since withdrawal follows reachability, the longer suspicion costs forwarding nothing and
// the margin is now about 1 s. SuspicionMaxTimeoutMult is 1 so the timeout does not stretch (up to
// 6x in memberlist's default) while it waits for other members to confirm the suspicion. Above 10
// members the log10(n) factor stretches the suspicion (50 members: 6.8 s, 1,000: 12 s); a host cut
// off is still Down in about a second.
//
// # Concurrency
//
// Member's methods are safe for concurrent use. Subscribers receive events in the order the
// states changed, from a goroutine per subscriber, never blocking memberlist: a slow subscriber only
// grows its own queue.
package membership

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vxfabric/vxfabric/security/pki"
)

// State is a member's liveness as this member sees it.
type State int

const (
	StateAlive State = iota + 1
	StateSuspect
	StateDead
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// Peer is one member as this member knows it (itself included).
type Peer struct {
	Name  string
	Addr  netip.AddrPort
	Meta  Meta
	State State
	// Since is when this member saw State begin.
	Since time.Time
	// Unreachable: while SUSPECT, DEAD or LEFT, this member's dials of its gossip address got no
	// answer from its host's kernel (see reach.go). Cleared when the member is alive again or its
	// host answers a dial.
	Unreachable bool
}

// Down reports whether the peer's host is gone as far as forwarding goes: gossip suspects it,
// declared it DEAD or saw it leave, and its host's kernel does not answer on the underlay. A paused,
// crashed, restarting or stopped process on a host that is up is never Down: that host's kernel still
// forwards. A member that LEFT (its agent stopped gracefully) is Down once its host stops answering
// too: the host died later, or was powered off after its agent stopped.
func (p Peer) Down() bool {
	return (p.State == StateSuspect || p.State == StateDead || p.State == StateLeft) && p.Unreachable
}

// Event is one change of a peer's state or metadata. Previous is 0 for a peer seen for the first time;
// Previous == Peer.State when only the metadata changed.
type Event struct {
	Peer     Peer
	Previous State
	// PreviousDown is Peer.Down() before the change.
	PreviousDown bool
}

// Member is this process's membership in the gossip cluster.
type Member struct {
	cfg     Config
	log     *slog.Logger
	ml      *memberlist.Memberlist
	keyring *memberlist.Keyring

	keyMu   sync.Mutex // serialises keyring changes (ReloadKeyring, InstallKeys) and the file's rewrite
	managed bool       // InstallKeys ran: the control plane owns the keyring, SIGHUP no longer reloads it

	mu           sync.Mutex // guards peers, subs, leaving, checking, relayed, reconnecting, closed
	peers        map[string]*Peer
	subs         map[*subscriber]struct{}
	leaving      bool
	checking     map[string]bool      // members whose reachability check runs
	relayed      map[string]time.Time // when this member last relayed a hint about each member
	reconnecting bool                 // a reconnect (Join of a DEAD member) is in flight
	closed       bool                 // Shutdown began: start no goroutine

	hints *memberlist.TransmitLimitedQueue // suspect hints to gossip
	dial  ReachDialer

	// heard is when this member last heard from another (UnixNano): a ping it answered, an ack of
	// one of its own probes, a user message, a state exchange. isolatedVerdict: a check recorded a host as not answering while this
	// member heard from nobody (see reach.go); the next time it hears from someone, back is
	// cancelled (and replaced, under mu), and every check dials again at once.
	heard           atomic.Int64
	isolatedVerdict atomic.Bool
	back            context.Context
	hearAgain       context.CancelFunc

	stop     chan struct{}
	resync   chan struct{}   // (1) asks maintain for a state exchange with a few members now
	redial   chan struct{}   // (1) asks maintain for a reconnect now (a DEAD member's host answers again)
	life     context.Context // cancelled by Shutdown: ends dials and streams in flight (see transport)
	endLife  context.CancelFunc
	wg       sync.WaitGroup
	shutOnce sync.Once
}

// New starts a member: it binds the gossip port, tries the seeds once (a failure is logged, not
// returned: the member re-joins its seeds while it is alone) and starts the background loops.
func New(cfg Config) (*Member, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Member{
		cfg:      cfg,
		log:      cfg.Logger.With("member", cfg.Name),
		peers:    map[string]*Peer{},
		subs:     map[*subscriber]struct{}{},
		checking: map[string]bool{},
		relayed:  map[string]time.Time{},
		stop:     make(chan struct{}),
		resync:   make(chan struct{}, 1),
		redial:   make(chan struct{}, 1),
		dial:     cfg.ReachDialer,
	}
	m.back, m.hearAgain = context.WithCancel(context.Background())
	if m.dial == nil {
		m.dial = DialHost
	}
	m.life, m.endLife = context.WithCancel(context.Background())
	// A hint is small and rare: sent often enough (8 * log10(n) times) that every member gets it
	// from the gossip of the first rounds, whichever members those rounds pick.
	m.hints = &memberlist.TransmitLimitedQueue{NumNodes: m.numPeers, RetransmitMult: 8}
	bind, _ := parseAddrPort(cfg.BindAddr)
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = bind.Addr().String()
	mc.BindPort = int(bind.Port())
	mc.AdvertisePort = int(bind.Port())
	if cfg.AdvertiseAddr != "" {
		adv, _ := parseAddrPort(cfg.AdvertiseAddr)
		mc.AdvertiseAddr = adv.Addr().String()
		mc.AdvertisePort = int(adv.Port())
	}
	if cfg.gossipToTheDead > 0 {
		mc.GossipToTheDeadTime = cfg.gossipToTheDead
	}
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.SuspicionMaxTimeoutMult = cfg.SuspicionMaxTimeoutMult
	mc.GossipInterval = cfg.GossipInterval
	mc.PushPullInterval = cfg.PushPullInterval
	// A host restarted on another address may take its name back after this long.
	mc.DeadNodeReclaimTime = 5 * time.Second
	mc.Logger = log.New(&logWriter{m: m}, "", 0)
	d := &delegates{m: m}
	mc.Delegate, mc.Events, mc.Alive, mc.Ping = d, d, d, d

	keys, err := cfg.keyringKeys()
	if err != nil {
		return nil, err
	}
	if len(keys) > 0 {
		kr, err := memberlist.NewKeyring(nil, keys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip keyring: %w", err)
		}
		if err := installKeys(kr, keys); err != nil {
			return nil, err
		}
		m.keyring = kr
		mc.Keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	} else {
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = false, false
		m.log.Warn("gossip is not encrypted: anyone on the underlay can join and read membership; give a gossip key")
	}

	tr, err := newTransport(m.life, bind, mc.Logger)
	if err != nil {
		m.endLife()
		return nil, err
	}
	if bind.Port() == 0 {
		mc.BindPort = tr.GetAutoBindPort()
		if cfg.AdvertiseAddr == "" {
			mc.AdvertisePort = mc.BindPort
		}
	}
	mc.Transport = tr
	if cfg.wrapTransport != nil {
		mc.Transport = cfg.wrapTransport(tr)
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		m.endLife()
		_ = tr.Shutdown()
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, err)
	}
	m.ml = ml
	if len(cfg.Join) > 0 {
		if _, err := m.Join(cfg.Join); err != nil {
			m.log.Warn("gossip join failed, retrying while alone", "seeds", strings.Join(cfg.Join, ","), "err", err)
		}
	}
	m.wg.Add(1)
	go m.maintain()
	if cfg.KeyringFile != "" {
		m.wg.Add(1)
		go m.reloadOnSIGHUP()
	}
	return m, nil
}

// keyringKeys is the keyring at start: the file's keys (its first one primary), then Keys.
func (c Config) keyringKeys() ([][]byte, error) {
	var keys [][]byte
	if c.KeyringFile != "" {
		fk, err := pki.ReadGossipKeyring(c.KeyringFile)
		if err != nil {
			return nil, err
		}
		keys = append(keys, fk...)
	}
	return dedupKeys(append(keys, c.Keys...)), nil
}

// Join contacts the given members (HOST:PORT) and merges their state; it returns how many answered.
func (m *Member) Join(seeds []string) (int, error) {
	n, err := m.ml.Join(seeds)
	if err != nil {
		return n, fmt.Errorf("join gossip seeds %s: %w", strings.Join(seeds, ","), err)
	}
	return n, nil
}

// LocalAddr is the address other members reach this one at.
func (m *Member) LocalAddr() netip.AddrPort {
	n := m.ml.LocalNode()
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// Name is this member's gossip name.
func (m *Member) Name() string { return m.cfg.Name }

// Members returns a snapshot of every member known, itself included, sorted by name. DEAD and LEFT
// members stay listed (for ForgetAfter) so that callers can tell them from members never seen.
func (m *Member) Members() []Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Peer, 0, len(m.peers))
	for _, p := range m.peers {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Servers returns the gRPC addresses of the servers that are alive, or suspect on a host that has not
// stopped answering (a paused process may come back), sorted. A suspect server that is Down is left
// out: an agent streaming from it fails over (nodeagent's watchServer) about a second after its host
// is cut off, not when memberlist declares it dead 4 s later.
func (m *Member) Servers() []string {
	var out []string
	for _, p := range m.Members() {
		if p.Meta.Role == RoleServer && p.Meta.GRPCAddr != "" && (p.State == StateAlive || p.State == StateSuspect) && !p.Down() {
			out = append(out, p.Meta.GRPCAddr)
		}
	}
	return out
}

// Subscribe returns a channel that receives every state or metadata change from now on, in order.
// Call cancel to stop; the channel is closed after cancel or Shutdown.
func (m *Member) Subscribe() (<-chan Event, func()) {
	s := &subscriber{out: make(chan Event), wake: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{})}
	m.mu.Lock()
	m.subs[s] = struct{}{}
	m.mu.Unlock()
	go s.run()
	return s.out, func() {
		m.mu.Lock()
		delete(m.subs, s)
		m.mu.Unlock()
		s.close()
	}
}

// ReloadKeyring re-reads KeyringFile and makes the keyring hold exactly its keys (plus Config.Keys),
// its first key primary.
func (m *Member) ReloadKeyring() error {
	if m.keyring == nil {
		return errors.New("gossip is not encrypted: no keyring to reload")
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	if m.managed {
		return errors.New("the keyring is managed by the control plane since its first rotation (vxfab gossip rotate); the file only records it")
	}
	keys, err := m.cfg.keyringKeys()
	if err != nil {
		return err
	}
	if err := installKeys(m.keyring, keys); err != nil {
		return err
	}
	m.log.Info("gossip keyring reloaded", "keys", len(keys))
	return nil
}

// Keyring exposes the live keyring (nil without encryption), for rotation from code.
func (m *Member) Keyring() *memberlist.Keyring { return m.keyring }

// HealthScore is memberlist's view of its own timeliness (0 is healthy).
func (m *Member) HealthScore() int { return m.ml.GetHealthScore() }

// Leave tells the others that this member departs (they mark it LEFT, not DEAD) and waits up to
// timeout for the message to go out. The member keeps answering until Shutdown.
func (m *Member) Leave(timeout time.Duration) error {
	m.mu.Lock()
	m.leaving = true
	m.mu.Unlock()
	if err := m.ml.UpdateNode(timeout / 2); err != nil {
		m.log.Debug("gossip leave intent not confirmed", "err", err)
	}
	// The intent goes out by gossip, to a few members at a time: one that gets the leave message
	// first would record a death. The servers, which record node status, get it for certain: a
	// state exchange with each (memberlist's join is one), waited for up to half the timeout.
	var servers []string
	for _, p := range m.Members() {
		if p.Meta.Role == RoleServer && p.State == StateAlive && p.Name != m.Name() {
			servers = append(servers, p.Addr.String())
		}
	}
	m.mu.Lock()
	closed := m.closed
	if !closed && len(servers) > 0 {
		m.wg.Add(1) // under m.mu, before Shutdown sets closed and waits (Shutdown ends the join)
	}
	m.mu.Unlock()
	if !closed && len(servers) > 0 {
		done := make(chan struct{})
		go func() {
			defer m.wg.Done()
			defer close(done)
			if _, err := m.ml.Join(servers); err != nil {
				m.log.Debug("gossip leave intent not exchanged with every server", "err", err)
			}
		}()
		select {
		case <-done:
		case <-time.After(timeout / 2):
		}
	}
	if err := m.ml.Leave(timeout); err != nil {
		return fmt.Errorf("leave gossip: %w", err)
	}
	return nil
}

// Shutdown stops gossiping at once (without Leave the others declare this member dead) and closes
// every subscription. It ends what is in flight (reachability dials, a Join waiting for a peer that
// does not answer) rather than waiting for it. Safe to call more than once.
func (m *Member) Shutdown() error {
	var err error
	m.shutOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		m.endLife()
		close(m.stop)
		m.wg.Wait()
		if e := m.ml.Shutdown(); e != nil {
			err = fmt.Errorf("shut down gossip: %w", e)
		}
		m.mu.Lock()
		subs := make([]*subscriber, 0, len(m.subs))
		for s := range m.subs {
			subs = append(subs, s)
		}
		m.subs = map[*subscriber]struct{}{}
		m.mu.Unlock()
		for _, s := range subs {
			s.close()
		}
	})
	return err
}

// maintain re-joins the seeds while alone, reconnects to the dead (see reconnect.go), runs the state
// exchanges asked for and forgets long-dead members. It runs in its own goroutine until Shutdown; a
// Join it makes may block up to memberlist's TCPTimeout (Shutdown ends it, see transport), except a
// reconnect's, which runs in a goroutine of its own.
func (m *Member) maintain() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.RejoinInterval)
	defer t.Stop()
	rt := time.NewTicker(m.cfg.ReconnectInterval)
	defer rt.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-m.resync:
			m.exchange()
			continue
		case <-m.redial:
			m.reconnect()
			continue
		case <-rt.C:
			m.reconnect()
			continue
		case <-t.C:
		}
		if m.ml.NumMembers() <= 1 {
			if seeds := m.seeds(); len(seeds) > 0 {
				if n, err := m.Join(seeds); err != nil {
					m.log.Debug("gossip re-join failed", "err", err)
				} else {
					m.log.Info("gossip re-joined seeds", "answered", n)
				}
			}
		}
		m.mu.Lock()
		for name, p := range m.peers {
			if (p.State == StateDead || p.State == StateLeft) && time.Since(p.Since) > m.cfg.ForgetAfter {
				delete(m.peers, name)
				delete(m.relayed, name)
			}
		}
		m.mu.Unlock()
	}
}

// exchange trades full state with a few live members (the seeds when it knows none), at once rather
// than at the next push-pull: after its keys changed, a member that was refused while its keys were
// stale (declared dead meanwhile) is heard again, and refutes its death, within a round trip.
// Only members ALIVE in this member's own view are asked (memberlist's Members lists suspects too,
// and never sets Node.State): a Join of a suspect may block for memberlist's TCPTimeout (10 s).
func (m *Member) exchange() {
	var addrs []string
	m.mu.Lock()
	for _, p := range m.peers {
		if p.Name != m.cfg.Name && p.State == StateAlive && p.Addr.IsValid() {
			addrs = append(addrs, p.Addr.String())
		}
	}
	m.mu.Unlock()
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	addrs = addrs[:min(len(addrs), 3)]
	if len(addrs) == 0 {
		addrs = m.seeds()
	}
	if len(addrs) == 0 {
		return
	}
	if n, err := m.Join(addrs); err != nil {
		m.log.Debug("gossip state exchange failed", "err", err)
	} else {
		m.log.Debug("gossip state exchanged", "answered", n)
	}
}

// seeds are the members to join when this one knows none: Config.Join, then Config.Seeds.
func (m *Member) seeds() []string {
	seeds := slices.Clone(m.cfg.Join)
	if m.cfg.Seeds != nil {
		seeds = append(seeds, m.cfg.Seeds()...)
	}
	return seeds
}

// requestExchange asks the maintain loop for an exchange (once, however often it is asked meanwhile).
func (m *Member) requestExchange() {
	select {
	case m.resync <- struct{}{}:
	default:
	}
}

func (m *Member) reloadOnSIGHUP() {
	defer m.wg.Done()
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	defer signal.Stop(ch)
	for {
		select {
		case <-m.stop:
			return
		case <-ch:
			if err := m.ReloadKeyring(); err != nil {
				m.log.Error("gossip keyring reload failed, keeping the current keys", "file", m.cfg.KeyringFile, "err", err)
			}
		}
	}
}

// keepState, given to setState, keeps the peer's current state (StateAlive for a peer seen for the
// first time): a metadata update says nothing about liveness.
const keepState State = 0

// setState records a peer's new state (and metadata when n is given) and publishes the change; st
// keepState changes the metadata only. The state is read and written under one hold of m.mu, so a
// concurrent change (setReach, a refutation) is never reverted by a stale read.
// Called from memberlist's delegates, possibly with memberlist's locks held: it must not call back
// into memberlist.
func (m *Member) setState(name string, n *memberlist.Node, st State, onlyFrom ...State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.peers[name]
	if !ok {
		if n == nil || len(onlyFrom) > 0 {
			return
		}
		p = &Peer{Name: name}
		m.peers[name] = p
	}
	if len(onlyFrom) > 0 && !slices.Contains(onlyFrom, p.State) {
		return
	}
	if st == keepState {
		st = p.State
		if st == 0 {
			st = StateAlive
		}
	}
	prev, wasDown := p.State, p.Down()
	changed := prev != st
	if n != nil {
		a, _ := netip.AddrFromSlice(n.Addr)
		addr := netip.AddrPortFrom(a.Unmap(), n.Port)
		meta, err := decodeMeta(n.Meta)
		if err != nil {
			m.log.Warn("gossip member with unreadable metadata", "peer", name, "err", err)
		}
		if addr != p.Addr || meta != p.Meta {
			changed = true
		}
		p.Addr, p.Meta = addr, meta
	}
	if !changed {
		return
	}
	if prev != st {
		p.Since = time.Now()
		if st == StateAlive {
			// A member alive again starts without the old dials; a suspect declared dead or seen to
			// leave keeps them (its check goes on, see checkReach).
			p.Unreachable = false
		}
	}
	p.State = st
	if prev != st {
		m.log.Info("gossip member state", "peer", name, "node", p.Meta.Node, "role", string(p.Meta.Role), "state", st.String(), "previous", prev.String())
	}
	m.publish(Event{Peer: *p, Previous: prev, PreviousDown: wasDown})
}

// publish hands ev to every subscriber. Callers hold m.mu.
func (m *Member) publish(ev Event) {
	for s := range m.subs {
		s.push(ev)
	}
}

// numPeers is the number of members known (for the hint queue's retransmit count).
func (m *Member) numPeers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.peers)
}

// delegates implements memberlist's delegate interfaces for a Member.
type delegates struct{ m *Member }

func (d *delegates) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	leaving := d.m.leaving
	d.m.mu.Unlock()
	b, err := encodeMeta(metaOf(d.m.cfg, leaving))
	if err != nil || len(b) > limit {
		// Validate rejected this configuration already.
		return nil
	}
	return b
}
func (d *delegates) NotifyMsg(msg []byte) {
	d.m.heardFrom()
	d.m.hinted(msg)
}
func (d *delegates) GetBroadcasts(overhead, limit int) [][]byte {
	return d.m.hints.GetBroadcasts(overhead, limit)
}
func (d *delegates) LocalState(join bool) []byte            { return nil }
func (d *delegates) MergeRemoteState(buf []byte, join bool) { d.m.heardFrom() }

func (d *delegates) NotifyJoin(n *memberlist.Node)   { d.m.setState(n.Name, n, StateAlive) }
func (d *delegates) NotifyUpdate(n *memberlist.Node) { d.m.setState(n.Name, n, keepState) }
func (d *delegates) NotifyLeave(n *memberlist.Node) {
	st := StateDead
	if meta, err := decodeMeta(n.Meta); err == nil && meta.Leaving {
		st = StateLeft
	}
	d.m.setState(n.Name, n, st)
	// Down only once its host does not answer either; a LEFT host is watched too, as a DEAD one: it
	// may die later, and its entries must go then.
	d.m.checkReach(n.Name)
}

// NotifyAlive sees every alive message, refutations included: it ends a suspicion (never a death:
// memberlist itself decides whether a dead member came back, through NotifyJoin). memberlist calls
// it before it compares incarnations, so the message may be stale (a push-pull from a member that
// has not heard of the suspicion yet): a suspect whose host did not answer this member's dials stays
// as it is, Down, and its running check decides, by the host answering or not. A suspect whose
// check has not decided yet becomes alive, and its check runs one more round (see setReach): a
// host that is gone is still found Down, without waiting for another failed probe.
func (d *delegates) NotifyAlive(n *memberlist.Node) error {
	d.m.mu.Lock()
	p := d.m.peers[n.Name]
	down := p != nil && p.State == StateSuspect && p.Unreachable
	d.m.mu.Unlock()
	if down {
		return nil
	}
	d.m.setState(n.Name, nil, StateAlive, StateSuspect)
	return nil
}

// AckPayload is called as this member answers a ping: someone was heard.
func (d *delegates) AckPayload() []byte {
	d.m.heardFrom()
	return nil
}

func (d *delegates) NotifyPingComplete(n *memberlist.Node, rtt time.Duration, payload []byte) {
	d.m.heardFrom()
	d.m.setState(n.Name, nil, StateAlive, StateSuspect)
}

// logWriter routes memberlist's log lines to slog at debug, and learns suspicions from them.
type logWriter struct{ m *Member }

const suspectPrefix = "memberlist: Suspect "

func (w *logWriter) Write(b []byte) (int, error) {
	line := strings.TrimSpace(string(b))
	w.m.log.Debug("memberlist", "line", line)
	if i := strings.Index(line, suspectPrefix); i >= 0 {
		rest := line[i+len(suspectPrefix):]
		if j := strings.Index(rest, " has failed"); j > 0 {
			w.m.setState(rest[:j], nil, StateSuspect, StateAlive)
			w.m.suspected(rest[:j])
		}
	}
	return len(b), nil
}

// subscriber queues events for one Subscribe caller.
type subscriber struct {
	out    chan Event
	wake   chan struct{}
	done   chan struct{}
	exited chan struct{}

	mu    sync.Mutex // guards queue
	queue []Event

	closeOnce sync.Once
}

// close stops the pump and waits for it; the out channel is closed after.
func (s *subscriber) close() {
	s.closeOnce.Do(func() { close(s.done) })
	<-s.exited
}

func (s *subscriber) push(ev Event) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) run() {
	defer close(s.exited)
	defer close(s.out)
	for {
		select {
		case <-s.done:
			return
		case <-s.wake:
		}
		for {
			s.mu.Lock()
			if len(s.queue) == 0 {
				s.mu.Unlock()
				break
			}
			ev := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			select {
			case s.out <- ev:
			case <-s.done:
				return
			}
		}
	}
}

// WaitFor polls Members until cond holds or ctx ends; for tests and startup.
func (m *Member) WaitFor(ctx context.Context, cond func([]Peer) bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if cond(m.Members()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
