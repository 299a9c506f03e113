package nodeagent

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// desiredModel is this node's view as the control plane sent it: the last snapshot with every later
// delta merged in. It is not safe for concurrent use (the agent guards it with its mutex).
type desiredModel struct {
	// revision is the store revision of the last message merged; 0 before the first snapshot.
	revision int64
	// ready is set by the first snapshot: nothing is applied before it.
	ready    bool
	networks map[string]*vxfabricv1.NetworkState
	local    map[string]*vxfabricv1.LocalPort
	remote   map[string]*vxfabricv1.RemotePort
	// peers are the nodes of the remote ports and flood entries, with the control plane's status.
	peers map[string]*vxfabricv1.Peer
}

func newDesiredModel() *desiredModel {
	return &desiredModel{
		networks: map[string]*vxfabricv1.NetworkState{},
		local:    map[string]*vxfabricv1.LocalPort{},
		remote:   map[string]*vxfabricv1.RemotePort{},
		peers:    map[string]*vxfabricv1.Peer{},
	}
}

// merge applies one Sync message: a snapshot replaces everything, a delta upserts and removes by id.
func (m *desiredModel) merge(resp *vxfabricv1.SyncResponse) {
	if resp.GetSnapshot() {
		m.networks = map[string]*vxfabricv1.NetworkState{}
		m.local = map[string]*vxfabricv1.LocalPort{}
		m.remote = map[string]*vxfabricv1.RemotePort{}
		m.peers = map[string]*vxfabricv1.Peer{}
		m.ready = true
	}
	for _, id := range resp.GetRemovedNetworkIds() {
		delete(m.networks, id)
	}
	for _, id := range resp.GetRemovedLocalPortIds() {
		delete(m.local, id)
	}
	for _, id := range resp.GetRemovedRemotePortIds() {
		delete(m.remote, id)
	}
	for _, name := range resp.GetRemovedPeers() {
		delete(m.peers, name)
	}
	for _, n := range resp.GetNetworks() {
		m.networks[n.GetId()] = n
	}
	for _, p := range resp.GetLocalPorts() {
		m.local[p.GetId()] = p
	}
	for _, p := range resp.GetRemotePorts() {
		m.remote[p.GetId()] = p
	}
	for _, p := range resp.GetPeers() {
		m.peers[p.GetName()] = p
	}
	m.revision = max(m.revision, resp.GetRevision())
}

// built is the overlay state derived from the model, with what was left out and why.
type built struct {
	state    overlay.DesiredState
	revision int64
	// portByIface maps a local port's interface name to its port id.
	portByIface map[string]string
	remotes     int
	withheld    int
	// invalid lists objects the control plane sent that cannot be programmed; they are skipped.
	invalid []error
}

// dead is the liveness rule that decides whose entries are withheld: a node gossip knows is dead when
// gossip says so (gossip maps node -> dead, for every agent node it knows); a node it does not know (it
// died before this agent started: memberlist ignores dead members it never saw alive) is dead when the
// control plane's status says DEAD. LEFT (a graceful stop: an upgrade or restart, its kernel still
// forwards) and SUSPECT withhold nothing.
func (m *desiredModel) dead(gossip map[string]bool) func(node string) bool {
	return func(node string) bool {
		if dead, known := gossip[node]; known {
			return dead
		}
		return m.peers[node].GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_DEAD
	}
}

// build converts the model into the datapath's desired state. down reports dead nodes (see dead):
// their remote ports and flood entries are withheld.
func (m *desiredModel) build(underlay overlay.Underlay, down func(node string) bool) built {
	b := built{revision: m.revision, portByIface: map[string]string{}}
	b.state.Underlay = underlay
	byID := map[string]*overlay.Network{}
	ids := make([]string, 0, len(m.networks))
	for id := range m.networks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	vnis := map[uint32]string{}
	for _, id := range ids {
		n, err := convertNetwork(m.networks[id])
		if err != nil {
			b.invalid = append(b.invalid, err)
			continue
		}
		if other, dup := vnis[n.VNI]; dup {
			b.invalid = append(b.invalid, fmt.Errorf("network %s: vni %d already used by network %s", id, n.VNI, other))
			continue
		}
		vnis[n.VNI] = id
		seen := map[netip.Addr]bool{}
		for _, f := range m.networks[id].GetFlood() {
			v, err := netip.ParseAddr(f.GetVtep())
			if err != nil {
				b.invalid = append(b.invalid, fmt.Errorf("network %s: flood vtep %q of node %q: %w", id, f.GetVtep(), f.GetNode(), err))
				continue
			}
			if down(f.GetNode()) {
				continue
			}
			if v == underlay.VTEP || seen[v] {
				continue
			}
			seen[v] = true
			n.Flood = append(n.Flood, v)
		}
		slices.SortFunc(n.Flood, func(a, b netip.Addr) int { return a.Compare(b) })
		byID[id] = &n
	}
	ifaces := map[string]string{}
	for _, id := range sortedKeys(m.local) {
		p := m.local[id]
		n := byID[p.GetNetworkId()]
		if n == nil {
			continue // its network is not (yet) in the view
		}
		mac, err := net.ParseMAC(p.GetMac())
		if err != nil || len(mac) != 6 {
			b.invalid = append(b.invalid, fmt.Errorf("local port %s: mac %q", id, p.GetMac()))
			continue
		}
		if p.GetInterfaceName() == "" {
			b.invalid = append(b.invalid, fmt.Errorf("local port %s: no interface name", id))
			continue
		}
		if other, dup := ifaces[p.GetInterfaceName()]; dup {
			b.invalid = append(b.invalid, fmt.Errorf("local port %s: interface %q already used by port %s", id, p.GetInterfaceName(), other))
			continue
		}
		ifaces[p.GetInterfaceName()] = id
		ip, _ := netip.ParseAddr(p.GetIp())
		n.Ports = append(n.Ports, overlay.LocalPort{Interface: p.GetInterfaceName(), MAC: mac, IP: ip})
		b.portByIface[p.GetInterfaceName()] = id
	}
	for _, id := range sortedKeys(m.remote) {
		p := m.remote[id]
		n := byID[p.GetNetworkId()]
		if n == nil {
			continue
		}
		mac, err := net.ParseMAC(p.GetMac())
		vtep, verr := netip.ParseAddr(p.GetVtep())
		if err != nil || len(mac) != 6 || verr != nil {
			b.invalid = append(b.invalid, fmt.Errorf("remote port %s: mac %q vtep %q", id, p.GetMac(), p.GetVtep()))
			continue
		}
		if down(p.GetNode()) {
			b.withheld++
			continue
		}
		ip, _ := netip.ParseAddr(p.GetIp())
		n.Remotes = append(n.Remotes, overlay.RemotePort{MAC: mac, IP: ip, VTEP: vtep})
		b.remotes++
	}
	for _, id := range ids {
		n := byID[id]
		if n == nil {
			continue
		}
		// One object the datapath would refuse must not hold back the others: check the network
		// alone, then each of its ports alone.
		bare := *n
		bare.Ports, bare.Remotes = nil, nil
		if err := (overlay.DesiredState{Underlay: underlay, Networks: []overlay.Network{bare}}).Validate(); err != nil {
			b.invalid = append(b.invalid, fmt.Errorf("network %s: %w", id, err))
			for _, p := range n.Ports {
				delete(b.portByIface, p.Interface)
			}
			b.remotes -= len(n.Remotes)
			continue
		}
		ports := n.Ports[:0:0]
		for _, p := range n.Ports {
			one := bare
			one.Ports = []overlay.LocalPort{p}
			if err := (overlay.DesiredState{Underlay: underlay, Networks: []overlay.Network{one}}).Validate(); err != nil {
				b.invalid = append(b.invalid, fmt.Errorf("local port %s: %w", b.portByIface[p.Interface], err))
				delete(b.portByIface, p.Interface)
				continue
			}
			ports = append(ports, p)
		}
		n.Ports = ports
		b.state.Networks = append(b.state.Networks, *n)
	}
	slices.SortFunc(b.state.Networks, func(a, b overlay.Network) int { return cmp.Compare(a.VNI, b.VNI) })
	return b
}

func convertNetwork(s *vxfabricv1.NetworkState) (overlay.Network, error) {
	n := overlay.Network{VNI: s.GetVni(), MTU: int(s.GetMtu()), Uplink: s.GetUplinkInterface()}
	switch s.GetMode() {
	case vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED:
		n.Mode = overlay.ModeIsolated
	case vxfabricv1.NetworkMode_NETWORK_MODE_NAT:
		n.Mode = overlay.ModeNAT
	case vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED:
		n.Mode = overlay.ModeRouted
	case vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED:
		n.Mode = overlay.ModeBridged
	default:
		return n, fmt.Errorf("network %s: mode %s", s.GetId(), s.GetMode())
	}
	if s.GetCidr() != "" {
		p, err := netip.ParsePrefix(s.GetCidr())
		if err != nil {
			return n, fmt.Errorf("network %s: cidr %q: %w", s.GetId(), s.GetCidr(), err)
		}
		n.CIDR = p
	}
	if s.GetGateway() != "" {
		a, err := netip.ParseAddr(s.GetGateway())
		if err != nil {
			return n, fmt.Errorf("network %s: gateway %q: %w", s.GetId(), s.GetGateway(), err)
		}
		n.Gateway = a
	}
	if s.GetGatewayMac() != "" {
		mac, err := net.ParseMAC(s.GetGatewayMac())
		if err != nil {
			return n, fmt.Errorf("network %s: gateway mac %q: %w", s.GetId(), s.GetGatewayMac(), err)
		}
		n.GatewayMAC = mac
	}
	return n, nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
