package store

import (
	"context"
	"fmt"
	"net/netip"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// hasGateway tells whether a network's gateway is routed by the hosts (nat and routed networks).
func hasGateway(m vxfabricv1.NetworkMode) bool {
	return m == vxfabricv1.NetworkMode_NETWORK_MODE_NAT || m == vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED
}

func modeName(m vxfabricv1.NetworkMode) string {
	switch m {
	case vxfabricv1.NetworkMode_NETWORK_MODE_NAT:
		return "nat"
	case vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED:
		return "routed"
	}
	return m.String()
}

// gatewayGuard keeps two nat or routed networks whose CIDRs overlap off one node: the hosts have no
// VRFs, so both gateways' routes would land in one routing table and replies could reach the wrong
// tenant. Isolated and bridged networks are not concerned (no host route), nor is a bridged uplink.
//
// The guard is part of the transaction that binds a port to a node (create or move): it compares that
// the node-cidr index of every overlapping nat/routed network is empty on that node, and that no
// network was created since the networks were read (a network created after the read could get a
// port on the node concurrently, unseen). Two concurrent binds into two overlapping networks are so
// settled by etcd: the second transaction fails its compare. Ports created before the index existed
// have no index key and are not seen.
type gatewayGuard struct {
	node    string
	network *vxfabricv1.Network   // the port's network; nil when it has no gateway (guard inactive)
	others  []*vxfabricv1.Network // nat/routed networks whose CIDR overlaps network's
	rev     int64                 // the store revision the networks were read at
}

// readGatewayGuard reads the networks and builds the guard of binding a port of networkID to node.
// An unknown network gives an inactive guard: the caller's own compare on the network refuses it.
func (s *Store) readGatewayGuard(ctx context.Context, networkID, node string) (*gatewayGuard, error) {
	resp, err := s.kv.Get(ctx, NetworksPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read networks for the gateway check of node %s: %w", node, err)
	}
	g := &gatewayGuard{node: node, rev: resp.Header.Revision}
	var all []*vxfabricv1.Network
	for _, kv := range resp.Kvs {
		n, err := decodeNetwork(kv)
		if err != nil {
			return nil, err
		}
		if n.Id == networkID {
			g.network = n
		}
		all = append(all, n)
	}
	if g.network == nil || !hasGateway(g.network.Mode) {
		return &gatewayGuard{}, nil
	}
	mine, err := netip.ParsePrefix(g.network.Cidr)
	if err != nil {
		return nil, fmt.Errorf("network %s cidr %q: %w", networkName(g.network), g.network.Cidr, err)
	}
	for _, n := range all {
		if n.Id == networkID || !hasGateway(n.Mode) {
			continue
		}
		other, err := netip.ParsePrefix(n.Cidr)
		if err != nil {
			return nil, fmt.Errorf("network %s cidr %q: %w", networkName(n), n.Cidr, err)
		}
		if mine.Overlaps(other) {
			g.others = append(g.others, n)
		}
	}
	return g, nil
}

func (g *gatewayGuard) active() bool { return g.network != nil }

// cmps holds while the node takes part in none of the overlapping networks and no network was
// created since the read.
func (g *gatewayGuard) cmps() []clientv3.Cmp {
	if !g.active() {
		return nil
	}
	out := []clientv3.Cmp{noNetworkCreatedAfter(g.rev)}
	for _, n := range g.others {
		out = append(out, prefixEmpty(NodeNetworkCIDRPrefix(g.node, n.Id)))
	}
	return out
}

// put writes the port's node-cidr index key.
func (g *gatewayGuard) put(portID string) []clientv3.Op {
	if !g.active() {
		return nil
	}
	return []clientv3.Op{clientv3.OpPut(NodeCIDRKey(g.node, g.network.Id, portID), g.network.Cidr)}
}

// gatewayConflict explains a failed transaction that carried the guard: an ErrFailedPrecondition
// naming the overlapping network the node takes part in (when it is of the port's tenant), or nil
// when none does (networks changed: read again).
func (s *Store) gatewayConflict(ctx context.Context, g *gatewayGuard) error {
	if !g.active() {
		return nil
	}
	for _, n := range g.others {
		resp, err := s.kv.Get(ctx, NodeNetworkCIDRPrefix(g.node, n.Id), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return fmt.Errorf("read node-cidr index of node %s: %w", g.node, err)
		}
		if resp.Count > 0 {
			// A tenant learns nothing of another tenant's networks but that one is in the way.
			hosted := "a network of another tenant that overlaps"
			if n.Tenant == g.network.Tenant {
				hosted = fmt.Sprintf("%s network %s %s, which overlaps", modeName(n.Mode), networkName(n), n.Cidr)
			}
			return fmt.Errorf("node %s already hosts %s %s network %s %s (without VRFs their gateway routes would collide): %w",
				g.node, hosted, modeName(g.network.Mode), networkName(g.network), g.network.Cidr, ErrFailedPrecondition)
		}
	}
	return nil
}
