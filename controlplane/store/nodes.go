package store

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

func decodeNode(kv *mvccpb.KeyValue) (*vxfabricv1.Node, error) {
	n := &vxfabricv1.Node{}
	if err := proto.Unmarshal(kv.Value, n); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	n.Revision = kv.ModRevision
	return n, nil
}

// PutNode writes a node record (name, vtep, status, last change, version). Applied and desired
// revisions are not stored: they are live figures of the fan-out. It does not read the old record,
// so it always rewrites NodesEpochKey.
func (s *Store) PutNode(ctx context.Context, n *vxfabricv1.Node) (*vxfabricv1.Node, error) {
	stored := proto.Clone(n).(*vxfabricv1.Node)
	stored.Revision, stored.AppliedRevision, stored.DesiredRevision = 0, 0, 0
	resp, err := s.kv.Txn(ctx).Then(NodeWriteOps(Prefix, n.Name, marshal(stored), true)...).Commit()
	if err != nil {
		return nil, fmt.Errorf("put node %s: %w", n.Name, err)
	}
	stored.Revision = resp.Header.Revision
	return stored, nil
}

// GetNode reads a node record.
func (s *Store) GetNode(ctx context.Context, name string) (*vxfabricv1.Node, error) {
	resp, err := s.kv.Get(ctx, NodeKey(name))
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	return decodeNode(resp.Kvs[0])
}

// ListNodes reads every node, sorted by name, and the store's current revision.
func (s *Store) ListNodes(ctx context.Context) ([]*vxfabricv1.Node, int64, error) {
	resp, err := s.kv.Get(ctx, NodesPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fmt.Errorf("list nodes: %w", err)
	}
	out := make([]*vxfabricv1.Node, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := decodeNode(kv)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, n)
	}
	return out, resp.Header.Revision, nil
}

// UnderlayValue is the value of a NodeUnderlayPrefix key: the sequence of the report that wrote it
// (OrderedValue), then UnderlayLines.
func UnderlayValue(seq int64, routes []netip.Prefix) string {
	return OrderedValue(seq) + "\n" + UnderlayLines(routes)
}

// UnderlayLines is the prefix lines of a NodeUnderlayPrefix value: one prefix per line.
func UnderlayLines(routes []netip.Prefix) string {
	lines := make([]string, len(routes))
	for i, p := range routes {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// SplitUnderlay reads a NodeUnderlayPrefix value into its report's sequence and its prefix lines;
// a value of an earlier version, without a sequence, has sequence -1.
func SplitUnderlay(v string) (seq int64, routes string) {
	first, rest, _ := strings.Cut(v, "\n")
	if n, err := strconv.ParseInt(first, 10, 64); err == nil && len(first) == len(OrderedValue(0)) {
		return n, rest
	}
	return -1, v
}

// ParseUnderlay reads the prefixes of a NodeUnderlayPrefix value; lines that are not prefixes (the
// sequence) are left out.
func ParseUnderlay(v string) []netip.Prefix {
	var out []netip.Prefix
	for line := range strings.SplitSeq(v, "\n") {
		if p, err := netip.ParsePrefix(line); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// NodeWriteOps are the operations of a write of node name's record (value) under prefix, for every
// writer of node records (RegisterNode, the status writer, PutNode): the put, and the rewrite of the
// nodes epoch when newVTEP (the node is new or its VTEP changed), so that network creates checked
// against the old VTEPs fail (NodesUnchangedSince).
func NodeWriteOps(prefix, name, value string, newVTEP bool) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpPut(prefix+"nodes/"+name, value)}
	if newVTEP {
		ops = append(ops, clientv3.OpPut(prefix+NodesEpoch, ""))
	}
	return ops
}

// NodesUnchangedSince holds in a transaction while no node was added and no node's VTEP changed
// after rev: it compares NodesEpochKey, which every such write rewrites in its own transaction, so it
// costs one key whatever the number of nodes. A status-only write (SUSPECT, DEAD) does not count: it
// changes no VTEP.
func NodesUnchangedSince(rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(NodesEpochKey), "<", rev+1)
}

// nodesWrittenAfter reads the epoch key if it was rewritten after rev: the read that tells a failed
// NodesUnchangedSince from the transaction's other compares.
func nodesWrittenAfter(rev int64) clientv3.Op {
	return clientv3.OpGet(NodesEpochKey, clientv3.WithKeysOnly(), clientv3.WithMinModRev(rev+1))
}

// DeleteNode forgets a host that has left the fabric: its record, the sequence that orders its
// reports (NodeReportsPrefix) and the keyring it confirmed (NodeKeyringPrefix). It is refused
// (ErrFailedPrecondition) while the record says ALIVE or SUSPECT, unless forced, since the host's agent
// would record it again, while ports are bound to it, and while it is the uplink host of a bridged network. The
// checks and the delete are one transaction: it fails, and the delete reads again, when the node, a
// port or a network was written after the read.
func (s *Store) DeleteNode(ctx context.Context, name string, expected int64, force bool) error {
	key := NodeKey(name)
	for attempt := range maxCASRetries {
		resp, err := s.kv.Txn(ctx).Then(
			clientv3.OpGet(key),
			clientv3.OpGet(PortsPrefix, clientv3.WithPrefix()),
			clientv3.OpGet(NetworksPrefix, clientv3.WithPrefix()),
		).Commit()
		if err != nil {
			return fmt.Errorf("read node %s: %w", name, err)
		}
		kvs := rangeKVs(resp, 0)
		if len(kvs) == 0 {
			return fmt.Errorf("node %s: %w", name, ErrNotFound)
		}
		n, err := decodeNode(kvs[0])
		if err != nil {
			return err
		}
		if expected != 0 && n.Revision != expected {
			return fmt.Errorf("node %s is at revision %d, not %d: %w", name, n.Revision, expected, ErrStale)
		}
		if err := nodeInUse(n, force, rangeKVs(resp, 1), rangeKVs(resp, 2)); err != nil {
			return err
		}
		rev := resp.Header.Revision
		tx, err := s.kv.Txn(ctx).If(
			atRevision(key, n.Revision),
			clientv3.Compare(clientv3.ModRevision(PortsPrefix), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.ModRevision(NetworksPrefix), "<", rev+1).WithPrefix(),
		).Then(
			clientv3.OpDelete(key),
			clientv3.OpDelete(NodeReportsPrefix+name),
			clientv3.OpDelete(NodeKeyringPrefix+name),
			clientv3.OpDelete(NodeUnderlayPrefix+name),
			// Cached node views (controlplane/api) read the nodes again.
			clientv3.OpPut(NodesEpochKey, ""),
		).Commit()
		if err != nil {
			return fmt.Errorf("delete node %s: %w", name, err)
		}
		if tx.Succeeded {
			return nil
		}
		if err := contentionPause(ctx, attempt); err != nil {
			return err
		}
		if expected != 0 {
			// Read again to tell a changed node (stale) from a port or network written meanwhile.
			cur, err := s.GetNode(ctx, name)
			if err != nil {
				return err
			}
			if cur.Revision != expected {
				return fmt.Errorf("node %s changed after revision %d: %w", name, expected, ErrStale)
			}
		}
	}
	return fmt.Errorf("delete node %s: %w", name, ErrContention)
}

// nodeInUse is why node n cannot be forgotten, given every port and network: nil when nothing holds it.
// force skips the liveness check.
func nodeInUse(n *vxfabricv1.Node, force bool, ports, networks []*mvccpb.KeyValue) error {
	switch n.Status {
	case vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT:
		if !force {
			return fmt.Errorf("node %s is %s: stop its agent first (it leaves gossip), or wait until the node is DEAD "+
				"(or force it, vxfab node delete --force, for a node whose agent runs without gossip): %w",
				n.Name, strings.TrimPrefix(n.Status.String(), "NODE_STATUS_"), ErrFailedPrecondition)
		}
	}
	var bound []string
	for _, kv := range ports {
		p, err := decodePort(kv)
		if err != nil {
			return err
		}
		if p.Node == n.Name {
			bound = append(bound, p.Tenant+"/"+p.Name)
		}
	}
	if len(bound) > 0 {
		sort.Strings(bound)
		return fmt.Errorf("node %s has %s (%s): delete them or move them to another node first: %w",
			n.Name, counted(len(bound), "port"), sampleList(bound, 3), ErrFailedPrecondition)
	}
	for _, kv := range networks {
		net, err := decodeNetwork(kv)
		if err != nil {
			return err
		}
		if net.Uplink.GetNode() == n.Name {
			return fmt.Errorf("node %s is the uplink host of bridged network %s: delete the network first: %w",
				n.Name, networkName(net), ErrFailedPrecondition)
		}
	}
	return nil
}

// sampleList joins the first n items and says how many more there are.
func sampleList(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}
