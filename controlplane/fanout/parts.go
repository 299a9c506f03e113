package fanout

import vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"

// snapshotParts splits snapshot msg into messages of at most n items (networks, local ports, remote
// ports and peers) each, all at msg's revision and marked snapshot, every one but the last marked
// snapshot_continues. A snapshot of at most n items is returned as it is. The parts share msg's items
// (the model's immutable messages), so splitting copies pointers only. The gossip keyring rides on the
// first part.
func snapshotParts(msg *vxfabricv1.SyncResponse, n int) []*vxfabricv1.SyncResponse {
	total := len(msg.GetNetworks()) + len(msg.GetLocalPorts()) + len(msg.GetRemotePorts()) + len(msg.GetPeers())
	if total <= n {
		return []*vxfabricv1.SyncResponse{msg}
	}
	parts := make([]*vxfabricv1.SyncResponse, 0, (total+n-1)/n)
	cur := &vxfabricv1.SyncResponse{Revision: msg.GetRevision(), Snapshot: true, GossipKeys: msg.GetGossipKeys()}
	room := n
	// next makes room for one item in the current part, starting a new part when it is full.
	next := func() {
		if room > 0 {
			room--
			return
		}
		parts = append(parts, cur)
		cur = &vxfabricv1.SyncResponse{Revision: msg.GetRevision(), Snapshot: true}
		room = n - 1
	}
	for _, x := range msg.GetNetworks() {
		next()
		cur.Networks = append(cur.Networks, x)
	}
	for _, x := range msg.GetLocalPorts() {
		next()
		cur.LocalPorts = append(cur.LocalPorts, x)
	}
	for _, x := range msg.GetRemotePorts() {
		next()
		cur.RemotePorts = append(cur.RemotePorts, x)
	}
	for _, x := range msg.GetPeers() {
		next()
		cur.Peers = append(cur.Peers, x)
	}
	parts = append(parts, cur)
	for _, p := range parts[:len(parts)-1] {
		p.SnapshotContinues = true
	}
	return parts
}
