package fanout

import (
	"log/slog"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// delta is a set of changes to one node's view, keyed by id: a nil value is a removal. Applying two deltas
// in turn equals applying their merge, which is what lets a subscriber coalesce a backlog.
type delta struct {
	networks map[string]*vxfabricv1.NetworkState
	local    map[string]*vxfabricv1.LocalPort
	remote   map[string]*vxfabricv1.RemotePort
	peers    map[string]*vxfabricv1.Peer
	keys     *vxfabricv1.GossipKeys // the new gossip keyring; nil: unchanged
}

// newDelta returns an empty delta; its maps are allocated on first write (most deltas touch one kind).
func newDelta() *delta { return &delta{} }

func (d *delta) setNetwork(id string, v *vxfabricv1.NetworkState) {
	if d.networks == nil {
		d.networks = map[string]*vxfabricv1.NetworkState{}
	}
	d.networks[id] = v
}

func (d *delta) setLocal(id string, v *vxfabricv1.LocalPort) {
	if d.local == nil {
		d.local = map[string]*vxfabricv1.LocalPort{}
	}
	d.local[id] = v
}

func (d *delta) setRemote(id string, v *vxfabricv1.RemotePort) {
	if d.remote == nil {
		d.remote = map[string]*vxfabricv1.RemotePort{}
	}
	d.remote[id] = v
}

func (d *delta) setPeer(name string, v *vxfabricv1.Peer) {
	if d.peers == nil {
		d.peers = map[string]*vxfabricv1.Peer{}
	}
	d.peers[name] = v
}

func (d *delta) size() int {
	n := len(d.networks) + len(d.local) + len(d.remote) + len(d.peers)
	if d.keys != nil {
		n++
	}
	return n
}

// merge applies o on top of d. The values are shared, never modified: they are read-only once built.
func (d *delta) merge(o *delta) {
	for k, v := range o.networks {
		d.setNetwork(k, v)
	}
	for k, v := range o.local {
		d.setLocal(k, v)
	}
	for k, v := range o.remote {
		d.setRemote(k, v)
	}
	for k, v := range o.peers {
		d.setPeer(k, v)
	}
	if o.keys != nil {
		d.keys = o.keys
	}
}

// message renders d as a SyncResponse, ids sorted so that the output is deterministic.
func (d *delta) message(rev int64) *vxfabricv1.SyncResponse {
	resp := &vxfabricv1.SyncResponse{Revision: rev, GossipKeys: d.keys}
	for _, id := range sortedKeys(d.networks) {
		if v := d.networks[id]; v != nil {
			resp.Networks = append(resp.Networks, v)
		} else {
			resp.RemovedNetworkIds = append(resp.RemovedNetworkIds, id)
		}
	}
	for _, id := range sortedKeys(d.local) {
		if v := d.local[id]; v != nil {
			resp.LocalPorts = append(resp.LocalPorts, v)
		} else {
			resp.RemovedLocalPortIds = append(resp.RemovedLocalPortIds, id)
		}
	}
	for _, id := range sortedKeys(d.remote) {
		if v := d.remote[id]; v != nil {
			resp.RemotePorts = append(resp.RemotePorts, v)
		} else {
			resp.RemovedRemotePortIds = append(resp.RemovedRemotePortIds, id)
		}
	}
	for _, name := range sortedKeys(d.peers) {
		if v := d.peers[name]; v != nil {
			resp.Peers = append(resp.Peers, v)
		} else {
			resp.RemovedPeers = append(resp.RemovedPeers, name)
		}
	}
	return resp
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// batch applies one watch response to the model and works out, for each node whose view it changes, the
// delta of that view. Only nodes with a subscriber get a delta built; the others are only marked touched
// (their desired revision advances). Work is proportional to the nodes and ports a change reaches, never
// to the size of a whole view, except when a node joins or leaves a network.
//
// Network upserts are not built per event: a network is marked dirty for a node, and its state (flood
// list included) is built once per batch in finish, so a burst of joins costs one flood list per node.
// Peers likewise: an event that may change whether node B is in node A's view, or B's record, marks the
// pair (A, B) for a recheck, and finish sends A either B's record or B's removal as the final model
// says. A recheck of a pair that did not change resends what A has, which is harmless; the events that
// can change a pair are: a node starting or stopping to take part in a network (pairs with that
// network's other participants, both ways), and a node's VTEP or status changing (pairs with every
// node that shares a network with it).
type batch struct {
	m         *model
	log       *slog.Logger
	connected func(node string) bool
	deltas    map[string]*delta
	touched   map[string]bool
	dirty     map[string]map[string]bool // node -> network ids whose NetworkState must be rebuilt
	peerCheck map[string]map[string]bool // node -> peers whose presence and record must be resent
	// loading: a full load fills the model only; nobody is subscribed to a model being built.
	loading bool
	// keysChanged: the gossip keyring changed, which every node's view holds (Hub.applyEvents).
	keysChanged bool
}

// newBatch starts a batch; hint is the number of subscribed nodes, to size the maps once.
func newBatch(m *model, log *slog.Logger, connected func(string) bool, hint int) *batch {
	return &batch{
		m: m, log: log, connected: connected,
		deltas:  make(map[string]*delta, hint),
		touched: make(map[string]bool, hint),
		dirty:   map[string]map[string]bool{},
	}
}

// recheckPeer marks whether peer is in viewer's view, and with which record, to be resent in finish.
func (b *batch) recheckPeer(viewer, peer string) {
	if viewer == peer || b.touch(viewer) == nil {
		return
	}
	if b.peerCheck == nil {
		b.peerCheck = map[string]map[string]bool{}
	}
	if b.peerCheck[viewer] == nil {
		b.peerCheck[viewer] = map[string]bool{}
	}
	b.peerCheck[viewer][peer] = true
}

// recheckPair marks (x, y) both ways after a change of participation. Node records do not change with
// participation, so a node without one (no VTEP) is nobody's peer before or after and is skipped.
func (b *batch) recheckPair(x, y string) {
	if b.m.peers[y] != nil {
		b.recheckPeer(x, y)
	}
	if b.m.peers[x] != nil {
		b.recheckPeer(y, x)
	}
}

// recheckPeers marks the pairs of node with every participant of network id: node just started or
// stopped taking part in it.
func (b *batch) recheckPeers(node, id string) {
	b.m.forParticipants(id, func(other string) { b.recheckPair(node, other) })
}

// touch marks node's view changed and returns its delta, or nil when nobody is subscribed for it.
func (b *batch) touch(node string) *delta {
	b.touched[node] = true
	if !b.connected(node) {
		return nil
	}
	d := b.deltas[node]
	if d == nil {
		d = newDelta()
		b.deltas[node] = d
	}
	return d
}

func (b *batch) markNetwork(node, id string) {
	if b.touch(node) == nil {
		return
	}
	if b.dirty[node] == nil {
		b.dirty[node] = map[string]bool{}
	}
	b.dirty[node][id] = true
}

// items returns what port p is in node's view under the current model: a local port, a remote port, or
// nothing (p nil, its network not on node, or its node without a VTEP yet). The values are the model's
// shared messages, the same for every viewer.
func (b *batch) items(node string, p *vxfabricv1.Port) (*vxfabricv1.LocalPort, *vxfabricv1.RemotePort) {
	if p == nil || !b.m.takesPart(node, p.GetNetworkId()) {
		return nil, nil
	}
	if p.GetNode() == node {
		return b.m.locals[p.GetId()], nil
	}
	return nil, b.m.remotes[p.GetId()]
}

// addNetwork puts network id and all of its ports into node's view (node just started taking part).
func (b *batch) addNetwork(node, id string) {
	b.markNetwork(node, id)
	d := b.deltas[node]
	if d == nil {
		return
	}
	for _, p := range b.m.netPorts[id] {
		l, r := b.items(node, p)
		if l != nil {
			d.setLocal(p.GetId(), l)
		}
		if r != nil {
			d.setRemote(p.GetId(), r)
		}
	}
}

// removeNetwork takes network id out of node's view, with every port of it by explicit removal, so an
// agent need not infer which ports went with the network. gone is a port that left the network in the
// same event (it is no longer in the model's index).
func (b *batch) removeNetwork(node, id string, gone *vxfabricv1.Port) {
	b.markNetwork(node, id)
	d := b.deltas[node]
	if d == nil {
		return
	}
	remove := func(p *vxfabricv1.Port) {
		if p.GetNode() == node {
			d.setLocal(p.GetId(), nil)
		} else {
			d.setRemote(p.GetId(), nil)
		}
	}
	for _, p := range b.m.netPorts[id] {
		remove(p)
	}
	if gone != nil && gone.GetNetworkId() == id {
		remove(gone)
	}
}

// apply routes one event to the model and the deltas.
func (b *batch) apply(ev event) {
	if ev.rev > b.m.rev {
		b.m.rev = ev.rev
	}
	kind, id, ok := keyKind(ev.key)
	if !ok {
		return
	}
	switch kind {
	case store.GossipKeyring:
		b.m.keys = nil
		if k, ok := decode(b.log, ev, &vxfabricv1.GossipKeyring{}); ok {
			b.m.keys = &vxfabricv1.GossipKeys{Keys: k.GetKeys(), Revision: ev.rev}
		}
		b.keysChanged = true
	case "networks/":
		n, ok := decode(b.log, ev, &vxfabricv1.Network{})
		if ok && n.GetId() == "" {
			n.Id = id
		}
		b.network(id, n, ok)
	case "ports/":
		p, ok := decode(b.log, ev, &vxfabricv1.Port{})
		if ok && p.GetId() == "" {
			p.Id = id
		}
		b.port(id, p, ok)
	case "nodes/":
		n, ok := decode(b.log, ev, &vxfabricv1.Node{})
		if ok && n.GetName() == "" {
			n.Name = id
		}
		b.node(id, n, ok)
	case "status/ports/":
		if ev.deleted {
			delete(b.m.plugged, id)
		} else {
			b.m.plugged[id] = true
		}
	}
}

func (b *batch) network(id string, next *vxfabricv1.Network, ok bool) {
	m := b.m
	prev := m.networks[id]
	if !ok {
		next = nil
	}
	if b.loading {
		if next != nil {
			m.putNetwork(next)
		}
		return
	}
	if prev == nil && next == nil || prev != nil && next != nil && proto.Equal(prev, next) {
		return
	}
	before := m.participants(id)
	if next != nil {
		m.putNetwork(next)
	} else {
		m.deleteNetwork(id)
	}
	after := m.participants(id)
	for node := range before {
		if !after[node] {
			b.removeNetwork(node, id, nil)
			// The network is gone from node: re-evaluate the pairs it may have carried.
			for other := range before {
				b.recheckPair(node, other)
			}
		}
	}
	for node := range after {
		if before[node] {
			b.markNetwork(node, id)
		} else {
			b.addNetwork(node, id)
			b.recheckPeers(node, id)
		}
	}
}

func (b *batch) port(id string, next *vxfabricv1.Port, ok bool) {
	m := b.m
	prev := m.ports[id]
	if !ok {
		next = nil
	}
	if b.loading {
		if next != nil {
			m.putPort(next)
		}
		return
	}
	if prev == nil && next == nil || prev != nil && next != nil && proto.Equal(prev, next) {
		return
	}
	// Only the port's old and new node can start or stop taking part in its old or new network.
	type place struct{ node, net string }
	var places []place
	if prev != nil {
		places = append(places, place{prev.GetNode(), prev.GetNetworkId()})
	}
	if next != nil {
		places = append(places, place{next.GetNode(), next.GetNetworkId()})
	}
	was := make([]bool, len(places))
	for i, pl := range places {
		was[i] = m.takesPart(pl.node, pl.net)
	}
	wasIn := func(node, net string) bool {
		for i, pl := range places {
			if pl.node == node && pl.net == net {
				return was[i]
			}
		}
		return m.takesPart(node, net)
	}
	var prevVtep string
	if prev != nil {
		prevVtep = m.vtep(prev.GetNode())
	}

	if next != nil {
		m.putPort(next)
	} else {
		m.deletePort(id)
	}

	// Membership changes: whole networks in or out, and flood lists of the others.
	viewers := make(map[string]bool, len(m.netNodes[places[0].net])+2)
	for i, pl := range places {
		now := m.takesPart(pl.node, pl.net)
		if was[i] {
			viewers[pl.node] = true
		}
		if was[i] == now {
			continue
		}
		if now {
			b.addNetwork(pl.node, pl.net)
		} else {
			b.removeNetwork(pl.node, pl.net, prev)
		}
		b.recheckPeers(pl.node, pl.net)
		if m.vtep(pl.node) != "" {
			m.forParticipants(pl.net, func(node string) {
				if node != pl.node {
					b.markNetwork(node, pl.net)
				}
			})
		}
	}
	// The port's own entry, on every node that sees (or saw) its network.
	var nets []string
	if prev != nil {
		nets = append(nets, prev.GetNetworkId())
	}
	if next != nil && (prev == nil || next.GetNetworkId() != prev.GetNetworkId()) {
		nets = append(nets, next.GetNetworkId())
	}
	for _, net := range nets {
		m.forParticipants(net, func(node string) { viewers[node] = true })
	}
	for node := range viewers {
		var hadLocal, hadRemote bool
		if prev != nil && wasIn(node, prev.GetNetworkId()) {
			hadLocal = prev.GetNode() == node
			hadRemote = !hadLocal && prevVtep != ""
		}
		l, r := b.items(node, next)
		if l == nil && r == nil && !hadLocal && !hadRemote {
			continue
		}
		d := b.touch(node)
		if d == nil {
			continue
		}
		if l != nil {
			d.setLocal(id, l)
		} else if hadLocal {
			d.setLocal(id, nil)
		}
		if r != nil {
			d.setRemote(id, r)
		} else if hadRemote {
			d.setRemote(id, nil)
		}
	}
}

func (b *batch) node(name string, next *vxfabricv1.Node, ok bool) {
	m := b.m
	prevVtep, prevPeer := m.vtep(name), m.peers[name]
	if !ok {
		next = nil
	}
	m.putNode(name, next)
	if b.loading {
		return
	}
	if m.peers[name] != prevPeer {
		// Its VTEP or status changed (version and last change do not shape any view): every node
		// sharing a network with it gets its new record, or its removal.
		for _, net := range m.netsOf(name) {
			m.forParticipants(net, func(node string) { b.recheckPeer(node, name) })
		}
	}
	if prevVtep == m.vtep(name) {
		return
	}
	for _, net := range m.netsOf(name) {
		m.forParticipants(net, func(node string) {
			if node == name {
				return
			}
			b.markNetwork(node, net)
			d := b.deltas[node]
			if d == nil {
				return
			}
			for pid, p := range m.nodePorts[name] {
				if p.GetNetworkId() != net {
					continue
				}
				if _, r := b.items(node, p); r != nil {
					d.setRemote(pid, r)
				} else {
					d.setRemote(pid, nil)
				}
			}
		})
	}
}

// finish builds the network states marked dirty; it returns the deltas of subscribed nodes and the set of
// every node whose view changed.
func (b *batch) finish() (map[string]*delta, map[string]bool) {
	floods := map[string][]*vxfabricv1.FloodEntry{}
	for node, ids := range b.dirty {
		d := b.deltas[node]
		for id := range ids {
			if !b.m.takesPart(node, id) {
				d.setNetwork(id, nil)
				continue
			}
			flood, ok := floods[id]
			if !ok {
				flood = b.m.floodList(id)
				floods[id] = flood
			}
			d.setNetwork(id, b.m.networkState(node, id, flood))
		}
	}
	for viewer, peers := range b.peerCheck {
		d := b.deltas[viewer]
		for peer := range peers {
			if b.m.isPeer(viewer, peer) {
				d.setPeer(peer, b.m.peers[peer])
			} else {
				d.setPeer(peer, nil)
			}
		}
	}
	for node, d := range b.deltas {
		if d.size() == 0 {
			delete(b.deltas, node)
		}
	}
	return b.deltas, b.touched
}
