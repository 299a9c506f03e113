package nodeagent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/membership"
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

	names := []string{"h1", "h2", "h3"}
	members := map[string]*membership.Member{}
	hosts := map[string]*host{}
	for i, name := range names {
		vtep := "198.18.0." + string(rune('1'+i))
		w.node(name, vtep) // what nodestatus writes from gossip
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
	var worst time.Duration
	for _, h := range []*host{h1, h2} {
		waitKernel(t, h, func() []string { return w.expect(h.name, "h3") }, 8*time.Second)
		worst = max(worst, time.Since(killed))
	}
	t.Logf("dead host withdrawn by every peer %s after it was killed", worst)
	if worst > 5*time.Second {
		t.Fatalf("withdrawing a dead host took %s, want under 5 s", worst)
	}
	if n := h1.counter(h1.agent.met.withheldPorts); n != 1 {
		t.Fatalf("h1 withholds %v remote ports, want 1", n)
	}

	// h3 comes back on the same address, with its kernel as it was.
	m3 := startMember(t, membership.RoleAgent, "h3", "198.18.0.3", "", gossipAddr.String(), seeds)
	h3b := startHost(t, "h3", "198.18.0.3", hostOpts{member: m3, dp: h3.dp.Reopen(), state: h3.stateDir})
	w.converge(10*time.Second, h1, h2, h3b)
	if n := h1.counter(h1.agent.met.withheldPorts); n != 0 {
		t.Fatalf("h1 still withholds %v remote ports", n)
	}
}
