package nodeagent

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// The incremental path. The common change is a remote port or a flood entry coming or going in a
// network the kernel already holds, behind a VTEP the underlay filter already accepts. Such a change
// is turned into exactly the kernel entries it adds, replaces or removes (overlay.Delta) instead of a
// full build and Apply of ten thousand entries: its cost follows the change, not the state.
//
// It must program exactly what a full build would: programmed counts, per network, the remote ports
// the last pass put in the kernel per MAC and per IPv4 address, and per VTEP the entries that keep it
// in the underlay filter. A change the counts cannot decide alone falls back to the full pass: a MAC
// or IP held by two ports (the first in id order wins), a VTEP the filter must learn or forget, an
// invalid object, a node whose liveness was never evaluated, and anything but remote ports and flood
// lists (networks, local ports, peers, snapshots). Liveness changes and the periodic pass are full
// passes too (Agent.trigger).

// programmed is what the last full pass put in the kernel, kept current by incremental passes. The
// counts are built from the full pass's networks (built) by the first incremental pass that needs
// them, not by the full pass itself: a run of full passes (a host joining, the periodic pass) pays
// for the counting once, and only when a change comes.
type programmed struct {
	built   []builtNet
	indexed bool
	nets    map[string]*progNet // by network id: the networks of the last full build's state
	vteps   map[netip.Addr]int32
	// remotes and withheld are the metrics' figures.
	remotes, withheld int
	// Scratch space of incremental, kept so that a pass allocates little.
	byNet map[*progNet]*overlay.NetworkDelta
	dvtep map[netip.Addr]int32
	fdb   map[fdbKey]keyChange
	neigh map[neighKey]keyChange
}

type progNet struct {
	vni   uint32
	proxy bool
	macs  map[uint64]int32 // included remote ports per MAC
	ips   map[uint32]int32 // included remote ports per IPv4 address (proxy networks)
}

// pending is what was merged since the last pass: the previous version of every remote port and
// network touched (nil: it did not exist), or full when only a full pass can apply it.
type pending struct {
	full     bool
	remotes  map[string]*remoteEntry
	networks map[string]*networkEntry
}

// reset empties p. Maps that grew (a burst of changes) are replaced rather than cleared: an empty
// map keeps its room, and clearing or ranging over it costs that room on every later pass.
func (p *pending) reset() {
	p.full = false
	if len(p.remotes) > 64 {
		p.remotes = map[string]*remoteEntry{}
	} else {
		clear(p.remotes)
	}
	clear(p.networks)
}

// remote records the version of a remote port the last pass saw (nil: none), unless a full pass is
// due anyway.
func (p *pending) remote(id string, old *remoteEntry) {
	if p.full {
		return
	}
	if _, seen := p.remotes[id]; !seen {
		p.remotes[id] = old
	}
}

func (p *pending) network(id string, old *networkEntry) {
	if old == nil {
		p.full = true // a new network: devices, nftables
	}
	if p.full {
		return
	}
	if _, seen := p.networks[id]; !seen {
		p.networks[id] = old
	}
}

// samePeer tells whether a peer record sent again changes nothing this agent uses.
func samePeer(a, b *vxfabricv1.Peer) bool {
	return a != nil && b != nil && a.GetVtep() == b.GetVtep() && a.GetStatus() == b.GetStatus() && a.GetUnreachable() == b.GetUnreachable()
}

// sameNetwork tells whether two versions of a network differ at most in their flood lists.
func sameNetwork(a, b overlay.Network) bool {
	return a.VNI == b.VNI && a.Mode == b.Mode && a.MTU == b.MTU && a.CIDR == b.CIDR && a.Gateway == b.Gateway &&
		slices.Equal(a.GatewayMAC, b.GatewayMAC) && a.Uplink == b.Uplink
}

// floodList appends to dst the VTEPs of a network's flood entries (sorted by VTEP) that the kernel
// gets: not the local VTEP, not a dead node's, each once.
func floodList(dst []netip.Addr, entries []floodEntry, local netip.Addr) []netip.Addr {
	start := len(dst)
	for _, f := range entries {
		if f.node.down || f.vtep == local || len(dst) > start && dst[len(dst)-1] == f.vtep {
			continue
		}
		dst = append(dst, f.vtep)
	}
	return dst
}

type builtNet struct {
	id string
	n  overlay.Network
}

// index counts what the last full pass programmed, once after it; the maps keep their room from one
// full pass to the next.
func (p *programmed) index() {
	if p.indexed {
		return
	}
	for _, pn := range p.nets {
		clear(pn.macs)
		clear(pn.ips)
		pn.vni = 0
	}
	clear(p.vteps)
	for _, b := range p.built {
		p.record(b.id, b.n)
	}
	for id, pn := range p.nets {
		if pn.vni == 0 {
			delete(p.nets, id) // not programmed this time
		}
	}
	clear(p.built)
	p.built, p.indexed = p.built[:0], true
}

// record counts one network of a full build's state.
func (p *programmed) record(id string, n overlay.Network) {
	pn := p.nets[id]
	if pn == nil {
		pn = &progNet{macs: map[uint64]int32{}, ips: map[uint32]int32{}}
		p.nets[id] = pn
	}
	pn.vni, pn.proxy = n.VNI, n.Proxy()
	for _, r := range n.Remotes {
		pn.macs[overlay.MACKey(r.MAC)]++
		if ip := r.IP.Unmap(); pn.proxy && ip.Is4() {
			pn.ips[overlay.IPv4Key(ip)]++
		}
		p.vteps[r.VTEP.Unmap()]++
	}
	for _, v := range n.Flood {
		p.vteps[v.Unmap()]++
	}
}

type fdbKey struct {
	net *progNet
	mac uint64
}

type neighKey struct {
	net *progNet
	ip  uint32
}

// keyChange is what a pass does to one MAC or IP: the count of included ports changes by delta; before
// and after are the touched ports that held it before and hold it after.
type keyChange struct {
	delta         int32
	before, after *remoteEntry
}

// note counts e leaving (sign -1) or entering (+1) the key.
func (c keyChange) note(e *remoteEntry, sign int32) keyChange {
	c.delta += sign
	if sign < 0 {
		c.before = e
	} else {
		c.after = e
	}
	return c
}

// incremental turns what was merged since the last pass into a delta of kernel entries and records it
// as programmed. ok is false when only a full pass can apply the change; the model is then unchanged
// and the caller runs the full pass (which rebuilds m.prog).
func (m *desiredModel) incremental(local netip.Addr) (d overlay.Delta, remotes, withheld int, ok bool) {
	p := m.prog
	if p == nil || m.pend.full {
		return d, 0, 0, false
	}
	p.index()
	if p.byNet == nil {
		p.byNet, p.dvtep = map[*progNet]*overlay.NetworkDelta{}, map[netip.Addr]int32{}
		p.fdb, p.neigh = map[fdbKey]keyChange{}, map[neighKey]keyChange{}
	}
	byNet, vteps, fdb, neigh := p.byNet, p.dvtep, p.fdb, p.neigh
	clear(byNet)
	clear(vteps)
	clear(fdb)
	clear(neigh)
	nd := func(pn *progNet) *overlay.NetworkDelta {
		x := byNet[pn]
		if x == nil {
			x = &overlay.NetworkDelta{VNI: pn.vni}
			byNet[pn] = x
		}
		return x
	}

	// Flood lists of networks sent again: only the flood entries may differ.
	for id, old := range m.pend.networks {
		cur := m.networks[id]
		pn := p.nets[id]
		if cur == nil || pn == nil || old.err != nil || cur.err != nil || !sameNetwork(old.conv, cur.conv) {
			return d, 0, 0, false
		}
		for _, f := range cur.flood {
			if !f.node.known {
				return d, 0, 0, false
			}
		}
		before, after := floodList(nil, old.flood, local), floodList(nil, cur.flood, local)
		if slices.Equal(before, after) {
			continue
		}
		for _, v := range after {
			if _, found := slices.BinarySearchFunc(before, v, netip.Addr.Compare); !found {
				nd(pn).AddFlood = append(nd(pn).AddFlood, v)
				vteps[v.Unmap()]++
			}
		}
		for _, v := range before {
			if _, found := slices.BinarySearchFunc(after, v, netip.Addr.Compare); !found {
				nd(pn).DelFlood = append(nd(pn).DelFlood, v)
				vteps[v.Unmap()]--
			}
		}
	}

	// Remote ports: what each touched MAC and IP held before and holds after.
	for id, old := range m.pend.remotes {
		for _, side := range [2]struct {
			e    *remoteEntry
			sign int32
		}{{old, -1}, {m.remote[id], 1}} {
			e := side.e
			if e == nil {
				continue
			}
			pn := p.nets[e.network]
			if pn == nil {
				continue // its network is not in the kernel: neither before nor after
			}
			if e.err != nil || !e.node.known {
				return d, 0, 0, false
			}
			if e.node.down {
				withheld += int(side.sign)
				continue
			}
			remotes += int(side.sign)
			vteps[e.port.VTEP.Unmap()] += side.sign
			fk := fdbKey{pn, overlay.MACKey(e.port.MAC)}
			fdb[fk] = fdb[fk].note(e, side.sign)
			if ip := e.port.IP.Unmap(); pn.proxy && ip.Is4() {
				nk := neighKey{pn, overlay.IPv4Key(ip)}
				neigh[nk] = neigh[nk].note(e, side.sign)
			}
		}
	}

	// What only a full pass decides: a key held twice (before or after), a VTEP coming or going.
	for k, c := range fdb {
		if n := k.net.macs[k.mac]; n > 1 || n+c.delta > 1 {
			return d, 0, 0, false
		}
	}
	for k, c := range neigh {
		if n := k.net.ips[k.ip]; n > 1 || n+c.delta > 1 {
			return d, 0, 0, false
		}
	}
	for v, c := range vteps {
		if n := p.vteps[v]; (n == 0) != (n+c == 0) {
			return d, 0, 0, false
		}
	}

	// Decided: record it and say what the kernel must do.
	for k, c := range fdb {
		setCount(k.net.macs, k.mac, c.delta)
		switch {
		case c.after != nil && (c.before == nil || c.before.port.VTEP.Unmap() != c.after.port.VTEP.Unmap()):
			nd(k.net).SetFDB = append(nd(k.net).SetFDB, overlay.FDBEntry{MAC: c.after.port.MAC, VTEP: c.after.port.VTEP})
		case c.after == nil && c.before != nil:
			nd(k.net).DelFDB = append(nd(k.net).DelFDB, overlay.FDBEntry{MAC: c.before.port.MAC, VTEP: c.before.port.VTEP})
		}
	}
	for k, c := range neigh {
		setCount(k.net.ips, k.ip, c.delta)
		switch {
		case c.after != nil && (c.before == nil || !slices.Equal(c.before.port.MAC, c.after.port.MAC)):
			nd(k.net).SetNeigh = append(nd(k.net).SetNeigh, overlay.NeighEntry{IP: c.after.port.IP, MAC: c.after.port.MAC})
		case c.after == nil && c.before != nil:
			nd(k.net).DelNeigh = append(nd(k.net).DelNeigh, overlay.NeighEntry{IP: c.before.port.IP, MAC: c.before.port.MAC})
		}
	}
	for v, c := range vteps {
		setCount(p.vteps, v, c)
	}
	p.remotes += remotes
	p.withheld += withheld
	m.pend.reset()

	for _, x := range byNet {
		sortDelta(x)
		d.Networks = append(d.Networks, *x)
	}
	slices.SortFunc(d.Networks, func(a, b overlay.NetworkDelta) int { return cmp.Compare(a.VNI, b.VNI) })
	return d, p.remotes, p.withheld, true
}

func setCount[K comparable](m map[K]int32, k K, delta int32) {
	if n := m[k] + delta; n != 0 {
		m[k] = n
	} else {
		delete(m, k)
	}
}

// sortDelta orders a network's entries, so that the same change always writes in the same order.
func sortDelta(x *overlay.NetworkDelta) {
	byMAC := func(a, b overlay.FDBEntry) int { return cmp.Compare(overlay.MACKey(a.MAC), overlay.MACKey(b.MAC)) }
	byIP := func(a, b overlay.NeighEntry) int { return a.IP.Compare(b.IP) }
	slices.SortFunc(x.SetFDB, byMAC)
	slices.SortFunc(x.DelFDB, byMAC)
	slices.SortFunc(x.SetNeigh, byIP)
	slices.SortFunc(x.DelNeigh, byIP)
	slices.SortFunc(x.AddFlood, netip.Addr.Compare)
	slices.SortFunc(x.DelFlood, netip.Addr.Compare)
}
