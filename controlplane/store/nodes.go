package store

import (
	"context"
	"fmt"

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

// NodeWriteOps are the operations of a write of node name's record (value) under prefix, for every
// writer of node records (RegisterNode, the status writer, PutNode): the put, and the rewrite of the
// nodes epoch when newVTEP (the node is new or its VTEP changed), so that network creates checked
// against the old VTEPs fail (NodesUnchangedSince).
func NodeWriteOps(prefix, name, value string, newVTEP bool) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpPut(prefix+"nodes/"+name, value)}
	if newVTEP {
		ops = append(ops, clientv3.OpPut(prefix+nodesEpoch, ""))
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
