package fanout

import (
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/store"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// event is one key change seen in etcd, with its key relative to the hub's prefix.
type event struct {
	key     string
	value   []byte
	deleted bool
	rev     int64
}

// model is the hub's copy of the keys that shape node views, with the indexes that let a change find the
// nodes it affects without scanning. It is shared by every subscriber; Hub.mu guards it.
type model struct {
	rev       int64
	networks  map[string]*vxfabricv1.Network
	ports     map[string]*vxfabricv1.Port
	nodes     map[string]*vxfabricv1.Node
	plugged   map[string]bool                        // port id -> status/ports/<id> exists
	netPorts  map[string]map[string]*vxfabricv1.Port // network id -> port id -> port
	nodePorts map[string]map[string]*vxfabricv1.Port // node -> port id -> port
	netNodes  map[string]map[string]int              // network id -> node -> ports of the network bound there
	uplinks   map[string]map[string]struct{}         // node -> ids of networks whose uplink is on it
	keys      *vxfabricv1.GossipKeys                 // the gossip keyring (nil: never rotated), in every view

	// The messages views are made of, built when their object (or, for remote ports and flood entries,
	// their node's VTEP) changes and then shared by every snapshot and delta, so that a view costs a
	// pointer per item, not a copy. Never modified once stored: a stream may be marshalling one while
	// the watch loop replaces it with a new one.
	peers   map[string]*vxfabricv1.Peer       // node with a VTEP -> its Peer record
	floods  map[string]*vxfabricv1.FloodEntry // node with a VTEP -> its flood entry
	locals  map[string]*vxfabricv1.LocalPort  // port id -> the port as its own node sees it
	remotes map[string]*vxfabricv1.RemotePort // port id -> the port as others see it, while its node has a VTEP
}

func newModel() *model {
	return &model{
		networks:  map[string]*vxfabricv1.Network{},
		ports:     map[string]*vxfabricv1.Port{},
		nodes:     map[string]*vxfabricv1.Node{},
		peers:     map[string]*vxfabricv1.Peer{},
		floods:    map[string]*vxfabricv1.FloodEntry{},
		plugged:   map[string]bool{},
		locals:    map[string]*vxfabricv1.LocalPort{},
		remotes:   map[string]*vxfabricv1.RemotePort{},
		netPorts:  map[string]map[string]*vxfabricv1.Port{},
		nodePorts: map[string]map[string]*vxfabricv1.Port{},
		netNodes:  map[string]map[string]int{},
		uplinks:   map[string]map[string]struct{}{},
	}
}

// keyKind splits a relative key into the kind of object it holds and its id; ok is false for keys that
// do not shape node views (names, alloc, tokens, ...).
func keyKind(key string) (kind, id string, ok bool) {
	if key == store.GossipKeyring {
		return key, "", true
	}
	for _, k := range []string{"networks/", "ports/", "nodes/", "status/ports/"} {
		if rest, found := strings.CutPrefix(key, k); found && rest != "" && !strings.Contains(rest, "/") {
			return k, rest, true
		}
	}
	return "", "", false
}

// decode parses an event's value; a value that does not parse is treated as absent and logged, so that
// one corrupt key cannot stop the hub.
func decode[T proto.Message](log *slog.Logger, ev event, msg T) (T, bool) {
	var zero T
	if ev.deleted {
		return zero, false
	}
	if err := proto.Unmarshal(ev.value, msg); err != nil {
		log.Error("undecodable key ignored", "key", ev.key, "rev", ev.rev, "err", fmt.Errorf("decode %s: %w", ev.key, err))
		return zero, false
	}
	return msg, true
}

func (m *model) vtep(node string) string {
	if n := m.nodes[node]; n != nil {
		return n.GetVtep()
	}
	return ""
}

// putNode records node n (nil: removed) and its Peer record. A node without a VTEP is nobody's peer.
func (m *model) putNode(name string, n *vxfabricv1.Node) {
	prevVtep := m.vtep(name)
	defer func() {
		if v := m.vtep(name); v != prevVtep {
			if v != "" {
				m.floods[name] = &vxfabricv1.FloodEntry{Node: name, Vtep: v}
			} else {
				delete(m.floods, name)
			}
			for _, p := range m.nodePorts[name] {
				m.putRemote(p)
			}
		}
	}()
	if n == nil {
		delete(m.nodes, name)
		delete(m.peers, name)
		return
	}
	m.nodes[name] = n
	if n.GetVtep() == "" {
		delete(m.peers, name)
		return
	}
	if p := m.peers[name]; p != nil && p.GetVtep() == n.GetVtep() && p.GetStatus() == n.GetStatus() && p.GetUnreachable() == n.GetUnreachable() {
		return
	}
	m.peers[name] = &vxfabricv1.Peer{Name: name, Vtep: n.GetVtep(), Status: n.GetStatus(), Unreachable: n.GetUnreachable()}
}

// isPeer reports whether peer is in viewer's view: another node with a VTEP that takes part in a network
// viewer takes part in (so its ports are viewer's remote ports and its VTEP is in viewer's flood lists).
// Its cost is in the ports of peer, not in the size of viewer's view.
func (m *model) isPeer(viewer, peer string) bool {
	if viewer == peer || m.peers[peer] == nil {
		return false
	}
	for _, p := range m.nodePorts[peer] {
		if m.takesPart(viewer, p.GetNetworkId()) {
			return true
		}
	}
	for id := range m.uplinks[peer] {
		if m.takesPart(viewer, id) {
			return true
		}
	}
	return false
}

// takesPart reports whether network id takes part on node: a port of it is bound there, or its uplink is there.
func (m *model) takesPart(node, id string) bool {
	n := m.networks[id]
	if n == nil {
		return false
	}
	return m.netNodes[id][node] > 0 || (n.GetUplink() != nil && n.GetUplink().GetNode() == node)
}

// forParticipants calls fn once for each node the network takes part on.
func (m *model) forParticipants(id string, fn func(node string)) {
	n := m.networks[id]
	if n == nil {
		return
	}
	for node := range m.netNodes[id] {
		fn(node)
	}
	if up := n.GetUplink().GetNode(); up != "" && m.netNodes[id][up] == 0 {
		fn(up)
	}
}

func (m *model) participants(id string) map[string]bool {
	set := map[string]bool{}
	m.forParticipants(id, func(node string) { set[node] = true })
	return set
}

// netsOf returns the ids of the networks taking part on node.
func (m *model) netsOf(node string) []string {
	seen := map[string]bool{}
	for _, p := range m.nodePorts[node] {
		if m.networks[p.GetNetworkId()] != nil {
			seen[p.GetNetworkId()] = true
		}
	}
	for id := range m.uplinks[node] {
		if m.networks[id] != nil {
			seen[id] = true
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (m *model) putPort(p *vxfabricv1.Port) {
	m.deletePort(p.GetId())
	m.ports[p.GetId()] = p
	addTo(m.netPorts, p.GetNetworkId(), p.GetId(), p)
	addTo(m.nodePorts, p.GetNode(), p.GetId(), p)
	if m.netNodes[p.GetNetworkId()] == nil {
		m.netNodes[p.GetNetworkId()] = map[string]int{}
	}
	m.netNodes[p.GetNetworkId()][p.GetNode()]++
	m.locals[p.GetId()] = localPort(p)
	m.putRemote(p)
}

// putRemote replaces p's shared RemotePort (a new message: the old one may be in flight).
func (m *model) putRemote(p *vxfabricv1.Port) {
	if v := m.vtep(p.GetNode()); v != "" {
		m.remotes[p.GetId()] = remotePort(p, v)
	} else {
		delete(m.remotes, p.GetId())
	}
}

func (m *model) deletePort(id string) {
	p := m.ports[id]
	if p == nil {
		return
	}
	delete(m.ports, id)
	delete(m.locals, id)
	delete(m.remotes, id)
	removeFrom(m.netPorts, p.GetNetworkId(), id)
	removeFrom(m.nodePorts, p.GetNode(), id)
	counts := m.netNodes[p.GetNetworkId()]
	if counts[p.GetNode()]--; counts[p.GetNode()] <= 0 {
		delete(counts, p.GetNode())
		if len(counts) == 0 {
			delete(m.netNodes, p.GetNetworkId())
		}
	}
}

func (m *model) putNetwork(n *vxfabricv1.Network) {
	m.deleteNetwork(n.GetId())
	m.networks[n.GetId()] = n
	if up := n.GetUplink().GetNode(); up != "" {
		if m.uplinks[up] == nil {
			m.uplinks[up] = map[string]struct{}{}
		}
		m.uplinks[up][n.GetId()] = struct{}{}
	}
}

func (m *model) deleteNetwork(id string) {
	n := m.networks[id]
	if n == nil {
		return
	}
	delete(m.networks, id)
	if up := n.GetUplink().GetNode(); up != "" {
		delete(m.uplinks[up], id)
		if len(m.uplinks[up]) == 0 {
			delete(m.uplinks, up)
		}
	}
}

func addTo[V any](idx map[string]map[string]V, outer, inner string, v V) {
	if idx[outer] == nil {
		idx[outer] = map[string]V{}
	}
	idx[outer][inner] = v
}

func removeFrom[V any](idx map[string]map[string]V, outer, inner string) {
	delete(idx[outer], inner)
	if len(idx[outer]) == 0 {
		delete(idx, outer)
	}
}

// gatewayMAC is 02:fb:<vni, 3 bytes big-endian>:01, the same on every host.
func gatewayMAC(vni uint32) string {
	return fmt.Sprintf("02:fb:%02x:%02x:%02x:01", byte(vni>>16), byte(vni>>8), byte(vni))
}

// floodList returns the VTEPs of every node the network takes part on that has one, sorted by node.
func (m *model) floodList(id string) []*vxfabricv1.FloodEntry {
	var flood []*vxfabricv1.FloodEntry
	m.forParticipants(id, func(node string) {
		if f := m.floods[node]; f != nil {
			flood = append(flood, f)
		}
	})
	sort.Slice(flood, func(i, j int) bool { return flood[i].Node < flood[j].Node })
	return flood
}

// networkState is network id as node must program it; flood is the network's floodList, from which the
// node itself is left out.
func (m *model) networkState(node, id string, flood []*vxfabricv1.FloodEntry) *vxfabricv1.NetworkState {
	n := m.networks[id]
	ns := &vxfabricv1.NetworkState{
		Id:         n.GetId(),
		Tenant:     n.GetTenant(),
		Name:       n.GetName(),
		Vni:        n.GetVni(),
		Mode:       n.GetMode(),
		Mtu:        n.GetMtu(),
		Cidr:       n.GetCidr(),
		Gateway:    n.GetGateway(),
		GatewayMac: n.GetGatewayMac(),
		BridgeName: overlay.BridgeName(n.GetVni()),
		VxlanName:  overlay.VxlanName(n.GetVni()),
		Flood:      make([]*vxfabricv1.FloodEntry, 0, len(flood)),
	}
	if ns.GatewayMac == "" {
		ns.GatewayMac = gatewayMAC(n.GetVni())
	}
	if up := n.GetUplink(); up.GetNode() == node {
		ns.UplinkInterface = up.GetInterface()
	}
	for _, f := range flood {
		if f.Node != node {
			ns.Flood = append(ns.Flood, f)
		}
	}
	return ns
}

func localPort(p *vxfabricv1.Port) *vxfabricv1.LocalPort {
	return &vxfabricv1.LocalPort{
		Id: p.GetId(), NetworkId: p.GetNetworkId(), InterfaceName: p.GetInterfaceName(),
		Mac: p.GetMac(), Ip: p.GetIp(), Vm: p.GetVm(),
	}
}

func remotePort(p *vxfabricv1.Port, vtep string) *vxfabricv1.RemotePort {
	return &vxfabricv1.RemotePort{
		Id: p.GetId(), NetworkId: p.GetNetworkId(), Mac: p.GetMac(), Ip: p.GetIp(), Node: p.GetNode(), Vtep: vtep,
	}
}

// snapshot is node's whole view at the model's revision. Its ports and peers are the model's shared
// messages: the snapshot owns only its slices and network states.
func (m *model) snapshot(node string) *vxfabricv1.SyncResponse {
	resp := &vxfabricv1.SyncResponse{Revision: m.rev, Snapshot: true, GossipKeys: m.keys}
	nets := m.netsOf(node)
	remotes := 0
	for _, id := range nets {
		remotes += len(m.netPorts[id])
	}
	resp.RemotePorts = make([]*vxfabricv1.RemotePort, 0, remotes)
	var peers []string
	for _, id := range nets {
		flood := m.floodList(id)
		for _, f := range flood {
			if f.GetNode() != node {
				peers = append(peers, f.GetNode())
			}
		}
		resp.Networks = append(resp.Networks, m.networkState(node, id, flood))
		firstLocal, firstRemote := len(resp.LocalPorts), len(resp.RemotePorts)
		for pid, p := range m.netPorts[id] {
			if p.GetNode() == node {
				resp.LocalPorts = append(resp.LocalPorts, m.locals[pid])
			} else if r := m.remotes[pid]; r != nil {
				resp.RemotePorts = append(resp.RemotePorts, r)
			}
		}
		slices.SortFunc(resp.LocalPorts[firstLocal:], func(a, b *vxfabricv1.LocalPort) int { return strings.Compare(a.GetId(), b.GetId()) })
		slices.SortFunc(resp.RemotePorts[firstRemote:], func(a, b *vxfabricv1.RemotePort) int { return strings.Compare(a.GetId(), b.GetId()) })
	}
	slices.Sort(peers)
	peers = slices.Compact(peers)
	resp.Peers = make([]*vxfabricv1.Peer, 0, len(peers))
	for _, name := range peers {
		resp.Peers = append(resp.Peers, m.peers[name])
	}
	return resp
}
