package nodeagent

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/nodestatus"
	"github.com/vxfabric/vxfabric/membership"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// cutOff holds the gossip addresses of hosts that are cut off: the members' reachability dials of
// them get no answer (on loopback a stopped member's port would answer with a reset, as the kernel of
// a host whose agent died does).
var cutOff sync.Map

func startMember(t *testing.T, role membership.Role, node, vtep, grpcAddr, bind string, seeds []string) *membership.Member {
	t.Helper()
	cfg := membership.Default(role, node)
	if vtep != "" {
		cfg.VTEP = netip.MustParseAddr(vtep)
	}
	cfg.GRPCAddr = grpcAddr
	cfg.BindAddr = bind
	cfg.Join = seeds
	cfg.RejoinInterval = 200 * time.Millisecond
	// A join gossiped over UDP can be lost on a loaded machine; a full sync soon repairs that.
	cfg.PushPullInterval = 2 * time.Second
	cfg.Logger = testLogger()
	cfg.ReachDialer = func(ctx context.Context, addr string) bool {
		if _, cut := cutOff.Load(addr); cut {
			<-ctx.Done()
			return false
		}
		return membership.DialHost(ctx, addr)
	}
	m, err := membership.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

// TestGossipDeathAndReturn runs agents that find their server through gossip; a host whose member
// dies without leaving has its FDB and flood entries withdrawn by the others, an agent restarted while
// it is dead does not program them, and they return with it.
func TestGossipDeathAndReturn(t *testing.T) {
	cli := startEtcd(t)
	w := newWorld(t, cli)
	srv := startServer(t, cli, "")
	sm := startMember(t, membership.RoleServer, "srv", "", srv.addr, "127.0.0.1:0", nil)
	seeds := []string{sm.LocalAddr().String()}
	// The server records nodes (with their VTEPs) from gossip, as `vxfab server` does.
	ctx, cancel := context.WithCancel(context.Background())
	statusDone := make(chan error, 1)
	go func() { statusDone <- nodestatus.Run(ctx, cli, sm, testLogger()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-statusDone; err != nil {
			t.Errorf("node status writer: %v", err)
		}
	})

	names := []string{"h1", "h2", "h3"}
	members := map[string]*membership.Member{}
	hosts := map[string]*host{}
	for i, name := range names {
		vtep := "198.18.0." + string(rune('1'+i))
		w.hostVTEP(name, vtep)
		members[name] = startMember(t, membership.RoleAgent, name, vtep, "", "127.0.0.1:0", seeds)
		hosts[name] = startHost(t, name, vtep, hostOpts{member: members[name]}) // no servers: gossip finds them
	}
	w.network("n1", 100)
	for i, name := range names {
		w.port("p"+name, "n1", name, i+1)
	}
	h1, h2, h3 := hosts["h1"], hosts["h2"], hosts["h3"]
	w.converge(10*time.Second, h1, h2, h3)

	// h3 dies: its host is cut off, its agent stops and its member vanishes without a leave.
	gossipAddr := members["h3"].LocalAddr()
	cutOff.Store(gossipAddr.String(), true)
	t.Cleanup(func() { cutOff.Delete(gossipAddr.String()) })
	h3.stop()
	killed := time.Now()
	_ = members["h3"].Shutdown()
	// Withdrawn on reachability: while gossip only suspects h3 (memberlist declares it dead 4.2-4.6 s
	// after the kill), because its host answers no dial. Were the reachability check broken or late,
	// the withdrawal would wait for DEAD, and h3 would be dead here.
	var worst, dead time.Duration
	for _, h := range []*host{h1, h2} {
		waitKernel(t, h, func() []string { return w.expect(h.name, "h3") }, 8*time.Second)
		took := time.Since(killed)
		worst = max(worst, took)
		if p := gossipPeer(members[h.name], "h3"); p.State != membership.StateSuspect || !p.Down() {
			t.Fatalf("%s withdrew h3 %s after the kill with h3 %s (down %v), want while an unreachable suspect, before gossip declares it dead",
				h.name, took, p.State, p.Down())
		}
	}
	for _, h := range []*host{h1, h2} {
		waitFor(t, h.name+"'s gossip declares h3 dead", 10*time.Second, func() bool {
			return gossipPeer(members[h.name], "h3").State == membership.StateDead
		})
		dead = max(dead, gossipPeer(members[h.name], "h3").Since.Sub(killed))
	}
	t.Logf("dead host withdrawn by every peer %s after it was killed (declared dead by gossip after %s)", worst, dead)
	if worst > withdrawBound {
		t.Fatalf("withdrawing a dead host took %s, want under %s", worst, withdrawBound)
	}
	if n := h1.counter(h1.agent.met.withheldPorts); n != 1 {
		t.Fatalf("h1 withholds %v remote ports, want 1", n)
	}
	waitNodeStatus(t, w, "h3", vxfabricv1.NodeStatus_NODE_STATUS_DEAD)

	// h1's agent restarts, gossip member and all, while h3 is dead: its new member never saw h3 (memberlist
	// ignores dead members it did not know), so only the server's status keeps h3's entries out.
	h1Addr := members["h1"].LocalAddr()
	h1.stop()
	_ = members["h1"].Shutdown()
	m1 := startMember(t, membership.RoleAgent, "h1", "198.18.0.1", "", h1Addr.String(), seeds)
	h1 = startHost(t, "h1", "198.18.0.1", hostOpts{member: m1, dp: h1.dp.Reopen(), state: h1.stateDir})
	// The applied revision persists across the restart: wait for the new process's first pass instead.
	waitFor(t, "restarted h1 applies its first snapshot", 10*time.Second, func() bool { return len(h1.rec.results()) > 0 })
	for _, p := range m1.Members() {
		if p.Meta.Node == "h3" {
			t.Fatalf("the restarted member knows h3 (%s): this test no longer restarts blind", p.State)
		}
	}
	if got, want := normalize(h1.kernel()), w.expect("h1", "h3"); !slices.Equal(got, want) {
		t.Fatalf("restarted h1 with h3 dead per the server:\n got %q\nwant %q", got, want)
	}
	for _, res := range h1.rec.results() {
		for _, c := range res.Changes {
			if strings.Contains(c.Object, "dst 198.18.0.3") {
				t.Fatalf("restarted h1 programmed the dead host: %s", c)
			}
		}
	}
	if n := h1.counter(h1.agent.met.withheldPorts); n != 1 {
		t.Fatalf("restarted h1 withholds %v remote ports, want 1", n)
	}

	// h3 comes back on the same address, with its kernel as it was.
	cutOff.Delete(gossipAddr.String())
	m3 := startMember(t, membership.RoleAgent, "h3", "198.18.0.3", "", gossipAddr.String(), seeds)
	h3b := startHost(t, "h3", "198.18.0.3", hostOpts{member: m3, dp: h3.dp.Reopen(), state: h3.stateDir})
	w.converge(10*time.Second, h1, h2, h3b)
	if n := h1.counter(h1.agent.met.withheldPorts); n != 0 {
		t.Fatalf("h1 still withholds %v remote ports", n)
	}
	waitNodeStatus(t, w, "h3", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE)
}

// TestServerStatusLiveness drives the control plane's node status by hand (no status writer runs) next
// to real gossip: a DEAD status withholds a node gossip does not know, gossip that knows a node alive
// overrides a stale DEAD (also as soon as gossip first learns of it), and LEFT, from gossip or from the
// server, withholds nothing.
func TestServerStatusLiveness(t *testing.T) {
	cli := startEtcd(t)
	w := newWorld(t, cli)
	srv := startServer(t, cli, "")
	sm := startMember(t, membership.RoleServer, "srv", "", srv.addr, "127.0.0.1:0", nil)
	seeds := []string{sm.LocalAddr().String()}
	w.node("h1", "198.18.0.1")
	w.node("h2", "198.18.0.2")
	w.node("h3", "198.18.0.3") // never in gossip
	w.node("h4", "198.18.0.4") // in gossip later
	m1 := startMember(t, membership.RoleAgent, "h1", "198.18.0.1", "", "127.0.0.1:0", seeds)
	m2 := startMember(t, membership.RoleAgent, "h2", "198.18.0.2", "", "127.0.0.1:0", seeds) // gossip only, no agent
	gossipSees := func(node string, st membership.State) func() bool {
		return func() bool {
			for _, p := range m1.Members() {
				if p.Meta.Node == node {
					return p.State == st
				}
			}
			return false
		}
	}
	waitFor(t, "h1's gossip sees h2 alive", 10*time.Second, gossipSees("h2", membership.StateAlive))
	h1 := startHost(t, "h1", "198.18.0.1", hostOpts{member: m1})
	w.network("n1", 100)
	for i, n := range []string{"h1", "h2", "h3", "h4"} {
		w.port("p"+n, "n1", n, i+1)
	}
	w.converge(5*time.Second, h1)
	setStatus := func(node string, st vxfabricv1.NodeStatus) int64 {
		// As the status writer records a host that answers no dial.
		cut := st == vxfabricv1.NodeStatus_NODE_STATUS_DEAD || st == vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT
		return w.put("nodes/"+node, &vxfabricv1.Node{Name: node, Vtep: w.vteps[node], Status: st, Unreachable: cut})
	}
	// deletes counts the FDB and flood deletes h1 ever made towards vtep.
	deletes := func(vtep string) int {
		n := 0
		for _, res := range h1.rec.results() {
			for _, c := range res.Changes {
				if c.Op == overlay.OpDelete && strings.Contains(c.Object, "dst "+vtep) {
					n++
				}
			}
		}
		return n
	}

	// h3 and h4, unknown to gossip, are DEAD per the server: withdrawn.
	setStatus("h3", vxfabricv1.NodeStatus_NODE_STATUS_DEAD)
	setStatus("h4", vxfabricv1.NodeStatus_NODE_STATUS_DEAD)
	waitKernel(t, h1, func() []string { return w.expect("h1", "h3", "h4") }, 5*time.Second)
	if n := h1.counter(h1.agent.met.withheldPorts); n != 2 {
		t.Fatalf("withheld %v remote ports, want 2", n)
	}

	// h2 is DEAD per the server too, but h1's gossip knows it alive (a stale status): kept.
	rev := setStatus("h2", vxfabricv1.NodeStatus_NODE_STATUS_DEAD)
	waitApplied(t, h1, rev, 5*time.Second)
	if got, want := normalize(h1.kernel()), w.expect("h1", "h3", "h4"); !slices.Equal(got, want) || deletes("198.18.0.2") != 0 {
		t.Fatalf("stale DEAD of a node gossip knows alive:\n got %q\nwant %q (%d deletes towards h2)", got, want, deletes("198.18.0.2"))
	}

	// h4 joins gossip with no status write: gossip now decides, and its entries return at once (not at
	// the next full pass, 30 s away).
	startMember(t, membership.RoleAgent, "h4", "198.18.0.4", "", "127.0.0.1:0", seeds)
	waitKernel(t, h1, func() []string { return w.expect("h1", "h3") }, 5*time.Second)

	// h2 stops gracefully (gossip: LEFT) and the server records LEFT for both: nothing is withheld, h3
	// returns, and h2's entries were never deleted.
	if err := m2.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	_ = m2.Shutdown()
	waitFor(t, "h1's gossip sees h2 left", 10*time.Second, gossipSees("h2", membership.StateLeft))
	setStatus("h2", vxfabricv1.NodeStatus_NODE_STATUS_LEFT)
	rev = setStatus("h3", vxfabricv1.NodeStatus_NODE_STATUS_LEFT)
	waitApplied(t, h1, rev, 5*time.Second)
	rev = w.port("p5", "n1", "h2", 5) // one more pass with h2 LEFT in gossip
	waitApplied(t, h1, rev, 5*time.Second)
	if got, want := normalize(h1.kernel()), w.expect("h1"); !slices.Equal(got, want) || deletes("198.18.0.2") != 0 {
		t.Fatalf("after h2 and h3 LEFT:\n got %q\nwant %q (%d deletes towards h2)", got, want, deletes("198.18.0.2"))
	}
	if n := h1.counter(h1.agent.met.withheldPorts); n != 0 {
		t.Fatalf("withheld %v remote ports after LEFT, want 0", n)
	}
}

// gossipPeer is the member named name as m knows it (the zero Peer when it knows none).
func gossipPeer(m *membership.Member, name string) membership.Peer {
	for _, p := range m.Members() {
		if p.Name == name {
			return p
		}
	}
	return membership.Peer{}
}

func waitNodeStatus(t *testing.T, w *world, name string, want vxfabricv1.NodeStatus) {
	t.Helper()
	waitFor(t, "node "+name+" "+want.String(), 5*time.Second, func() bool {
		resp, err := w.cli.Get(context.Background(), prefix+"nodes/"+name)
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		n := &vxfabricv1.Node{}
		return proto.Unmarshal(resp.Kvs[0].Value, n) == nil && n.GetStatus() == want
	})
}

// TestGossipServerFailover kills the gossip member of the server an agent streams from while its gRPC
// side keeps the stream open (as a host that lost power would, its TCP never closed): the agent moves
// to the other server once gossip declares the first dead.
func TestGossipServerFailover(t *testing.T) {
	cli := startEtcd(t)
	w := newWorld(t, cli)
	a, b := startServer(t, cli, ""), startServer(t, cli, "")
	ma := startMember(t, membership.RoleServer, "srv-a", "", a.addr, "127.0.0.1:0", nil)
	seeds := []string{ma.LocalAddr().String()}
	mb := startMember(t, membership.RoleServer, "srv-b", "", b.addr, "127.0.0.1:0", seeds)
	byAddr := map[string]*membership.Member{a.addr: ma, b.addr: mb}
	w.node("h1", "198.18.0.1")
	m1 := startMember(t, membership.RoleAgent, "h1", "198.18.0.1", "", "127.0.0.1:0", seeds)
	waitFor(t, "both servers known", 5*time.Second, func() bool { return len(m1.Servers()) == 2 })
	h1 := startHost(t, "h1", "198.18.0.1", hostOpts{member: m1})
	w.network("n1", 100)
	rev := w.port("p1", "n1", "h1", 1)
	// The port's interface is absent, so the converged kernel is empty, as it is before any stream:
	// wait for the revision to be applied and the stream to be recorded instead.
	waitApplied(t, h1, rev, 5*time.Second)
	waitFor(t, "stream open", 5*time.Second, func() bool { return h1.agent.Server() != "" })
	first := h1.agent.Server()
	if byAddr[first] == nil {
		t.Fatalf("agent streams from %q", first)
	}
	killed := time.Now()
	_ = byAddr[first].Shutdown()
	waitFor(t, "failover to the other server", 10*time.Second, func() bool {
		s := h1.agent.Server()
		return s != "" && s != first
	})
	t.Logf("failed over %s after the server's gossip died", time.Since(killed))
	w.port("p2", "n1", "h1", 2)
	w.converge(5*time.Second, h1)
}

// TestAgentDialsWhenGossipSeesAServer: an agent waiting to dial again (here 30 s) dials as soon as
// gossip sees a server come, rather than when the wait ends: a server restarted, or a partition
// healed, brings the host its desired state at once.
func TestAgentDialsWhenGossipSeesAServer(t *testing.T) {
	cli := startEtcd(t)
	w := newWorld(t, cli)
	a := startServer(t, cli, "")
	w.node("h1", "198.18.0.1")
	m1 := startMember(t, membership.RoleAgent, "h1", "198.18.0.1", "", "127.0.0.1:0", nil)
	h1 := startHost(t, "h1", "198.18.0.1", hostOpts{member: m1, backoff: 30 * time.Second})
	w.network("n1", 100)
	rev := w.port("p1", "n1", "h1", 1)
	time.Sleep(200 * time.Millisecond) // the agent has found no server and waits its 30 s
	if h1.agent.Server() != "" {
		t.Fatal("the agent streams before any server is known")
	}
	seen := time.Now()
	startMember(t, membership.RoleServer, "srv-a", "", a.addr, "127.0.0.1:0", []string{m1.LocalAddr().String()})
	waitApplied(t, h1, rev, 10*time.Second)
	t.Logf("desired state applied %s after the server's gossip member started", time.Since(seen).Round(time.Millisecond))
}

// An agent remembers the servers gossip listed (in its state directory). Restarted with a gossip
// member that finds no server (stale gossip keys, say), it streams from a remembered one, which
// brings it the desired state, and the gossip keyring with it.
func TestRememberedServersWhenGossipListsNone(t *testing.T) {
	cli := startEtcd(t)
	w := newWorld(t, cli)
	srv := startServer(t, cli, "")
	sm := startMember(t, membership.RoleServer, "srv", "", srv.addr, "127.0.0.1:0", nil)
	w.node("h1", "198.18.0.1")
	m1 := startMember(t, membership.RoleAgent, "h1", "198.18.0.1", "", "127.0.0.1:0", []string{sm.LocalAddr().String()})
	waitFor(t, "server known through gossip", 5*time.Second, func() bool { return len(m1.Servers()) == 1 })
	state := t.TempDir()
	h1 := startHost(t, "h1", "198.18.0.1", hostOpts{member: m1, state: state})
	w.network("n1", 100)
	waitApplied(t, h1, w.port("p1", "n1", "h1", 1), 5*time.Second)
	if got, err := loadServers(state); err != nil || !slices.Equal(got, []string{srv.addr}) {
		t.Fatalf("remembered servers: %v, %v; want [%s]", got, err, srv.addr)
	}
	h1.stop()
	_ = m1.Shutdown()

	alone := startMember(t, membership.RoleAgent, "h1b", "198.18.0.1", "", "127.0.0.1:0", nil) // finds nobody
	again := startHost(t, "h1", "198.18.0.1", hostOpts{member: alone, state: state})
	rev := w.port("p2", "n1", "h1", 2)
	waitApplied(t, again, rev, 5*time.Second)
	if got := again.agent.Server(); got != srv.addr {
		t.Errorf("agent streams from %q, want the remembered %s", got, srv.addr)
	}
}
