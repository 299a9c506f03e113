package api

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	// mu guards rev, vteps and read. It is never held across a read of etcd.
	mu    sync.Mutex
	rev   int64      // revision of the read the view holds; 0 before the first read
	vteps []nodeVTEP // replaced, never modified: callers may keep the slice
	// read is the read of the node records in flight, nil when none: one read serves every create
	// that found the view stale while it runs. reads counts the reads started.
	read  *nodeRead
	reads int64
}

// nodeRead is one read of the node records. Its fields are written before done is closed and only
// read after.
type nodeRead struct {
	seq   int64 // nodeView.reads when it started
	done  chan struct{}
	rev   int64
	vteps []nodeVTEP
	err   error
}

// nodeReadTimeout bounds a read of the node records. The read belongs to no one caller (each waits
// for it only as long as its own context allows), so it needs its own bound.
const nodeReadTimeout = 10 * time.Second

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

// get returns the view and its revision. When the view has never been read or is not newer than
// stale (the revision a caller found outdated; 0 for none), it returns a read of the node records
// started during this call, or one newer than stale. A read already in flight is waited for rather
// than started again; a caller whose ctx ends stops waiting and gets ctx's error, the read goes on
// for the others.
func (v *nodeView) get(ctx context.Context, stale int64) (int64, []nodeVTEP, error) {
	v.mu.Lock()
	called := v.reads // reads with a higher seq started during this call
	v.mu.Unlock()
	for {
		v.mu.Lock()
		if v.rev != 0 && v.rev > stale {
			rev, vteps := v.rev, v.vteps
			v.mu.Unlock()
			return rev, vteps, nil
		}
		r := v.read
		if r == nil {
			v.reads++
			r = &nodeRead{seq: v.reads, done: make(chan struct{})}
			v.read = r
			go v.fill(r)
		}
		v.mu.Unlock()
		select {
		case <-r.done:
		case <-ctx.Done():
			return 0, nil, fmt.Errorf("read node records: %w", ctx.Err())
		}
		if r.err != nil {
			return 0, nil, r.err
		}
		if r.rev > stale || r.seq > called {
			return r.rev, r.vteps, nil
		}
		// A read started before this call, at or before the revision this caller found outdated:
		// the next one starts during this call.
	}
}

// fill runs read r and publishes it: to r's waiters, and to the view when it is newer.
func (v *nodeView) fill(r *nodeRead) {
	ctx, cancel := context.WithTimeout(context.Background(), nodeReadTimeout)
	defer cancel()
	nodes, rev, err := v.store.ListNodes(ctx)
	if err != nil && ctx.Err() != nil {
		// Our own bound, not any caller's deadline: etcd is not answering.
		err = status.Errorf(codes.Unavailable, "read node records: etcd did not answer within %s", nodeReadTimeout)
	}
	r.rev, r.err = rev, err
	if err == nil {
		r.vteps = vtepsOf(nodes)
	}
	v.mu.Lock()
	v.read = nil
	if err == nil && rev > v.rev {
		v.rev, v.vteps = rev, r.vteps
	}
	v.mu.Unlock()
	close(r.done)
}
