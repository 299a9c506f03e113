package nodeagent

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// desiredModel is this node's view as the control plane sent it: the last snapshot with every later
// delta merged in. It is not safe for concurrent use (the agent guards it with its mutex).
//
// Addresses are parsed once, when a message is merged, and the remote ports are kept sorted by id
// between builds (re-sorting only what was touched since): with ten thousand remote ports a change
// of one port must not cost ten thousand parses and a sort on every build.
type desiredModel struct {
	// revision is the store revision of the last message merged; 0 before the first snapshot.
	revision int64
	// ready is set by the first snapshot: nothing is applied before it.
	ready    bool
	networks map[string]*networkEntry
	local    map[string]*localEntry
	remote   map[string]*remoteEntry
	// peers are the nodes of the remote ports and flood entries, with the control plane's status.
	peers map[string]*vxfabricv1.Peer
	// peerVTEPs holds the peers' VTEP addresses that parse (the infrastructure set).
	peerVTEPs map[string]netip.Addr
	// nodes holds one liveness flag per node named by a remote port or flood entry, shared by its
	// entries: build evaluates the liveness rule once per node, not once per port. A node no entry
	// names any more stays until the next snapshot (a name and a flag).
	nodes map[string]*nodeRef
	// remoteSorted is remote in id order as of the last build; remoteTouched the ids merged since.
	remoteSorted  []*remoteEntry
	remoteTouched map[string]struct{}
	// prog is what the last full pass programmed, kept current by incremental passes; nil when the
	// next pass must be full. pend is what was merged since the last pass. See incremental.go.
	prog *programmed
	pend pending
}

type nodeRef struct {
	name  string
	down  bool // as of the last build
	known bool // down was evaluated by a build
}

type networkEntry struct {
	conv overlay.Network
	err  error // convertNetwork's
	// flood holds the valid flood entries sorted by VTEP; floodInvalid the others' errors, in order.
	flood        []floodEntry
	floodInvalid []error
}

type floodEntry struct {
	node *nodeRef
	vtep netip.Addr
}

type localEntry struct {
	id, network string
	rawMAC      string // as sent, for the error when it does not parse
	port        overlay.LocalPort
	macOK       bool
}

type remoteEntry struct {
	id, network string
	node        *nodeRef
	port        overlay.RemotePort
	err         error // set when the MAC or VTEP does not parse: it is skipped
}

func newDesiredModel() *desiredModel {
	m := &desiredModel{}
	m.reset()
	return m
}

func (m *desiredModel) reset() {
	m.networks = map[string]*networkEntry{}
	m.local = map[string]*localEntry{}
	m.remote = map[string]*remoteEntry{}
	m.peers = map[string]*vxfabricv1.Peer{}
	m.peerVTEPs = map[string]netip.Addr{}
	m.nodes = map[string]*nodeRef{}
	m.remoteSorted = nil
	m.remoteTouched = map[string]struct{}{}
	m.prog = nil
	m.pend = pending{full: true, remotes: map[string]*remoteEntry{}, networks: map[string]*networkEntry{}}
}

func (m *desiredModel) node(name string) *nodeRef {
	n := m.nodes[name]
	if n == nil {
		n = &nodeRef{name: name}
		m.nodes[name] = n
	}
	return n
}

// merge applies one Sync message: a snapshot replaces everything, a delta upserts and removes by id.
func (m *desiredModel) merge(resp *vxfabricv1.SyncResponse) {
	if resp.GetSnapshot() {
		m.reset()
		m.ready = true
	}
	for _, id := range resp.GetRemovedNetworkIds() {
		if _, ok := m.networks[id]; ok {
			delete(m.networks, id)
			m.pend.full = true
		}
	}
	for _, id := range resp.GetRemovedLocalPortIds() {
		if _, ok := m.local[id]; ok {
			delete(m.local, id)
			m.pend.full = true
		}
	}
	for _, id := range resp.GetRemovedRemotePortIds() {
		if old, ok := m.remote[id]; ok {
			m.pend.remote(id, old)
			delete(m.remote, id)
			m.remoteTouched[id] = struct{}{}
		}
	}
	for _, name := range resp.GetRemovedPeers() {
		if _, ok := m.peers[name]; ok {
			delete(m.peers, name)
			delete(m.peerVTEPs, name)
			m.pend.full = true
		}
	}
	for _, n := range resp.GetNetworks() {
		m.pend.network(n.GetId(), m.networks[n.GetId()])
		m.networks[n.GetId()] = m.parseNetwork(n)
	}
	if len(resp.GetLocalPorts()) > 0 {
		m.pend.full = true
	}
	for _, p := range resp.GetLocalPorts() {
		mac, err := net.ParseMAC(p.GetMac())
		ip, _ := netip.ParseAddr(p.GetIp())
		m.local[p.GetId()] = &localEntry{id: p.GetId(), network: p.GetNetworkId(), rawMAC: p.GetMac(), macOK: err == nil && len(mac) == 6,
			port: overlay.LocalPort{Interface: p.GetInterfaceName(), MAC: mac, IP: ip}}
	}
	for _, p := range resp.GetRemotePorts() {
		e := &remoteEntry{id: p.GetId(), network: p.GetNetworkId(), node: m.node(p.GetNode())}
		mac, err := net.ParseMAC(p.GetMac())
		vtep, verr := netip.ParseAddr(p.GetVtep())
		if err != nil || len(mac) != 6 || verr != nil {
			e.err = fmt.Errorf("remote port %s: mac %q vtep %q", p.GetId(), p.GetMac(), p.GetVtep())
		}
		ip, _ := netip.ParseAddr(p.GetIp())
		e.port = overlay.RemotePort{MAC: mac, IP: ip, VTEP: vtep}
		m.pend.remote(e.id, m.remote[e.id])
		m.remote[e.id] = e
		m.remoteTouched[e.id] = struct{}{}
	}
	for _, p := range resp.GetPeers() {
		if !samePeer(m.peers[p.GetName()], p) {
			m.pend.full = true
		}
		m.peers[p.GetName()] = p
		if vtep, err := netip.ParseAddr(p.GetVtep()); err == nil {
			m.peerVTEPs[p.GetName()] = vtep
		} else {
			delete(m.peerVTEPs, p.GetName())
		}
	}
	m.revision = max(m.revision, resp.GetRevision())
}

func (m *desiredModel) parseNetwork(s *vxfabricv1.NetworkState) *networkEntry {
	e := &networkEntry{}
	e.conv, e.err = convertNetwork(s)
	for _, f := range s.GetFlood() {
		v, err := netip.ParseAddr(f.GetVtep())
		if err != nil {
			e.floodInvalid = append(e.floodInvalid, fmt.Errorf("network %s: flood vtep %q of node %q: %w", s.GetId(), f.GetVtep(), f.GetNode(), err))
			continue
		}
		e.flood = append(e.flood, floodEntry{node: m.node(f.GetNode()), vtep: v})
	}
	slices.SortStableFunc(e.flood, func(a, b floodEntry) int { return a.vtep.Compare(b.vtep) })
	return e
}

// sortedRemotes returns the remote ports in id order, merging the ids touched since the last call
// into the previous order instead of sorting them all again.
func (m *desiredModel) sortedRemotes() []*remoteEntry {
	if len(m.remoteTouched) == 0 {
		return m.remoteSorted
	}
	touched := slices.Sorted(maps.Keys(m.remoteTouched))
	clear(m.remoteTouched)
	if len(touched) <= 16 && len(m.remoteSorted) > 0 {
		// A few changes (the common delta): edit in place, one move of the tail at most per id.
		for _, id := range touched {
			i, found := slices.BinarySearchFunc(m.remoteSorted, id, func(e *remoteEntry, id string) int { return strings.Compare(e.id, id) })
			e, ok := m.remote[id]
			switch {
			case found && ok:
				m.remoteSorted[i] = e
			case found:
				m.remoteSorted = slices.Delete(m.remoteSorted, i, i+1)
			case ok:
				m.remoteSorted = slices.Insert(m.remoteSorted, i, e)
			}
		}
		return m.remoteSorted
	}
	old := m.remoteSorted
	out := make([]*remoteEntry, 0, len(m.remote))
	i, j := 0, 0
	for i < len(old) || j < len(touched) {
		if j == len(touched) || (i < len(old) && old[i].id < touched[j]) {
			out = append(out, old[i])
			i++
			continue
		}
		if i < len(old) && old[i].id == touched[j] {
			i++ // replaced or removed: the model has the current entry, if any
		}
		if e, ok := m.remote[touched[j]]; ok {
			out = append(out, e)
		}
		j++
	}
	m.remoteSorted = out
	return out
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
// control plane's status says so by the same rule: SUSPECT, DEAD or LEFT, and unreachable. A host
// that answers withholds nothing, whatever its agent's state: a graceful stop (LEFT: an upgrade or
// restart) or a crashed agent leaves its kernel forwarding to its VMs.
func (m *desiredModel) dead(gossip map[string]bool) func(node string) bool {
	return func(node string) bool {
		if dead, known := gossip[node]; known {
			return dead
		}
		p := m.peers[node]
		switch p.GetStatus() {
		case vxfabricv1.NodeStatus_NODE_STATUS_DEAD, vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT, vxfabricv1.NodeStatus_NODE_STATUS_LEFT:
			return p.GetUnreachable()
		}
		return false
	}
}

// build converts the model into the datapath's desired state. down reports dead nodes (see dead):
// their remote ports and flood entries are withheld. The slices of networks, ports and flood entries
// are new on every build; the MAC addresses are shared with the model and must not be modified.
func (m *desiredModel) build(underlay overlay.Underlay, down func(node string) bool) built {
	b := built{revision: m.revision, portByIface: map[string]string{}}
	b.state.Underlay = underlay
	for _, n := range m.nodes {
		n.down, n.known = down(n.name), true
	}
	m.pend.reset()
	prog := m.prog
	if prog == nil {
		prog = &programmed{nets: map[string]*progNet{}, vteps: map[netip.Addr]int32{}}
	}
	clear(prog.built)
	prog.built, prog.indexed = prog.built[:0], false
	m.prog = prog
	byID := map[string]*overlay.Network{}
	remotes := m.sortedRemotes()
	// Ports come in runs of one network (few networks, many ports): one map access per run.
	counts := map[string]int{}
	for i := 0; i < len(remotes); {
		j := i + 1
		for j < len(remotes) && remotes[j].network == remotes[i].network {
			j++
		}
		counts[remotes[i].network] += j - i
		i = j
	}
	ids := sortedKeys(m.networks)
	vnis := map[uint32]string{}
	for _, id := range ids {
		e := m.networks[id]
		if e.err != nil {
			b.invalid = append(b.invalid, e.err)
			continue
		}
		n := e.conv
		if other, dup := vnis[n.VNI]; dup {
			b.invalid = append(b.invalid, fmt.Errorf("network %s: vni %d already used by network %s", id, n.VNI, other))
			continue
		}
		vnis[n.VNI] = id
		b.invalid = append(b.invalid, e.floodInvalid...)
		n.Flood = floodList(make([]netip.Addr, 0, len(e.flood)), e.flood, underlay.VTEP)
		n.Remotes = make([]overlay.RemotePort, 0, counts[id])
		byID[id] = &n
	}
	ifaces := map[string]string{}
	for _, id := range sortedKeys(m.local) {
		p := m.local[id]
		n := byID[p.network]
		if n == nil {
			continue // its network is not (yet) in the view
		}
		if !p.macOK {
			b.invalid = append(b.invalid, fmt.Errorf("local port %s: mac %q", id, p.rawMAC))
			continue
		}
		iface := p.port.Interface
		if iface == "" {
			b.invalid = append(b.invalid, fmt.Errorf("local port %s: no interface name", id))
			continue
		}
		if other, dup := ifaces[iface]; dup {
			b.invalid = append(b.invalid, fmt.Errorf("local port %s: interface %q already used by port %s", id, iface, other))
			continue
		}
		ifaces[iface] = id
		n.Ports = append(n.Ports, p.port)
		b.portByIface[iface] = id
	}
	var n *overlay.Network
	for i, e := range remotes {
		if i == 0 || e.network != remotes[i-1].network {
			n = byID[e.network]
		}
		if n == nil {
			continue
		}
		if e.err != nil {
			b.invalid = append(b.invalid, e.err)
			continue
		}
		if e.node.down {
			b.withheld++
			continue
		}
		n.Remotes = append(n.Remotes, e.port)
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
		prog.built = append(prog.built, builtNet{id: id, n: *n})
	}
	prog.remotes, prog.withheld = b.remotes, b.withheld
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
