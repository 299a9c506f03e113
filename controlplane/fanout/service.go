package fanout

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

func validNode(name string) error {
	if !vxfabricv1.ValidName(name) {
		return status.Errorf(codes.InvalidArgument, "node name %s: want %s", vxfabricv1.Quote(name), vxfabricv1.NameRule)
	}
	return nil
}

// Sync streams node's view: a first message (snapshot, or empty delta on a cheap resume), then one
// message per drain of the stream's mailbox. See the package comment for the revision contract.
func (h *Hub) Sync(req *vxfabricv1.SyncRequest, stream grpc.ServerStreamingServer[vxfabricv1.SyncResponse]) error {
	node := req.GetNode()
	if err := validNode(node); err != nil {
		return err
	}
	if req.GetResumeRevision() < 0 {
		return status.Errorf(codes.InvalidArgument, "resume revision %d is negative", req.GetResumeRevision())
	}
	ctx := stream.Context()
	select {
	case <-h.ready:
	case <-h.done:
		return status.Error(codes.Unavailable, "fan-out hub stopped")
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	if resume := req.GetResumeRevision(); resume > h.Revision() {
		if err := h.catchUp(ctx, resume); err != nil {
			return err
		}
	}

	// The first message takes a snapshot slot even when it turns out to be a cheap resume: which it is,
	// is known only under h.mu, and a resume holds the slot for microseconds.
	release, err := h.snapshotSlot(ctx)
	if err != nil {
		return err
	}
	s, first := h.subscribe(node, req.GetResumeRevision())
	defer h.unsubscribe(s)
	h.met.streams.Inc()
	defer h.met.streams.Dec()
	h.log.Debug("sync stream opened", "node", node, "rev", first.GetRevision(), "snapshot", first.GetSnapshot())

	last := int64(0)
	send := func(msg *vxfabricv1.SyncResponse) error {
		if msg.GetRevision() < last {
			h.log.Error("store revision went backwards, ending stream", "node", node, "rev", msg.GetRevision(), "sent", last)
			return status.Errorf(codes.Aborted, "store revision went backwards from %d to %d; reconnect", last, msg.GetRevision())
		}
		parts := []*vxfabricv1.SyncResponse{msg}
		if msg.GetSnapshot() && req.GetSnapshotParts() {
			// Each Send waits for the flow-control window the previous part used, so a slow reader
			// holds about one part queued in gRPC, not the whole snapshot.
			parts = snapshotParts(msg, h.cfg.SnapshotPartItems)
		}
		for _, p := range parts {
			if err := stream.Send(p); err != nil {
				return err
			}
			h.met.messages.Inc()
		}
		last = msg.GetRevision()
		if msg.GetSnapshot() {
			h.met.snapshots.Inc()
		}
		return nil
	}
	err = send(first)
	release()
	if err != nil {
		return err
	}
	for {
		select {
		case <-s.notify:
			if err := h.drain(ctx, s, send); err != nil {
				return err
			}
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-h.done:
			return status.Error(codes.Unavailable, "fan-out hub stopped")
		}
	}
}

// drain sends what s's mailbox holds: its merged backlog, or the snapshot it is owed, built and sent
// while holding a snapshot slot.
func (h *Hub) drain(ctx context.Context, s *subscriber, send func(*vxfabricv1.SyncResponse) error) error {
	msg, owed := h.next(s, false)
	if owed {
		release, err := h.snapshotSlot(ctx)
		if err != nil {
			return err
		}
		defer release()
		msg, _ = h.next(s, true)
	}
	if msg == nil {
		return nil
	}
	return send(msg)
}

// catchUp handles a resume revision ahead of the hub: if the store has it, the agent came from a
// replica that was ahead and the hub waits to catch up; if not, the store went back in time (restored
// from a backup) and the stream proceeds with a snapshot at the store's revision, for the agent to refuse.
func (h *Hub) catchUp(ctx context.Context, resume int64) error {
	resp, err := h.cli.Get(ctx, h.cfg.Prefix+"nodes/", clientv3.WithCountOnly())
	if err != nil {
		return status.Errorf(codes.Unavailable, "read store revision: %v", err)
	}
	if resp.Header.Revision < resume {
		h.log.Warn("agent resumes from a revision the store does not have", "rev", resume, "store_rev", resp.Header.Revision)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, h.cfg.CatchUpTimeout)
	defer cancel()
	if err := h.waitProgress(wctx, resume); err != nil {
		return status.Errorf(codes.Unavailable, "fan-out hub behind the store: %v", err)
	}
	return nil
}

// waitProgress waits until the model reflects rev, asking etcd for progress notifications on the way:
// writes outside the prefix (a shared etcd) advance its revision without a watch event, and without
// a notification the model would reach such a revision only at the next write under the prefix.
func (h *Hub) waitProgress(ctx context.Context, rev int64) error {
	for h.Revision() < rev {
		if err := h.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil && ctx.Err() == nil {
			h.log.Debug("request watch progress", "err", err)
		}
		wctx, cancel := context.WithTimeout(ctx, progressRetry)
		err := h.WaitRevision(wctx, rev)
		cancel()
		if ctx.Err() != nil || errors.Is(err, errStopped) {
			if err == nil {
				err = ctx.Err()
			}
			return err
		}
	}
	return nil
}

// wroteStatus counts a status/ports write of revision rev and makes the next report wait for it.
func (h *Hub) wroteStatus(rev int64) {
	h.met.statusWrites.Inc()
	for {
		cur := h.statusRev.Load()
		if rev <= cur || h.statusRev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// ReportApplied records the revision node applied and mirrors its plugged ports into status/ports keys.
// Only ports bound to node are considered, and only differences from the stored status are written, so
// a steady agent causes no etcd writes. The differences are taken against a model that has seen every
// status write up to the report's status_revision (see catchUpStatus).
func (h *Hub) ReportApplied(ctx context.Context, req *vxfabricv1.ReportAppliedRequest) (*vxfabricv1.ReportAppliedResponse, error) {
	node := req.GetNode()
	if err := validNode(node); err != nil {
		return nil, err
	}
	if req.GetRevision() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "revision %d is negative", req.GetRevision())
	}
	if req.GetStatusRevision() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "status_revision %d is negative", req.GetStatusRevision())
	}
	if req.GetGossipKeyringRevision() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "gossip_keyring_revision %d is negative", req.GetGossipKeyringRevision())
	}
	if n := len(req.GetErrors()); n > maxReportErrors {
		return nil, status.Errorf(codes.InvalidArgument, "%d errors, at most %d", n, maxReportErrors)
	}
	for _, e := range req.GetErrors() {
		if len(e) > maxReportErrorLen {
			return nil, status.Errorf(codes.InvalidArgument, "an error of %d bytes, at most %d", len(e), maxReportErrorLen)
		}
	}
	underlay := underlayRoutes(req.GetUnderlayRoutes())
	select {
	case <-h.ready:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	seen, err := h.catchUpStatus(ctx, req.GetStatusRevision())
	if err != nil {
		return nil, err
	}
	plugged := make(map[string]bool, len(req.GetPluggedPortIds()))
	for _, id := range req.GetPluggedPortIds() {
		plugged[id] = true
	}
	var puts, dels []string
	h.mu.RLock()
	judged := h.m.rev // every write below holds only while its port has not changed since
	for id := range h.m.nodePorts[node] {
		switch {
		case plugged[id] && !h.m.plugged[id]:
			puts = append(puts, id)
		case !plugged[id] && h.m.plugged[id]:
			dels = append(dels, id)
		}
	}
	h.mu.RUnlock()

	// Reports of one node are ordered by their sequence: each write below holds only while no
	// report with a higher one wrote this node's statuses (a report held up at another replica
	// and committed late must not undo a newer one), and records its own.
	var fence []clientv3.Cmp
	var fenceOps []clientv3.Op
	if seq := req.GetSequence(); seq > 0 && len(puts)+len(dels) > 0 {
		key, val := h.cfg.Prefix+store.NodeReports+node, store.OrderedValue(seq)
		// The compare below needs the key to exist (a value compare fails on a missing key).
		if _, err := h.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).
			Then(clientv3.OpPut(key, store.OrderedValue(0))).Commit(); err != nil {
			return nil, status.Errorf(codes.Unavailable, "order the reports of node %q: %v", node, err)
		}
		fence = []clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "<", val+"\x00")} // <= val
		fenceOps = []clientv3.Op{clientv3.OpPut(key, val)}
	}
	for _, id := range puts {
		// Only while the port exists, so a report racing a delete leaves no orphan status key, and
		// is still the one judged (bound to node), so a late report of the node a port moved away
		// from does not mark it plugged on its new node.
		portKey := h.cfg.Prefix + "ports/" + id
		resp, err := h.cli.Txn(ctx).
			If(append([]clientv3.Cmp{clientv3.Compare(clientv3.Version(portKey), ">", 0), clientv3.Compare(clientv3.ModRevision(portKey), "<", judged+1)}, fence...)...).
			Then(append([]clientv3.Op{clientv3.OpPut(h.cfg.Prefix+"status/ports/"+id, "1")}, fenceOps...)...).
			Commit()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "mark port %q plugged: %v", id, err)
		}
		h.wroteStatus(resp.Header.GetRevision())
	}
	for _, id := range dels {
		// Likewise: not once the port has moved on, where its new node may have plugged it.
		resp, err := h.cli.Txn(ctx).
			If(append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(h.cfg.Prefix+"ports/"+id), "<", judged+1)}, fence...)...).
			Then(append([]clientv3.Op{clientv3.OpDelete(h.cfg.Prefix + "status/ports/" + id)}, fenceOps...)...).
			Commit()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "mark port %q unplugged: %v", id, err)
		}
		h.wroteStatus(resp.Header.GetRevision())
	}

	if err := h.confirmKeyring(ctx, node, req.GetGossipKeyringRevision()); err != nil {
		return nil, err
	}
	if err := h.recordUnderlay(ctx, node, req.GetSequence(), underlay); err != nil {
		return nil, err
	}

	now := time.Now()
	h.statMu.Lock()
	st := h.stat(node)
	if seq := req.GetSequence(); seq > 0 && seq < st.seq {
		h.statMu.Unlock()
		return &vxfabricv1.ReportAppliedResponse{StatusRevision: max(h.statusRev.Load(), seen)}, nil // a late one
	}
	st.seq = max(st.seq, req.GetSequence())
	st.applied = req.GetRevision()
	st.errors = slices.Clone(req.GetErrors())
	kept := st.changes[:0]
	for _, c := range st.changes {
		if c.rev <= st.applied {
			h.met.convergence.Observe(now.Sub(c.seen).Seconds())
		} else {
			kept = append(kept, c)
		}
	}
	st.changes = kept
	close(h.statCh)
	h.statCh = make(chan struct{})
	h.statMu.Unlock()
	return &vxfabricv1.ReportAppliedResponse{StatusRevision: max(h.statusRev.Load(), seen)}, nil
}

// confirmKeyring records, once per newer keyring, that node's agent installed the gossip keyring of
// revision rev (status/keyring/<node>), for GossipService's rotation to move on. Replicas that are
// told out of order keep the highest.
func (h *Hub) confirmKeyring(ctx context.Context, node string, rev int64) error {
	if rev <= 0 {
		return nil
	}
	h.statMu.Lock()
	known := h.stat(node).keyring
	h.statMu.Unlock()
	if rev <= known {
		return nil
	}
	key, val := h.cfg.Prefix+store.NodeKeyrings+node, store.OrderedValue(rev)
	resp, err := h.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "<", val)).
		Then(clientv3.OpPut(key, val)).Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err == nil && !resp.Succeeded && len(resp.Responses[0].GetResponseRange().GetKvs()) == 0 {
		// A value compare fails on a missing key: the node's first confirmation.
		_, err = h.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).Then(clientv3.OpPut(key, val)).Commit()
	}
	if err != nil {
		return status.Errorf(codes.Unavailable, "record the gossip keyring of node %q: %v", node, err)
	}
	h.statMu.Lock()
	st := h.stat(node)
	st.keyring = max(st.keyring, rev)
	h.statMu.Unlock()
	return nil
}

// maxUnderlayRoutes bounds the underlay routes taken from a report (the agent sends at most as many,
// most important first).
const maxUnderlayRoutes = 64

// underlayRoutes reads a report's underlay routes: IPv4 prefixes of /8 or longer (a shorter one is
// no subnet a host is attached to), masked, sorted, without duplicates, the first maxUnderlayRoutes;
// others are left out, not refused (the field only narrows where ports may go, and a report's port
// statuses must not be lost over it). Nil for none (not known).
func underlayRoutes(lines []string) []netip.Prefix {
	var out []netip.Prefix
	for _, l := range lines[:min(len(lines), maxUnderlayRoutes)] {
		if p, err := netip.ParsePrefix(l); err == nil && p.Addr().Is4() && p.Bits() >= 8 {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// recordUnderlay stores node's underlay routes (NodeUnderlayPrefix) when they differ from what this
// hub knows stored: the gateway guard of every port bound to the node reads them. What a hub knows
// is forgotten when the node's agent streams here again (another replica may have written since),
// so the first report of a stream is compared with etcd. Routes not known (nil) and a late report
// change nothing: the stored value starts with the sequence of the report that wrote it
// (store.UnderlayValue), and a report writes only over a lower one (or over a value of an earlier
// version, without one), so a report held up at one replica cannot undo a newer one made at
// another.
func (h *Hub) recordUnderlay(ctx context.Context, node string, seq int64, routes []netip.Prefix) error {
	if routes == nil {
		return nil
	}
	want := store.UnderlayLines(routes)
	h.statMu.Lock()
	st := h.stat(node)
	known, late := st.underlay, seq > 0 && seq < st.seq
	h.statMu.Unlock()
	if want == known || late {
		return nil
	}
	key := h.cfg.Prefix + store.NodeUnderlays + node
	remember := func() {
		h.statMu.Lock()
		h.stat(node).underlay = want
		h.statMu.Unlock()
	}
	for range maxUnderlayWrites {
		resp, err := h.cli.Get(ctx, key)
		if err != nil {
			return status.Errorf(codes.Unavailable, "read the underlay routes of node %q: %v", node, err)
		}
		held := clientv3.Compare(clientv3.Version(key), "=", 0)
		if len(resp.Kvs) > 0 {
			kv := resp.Kvs[0]
			have, routes := store.SplitUnderlay(string(kv.Value))
			switch {
			case routes == want:
				remember()
				return nil
			case seq > 0 && have >= seq:
				return nil // a report as new or newer wrote first
			}
			held = clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
		}
		tx, err := h.cli.Txn(ctx).If(held).Then(clientv3.OpPut(key, store.UnderlayValue(seq, routes))).Commit()
		if err != nil {
			return status.Errorf(codes.Unavailable, "record the underlay routes of node %q: %v", node, err)
		}
		if tx.Succeeded {
			remember()
			return nil
		}
		// Written by another replica since the read: judged again against what it wrote.
	}
	return nil
}

// maxUnderlayWrites bounds the tries of one report's underlay write that other replicas' writes
// overtake; the next report tries again.
const maxUnderlayWrites = 4

// The bounds of a report's errors (the agent sends fewer and shorter ones).
const (
	maxReportErrors   = 32
	maxReportErrorLen = 512
)

// catchUpStatus waits until the model has seen every status write a report must be judged against:
// this hub's own (statusRev), and those up to the agent's token, which another replica may have
// made. Without a token (0) that is everything etcd holds now. It returns the revision waited for.
func (h *Hub) catchUpStatus(ctx context.Context, token int64) (int64, error) {
	want := max(token, h.statusRev.Load())
	if token == 0 || token > h.Revision() {
		// A count-only read of one key: its header carries etcd's current revision.
		resp, err := h.cli.Get(ctx, h.cfg.Prefix, clientv3.WithCountOnly())
		if err != nil {
			return 0, status.Errorf(codes.Unavailable, "read the store's revision: %v", err)
		}
		cur := resp.Header.GetRevision()
		if token > cur {
			return 0, status.Errorf(codes.InvalidArgument, "status_revision %d is ahead of the store (at %d): report with 0", token, cur)
		}
		if token == 0 {
			want = max(want, cur)
		}
	}
	if err := h.waitProgress(ctx, want); err != nil {
		return 0, status.Errorf(codes.Unavailable, "catch up with status writes up to revision %d: %v", want, err)
	}
	return want, nil
}

// progressRetry is how long waitProgress waits for a progress notification before asking again
// (etcd answers a request only once the watch has caught up).
const progressRetry = 100 * time.Millisecond

// RegisterNode records node name with its VTEP and version as ALIVE (static membership). Repeating the
// same registration writes nothing.
func (h *Hub) RegisterNode(ctx context.Context, req *vxfabricv1.RegisterNodeRequest) (*vxfabricv1.RegisterNodeResponse, error) {
	name := req.GetName()
	if err := validNode(name); err != nil {
		return nil, err
	}
	addr, err := netip.ParseAddr(req.GetVtep())
	if err != nil || !vxfabricv1.ValidVTEP(addr) {
		return nil, status.Errorf(codes.InvalidArgument, "vtep %.64q: want a unicast IPv4 address other hosts can reach (not loopback, link-local or broadcast)", req.GetVtep())
	}
	if len(req.GetVersion()) > 128 {
		return nil, status.Errorf(codes.InvalidArgument, "version is %d bytes long, at most 128", len(req.GetVersion()))
	}
	key := h.cfg.Prefix + "nodes/" + name
	for {
		resp, err := h.cli.Get(ctx, key)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "read node %q: %v", name, err)
		}
		cur := &vxfabricv1.Node{}
		var modRev int64
		if len(resp.Kvs) == 1 {
			modRev = resp.Kvs[0].ModRevision
			if err := proto.Unmarshal(resp.Kvs[0].Value, cur); err != nil {
				return nil, status.Errorf(codes.Internal, "decode node %q: %v", name, err)
			}
			if cur.GetVtep() == addr.String() && cur.GetVersion() == req.GetVersion() && cur.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_ALIVE {
				cur.Revision = modRev
				return &vxfabricv1.RegisterNodeResponse{Node: cur}, nil
			}
		}
		next := &vxfabricv1.Node{
			Name: name, Vtep: addr.String(), Version: req.GetVersion(),
			Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, LastChange: cur.GetLastChange(),
		}
		if modRev == 0 || cur.GetStatus() != next.Status || cur.GetVtep() != next.Vtep || next.LastChange == nil {
			next.LastChange = timestamppb.Now()
		}
		val, err := proto.Marshal(next)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode node %q: %v", name, err)
		}
		tx, err := h.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
			Then(store.NodeWriteOps(h.cfg.Prefix, name, string(val), modRev == 0 || cur.GetVtep() != next.Vtep)...).
			Commit()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "write node %q: %v", name, err)
		}
		if tx.Succeeded {
			next.Revision = tx.Header.Revision
			return &vxfabricv1.RegisterNodeResponse{Node: next}, nil
		}
		if ctx.Err() != nil {
			return nil, status.FromContextError(fmt.Errorf("register node %q: %w", name, ctx.Err())).Err()
		}
	}
}
