package nodeagent

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// scripted is an AgentService whose Sync streams send what the test puts on send; a nil message cuts
// the stream with an error. Each stream's request is put on opened.
type scripted struct {
	vxfabricv1.UnimplementedAgentServiceServer
	opened chan *vxfabricv1.SyncRequest
	send   chan *vxfabricv1.SyncResponse
}

func (s *scripted) RegisterNode(context.Context, *vxfabricv1.RegisterNodeRequest) (*vxfabricv1.RegisterNodeResponse, error) {
	return &vxfabricv1.RegisterNodeResponse{}, nil
}

func (s *scripted) ReportApplied(context.Context, *vxfabricv1.ReportAppliedRequest) (*vxfabricv1.ReportAppliedResponse, error) {
	return &vxfabricv1.ReportAppliedResponse{}, nil
}

func (s *scripted) Sync(req *vxfabricv1.SyncRequest, stream grpc.ServerStreamingServer[vxfabricv1.SyncResponse]) error {
	select {
	case s.opened <- req:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	for {
		select {
		case msg := <-s.send:
			if msg == nil {
				return status.Error(codes.Unavailable, "stream cut by the test")
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func startScripted(t *testing.T) (*scripted, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{opened: make(chan *vxfabricv1.SyncRequest, 4), send: make(chan *vxfabricv1.SyncResponse)}
	gs := grpc.NewServer()
	vxfabricv1.RegisterAgentServiceServer(gs, s)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-served })
	return s, lis.Addr().String()
}

func (s *scripted) waitOpened(t *testing.T) *vxfabricv1.SyncRequest {
	t.Helper()
	select {
	case req := <-s.opened:
		return req
	case <-time.After(10 * time.Second):
		t.Fatal("agent opened no Sync stream within 10 s")
		return nil
	}
}

func (s *scripted) push(t *testing.T, msgs ...*vxfabricv1.SyncResponse) {
	t.Helper()
	for _, m := range msgs {
		select {
		case s.send <- m:
		case <-time.After(10 * time.Second):
			t.Fatal("Sync stream took no message within 10 s")
		}
	}
}

// partsNetwork is network n1 on host "a" with a flood entry per peer.
func partsNetwork(peers int) *vxfabricv1.NetworkState {
	n := &vxfabricv1.NetworkState{Id: "n1", Tenant: "t1", Name: "net1", Vni: 100, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED,
		Mtu: 1450, Cidr: "10.0.0.0/16", Gateway: "10.0.0.1", GatewayMac: "0e:00:00:00:00:01", BridgeName: "vxb100", VxlanName: "vxl100"}
	for i := range peers {
		n.Flood = append(n.Flood, &vxfabricv1.FloodEntry{Node: fmt.Sprint("h", i), Vtep: fmt.Sprintf("198.18.0.%d", 10+i)})
	}
	return n
}

func partsRemote(i int) *vxfabricv1.RemotePort {
	return &vxfabricv1.RemotePort{Id: fmt.Sprint("r", i), NetworkId: "n1", Mac: fmt.Sprintf("0e:00:00:00:01:%02x", i),
		Ip: fmt.Sprintf("10.0.1.%d", i+2), Node: fmt.Sprint("h", i%3), Vtep: fmt.Sprintf("198.18.0.%d", 10+i%3)}
}

func partsPeers() []*vxfabricv1.Peer {
	var ps []*vxfabricv1.Peer
	for i := range 3 {
		ps = append(ps, &vxfabricv1.Peer{Name: fmt.Sprint("h", i), Vtep: fmt.Sprintf("198.18.0.%d", 10+i), Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE})
	}
	return ps
}

// remoteCounter records how many remote ports each Apply's desired state holds.
type remoteCounter struct {
	overlay.Datapath
	mu     sync.Mutex
	counts []int
}

func (r *remoteCounter) Apply(ctx context.Context, d overlay.DesiredState) (overlay.Result, error) {
	n := 0
	for _, nw := range d.Networks {
		n += len(nw.Remotes)
	}
	r.mu.Lock()
	r.counts = append(r.counts, n)
	r.mu.Unlock()
	return r.Datapath.Apply(ctx, d)
}

func (r *remoteCounter) seen() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.counts)
}

// TestSnapshotPartsAppliedWhole sends snapshots in parts: the kernel is programmed only with whole
// snapshots, and a stream cut between parts leaves kernel, applied and resume revision as they were.
func TestSnapshotPartsAppliedWhole(t *testing.T) {
	srv, addr := startScripted(t)
	counter := &remoteCounter{}
	h := startHost(t, "a", "198.18.0.1", hostOpts{servers: []string{addr}, wrap: func(dp overlay.Datapath) overlay.Datapath {
		counter.Datapath = dp
		return counter
	}})

	// A whole snapshot at revision 10 with remote ports r0..r5.
	if req := srv.waitOpened(t); req.GetResumeRevision() != 0 {
		t.Fatalf("first stream resumes from %d, want 0", req.GetResumeRevision())
	}
	first := &vxfabricv1.SyncResponse{Revision: 10, Snapshot: true, Networks: []*vxfabricv1.NetworkState{partsNetwork(3)}, Peers: partsPeers()}
	for i := range 6 {
		first.RemotePorts = append(first.RemotePorts, partsRemote(i))
	}
	srv.push(t, first)
	waitApplied(t, h, 10, 10*time.Second)
	before := h.kernel()
	if n := len(slices.DeleteFunc(slices.Clone(before), func(l string) bool { return l[:4] != "fdb " })); n != 6 {
		t.Fatalf("kernel after the first snapshot has %d fdb lines, want 6:\n%q", n, before)
	}
	applies := len(counter.seen())

	// Two parts of a snapshot at revision 20 (which would withdraw r1..r5), then the stream breaks.
	srv.push(t,
		&vxfabricv1.SyncResponse{Revision: 20, Snapshot: true, SnapshotContinues: true, Networks: []*vxfabricv1.NetworkState{partsNetwork(3)}},
		&vxfabricv1.SyncResponse{Revision: 20, Snapshot: true, SnapshotContinues: true, RemotePorts: []*vxfabricv1.RemotePort{partsRemote(0)}},
		nil)
	// The agent reconnects asking for what it had: the parts were never merged.
	if req := srv.waitOpened(t); req.GetResumeRevision() != 10 {
		t.Fatalf("after a stream cut between parts the agent resumes from %d, want 10", req.GetResumeRevision())
	}
	if got := h.kernel(); !slices.Equal(got, before) {
		t.Errorf("kernel changed by a snapshot cut between parts:\n got %q\nwant %q", got, before)
	}
	if got := h.agent.AppliedRevision(); got != 10 {
		t.Errorf("applied revision %d after a snapshot cut between parts, want 10", got)
	}
	if got := counter.seen()[applies:]; len(got) != 0 {
		t.Errorf("Apply called %d times by a snapshot cut between parts, want none", len(got))
	}

	// A snapshot at revision 30 in three parts, with r0, r6, r7 and r8: programmed only whole.
	var parts []*vxfabricv1.SyncResponse
	for i, r := range []int{0, 6, 7, 8} {
		p := &vxfabricv1.SyncResponse{Revision: 30, Snapshot: true, SnapshotContinues: i < 3, RemotePorts: []*vxfabricv1.RemotePort{partsRemote(r)}}
		if i == 0 {
			p.Networks = []*vxfabricv1.NetworkState{partsNetwork(3)}
			p.Peers = partsPeers()
		}
		parts = append(parts, p)
	}
	srv.push(t, parts...)
	waitApplied(t, h, 30, 10*time.Second)
	for _, n := range counter.seen()[applies:] {
		if n != 4 {
			t.Errorf("Apply with %d remote ports while a snapshot came in parts, want only the whole snapshot's 4 (applies %v)", n, counter.seen())
			break
		}
	}
	var fdb []string
	for _, l := range h.kernel() {
		if l[:4] == "fdb " {
			fdb = append(fdb, l)
		}
	}
	if len(fdb) != 4 {
		t.Errorf("kernel after the snapshot in parts has fdb lines %q, want 4", fdb)
	}

	// A delta in the middle of a snapshot's parts is a protocol error: the stream is dropped, the
	// parts discarded.
	srv.push(t,
		&vxfabricv1.SyncResponse{Revision: 40, Snapshot: true, SnapshotContinues: true, Networks: []*vxfabricv1.NetworkState{partsNetwork(3)}},
		&vxfabricv1.SyncResponse{Revision: 41, RemovedRemotePortIds: []string{"r0"}})
	if req := srv.waitOpened(t); req.GetResumeRevision() != 30 {
		t.Errorf("after a delta between parts the agent resumes from %d, want 30", req.GetResumeRevision())
	}
	if got := h.agent.AppliedRevision(); got != 30 {
		t.Errorf("applied revision %d after a delta between parts, want 30", got)
	}
}

// TestSnapshotPartsAdd checks the accumulator on its own: whole messages pass through, parts are
// gathered in order, and mixing revisions or a delta into a snapshot's parts is an error.
func TestSnapshotPartsAdd(t *testing.T) {
	var p snapshotParts
	delta := &vxfabricv1.SyncResponse{Revision: 5, RemotePorts: []*vxfabricv1.RemotePort{partsRemote(1)}}
	if got, err := p.add(delta); err != nil || got != delta {
		t.Fatalf("delta: got %v, %v; want it unchanged", got, err)
	}
	part := func(rev int64, cont bool, r int) *vxfabricv1.SyncResponse {
		return &vxfabricv1.SyncResponse{Revision: rev, Snapshot: true, SnapshotContinues: cont, RemotePorts: []*vxfabricv1.RemotePort{partsRemote(r)}}
	}
	keys := &vxfabricv1.GossipKeys{Keys: [][]byte{make([]byte, 32)}, Revision: 4}
	for i, r := range []int{1, 2} {
		pt := part(6, true, r)
		if i == 0 {
			pt.GossipKeys = keys // the server sends the keyring with the first part
		}
		if got, err := p.add(pt); err != nil || got != nil {
			t.Fatalf("part %d: got %v, %v; want nothing to merge yet", i, got, err)
		}
	}
	whole, err := p.add(part(6, false, 3))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range whole.GetRemotePorts() {
		ids = append(ids, r.GetId())
	}
	if !whole.GetSnapshot() || whole.GetSnapshotContinues() || whole.GetRevision() != 6 || !slices.Equal(ids, []string{"r1", "r2", "r3"}) {
		t.Errorf("whole snapshot: snapshot %v continues %v rev %d remote ports %v; want a snapshot at 6 of r1 r2 r3",
			whole.GetSnapshot(), whole.GetSnapshotContinues(), whole.GetRevision(), ids)
	}
	if whole.GetGossipKeys() != keys {
		t.Errorf("whole snapshot: gossip keys %v, want those of the first part", whole.GetGossipKeys())
	}
	if _, err := p.add(part(7, true, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.add(part(8, false, 2)); err == nil {
		t.Error("a part at another revision was accepted")
	}
	var q snapshotParts
	if _, err := q.add(&vxfabricv1.SyncResponse{Revision: 9, SnapshotContinues: true}); err == nil {
		t.Error("a delta marked snapshot_continues was accepted")
	}
}
