package fanout

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// view is what an agent holds after applying a stream's messages in order.
type view struct {
	rev      int64
	networks map[string]*vxfabricv1.NetworkState
	local    map[string]*vxfabricv1.LocalPort
	remote   map[string]*vxfabricv1.RemotePort
	peers    map[string]*vxfabricv1.Peer
	// continues: the last message applied was a snapshot part with more parts to come.
	continues bool
}

func newView() *view {
	return &view{
		networks: map[string]*vxfabricv1.NetworkState{},
		local:    map[string]*vxfabricv1.LocalPort{},
		remote:   map[string]*vxfabricv1.RemotePort{},
		peers:    map[string]*vxfabricv1.Peer{},
	}
}

func (v *view) apply(msg *vxfabricv1.SyncResponse) {
	if msg.GetSnapshot() {
		*v = *newView()
	}
	v.rev = msg.GetRevision()
	for _, id := range msg.GetRemovedNetworkIds() {
		delete(v.networks, id)
	}
	for _, id := range msg.GetRemovedLocalPortIds() {
		delete(v.local, id)
	}
	for _, id := range msg.GetRemovedRemotePortIds() {
		delete(v.remote, id)
	}
	for _, name := range msg.GetRemovedPeers() {
		delete(v.peers, name)
	}
	for _, n := range msg.GetNetworks() {
		v.networks[n.GetId()] = n
	}
	for _, p := range msg.GetLocalPorts() {
		v.local[p.GetId()] = p
	}
	for _, p := range msg.GetRemotePorts() {
		v.remote[p.GetId()] = p
	}
	for _, p := range msg.GetPeers() {
		v.peers[p.GetName()] = p
	}
}

// String renders the view as sorted lines, for whole-state comparisons.
func (v *view) String() string {
	var lines []string
	for _, n := range v.networks {
		var flood []string
		for _, f := range n.GetFlood() {
			flood = append(flood, f.GetNode()+"="+f.GetVtep())
		}
		lines = append(lines, fmt.Sprintf("net %s vni=%d %s/%s mtu=%d mode=%s gw=%s/%s uplink=%q flood=[%s]",
			n.GetId(), n.GetVni(), n.GetBridgeName(), n.GetVxlanName(), n.GetMtu(), n.GetMode(), n.GetGateway(),
			n.GetGatewayMac(), n.GetUplinkInterface(), strings.Join(flood, " ")))
	}
	for _, p := range v.local {
		lines = append(lines, fmt.Sprintf("local %s net=%s if=%s %s %s vm=%q", p.GetId(), p.GetNetworkId(), p.GetInterfaceName(), p.GetMac(), p.GetIp(), p.GetVm()))
	}
	for _, p := range v.remote {
		lines = append(lines, fmt.Sprintf("remote %s net=%s %s %s on %s@%s", p.GetId(), p.GetNetworkId(), p.GetMac(), p.GetIp(), p.GetNode(), p.GetVtep()))
	}
	for _, p := range v.peers {
		lines = append(lines, fmt.Sprintf("peer %s@%s %s", p.GetName(), p.GetVtep(), p.GetStatus()))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// applyPart applies msg like an agent does: a snapshot's first part replaces the view, its later parts
// (after one with snapshot_continues) add to it.
func (v *view) applyPart(msg *vxfabricv1.SyncResponse) {
	if msg.GetSnapshot() && v.continues {
		continues := msg.GetSnapshotContinues()
		msg = proto.CloneOf(msg)
		msg.Snapshot = false
		v.apply(msg)
		v.continues = continues
		return
	}
	v.apply(msg)
	v.continues = msg.GetSnapshotContinues()
}

func viewOf(msg *vxfabricv1.SyncResponse) *view {
	v := newView()
	v.apply(msg)
	return v
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testNetwork(id string, vni uint32) *vxfabricv1.Network {
	return &vxfabricv1.Network{
		Id: id, Tenant: "t1", Name: "n-" + id, Cidr: "10.0.0.0/16", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED,
		Vni: vni, Mtu: 1450, Gateway: "10.0.0.1", GatewayMac: gatewayMAC(vni),
	}
}

func testPort(id, network, node string, n int) *vxfabricv1.Port {
	return &vxfabricv1.Port{
		Id: id, Tenant: "t1", NetworkId: network, Name: "p-" + id, Node: node,
		Mac: fmt.Sprintf("0e:00:00:00:%02x:%02x", n>>8&0xff, n&0xff), Ip: fmt.Sprintf("10.0.%d.%d", n/250, n%250+2),
		InterfaceName: "vxp" + id,
	}
}

func testNode(name, vtep string) *vxfabricv1.Node {
	return &vxfabricv1.Node{Name: name, Vtep: vtep, Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE}
}

// TestDeltasEqualSnapshots drives the model through random changes (ports created, moved between nodes
// and networks, deleted; networks created, changed, given uplinks, deleted; nodes registered, readdressed,
// changing status, removed) and checks after every batch that each node's view built from deltas equals a fresh snapshot.
func TestDeltasEqualSnapshots(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed))
			log := slog.New(slog.DiscardHandler)
			m := newModel()
			nodes := []string{"a", "b", "c", "d", "e"}
			nets := []string{"n1", "n2", "n3"}
			views := map[string]*view{}
			for _, n := range nodes {
				views[n] = viewOf(m.snapshot(n))
			}
			rev := int64(1)
			for step := 0; step < 300; step++ {
				var evs []event
				for range 1 + rng.IntN(4) {
					rev++
					ev := event{rev: rev}
					switch r := rng.IntN(10); {
					case r < 5:
						id := fmt.Sprintf("p%d", rng.IntN(12))
						ev.key = "ports/" + id
						if rng.IntN(4) == 0 {
							ev.deleted = true
						} else {
							ev.value = mustMarshal(t, testPort(id, nets[rng.IntN(len(nets))], nodes[rng.IntN(len(nodes))], rng.IntN(100)))
						}
					case r < 7:
						id := nets[rng.IntN(len(nets))]
						ev.key = "networks/" + id
						if rng.IntN(4) == 0 {
							ev.deleted = true
						} else {
							n := testNetwork(id, uint32(100+rng.IntN(3)))
							if rng.IntN(3) == 0 {
								n.Mode = vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED
								n.Uplink = &vxfabricv1.Uplink{Node: nodes[rng.IntN(len(nodes))], Interface: "eth1"}
							}
							ev.value = mustMarshal(t, n)
						}
					case r < 9:
						name := nodes[rng.IntN(len(nodes))]
						ev.key = "nodes/" + name
						if rng.IntN(4) == 0 {
							ev.deleted = true
						} else {
							n := testNode(name, fmt.Sprintf("198.18.0.%d", 1+rng.IntN(3)))
							n.Status = vxfabricv1.NodeStatus(1 + rng.IntN(4))
							if rng.IntN(8) == 0 {
								n.Vtep = "" // recorded before its VTEP is known
							}
							ev.value = mustMarshal(t, n)
						}
					default:
						ev.key = "names/networks/t1/x"
						ev.value = []byte("n1")
					}
					evs = append(evs, ev)
				}
				b := newBatch(m, log, func(string) bool { return true }, 0)
				for _, ev := range evs {
					b.apply(ev)
				}
				deltas, _ := b.finish()
				for node, d := range deltas {
					views[node].apply(d.message(m.rev))
				}
				for _, n := range nodes {
					want := viewOf(m.snapshot(n)).String()
					if got := views[n].String(); got != want {
						t.Fatalf("step %d node %s: view from deltas\n%s\nwant snapshot\n%s", step, n, got, want)
					}
					// The snapshot sent in parts of a few items gives the same view.
					chunked := newView()
					for _, part := range snapshotParts(m.snapshot(n), 1+rng.IntN(4)) {
						chunked.applyPart(part)
					}
					if got := chunked.String(); got != want {
						t.Fatalf("step %d node %s: view from snapshot parts\n%s\nwant snapshot\n%s", step, n, got, want)
					}
				}
			}
			// A full load of the final state (as after a restart or compaction) gives the same views.
			loaded := newModel()
			lb := newBatch(loaded, log, func(string) bool { return false }, 0)
			lb.loading = true
			for id, p := range m.ports {
				lb.apply(event{key: "ports/" + id, value: mustMarshal(t, p), rev: 1})
			}
			for id, n := range m.networks {
				lb.apply(event{key: "networks/" + id, value: mustMarshal(t, n), rev: 1})
			}
			for name, n := range m.nodes {
				lb.apply(event{key: "nodes/" + name, value: mustMarshal(t, n), rev: 1})
			}
			loaded.rev = m.rev
			for _, n := range nodes {
				if got, want := viewOf(loaded.snapshot(n)).String(), viewOf(m.snapshot(n)).String(); got != want {
					t.Errorf("node %s: loaded model\n%s\nwant\n%s", n, got, want)
				}
			}
		})
	}
}

func TestSnapshotContentModel(t *testing.T) {
	m := newModel()
	b := newBatch(m, slog.New(slog.DiscardHandler), func(string) bool { return false }, 0)
	bridged := testNetwork("n3", 300)
	bridged.Mode, bridged.Gateway, bridged.Uplink = vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, "", &vxfabricv1.Uplink{Node: "a", Interface: "eth1"}
	for i, kv := range []struct {
		key string
		msg proto.Message
	}{
		{"nodes/a", testNode("a", "198.18.0.1")},
		{"nodes/b", testNode("b", "198.18.0.2")},
		{"nodes/c", testNode("c", "198.18.0.3")},
		{"networks/n1", testNetwork("n1", 100)},
		{"networks/n2", testNetwork("n2", 200)},
		{"networks/n3", bridged},
		{"ports/pa", testPort("pa", "n1", "a", 1)},
		{"ports/pb", testPort("pb", "n1", "b", 2)},
		{"ports/pd", testPort("pd", "n1", "d", 3)}, // d has no VTEP yet: withheld
		{"ports/pc", testPort("pc", "n2", "c", 4)}, // a has no port in n2: invisible
		{"ports/pb3", testPort("pb3", "n3", "b", 5)},
	} {
		b.apply(event{key: kv.key, value: mustMarshal(t, kv.msg), rev: int64(i + 2)})
	}
	want := strings.Join([]string{
		"local pa net=n1 if=vxppa 0e:00:00:00:00:01 10.0.0.3 vm=\"\"",
		"net n1 vni=100 vxbr100/vxlan100 mtu=1450 mode=NETWORK_MODE_ROUTED gw=10.0.0.1/02:fb:00:00:64:01 uplink=\"\" flood=[b=198.18.0.2]",
		"net n3 vni=300 vxbr300/vxlan300 mtu=1450 mode=NETWORK_MODE_BRIDGED gw=/02:fb:00:01:2c:01 uplink=\"eth1\" flood=[b=198.18.0.2]",
		"peer b@198.18.0.2 NODE_STATUS_ALIVE",
		"remote pb net=n1 0e:00:00:00:00:02 10.0.0.4 on b@198.18.0.2",
		"remote pb3 net=n3 0e:00:00:00:00:05 10.0.0.7 on b@198.18.0.2",
	}, "\n")
	snap := m.snapshot("a")
	if !snap.GetSnapshot() || snap.GetRevision() != 12 {
		t.Errorf("snapshot flag %v revision %d, want true 12", snap.GetSnapshot(), snap.GetRevision())
	}
	if got := viewOf(snap).String(); got != want {
		t.Errorf("view of a:\n%s\nwant\n%s", got, want)
	}
}

// TestViewsShareMessages checks that every view carries the model's one message per remote port (the
// same pointer in each viewer's snapshot and delta), that a change replaces the message rather than
// modifying it (a stream may be marshalling the old one), and that a snapshot's allocations do not
// grow with the ports it holds.
func TestViewsShareMessages(t *testing.T) {
	m := newModel()
	log := slog.New(slog.DiscardHandler)
	b := newBatch(m, log, func(string) bool { return false }, 0)
	rev := int64(1)
	load := func(key string, msg proto.Message) {
		rev++
		b.apply(event{key: key, value: mustMarshal(t, msg), rev: rev})
	}
	load("networks/n1", testNetwork("n1", 100))
	for i := range 30 {
		name := fmt.Sprintf("h%02d", i)
		load("nodes/"+name, testNode(name, fmt.Sprintf("198.18.0.%d", i+1)))
		for j := range 10 {
			id := fmt.Sprintf("p%02d-%d", i, j)
			load("ports/"+id, testPort(id, "n1", name, i*10+j))
		}
	}
	byID := func(msg *vxfabricv1.SyncResponse) map[string]*vxfabricv1.RemotePort {
		ports := map[string]*vxfabricv1.RemotePort{}
		for _, p := range msg.GetRemotePorts() {
			ports[p.GetId()] = p
		}
		return ports
	}
	a, c := byID(m.snapshot("h00")), byID(m.snapshot("h01"))
	if len(a) != 290 || len(c) != 290 {
		t.Fatalf("%d and %d remote ports, want 290 each", len(a), len(c))
	}
	for id, p := range a {
		if q, ok := c[id]; ok && p != q {
			t.Fatalf("port %s: two viewers got two copies", id)
		}
	}

	old := a["p02-0"]
	moved := testPort("p02-0", "n1", "h02", 999)
	rev++
	batch := newBatch(m, log, func(string) bool { return true }, 0)
	batch.apply(event{key: "ports/p02-0", value: mustMarshal(t, moved), rev: rev})
	rev++
	batch.apply(event{key: "nodes/h03", value: mustMarshal(t, testNode("h03", "198.18.1.99")), rev: rev})
	deltas, _ := batch.finish()
	if old.GetMac() != testPort("p02-0", "n1", "h02", 20).GetMac() {
		t.Errorf("published message modified: mac now %s", old.GetMac())
	}
	if old3 := a["p03-0"]; old3.GetVtep() != "198.18.0.4" {
		t.Errorf("published message modified by a VTEP change: vtep now %s", old3.GetVtep())
	}
	snap := byID(m.snapshot("h01"))
	for _, viewer := range []string{"h00", "h05"} {
		got := byID(deltas[viewer].message(rev))
		for _, id := range []string{"p02-0", "p03-0", "p03-9"} {
			if got[id] == nil || got[id] != snap[id] {
				t.Errorf("viewer %s: delta carries %v for %s, want the model's message %v", viewer, got[id], id, snap[id])
			}
		}
	}
	if snap["p02-0"].GetMac() != moved.GetMac() || snap["p03-0"].GetVtep() != "198.18.1.99" {
		t.Errorf("after the changes: p02-0 mac %s, p03-0 vtep %s", snap["p02-0"].GetMac(), snap["p03-0"].GetVtep())
	}

	// Allocations of a snapshot: its slices and network states, not a message per port (290 here).
	n := testing.AllocsPerRun(10, func() { m.snapshot("h00") })
	t.Logf("a snapshot of 290 remote ports: %.0f allocations", n)
	if n > 60 {
		t.Errorf("a snapshot of 290 remote ports takes %.0f allocations, want at most 60", n)
	}
}
