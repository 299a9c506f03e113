package nodeagent

import (
	"fmt"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// snapshotParts gathers the parts of a snapshot that the server sends in several messages (each but
// the last marked snapshot_continues), so that a snapshot is merged only whole: merging a first part
// alone would withdraw every entry the later parts carry.
type snapshotParts struct {
	whole *vxfabricv1.SyncResponse // the parts so far; nil when no snapshot is in progress
}

// add takes the next message of a stream. It returns the message to merge: a delta or a snapshot as
// it came, or the whole snapshot once its last part arrives; nil while parts are still to come. A
// delta, or a part at another revision, in the middle of a snapshot is an error.
func (p *snapshotParts) add(msg *vxfabricv1.SyncResponse) (*vxfabricv1.SyncResponse, error) {
	if p.whole == nil {
		if !msg.GetSnapshotContinues() {
			return msg, nil
		}
		if !msg.GetSnapshot() {
			return nil, fmt.Errorf("delta at revision %d marked snapshot_continues", msg.GetRevision())
		}
		p.whole = &vxfabricv1.SyncResponse{Revision: msg.GetRevision(), Snapshot: true}
	} else if !msg.GetSnapshot() || msg.GetRevision() != p.whole.GetRevision() {
		return nil, fmt.Errorf("message (snapshot %v, revision %d) within the parts of the snapshot at revision %d",
			msg.GetSnapshot(), msg.GetRevision(), p.whole.GetRevision())
	}
	w := p.whole
	w.Networks = append(w.Networks, msg.GetNetworks()...)
	w.LocalPorts = append(w.LocalPorts, msg.GetLocalPorts()...)
	w.RemotePorts = append(w.RemotePorts, msg.GetRemotePorts()...)
	w.Peers = append(w.Peers, msg.GetPeers()...)
	if k := msg.GetGossipKeys(); k != nil {
		w.GossipKeys = k
	}
	if msg.GetSnapshotContinues() {
		return nil, nil
	}
	p.whole = nil
	return w, nil
}
