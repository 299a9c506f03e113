package fanout

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// benchHub is a hub (no etcd: events are fed directly) holding one network of nodes x portsPerNode,
// with a subscriber for every node.
func benchHub(b *testing.B, nodes, portsPerNode int) (*Hub, []*subscriber) {
	cfg := Default()
	cfg.Registerer = prometheus.NewRegistry()
	h := New(nil, cfg)
	evs := []event{{key: "networks/n1", value: mustMarshal(b, testNetwork("n1", 100)), rev: 1}}
	for i := range nodes {
		name := fmt.Sprintf("h%04d", i)
		evs = append(evs, event{key: "nodes/" + name, value: mustMarshal(b, testNode(name, fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)))})
		for j := range portsPerNode {
			id := fmt.Sprintf("p%04d-%02d", i, j)
			evs = append(evs, event{key: "ports/" + id, value: mustMarshal(b, testPort(id, "n1", name, i*portsPerNode+j))})
		}
	}
	for i := range evs {
		evs[i].rev = int64(i + 1)
	}
	h.applyEvents(evs, time.Now())
	var subs []*subscriber
	for i := range nodes {
		s := newSubscriber(fmt.Sprintf("h%04d", i))
		h.subs[s.node] = map[*subscriber]struct{}{s: {}}
		subs = append(subs, s)
	}
	return h, subs
}

// drain renders every mailbox as its stream goroutine would, and returns the messages and items sent.
func drain(h *Hub, subs []*subscriber) (msgs, items int) {
	for _, s := range subs {
		if msg, _ := h.next(s, true); msg != nil {
			msgs++
			items += len(msg.GetNetworks()) + len(msg.GetLocalPorts()) + len(msg.GetRemotePorts()) +
				len(msg.GetRemovedNetworkIds()) + len(msg.GetRemovedLocalPortIds()) + len(msg.GetRemovedRemotePortIds()) +
				len(msg.GetPeers()) + len(msg.GetRemovedPeers())
		}
	}
	return msgs, items
}

// benchChanges alternates two port writes and measures, per write, the watch-loop work (model update,
// per-node deltas, mailbox merges) plus rendering every affected stream's message.
func benchChanges(b *testing.B, nodes, portsPerNode int, writes [2]*vxfabricv1.Port) {
	h, subs := benchHub(b, nodes, portsPerNode)
	rev := h.m.rev
	vals := [2][]byte{mustMarshal(b, writes[0]), mustMarshal(b, writes[1])}
	var msgs, items int
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		rev++
		h.applyEvents([]event{{key: "ports/" + writes[i%2].GetId(), value: vals[i%2], rev: rev}}, time.Now())
		m, n := drain(h, subs)
		msgs, items = msgs+m, items+n
	}
	b.ReportMetric(float64(msgs)/float64(b.N), "msgs/op")
	b.ReportMetric(float64(items)/float64(b.N), "items/op")
}

// A port appears on (and toggles its MAC) on a node already in the network: 1,000 nodes see one item.
func BenchmarkDeltaPortUpsert1000x10(b *testing.B) {
	p1 := testPort("new", "n1", "h0000", 20000)
	p2 := proto.Clone(p1).(*vxfabricv1.Port)
	p2.Mac = "0e:00:00:00:ff:ff"
	benchChanges(b, 1000, 10, [2]*vxfabricv1.Port{p1, p2})
}

// A port moves between two nodes already in the network.
func BenchmarkDeltaPortMove1000x10(b *testing.B) {
	p1 := testPort("p0005-00", "n1", "h0005", 50)
	p2 := proto.Clone(p1).(*vxfabricv1.Port)
	p2.Node = "h0006"
	benchChanges(b, 1000, 10, [2]*vxfabricv1.Port{p1, p2})
}

// The worst case: a port moves to a node not yet in the network and back, so one node joins and
// leaves (10,000-item view) and 1,000 flood lists of 1,000 entries are rebuilt each time.
func BenchmarkDeltaNodeJoinLeave1000x10(b *testing.B) {
	h, subs := benchHub(b, 1000, 10)
	rev := h.m.rev + 1
	h.applyEvents([]event{{key: "nodes/newcomer", value: mustMarshal(b, testNode("newcomer", "198.18.9.9")), rev: rev}}, time.Now())
	drain(h, subs)
	s := newSubscriber("newcomer")
	h.subs[s.node] = map[*subscriber]struct{}{s: {}}
	subs = append(subs, s)
	h.cfg.MaxPending = 1 << 20
	p1 := testPort("mover", "n1", "h0000", 30000)
	p2 := proto.Clone(p1).(*vxfabricv1.Port)
	p2.Node = "newcomer"
	vals := [2][]byte{mustMarshal(b, p1), mustMarshal(b, p2)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		rev++
		h.applyEvents([]event{{key: "ports/mover", value: vals[i%2], rev: rev}}, time.Now())
		drain(h, subs)
	}
}

// A node's status flips between ALIVE and DEAD: the 999 nodes that see it get its record alone.
func BenchmarkDeltaPeerStatus1000x10(b *testing.B) {
	h, subs := benchHub(b, 1000, 10)
	rev := h.m.rev
	alive, dead := testNode("h0007", "198.18.0.8"), testNode("h0007", "198.18.0.8")
	dead.Status = vxfabricv1.NodeStatus_NODE_STATUS_DEAD
	vals := [2][]byte{mustMarshal(b, dead), mustMarshal(b, alive)}
	var msgs, items int
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		rev++
		h.applyEvents([]event{{key: "nodes/h0007", value: vals[i%2], rev: rev}}, time.Now())
		m, n := drain(h, subs)
		msgs, items = msgs+m, items+n
	}
	if msgs != b.N*999 || items != msgs {
		b.Fatalf("%d messages of %d items for %d status changes, want 999 of one item each", msgs, items, b.N)
	}
	b.ReportMetric(float64(msgs)/float64(b.N), "msgs/op")
}

// One node's snapshot: 10 local ports, 9,990 remote ports, a flood list of 999, 999 peers.
func BenchmarkSnapshot1000x10(b *testing.B) {
	h, _ := benchHub(b, 1000, 10)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		msg := h.m.snapshot("h0500")
		if len(msg.GetRemotePorts()) != 9990 || len(msg.GetPeers()) != 999 {
			b.Fatalf("%d remote ports, %d peers", len(msg.GetRemotePorts()), len(msg.GetPeers()))
		}
	}
}
