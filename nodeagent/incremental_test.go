package nodeagent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/fake"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// deltaCounter counts the passes of each kind that reach the datapath.
type deltaCounter struct {
	overlay.Datapath
	applies, deltas atomic.Int64
}

func (c *deltaCounter) Apply(ctx context.Context, d overlay.DesiredState) (overlay.Result, error) {
	c.applies.Add(1)
	return c.Datapath.Apply(ctx, d)
}

func (c *deltaCounter) ApplyDelta(ctx context.Context, d overlay.Delta) (overlay.Result, error) {
	c.deltas.Add(1)
	return c.Datapath.ApplyDelta(ctx, d)
}

// incAgent is an agent that is driven by hand (accept, then a pass), over dp.
func incAgent(t testing.TB, dp overlay.Datapath) *Agent {
	t.Helper()
	cfg := Default()
	cfg.Node, cfg.VTEP, cfg.Datapath, cfg.Servers = "self", netip.MustParseAddr("198.18.0.1"), dp, []string{"127.0.0.1:1"}
	cfg.Links = &links{}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func incVTEP(node int) string { return fmt.Sprintf("198.18.1.%d", node+1) }

// assertNothingLeft checks that the kernel holds exactly what a full pass would program: a full Apply
// of the whole desired state, on a copy of the kernel, changes nothing.
func assertNothingLeft(t rapid.TB, a *Agent, dp *fake.Datapath, step int) {
	want := a.fullState()
	res, err := dp.Reopen().Apply(context.Background(), want)
	if err != nil {
		t.Fatalf("step %d: full apply: %v", step, err)
	}
	if len(res.Changes) > 0 {
		t.Fatalf("step %d: a full Apply after the incremental passes still changes %v", step, res.Changes)
	}
}

// TestIncrementalMatchesFullPass drives random sequences of deltas (remote ports added, moved,
// removed, sharing MACs and IPs, of dead, unknown or invalid nodes; flood lists resent; peers dying
// and returning; networks of every proxy kind) through the agent's pass, and checks after each that a
// full Apply of the whole desired state would change nothing in the kernel.
func TestIncrementalMatchesFullPass(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		dp := fake.New()
		incrementalProperty(t, rt, dp, func(want overlay.DesiredState) (overlay.Result, error) {
			return dp.Reopen().Apply(context.Background(), want)
		})
	})
}

// incrementalProperty is one run of the property on dp: full(want) applies the whole desired state
// after each step (to a copy of the kernel where there is one) and must report no change.
func incrementalProperty(t *testing.T, rt *rapid.T, dp overlay.Datapath, full func(overlay.DesiredState) (overlay.Result, error)) {
	a := incAgent(t, dp)
	ctx := context.Background()
	nets := []*vxfabricv1.NetworkState{
		{Id: "iso", Vni: 100, Mtu: 1450, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED},
		{Id: "br", Vni: 200, Mtu: 1450, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED},
	}
	status := map[int]vxfabricv1.NodeStatus{}
	peer := func(i int) *vxfabricv1.Peer {
		st := status[i]
		return &vxfabricv1.Peer{Name: fmt.Sprintf("h%d", i), Vtep: incVTEP(i), Status: st, Unreachable: st == vxfabricv1.NodeStatus_NODE_STATUS_DEAD}
	}
	flood := func(n *vxfabricv1.NetworkState, nodes []int) *vxfabricv1.NetworkState {
		c := &vxfabricv1.NetworkState{Id: n.Id, Vni: n.Vni, Mtu: n.Mtu, Mode: n.Mode}
		for _, i := range nodes {
			c.Flood = append(c.Flood, &vxfabricv1.FloodEntry{Node: fmt.Sprintf("h%d", i), Vtep: incVTEP(i)})
		}
		return c
	}
	snap := &vxfabricv1.SyncResponse{Revision: 1, Snapshot: true}
	for i := range 4 {
		status[i] = vxfabricv1.NodeStatus_NODE_STATUS_ALIVE
		snap.Peers = append(snap.Peers, peer(i))
	}
	for _, n := range nets {
		snap.Networks = append(snap.Networks, flood(n, []int{0, 1, 2}))
	}
	if err := a.accept(snap); err != nil {
		rt.Fatal(err)
	}
	if err := a.reconcile(ctx); err != nil {
		rt.Fatal(err)
	}
	rev := int64(1)
	steps := rapid.IntRange(1, 25).Draw(rt, "steps")
	for step := range steps {
		rev++
		d := &vxfabricv1.SyncResponse{Revision: rev}
		for range rapid.IntRange(1, 3).Draw(rt, "ops") {
			switch rapid.IntRange(0, 9).Draw(rt, "op") {
			case 0, 1, 2, 3: // a remote port added or changed
				node := rapid.IntRange(0, 4).Draw(rt, "node") // h4 is no peer yet
				p := &vxfabricv1.RemotePort{
					Id:        fmt.Sprintf("p%d", rapid.IntRange(0, 7).Draw(rt, "port")),
					NetworkId: rapid.SampledFrom([]string{"iso", "iso", "br", "unknown"}).Draw(rt, "network"),
					Node:      fmt.Sprintf("h%d", node),
					Vtep:      rapid.SampledFrom([]string{incVTEP(node), incVTEP(node), incVTEP(5), "bad"}).Draw(rt, "vtep"),
					Mac:       rapid.SampledFrom([]string{"0e:00:00:00:00:01", "0e:00:00:00:00:02", "0e:00:00:00:00:03", "0e:00:00:00:00:04", "zz"}).Draw(rt, "mac"),
					Ip:        rapid.SampledFrom([]string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", ""}).Draw(rt, "ip"),
				}
				d.RemotePorts = append(d.RemotePorts, p)
			case 4, 5: // a remote port removed
				d.RemovedRemotePortIds = append(d.RemovedRemotePortIds, fmt.Sprintf("p%d", rapid.IntRange(0, 7).Draw(rt, "port")))
			case 6: // a flood list sent again
				n := nets[rapid.IntRange(0, 1).Draw(rt, "net")]
				nodes := rapid.SliceOfDistinct(rapid.IntRange(0, 4), rapid.ID).Draw(rt, "flood")
				slices.Sort(nodes)
				d.Networks = append(d.Networks, flood(n, nodes))
			case 7: // a peer dies or returns
				i := rapid.IntRange(0, 3).Draw(rt, "peer")
				status[i] = rapid.SampledFrom([]vxfabricv1.NodeStatus{vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, vxfabricv1.NodeStatus_NODE_STATUS_DEAD}).Draw(rt, "status")
				d.Peers = append(d.Peers, peer(i))
			case 8: // a peer record sent again, unchanged
				d.Peers = append(d.Peers, peer(rapid.IntRange(0, 3).Draw(rt, "peer")))
			case 9: // the fifth node becomes a peer
				status[4] = vxfabricv1.NodeStatus_NODE_STATUS_ALIVE
				d.Peers = append(d.Peers, peer(4))
			}
		}
		if err := a.accept(d); err != nil {
			rt.Fatal(err)
		}
		if err := a.reconcileChange(ctx); err != nil {
			rt.Fatalf("step %d: %v", step, err)
		}
		if got := a.AppliedRevision(); got != rev {
			rt.Fatalf("step %d: applied revision %d, want %d", step, got, rev)
		}
		res, err := full(a.fullState())
		if err != nil {
			rt.Fatalf("step %d: full apply: %v", step, err)
		}
		if len(res.Changes) > 0 {
			rt.Fatalf("step %d: a full Apply after the incremental passes still changes %v", step, res.Changes)
		}
	}
}

// TestIncrementalPassIsUsed checks that a remote port coming and going in a programmed network, behind
// known VTEPs, reaches the kernel through ApplyDelta only, and that what needs more goes through Apply.
func TestIncrementalPassIsUsed(t *testing.T) {
	dp := fake.New()
	counter := &deltaCounter{Datapath: dp}
	a := incAgent(t, counter)
	ctx := context.Background()
	n := 0
	remote := func(id, network, node, mac, vtep string) *vxfabricv1.RemotePort {
		n++
		p := remote(id, network, node, mac, vtep)
		p.Ip = fmt.Sprintf("10.0.0.%d", n)
		return p
	}
	snap := &vxfabricv1.SyncResponse{Revision: 1, Snapshot: true,
		Networks: []*vxfabricv1.NetworkState{netState("n", 100, "h0="+incVTEP(0), "h1="+incVTEP(1))},
		Peers: []*vxfabricv1.Peer{{Name: "h0", Vtep: incVTEP(0), Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE},
			{Name: "h1", Vtep: incVTEP(1), Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE}},
		RemotePorts: []*vxfabricv1.RemotePort{remote("p0", "n", "h0", "0e:00:00:00:00:10", incVTEP(0))}}
	steps := []struct {
		name        string
		msg         *vxfabricv1.SyncResponse
		full, delta int64
	}{
		{"snapshot", snap, 1, 0},
		{"port added", &vxfabricv1.SyncResponse{RemotePorts: []*vxfabricv1.RemotePort{remote("p1", "n", "h1", "0e:00:00:00:00:11", incVTEP(1))}}, 0, 1},
		{"port moved", &vxfabricv1.SyncResponse{RemotePorts: []*vxfabricv1.RemotePort{remote("p1", "n", "h0", "0e:00:00:00:00:11", incVTEP(0))}}, 0, 1},
		{"port removed", &vxfabricv1.SyncResponse{RemovedRemotePortIds: []string{"p1"}}, 0, 1},
		{"flood entry removed", &vxfabricv1.SyncResponse{Networks: []*vxfabricv1.NetworkState{netState("n", 100, "h0="+incVTEP(0))}}, 1, 0}, // h1's VTEP leaves the filter
		{"flood entry back", &vxfabricv1.SyncResponse{Networks: []*vxfabricv1.NetworkState{netState("n", 100, "h0="+incVTEP(0), "h1="+incVTEP(1))}}, 1, 0},
		{"port behind a new vtep", &vxfabricv1.SyncResponse{RemotePorts: []*vxfabricv1.RemotePort{remote("p2", "n", "h0", "0e:00:00:00:00:12", "198.18.9.9")}}, 1, 0},
		{"peer unchanged", &vxfabricv1.SyncResponse{Peers: snap.Peers[:1]}, 0, 0},
		{"peer dead", &vxfabricv1.SyncResponse{Peers: []*vxfabricv1.Peer{{Name: "h1", Vtep: incVTEP(1), Status: vxfabricv1.NodeStatus_NODE_STATUS_DEAD, Unreachable: true}}}, 1, 0},
		{"mac shared by two ports", &vxfabricv1.SyncResponse{RemotePorts: []*vxfabricv1.RemotePort{remote("p3", "n", "h0", "0e:00:00:00:00:10", incVTEP(0))}}, 1, 0},
		{"ip shared by two ports", &vxfabricv1.SyncResponse{RemotePorts: []*vxfabricv1.RemotePort{{Id: "p4", NetworkId: "n", Node: "h0", Mac: "0e:00:00:00:00:14", Vtep: incVTEP(0), Ip: "10.0.0.1"}}}, 1, 0},
		{"port of a dead node", &vxfabricv1.SyncResponse{RemotePorts: []*vxfabricv1.RemotePort{remote("p5", "n", "h1", "0e:00:00:00:00:15", incVTEP(1))}}, 0, 0},
	}
	for i, s := range steps {
		s.msg.Revision = int64(i + 1)
		full, deltas := counter.applies.Load(), counter.deltas.Load()
		if err := a.accept(s.msg); err != nil {
			t.Fatal(err)
		}
		pass := a.reconcileChange
		if i == 0 {
			pass = a.reconcile
		}
		if err := pass(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := counter.applies.Load() - full; got != s.full {
			t.Errorf("%s: %d full Applies, want %d", s.name, got, s.full)
		}
		if got := counter.deltas.Load() - deltas; got != s.delta {
			t.Errorf("%s: %d ApplyDelta calls, want %d", s.name, got, s.delta)
		}
		if got := a.AppliedRevision(); got != s.msg.Revision {
			t.Errorf("%s: applied revision %d, want %d", s.name, got, s.msg.Revision)
		}
		assertNothingLeft(t, a, dp, i)
	}
}

// fullState builds the whole desired state as the next full pass would, without recording anything
// (tests compare it with what incremental passes programmed).
func (a *Agent) fullState() overlay.DesiredState {
	a.mu.Lock()
	defer a.mu.Unlock()
	prog, pend := a.model.prog, a.model.pend
	a.model.prog = nil
	a.model.pend = pending{remotes: map[string]*remoteEntry{}, networks: map[string]*networkEntry{}}
	b := a.model.build(overlay.Underlay{VTEP: a.cfg.VTEP, Interface: a.cfg.UnderlayInterface}, a.model.dead(a.gossipDead()))
	a.model.prog, a.model.pend = prog, pend
	for _, vtep := range a.model.peerVTEPs {
		b.state.Infrastructure = append(b.state.Infrastructure, vtep)
	}
	b.state.Infrastructure = append(a.infrastructure(), b.state.Infrastructure...)
	return b.state
}

// TestFullPassJitter checks that periodic full passes are spread over 0.75..1.25 of the interval, so
// that agents started together do not all run them at once.
func TestFullPassJitter(t *testing.T) {
	const d = 30 * time.Second
	lo, hi := d, time.Duration(0)
	for range 1000 {
		j := jittered(d)
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo < d*3/4 || hi > d*5/4 {
		t.Fatalf("jittered periods span %s..%s, want within %s..%s", lo, hi, d*3/4, d*5/4)
	}
	if hi-lo < d/4 {
		t.Fatalf("jittered periods span only %s..%s: the agents would stay in step", lo, hi)
	}
}
