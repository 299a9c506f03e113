package fanout

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// recvWhole receives the next message of a Sync stream, gathering the parts of a snapshot into one
// message. A part that is not a snapshot or is at another revision than the first is an error.
func recvWhole(recv func() (*vxfabricv1.SyncResponse, error)) (*vxfabricv1.SyncResponse, error) {
	msg, err := recv()
	if err != nil || !msg.GetSnapshotContinues() {
		return msg, err
	}
	whole := proto.CloneOf(msg)
	whole.SnapshotContinues = false
	for {
		part, err := recv()
		if err != nil {
			return nil, fmt.Errorf("snapshot at revision %d cut between parts: %w", whole.GetRevision(), err)
		}
		if !part.GetSnapshot() || part.GetRevision() != whole.GetRevision() {
			return nil, fmt.Errorf("part (snapshot %v, revision %d) of a snapshot at revision %d", part.GetSnapshot(), part.GetRevision(), whole.GetRevision())
		}
		whole.Networks = append(whole.Networks, part.GetNetworks()...)
		whole.LocalPorts = append(whole.LocalPorts, part.GetLocalPorts()...)
		whole.RemotePorts = append(whole.RemotePorts, part.GetRemotePorts()...)
		whole.Peers = append(whole.Peers, part.GetPeers()...)
		if !part.GetSnapshotContinues() {
			return whole, nil
		}
	}
}

func partItems(m *vxfabricv1.SyncResponse) int {
	return len(m.GetNetworks()) + len(m.GetLocalPorts()) + len(m.GetRemotePorts()) + len(m.GetPeers())
}

// TestSnapshotPartsReassemble splits one snapshot at every part size: the parts are bounded, marked,
// and their items in order are the snapshot's.
func TestSnapshotPartsReassemble(t *testing.T) {
	snap := &vxfabricv1.SyncResponse{Revision: 42, Snapshot: true}
	for i := range 3 {
		snap.Networks = append(snap.Networks, &vxfabricv1.NetworkState{Id: fmt.Sprint("n", i)})
		snap.Peers = append(snap.Peers, &vxfabricv1.Peer{Name: fmt.Sprint("h", i)})
	}
	for i := range 4 {
		snap.LocalPorts = append(snap.LocalPorts, &vxfabricv1.LocalPort{Id: fmt.Sprint("l", i)})
	}
	for i := range 7 {
		snap.RemotePorts = append(snap.RemotePorts, &vxfabricv1.RemotePort{Id: fmt.Sprint("r", i)})
	}
	total := partItems(snap)
	for n := 1; n <= total+1; n++ {
		parts := snapshotParts(snap, n)
		if want := (total + n - 1) / n; len(parts) != want {
			t.Errorf("part size %d: %d parts, want %d", n, len(parts), want)
		}
		i := 0
		whole, err := recvWhole(func() (*vxfabricv1.SyncResponse, error) {
			p := parts[i]
			i++
			if !p.GetSnapshot() || p.GetRevision() != 42 || partItems(p) > n || partItems(p) == 0 {
				t.Errorf("part size %d: part %d has snapshot %v, revision %d, %d items", n, i, p.GetSnapshot(), p.GetRevision(), partItems(p))
			}
			if p.GetSnapshotContinues() != (i < len(parts)) {
				t.Errorf("part size %d: part %d of %d has snapshot_continues %v", n, i, len(parts), p.GetSnapshotContinues())
			}
			return p, nil
		})
		if err != nil {
			t.Fatalf("part size %d: %v", n, err)
		}
		if i != len(parts) {
			t.Errorf("part size %d: reassembled after %d of %d parts", n, i, len(parts))
		}
		if !proto.Equal(whole, snap) {
			t.Errorf("part size %d: parts together\n%v\nwant\n%v", n, whole, snap)
		}
	}
}

// TestSyncSnapshotInParts streams a snapshot larger than a part: it arrives in bounded parts at one
// revision which together equal the unchunked snapshot; deltas after it are single messages.
func TestSyncSnapshotInParts(t *testing.T) {
	const part = 5
	cfg := Default()
	cfg.SnapshotPartItems = part
	e := newEnv(t, cfg)
	e.put("networks/n1", testNetwork("n1", 100))
	var rev int64
	for i := range 10 {
		name := fmt.Sprintf("h%d", i)
		e.put("nodes/"+name, testNode(name, fmt.Sprintf("198.18.0.%d", i+1)))
		for j := range 2 {
			id := fmt.Sprintf("p%d-%d", i, j)
			rev = e.put("ports/"+id, testPort(id, "n1", name, i*2+j))
		}
	}
	e.start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.hub.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	e.hub.mu.RLock()
	unchunked := e.hub.m.snapshot("h0")
	e.hub.mu.RUnlock()
	if partItems(unchunked) != 1+2+18+9 {
		t.Fatalf("unchunked snapshot has %d items, want 30", partItems(unchunked))
	}

	stream, err := e.dial().Sync(ctx, &vxfabricv1.SyncRequest{Node: "h0", SnapshotParts: true})
	if err != nil {
		t.Fatal(err)
	}
	got := newView()
	var parts int
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d parts: %v", parts, err)
		}
		parts++
		if !msg.GetSnapshot() || msg.GetRevision() != unchunked.GetRevision() || partItems(msg) > part {
			t.Fatalf("part %d: snapshot %v, revision %d, %d items; want a snapshot at %d of at most %d items",
				parts, msg.GetSnapshot(), msg.GetRevision(), partItems(msg), unchunked.GetRevision(), part)
		}
		got.applyPart(msg)
		if !msg.GetSnapshotContinues() {
			break
		}
	}
	if want := (partItems(unchunked) + part - 1) / part; parts != want {
		t.Errorf("snapshot of %d items came in %d parts, want %d", partItems(unchunked), parts, want)
	}
	if g, w := got.String(), viewOf(unchunked).String(); g != w {
		t.Errorf("parts together\n%s\nwant the unchunked snapshot\n%s", g, w)
	}

	// A delta is one message, whatever its size.
	next := e.put("ports/p0-9", testPort("p0-9", "n1", "h0", 99))
	msg, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if msg.GetSnapshot() || msg.GetSnapshotContinues() || msg.GetRevision() != next || len(msg.GetLocalPorts()) != 1 {
		t.Errorf("delta: snapshot %v continues %v rev %d with %d local ports, want a delta at %d with 1",
			msg.GetSnapshot(), msg.GetSnapshotContinues(), msg.GetRevision(), len(msg.GetLocalPorts()), next)
	}

	// An agent that does not ask for parts (one that predates them) gets each snapshot whole.
	old, err := e.dial().Sync(ctx, &vxfabricv1.SyncRequest{Node: "h0"})
	if err != nil {
		t.Fatal(err)
	}
	whole, err := old.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !whole.GetSnapshot() || whole.GetSnapshotContinues() || partItems(whole) != partItems(unchunked)+1 {
		t.Errorf("snapshot for an agent without parts: snapshot %v, continues %v, %d items; want one message of %d",
			whole.GetSnapshot(), whole.GetSnapshotContinues(), partItems(whole), partItems(unchunked)+1)
	}
}
