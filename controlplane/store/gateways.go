package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

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
// The node-cidr index names, per node, the nat and routed networks it takes part in and their
// CIDRs (a key per port, written and deleted with the port's binding to the node). Binding a port
// to a node (create or move) reads the node's part of the index, refuses when an overlapping
// network is there, and its transaction compares that no key was added to that part since the
// read (other than keys of the port's own network). Two concurrent binds on one node into
// overlapping networks are so settled by etcd: the second one fails its compare, reads again and is
// refused. The work and the transaction do not grow with the fabric: two range compares, and a read
// of what the node hosts. Ports created before the
// index existed have no index key and are not seen.
type gatewayGuard struct {
	node    string
	network *vxfabricv1.Network // the port's network; nil when it has no gateway (guard inactive)
	rev     int64               // the store revision the node's index was read at
}

// readGatewayGuard reads the port's network, the node's part of the node-cidr index and the node's
// reported underlay, and builds the guard of binding a port of networkID to node. It refuses
// (ErrFailedPrecondition) when the node takes part in a nat or routed network that overlaps, or
// when the network overlaps what the node's host reaches outside the fabric. An unknown network gives an inactive guard:
// the caller's own compare on the network refuses it.
func (s *Store) readGatewayGuard(ctx context.Context, networkID, node string) (*gatewayGuard, error) {
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(NetworkKey(networkID)),
		clientv3.OpGet(nodeCIDRPrefixOf(node), clientv3.WithPrefix()),
		clientv3.OpGet(NodeUnderlayPrefix+node),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read the gateway check of node %s: %w", node, err)
	}
	kv := first(rangeKVs(resp, 0))
	if kv == nil {
		return &gatewayGuard{}, nil
	}
	network, err := decodeNetwork(kv)
	if err != nil {
		return nil, err
	}
	if !hasGateway(network.Mode) {
		return &gatewayGuard{}, nil
	}
	mine, err := netip.ParsePrefix(network.Cidr)
	if err != nil {
		return nil, fmt.Errorf("network %s cidr %q: %w", networkName(network), network.Cidr, err)
	}
	g := &gatewayGuard{node: node, network: network, rev: resp.Header.Revision}
	for _, kv := range rangeKVs(resp, 1) {
		otherID, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), nodeCIDRPrefixOf(node)), "/")
		other, err := netip.ParsePrefix(string(kv.Value))
		if otherID == networkID || err != nil || !mine.Overlaps(other) {
			continue
		}
		return nil, s.gatewayConflict(ctx, g, otherID, other)
	}
	// What the node's host reaches outside the fabric, as its agent reported it: the gateway there
	// would take that traffic into the network's bridge. The route itself is not named (a tenant
	// learns no more of the underlay than that the node's is in the way).
	if kv := first(rangeKVs(resp, 2)); kv != nil {
		for _, r := range ParseUnderlay(string(kv.Value)) {
			if mine.Overlaps(r) {
				return nil, fmt.Errorf("%s network %s %s overlaps the underlay of node %s (its gateway there would take the host's traffic to its router, LAN or servers): %w",
					modeName(network.Mode), networkName(network), network.Cidr, node, ErrFailedPrecondition)
			}
		}
	}
	return g, nil
}

// nodeCIDRPrefixOf holds the node-cidr index keys of one node.
func nodeCIDRPrefixOf(node string) string { return NodeCIDRPrefix + node + "/" }

func (g *gatewayGuard) active() bool { return g.network != nil }

// cmps holds while no other network was added to the node's part of the index since the read. The
// port's own network is left out (two ranges, on either side of its keys): ports of one network
// binding to one node at once neither fail each other's compare nor wait for separate batches.
func (g *gatewayGuard) cmps() []clientv3.Cmp {
	if !g.active() {
		return nil
	}
	node := nodeCIDRPrefixOf(g.node)
	own := node + g.network.Id + "/"
	after := node + g.network.Id + string(rune('/'+1)) // the first key after every key of own
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(node), "<", g.rev+1).WithRange(own),
		clientv3.Compare(clientv3.CreateRevision(after), "<", g.rev+1).WithRange(clientv3.GetPrefixRangeEnd(node)),
		// The node's reported underlay is as read (a missing key has mod revision 0).
		clientv3.Compare(clientv3.ModRevision(NodeUnderlayPrefix+g.node), "<", g.rev+1),
	}
}

// put writes the port's node-cidr index key.
func (g *gatewayGuard) put(portID string) []clientv3.Op {
	if !g.active() {
		return nil
	}
	return []clientv3.Op{clientv3.OpPut(NodeCIDRKey(g.node, g.network.Id, portID), g.network.Cidr)}
}

// gatewayConflict is the ErrFailedPrecondition of binding g's port to its node, which takes part in
// network otherID (CIDR other): it names that network when it is of the port's tenant.
func (s *Store) gatewayConflict(ctx context.Context, g *gatewayGuard, otherID string, other netip.Prefix) error {
	// A tenant learns nothing of another tenant's networks but that one is in the way.
	hosted := "a network of another tenant that overlaps"
	if n, err := s.GetNetworkByID(ctx, otherID); err == nil && n.Tenant == g.network.Tenant {
		hosted = fmt.Sprintf("%s network %s %s, which overlaps", modeName(n.Mode), networkName(n), other)
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return fmt.Errorf("node %s already hosts %s %s network %s %s (without VRFs their gateway routes would collide): %w",
		g.node, hosted, modeName(g.network.Mode), networkName(g.network), g.network.Cidr, ErrFailedPrecondition)
}
