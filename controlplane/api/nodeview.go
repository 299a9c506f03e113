package api

import (
	"context"
	"net/netip"
	"sync"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// nodeView is this replica's copy of the node VTEPs for the VTEP check of CreateNetwork. It saves
// reading every node record on every create, and it is never trusted on its own:
//   - a create the view lets through carries the view's revision into its transaction
//     (store.NodesUnchangedSince), so a node added or given a new VTEP after the read fails the
//     create with store.ErrNodesChanged; the create then reads the view again, checks again and
//     retries;
//   - a create the view refuses is checked again against a fresh read before it is refused.
//
// Either way the answer is that of the node VTEPs in etcd at the create's commit. A status change
// (SUSPECT, DEAD) changes no VTEP and costs creates nothing.
type nodeView struct {
	store *store.Store
	// mu guards rev and vteps. It is held across the refresh read, so that one read serves every
	// create that found the view stale at once.
	mu    sync.Mutex
	rev   int64      // revision of the read the view holds; 0 before the first read
	vteps []nodeVTEP // replaced, never modified: callers may keep the slice
}

// nodeVTEP is a node with a valid VTEP (nodes without one have nothing to collide with).
type nodeVTEP struct {
	node string
	vtep netip.Addr
}

// vtepsOf keeps the nodes that have a valid VTEP.
func vtepsOf(nodes []*vxfabricv1.Node) []nodeVTEP {
	out := make([]nodeVTEP, 0, len(nodes))
	for _, n := range nodes {
		if a, err := netip.ParseAddr(n.Vtep); err == nil {
			out = append(out, nodeVTEP{node: n.Name, vtep: a})
		}
	}
	return out
}

// get returns the view and its revision. It reads the node records first when the view has never
// been read or is not newer than stale (the revision a caller found outdated; 0 for none).
func (v *nodeView) get(ctx context.Context, stale int64) (int64, []nodeVTEP, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rev != 0 && v.rev > stale {
		return v.rev, v.vteps, nil
	}
	nodes, rev, err := v.store.ListNodes(ctx)
	if err != nil {
		return 0, nil, err
	}
	v.rev, v.vteps = rev, vtepsOf(nodes)
	return v.rev, v.vteps, nil
}
