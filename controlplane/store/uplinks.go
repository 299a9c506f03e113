package store

import (
	"context"
	"errors"
	"fmt"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// uplinkGuard keeps an interface the uplink of one bridged network at most, across all tenants.
//
// The index key UplinkKey, compared absent and written in the network's create transaction, settles
// two concurrent creates naming one uplink. Networks created before the index existed (or by a
// replica of an older version) have no index key, so the create also reads every network, refuses
// an uplink one of them uses, and compares that no network was created since that read: a
// concurrent create without an index key then fails the compare, and the create reads again.
type uplinkGuard struct {
	key string // UplinkKey of the network's uplink
	rev int64  // the store revision the networks were read at
}

// readUplinkGuard reads the networks and builds the guard of creating n, a bridged network; it returns
// the uplink's error when a network already uses n's uplink.
func (s *Store) readUplinkGuard(ctx context.Context, n *vxfabricv1.Network) (*uplinkGuard, error) {
	up := n.Uplink
	resp, err := s.kv.Get(ctx, NetworksPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read networks for the uplink check of network %s: %w", networkName(n), err)
	}
	for _, kv := range resp.Kvs {
		other, err := decodeNetwork(kv)
		if err != nil {
			return nil, err
		}
		// The same name is the create's own answer (AlreadyExists, or the network of its request).
		sameName := other.Tenant == n.Tenant && other.Name == n.Name
		if !sameName && other.Uplink.GetNode() == up.Node && other.Uplink.GetInterface() == up.Interface {
			return nil, uplinkTaken(n, other)
		}
	}
	return &uplinkGuard{key: UplinkKey(up.Node, up.Interface), rev: resp.Header.Revision}, nil
}

// cmps holds while the uplink's index key is absent and no network was created since the read.
func (g *uplinkGuard) cmps() []clientv3.Cmp {
	return []clientv3.Cmp{notExists(g.key), noNetworkCreatedAfter(g.rev)}
}

// conflict explains a failed create transaction that carried the guard, given the index key as read
// after it: the uplink's error, or nil when the key is free or its network gone (read again).
func (s *Store) uplinkConflict(ctx context.Context, n *vxfabricv1.Network, ownerID []byte) error {
	if ownerID == nil {
		return nil
	}
	owner, err := s.GetNetworkByID(ctx, string(ownerID))
	if errors.Is(err, ErrNotFound) {
		// Its network is gone but the key stayed: a replica of the version before the index deleted
		// it. The key goes (only if it still names that network), and the create reads again.
		key := UplinkKey(n.Uplink.Node, n.Uplink.Interface)
		if _, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", string(ownerID))).
			Then(clientv3.OpDelete(key)).Commit(); err != nil {
			return fmt.Errorf("release uplink %s:%s of a network that is gone: %w", n.Uplink.Node, n.Uplink.Interface, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	return uplinkTaken(n, owner)
}

// uplinkTaken is the error of creating n whose uplink owner uses. A tenant learns nothing of another
// tenant's networks but that one holds the uplink.
func uplinkTaken(n, owner *vxfabricv1.Network) error {
	holder := "a network of another tenant"
	if owner.Tenant == n.Tenant {
		holder = "network " + networkName(owner)
	}
	return fmt.Errorf("uplink %s:%s of network %s is already the uplink of %s (an interface bridges one network only): %w",
		n.Uplink.Node, n.Uplink.Interface, networkName(n), holder, ErrFailedPrecondition)
}

// uplinkRelease deletes the uplink index key of n if it is n's (a network created before the index
// has none, and must not take another network's key with it).
func uplinkRelease(n *vxfabricv1.Network) []clientv3.Op {
	if n.Uplink == nil {
		return nil
	}
	key := UplinkKey(n.Uplink.Node, n.Uplink.Interface)
	return []clientv3.Op{clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", n.Id)},
		[]clientv3.Op{clientv3.OpDelete(key)}, nil)}
}

// noNetworkCreatedAfter holds while no network key was created after rev.
func noNetworkCreatedAfter(rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(NetworksPrefix), "<", rev+1).WithPrefix()
}
