package nodeagent

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/nodestatus"
	"github.com/vxfabric/vxfabric/membership"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

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
	m, err := membership.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

// TestGossipDeathAndReturn runs agents that find their server through gossip; a host whose member
// dies without leaving has its FDB and flood entries withdrawn by the others, and they return with it.
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
		w.mu.Lock()
		w.vteps[name] = vtep
		w.mu.Unlock()
		members[name] = startMember(t, membership.RoleAgent, name, vtep, "", "127.0.0.1:0", seeds)
		hosts[name] = startHost(t, name, vtep, hostOpts{member: members[name]}) // no servers: gossip finds them
	}
	w.network("n1", 100)
	for i, name := range names {
		w.port("p"+name, "n1", name, i+1)
	}
	h1, h2, h3 := hosts["h1"], hosts["h2"], hosts["h3"]
	w.converge(10*time.Second, h1, h2, h3)

	// h3 dies: its agent stops and its member vanishes without a leave.
	gossipAddr := members["h3"].LocalAddr()
	h3.stop()
	killed := time.Now()
	_ = members["h3"].Shutdown()
	var worst, gossip time.Duration
	for _, h := range []*host{h1, h2} {
		waitKernel(t, h, func() []string { return w.expect(h.name, "h3") }, 8*time.Second)
		worst = max(worst, time.Since(killed))
		for _, p := range members[h.name].Members() {
			if p.Name == "h3" {
				gossip = max(gossip, p.Since.Sub(killed))
			}
		}
	}
	t.Logf("dead host withdrawn by every peer %s after it was killed (declared dead by gossip after %s)", worst, gossip)
	if worst > deadBound {
		t.Fatalf("withdrawing a dead host took %s, want under %s", worst, deadBound)
	}
	if n := h1.counter(h1.agent.met.withheldPorts); n != 1 {
		t.Fatalf("h1 withholds %v remote ports, want 1", n)
	}
	waitNodeStatus(t, w, "h3", vxfabricv1.NodeStatus_NODE_STATUS_DEAD)

	// h3 comes back on the same address, with its kernel as it was.
	m3 := startMember(t, membership.RoleAgent, "h3", "198.18.0.3", "", gossipAddr.String(), seeds)
	h3b := startHost(t, "h3", "198.18.0.3", hostOpts{member: m3, dp: h3.dp.Reopen(), state: h3.stateDir})
	w.converge(10*time.Second, h1, h2, h3b)
	if n := h1.counter(h1.agent.met.withheldPorts); n != 0 {
		t.Fatalf("h1 still withholds %v remote ports", n)
	}
	waitNodeStatus(t, w, "h3", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE)
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
	w.mu.Lock()
	w.vteps["h1"] = "198.18.0.1"
	w.mu.Unlock()
	w.node("h1", "198.18.0.1")
	m1 := startMember(t, membership.RoleAgent, "h1", "198.18.0.1", "", "127.0.0.1:0", seeds)
	waitFor(t, "both servers known", 5*time.Second, func() bool { return len(m1.Servers()) == 2 })
	h1 := startHost(t, "h1", "198.18.0.1", hostOpts{member: m1})
	w.network("n1", 100)
	w.port("p1", "n1", "h1", 1)
	w.converge(5*time.Second, h1)
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
