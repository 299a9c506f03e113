package nodeagent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxfabric/vxfabric/overlay/fake"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Shape of the scale benchmark's fabric (bench/, benchmark 1) as one of its agents sees it: one
// network spanning benchHosts hosts with benchPorts remote ports, every host a flood target and a peer.
const (
	benchHosts = 1000
	benchPorts = 10000
)

func benchVTEP(i int) string { return fmt.Sprintf("198.18.%d.%d", i/250, i%250+1) }

func benchRemote(i int) *vxfabricv1.RemotePort {
	h := i % benchHosts
	return &vxfabricv1.RemotePort{
		Id: fmt.Sprintf("port-%06d", i), NetworkId: "span", Node: fmt.Sprintf("h%04d", h), Vtep: benchVTEP(h),
		Mac: fmt.Sprintf("0e:00:00:%02x:%02x:%02x", byte(i>>16), byte(i>>8), byte(i)),
		Ip:  fmt.Sprintf("10.64.%d.%d", i/250, i%250+1),
	}
}

// benchAgent returns an agent over the fake datapath that has applied the spanning network's snapshot.
func benchAgent(b *testing.B) (*Agent, *fake.Datapath) {
	b.Helper()
	dp := fake.New()
	dp.SetLink("tap-self", true)
	cfg := Default()
	cfg.Node, cfg.VTEP, cfg.Datapath, cfg.Servers = "self", netip.MustParseAddr("198.19.0.1"), dp, []string{"127.0.0.1:1"}
	cfg.Links = &links{}
	a, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	n := &vxfabricv1.NetworkState{Id: "span", Vni: 4096, Mtu: 1450, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
	snap := &vxfabricv1.SyncResponse{Revision: 1, Snapshot: true, Networks: []*vxfabricv1.NetworkState{n},
		LocalPorts: []*vxfabricv1.LocalPort{{Id: "port-self", NetworkId: "span", InterfaceName: "tap-self", Mac: "0e:ff:00:00:00:01", Ip: "10.67.0.1"}}}
	for h := range benchHosts {
		node := fmt.Sprintf("h%04d", h)
		n.Flood = append(n.Flood, &vxfabricv1.FloodEntry{Node: node, Vtep: benchVTEP(h)})
		snap.Peers = append(snap.Peers, &vxfabricv1.Peer{Name: node, Vtep: benchVTEP(h), Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE})
	}
	for i := range benchPorts {
		snap.RemotePorts = append(snap.RemotePorts, benchRemote(i))
	}
	if err := a.accept(snap); err != nil {
		b.Fatal(err)
	}
	if err := a.reconcile(context.Background()); err != nil {
		b.Fatal(err)
	}
	return a, dp
}

// BenchmarkReconcileOneRemotePort is one change as the agent handles it: a delta adds one remote port
// to a network of 10,000 (and takes the previous iteration's away, so the size stays put), and the
// pass that follows applies it (incrementally: one FDB and one neighbour entry written, one of each
// removed).
func BenchmarkReconcileOneRemotePort(b *testing.B) {
	benchOneRemotePort(b, func(a *Agent, ctx context.Context) error { return a.reconcileChange(ctx) })
}

// BenchmarkReconcileFullOneRemotePort is the same change converged by a full pass (build the whole
// desired state, Apply diffs it against the fake kernel): the periodic pass, and every change the
// incremental path leaves to it.
func BenchmarkReconcileFullOneRemotePort(b *testing.B) {
	benchOneRemotePort(b, func(a *Agent, ctx context.Context) error { return a.reconcile(ctx) })
}

func benchOneRemotePort(b *testing.B, pass func(*Agent, context.Context) error) {
	a, dp := benchAgent(b)
	ctx := context.Background()
	rev := int64(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rev++
		d := &vxfabricv1.SyncResponse{Revision: rev, RemotePorts: []*vxfabricv1.RemotePort{benchRemote(benchPorts + i)}}
		if i > 0 {
			d.RemovedRemotePortIds = []string{benchRemote(benchPorts + i - 1).GetId()}
		}
		if err := a.accept(d); err != nil {
			b.Fatal(err)
		}
		if err := pass(a, ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if a.AppliedRevision() != rev {
		b.Fatalf("applied revision %d, want %d", a.AppliedRevision(), rev)
	}
	if got := strings.Count("\n"+dp.Dump(), "\nfdb "); got != benchPorts+1 {
		b.Fatalf("%d fdb entries in the fake kernel, want %d", got, benchPorts+1)
	}
	// The changes applied one by one leave nothing for a full pass to do.
	res, err := a.cfg.Datapath.Apply(ctx, a.fullState())
	if err != nil || len(res.Changes) > 0 {
		b.Fatalf("full Apply after the changes: err %v, %d changes: %v", err, len(res.Changes), res.Changes)
	}
}
