// Package fake is an in-memory overlay.Datapath: a model of one host's kernel that Apply converges
// exactly as the Linux datapath does (same objects, same order, same Result), and that prints its
// whole state as sorted text for golden tests. It is what the node agent's unit tests and the scale
// simulator run on.
//
// It must stay cheap: the simulator holds a thousand of these with ten thousand remote ports each,
// so FDB and neighbour entries are kept as sorted slices of 16-byte records, not as strings or maps.
// It never touches the real kernel.
package fake

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/vxfabric/vxfabric/overlay"
)

// Datapath is the fake. Apply, Close, SetLink and Dump may be called from any goroutine; mu guards
// every field, and Apply holds it for its whole run, so Dump sees the state before or after an Apply,
// never half of one.
type Datapath struct {
	mu     sync.Mutex
	closed bool
	// links are the interfaces that exist outside our control (VM NICs, uplinks), see SetLink.
	links map[string]bool
	nets  map[uint32]*network
	// forwarding is net.ipv4.ip_forward; forwardingOurs records that we turned it on.
	forwarding, forwardingOurs bool
	// tables holds the families of our tables; chains holds rule texts per "family chain", in
	// order; sets holds the address sets' elements, sorted.
	tables map[string]bool
	chains map[string][]string
	sets   map[string][]netip.Addr
	// dropSet records that the port_drops set exists; drops counts in it per port interface the
	// frames port security dropped (see Drop), as the kernel's set does.
	dropSet bool
	drops   map[string]uint64
	// vteps interns VTEP addresses so an FDB record stays 16 bytes.
	vteps    []netip.Addr
	vtepIdx  map[netip.Addr]uint32 // IPv6
	vtepIdx4 map[uint32]uint32
}

type network struct {
	vni       uint32
	mtu       int
	bridgeMAC string // "" lets the kernel choose
	addr      netip.Prefix
	local     netip.Addr
	proxy     bool
	uplink    string
	fdb       []fdbEntry   // sorted by mac
	flood     []netip.Addr // sorted
	neigh     []neighEntry // sorted by ip
	ports     map[string]bool
}

// fdbEntry and neighEntry carry ord, the entry's position in the desired list, in what would be
// padding: sorting by key then ord is a stable sort at the cost of an unstable one (the first of two
// entries with one key wins, as in the Linux datapath, which skips a later listing).
type fdbEntry struct {
	mac  uint64
	vtep uint32
	ord  uint32
}

type neighEntry struct {
	ip  uint32
	ord uint32
	mac uint64
}

var _ overlay.Datapath = (*Datapath)(nil)

// New returns an empty fake host: no links, no networks, forwarding off.
func New() *Datapath {
	return &Datapath{
		links:    make(map[string]bool),
		nets:     make(map[uint32]*network),
		tables:   make(map[string]bool),
		chains:   make(map[string][]string),
		sets:     make(map[string][]netip.Addr),
		drops:    make(map[string]uint64),
		vtepIdx:  make(map[netip.Addr]uint32),
		vtepIdx4: make(map[uint32]uint32),
	}
}

// ErrClosed is returned by Apply after Close.
var ErrClosed = errors.New("fake datapath closed")

// SetLink makes an interface (a VM NIC or an uplink) appear or disappear, as a hypervisor would.
// A disappearing interface leaves its bridge at once, as in the kernel; an appearing one is plugged
// by the next Apply. Its port security chain stays until an Apply deletes it, as from Linux 6.16 on
// (earlier kernels delete it with the interface, and their Apply reports no deletion).
func (d *Datapath) SetLink(name string, present bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if present {
		d.links[name] = true
		return
	}
	delete(d.links, name)
	for _, n := range d.nets {
		delete(n.ports, name)
		if n.uplink == name {
			n.uplink = ""
		}
	}
}

// Close implements overlay.Datapath; the state stays as it is, like the kernel's when a process exits.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// Reopen returns a new Datapath over the same "kernel" state, as a restarted process would find it.
func (d *Datapath) Reopen() *Datapath {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := New()
	for k := range d.links {
		n.links[k] = true
	}
	for vni, nw := range d.nets {
		c := *nw
		c.fdb = slices.Clone(nw.fdb)
		c.flood = slices.Clone(nw.flood)
		c.neigh = slices.Clone(nw.neigh)
		c.ports = make(map[string]bool, len(nw.ports))
		for p := range nw.ports {
			c.ports[p] = true
		}
		n.nets[vni] = &c
	}
	n.forwarding, n.forwardingOurs = d.forwarding, d.forwardingOurs
	for k, v := range d.chains {
		n.chains[k] = slices.Clone(v)
	}
	for k, v := range d.sets {
		n.sets[k] = slices.Clone(v)
	}
	maps.Copy(n.tables, d.tables)
	n.dropSet = d.dropSet
	maps.Copy(n.drops, d.drops)
	n.vteps = slices.Clone(d.vteps)
	maps.Copy(n.vtepIdx, d.vtepIdx)
	maps.Copy(n.vtepIdx4, d.vtepIdx4)
	return n
}

// DeleteDevice removes a device as `ip link del` would (drift), with everything on it.
func (d *Datapath) DeleteDevice(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for vni, n := range d.nets {
		switch name {
		case overlay.BridgeName(vni):
			delete(d.nets, vni)
		case overlay.VxlanName(vni):
			// The model keeps bridge and vxlan together; a missing vxlan loses its tables.
			n.fdb, n.flood, n.neigh, n.local = nil, nil, nil, netip.Addr{}
		}
	}
}

// DeleteFDB removes one unicast FDB entry as `bridge fdb del` would (drift).
func (d *Datapath) DeleteFDB(vni uint32, mac net.HardwareAddr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.nets[vni]
	if n == nil {
		return
	}
	k := overlay.MACKey(mac)
	n.fdb = slices.DeleteFunc(n.fdb, func(e fdbEntry) bool { return e.mac == k })
}

// Apply implements overlay.Datapath.
func (d *Datapath) Apply(ctx context.Context, desired overlay.DesiredState) (overlay.Result, error) {
	if err := ctx.Err(); err != nil {
		return overlay.Result{}, err
	}
	if err := desired.Validate(); err != nil {
		return overlay.Result{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return overlay.Result{}, ErrClosed
	}
	a := &applier{d: d, res: overlay.Result{Plugged: make(map[string]bool)}}
	a.apply(desired)
	errs := make([]error, len(a.res.Errors))
	for i, e := range a.res.Errors {
		errs[i] = e
	}
	return a.res, errors.Join(errs...)
}

// ApplyDelta implements overlay.Datapath: it edits the tables of networks an earlier Apply created,
// entry by entry, reporting exactly what the Linux datapath reports for the same delta.
func (d *Datapath) ApplyDelta(ctx context.Context, delta overlay.Delta) (overlay.Result, error) {
	if err := ctx.Err(); err != nil {
		return overlay.Result{}, err
	}
	if err := delta.Validate(); err != nil {
		return overlay.Result{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return overlay.Result{}, ErrClosed
	}
	nets := make([]*network, len(delta.Networks))
	for i, nd := range delta.Networks {
		n := d.nets[nd.VNI]
		if n == nil || !n.local.IsValid() {
			return overlay.Result{}, fmt.Errorf("vxlan %s: %w", overlay.VxlanName(nd.VNI), overlay.ErrNotProgrammed)
		}
		nets[i] = n
	}
	a := &applier{d: d}
	for i, nd := range delta.Networks {
		n := nets[i]
		for _, e := range nd.SetFDB {
			a.setFDB(n, fdbEntry{mac: overlay.MACKey(e.MAC), vtep: d.intern(e.VTEP.Unmap())})
		}
		for _, v := range nd.AddFlood {
			a.addFlood(n, v.Unmap())
		}
		for _, e := range nd.SetNeigh {
			a.setNeigh(n, neighEntry{ip: overlay.IPv4Key(e.IP), mac: overlay.MACKey(e.MAC)})
		}
	}
	for i, nd := range delta.Networks {
		n := nets[i]
		for _, e := range nd.DelFDB {
			a.delFDB(n, overlay.MACKey(e.MAC), e.VTEP.Unmap())
		}
		for _, v := range nd.DelFlood {
			a.delFlood(n, v.Unmap())
		}
		for _, e := range nd.DelNeigh {
			a.delNeigh(n, overlay.IPv4Key(e.IP))
		}
	}
	return a.res, nil
}

// setFDB writes one unicast entry as NeighSet would: created, or replaced whatever it held.
func (a *applier) setFDB(n *network, e fdbEntry) {
	obj := overlay.FDBObject(n.vni, overlay.MACFromKey(e.mac), a.d.vteps[e.vtep])
	i, found := slices.BinarySearchFunc(n.fdb, e.mac, func(x fdbEntry, k uint64) int { return cmp.Compare(x.mac, k) })
	if found {
		n.fdb[i] = e
		a.change(overlay.OpUpdate, obj)
		return
	}
	n.fdb = slices.Insert(n.fdb, i, e)
	a.change(overlay.OpAdd, obj)
}

// delFDB removes the entry of mac if it points at vtep, as NeighDel with a destination does; like the
// kernel it acknowledges (and reports) the deletion whenever mac has an entry at all.
func (a *applier) delFDB(n *network, mac uint64, vtep netip.Addr) {
	i, found := slices.BinarySearchFunc(n.fdb, mac, func(x fdbEntry, k uint64) int { return cmp.Compare(x.mac, k) })
	if !found {
		return
	}
	if a.d.vteps[n.fdb[i].vtep] == vtep {
		n.fdb = slices.Delete(n.fdb, i, i+1)
	}
	a.change(overlay.OpDelete, overlay.FDBObject(n.vni, overlay.MACFromKey(mac), vtep))
}

// addFlood appends one flood entry; like the kernel it reports every append, even of one that exists
// (which changes nothing).
func (a *applier) addFlood(n *network, v netip.Addr) {
	if i, found := slices.BinarySearchFunc(n.flood, v, netip.Addr.Compare); !found {
		n.flood = slices.Insert(n.flood, i, v)
	}
	a.change(overlay.OpAdd, overlay.FloodObject(n.vni, v))
}

// delFlood removes one flood entry; like the kernel it reports the deletion whenever the all-zero
// entry exists at all (under any destination).
func (a *applier) delFlood(n *network, v netip.Addr) {
	if len(n.flood) == 0 {
		return
	}
	if i, found := slices.BinarySearchFunc(n.flood, v, netip.Addr.Compare); found {
		n.flood = slices.Delete(n.flood, i, i+1)
	}
	a.change(overlay.OpDelete, overlay.FloodObject(n.vni, v))
}

// setNeigh writes one ARP suppression entry: created, or replaced whatever it held.
func (a *applier) setNeigh(n *network, e neighEntry) {
	obj := overlay.NeighObject(n.vni, overlay.IPv4FromKey(e.ip), overlay.MACFromKey(e.mac))
	i, found := slices.BinarySearchFunc(n.neigh, e.ip, func(x neighEntry, k uint32) int { return cmp.Compare(x.ip, k) })
	if found {
		n.neigh[i] = e
		a.change(overlay.OpUpdate, obj)
		return
	}
	n.neigh = slices.Insert(n.neigh, i, e)
	a.change(overlay.OpAdd, obj)
}

// delNeigh removes the entry of ip, whatever MAC it holds (NeighDel by address).
func (a *applier) delNeigh(n *network, ip uint32) {
	i, found := slices.BinarySearchFunc(n.neigh, ip, func(x neighEntry, k uint32) int { return cmp.Compare(x.ip, k) })
	if !found {
		return
	}
	old := n.neigh[i]
	n.neigh = slices.Delete(n.neigh, i, i+1)
	a.change(overlay.OpDelete, overlay.NeighObject(n.vni, overlay.IPv4FromKey(ip), overlay.MACFromKey(old.mac)))
}

type applier struct {
	d   *Datapath
	res overlay.Result
	// holders maps each enslaved uplink to its network, as the kernel showed it before this Apply.
	holders map[string]uint32
}

func (a *applier) change(op overlay.Op, obj string) {
	a.res.Changes = append(a.res.Changes, overlay.Change{Op: op, Object: obj})
}

func (a *applier) fail(obj string, err error) {
	a.res.Errors = append(a.res.Errors, overlay.ObjectError{Object: obj, Err: err})
}

func (a *applier) apply(desired overlay.DesiredState) {
	d := a.d
	if desired.NeedsForwarding() && !d.forwarding {
		d.forwarding, d.forwardingOurs = true, true
		a.change(overlay.OpUpdate, overlay.ForwardingObject+"=1")
	}
	a.holders = make(map[string]uint32)
	for vni, n := range a.d.nets {
		if n.uplink != "" {
			a.holders[n.uplink] = vni
		}
	}
	nft := planNft(desired.WithoutUplinks(func(n overlay.Network) bool {
		return d.links[n.Uplink] && a.uplinkRefusal(desired, n) == nil
	}), d.links)
	a.applyNft(nft, false)

	want := make(map[uint32]bool, len(desired.Networks))
	for _, nd := range desired.Networks {
		want[nd.VNI] = true
		a.applyNetwork(desired, nd)
	}
	// Ports no longer desired anywhere leave our bridges.
	for _, vni := range sortedVNIs(d.nets) {
		n := d.nets[vni]
		for _, p := range sortedKeys(n.ports) {
			if _, wanted := nft.vniOf[p]; !wanted || !want[vni] {
				delete(n.ports, p)
				a.change(overlay.OpDelete, overlay.PortObject(vni, p))
			}
		}
	}
	for _, vni := range sortedVNIs(d.nets) {
		if want[vni] {
			continue
		}
		n := d.nets[vni]
		if n.uplink != "" {
			a.change(overlay.OpDelete, overlay.UplinkObject(vni, n.uplink))
		}
		a.change(overlay.OpDelete, overlay.VxlanObject(vni))
		a.change(overlay.OpDelete, overlay.BridgeObject(vni))
		delete(d.nets, vni)
	}
	a.applyNft(nft, true)
	if !desired.NeedsForwarding() && d.forwarding && d.forwardingOurs {
		d.forwarding, d.forwardingOurs = false, false
		a.change(overlay.OpUpdate, overlay.ForwardingObject+"=0")
	}
}

// uplinkRefusal is overlay.UplinkRefusal as the fake can judge it: it knows no addresses, so only
// the underlay interface's name and "lo" are refused for what they are.
func (a *applier) uplinkRefusal(desired overlay.DesiredState, nd overlay.Network) error {
	return overlay.UplinkRefusal(desired, nd, nd.Uplink == "lo", nil, a.holders[nd.Uplink])
}

func (a *applier) applyNetwork(desired overlay.DesiredState, nd overlay.Network) {
	d := a.d
	n := d.nets[nd.VNI]
	local := desired.Underlay.VTEP
	bridgeMAC := ""
	if nd.HasGateway() {
		bridgeMAC = nd.GatewayMAC.String()
	}
	uplink := ""
	if nd.Mode == overlay.ModeBridged && nd.Uplink != "" {
		refusal := a.uplinkRefusal(desired, nd)
		switch {
		case !d.links[nd.Uplink]:
			a.fail(overlay.UplinkObject(nd.VNI, nd.Uplink), overlay.ErrUplinkMissing)
		case refusal != nil:
			a.fail(overlay.UplinkObject(nd.VNI, nd.Uplink), refusal)
		default:
			uplink = nd.Uplink
			bridgeMAC = "uplink " + nd.Uplink
		}
	}
	if n == nil {
		n = &network{vni: nd.VNI, mtu: nd.MTU, bridgeMAC: bridgeMAC, ports: make(map[string]bool)}
		d.nets[nd.VNI] = n
		a.change(overlay.OpAdd, overlay.BridgeObject(nd.VNI))
	} else if n.mtu != nd.MTU || (bridgeMAC != "" && n.bridgeMAC != bridgeMAC) {
		n.mtu = nd.MTU
		if bridgeMAC != "" {
			n.bridgeMAC = bridgeMAC
		}
		a.change(overlay.OpUpdate, overlay.BridgeObject(nd.VNI))
	}
	if n.local != local || n.proxy != nd.Proxy() {
		if n.local.IsValid() {
			// Incompatible attributes: the kernel cannot change them, the device is recreated.
			a.change(overlay.OpDelete, overlay.VxlanObject(nd.VNI))
			n.fdb, n.flood, n.neigh = nil, nil, nil
		}
		n.local, n.proxy = local, nd.Proxy()
		a.change(overlay.OpAdd, overlay.VxlanObject(nd.VNI))
	}
	var addr netip.Prefix
	if nd.HasGateway() {
		addr = netip.PrefixFrom(nd.Gateway, nd.CIDR.Bits())
	}
	if addr != n.addr {
		if addr.IsValid() {
			a.change(overlay.OpAdd, overlay.AddrObject(nd.VNI, addr))
		}
		if n.addr.IsValid() {
			a.change(overlay.OpDelete, overlay.AddrObject(nd.VNI, n.addr))
		}
		n.addr = addr
	}
	if n.uplink != "" && n.uplink != uplink && d.links[n.uplink] {
		a.change(overlay.OpDelete, overlay.UplinkObject(nd.VNI, n.uplink))
		n.uplink = ""
	}
	if uplink != "" && n.uplink != uplink {
		n.uplink = uplink
		a.change(overlay.OpAdd, overlay.UplinkObject(nd.VNI, uplink))
	}
	a.applyFDB(n, nd)
	a.applyFlood(n, nd)
	a.applyNeigh(n, nd)
	for _, p := range nd.Ports {
		if !d.links[p.Interface] {
			continue
		}
		for _, other := range d.nets {
			if other != n && other.ports[p.Interface] {
				delete(other.ports, p.Interface)
			}
		}
		if !n.ports[p.Interface] {
			n.ports[p.Interface] = true
			a.change(overlay.OpAdd, overlay.PortObject(nd.VNI, p.Interface))
		}
		a.res.Plugged[p.Interface] = true
	}
}

func (a *applier) applyFDB(n *network, nd overlay.Network) {
	want := make([]fdbEntry, 0, len(nd.Remotes))
	for i, r := range nd.Remotes {
		want = append(want, fdbEntry{mac: overlay.MACKey(r.MAC), vtep: a.d.intern(r.VTEP.Unmap()), ord: uint32(i)})
	}
	cmpFDB := func(x, y fdbEntry) int { return cmp.Or(cmp.Compare(x.mac, y.mac), cmp.Compare(x.ord, y.ord)) }
	if !slices.IsSortedFunc(want, cmpFDB) {
		slices.SortFunc(want, cmpFDB)
	}
	want = slices.CompactFunc(want, func(x, y fdbEntry) bool { return x.mac == y.mac })
	var dels []fdbEntry
	i, j := 0, 0
	for i < len(n.fdb) || j < len(want) {
		switch {
		case j == len(want) || (i < len(n.fdb) && n.fdb[i].mac < want[j].mac):
			dels = append(dels, n.fdb[i])
			i++
		case i == len(n.fdb) || want[j].mac < n.fdb[i].mac:
			a.change(overlay.OpAdd, overlay.FDBObject(n.vni, overlay.MACFromKey(want[j].mac), a.d.vteps[want[j].vtep]))
			j++
		default:
			if n.fdb[i].vtep != want[j].vtep {
				a.change(overlay.OpUpdate, overlay.FDBObject(n.vni, overlay.MACFromKey(want[j].mac), a.d.vteps[want[j].vtep]))
			}
			i++
			j++
		}
	}
	for _, e := range dels {
		a.change(overlay.OpDelete, overlay.FDBObject(n.vni, overlay.MACFromKey(e.mac), a.d.vteps[e.vtep]))
	}
	n.fdb = want
}

func (a *applier) applyFlood(n *network, nd overlay.Network) {
	want := make([]netip.Addr, 0, len(nd.Flood))
	for _, v := range nd.Flood {
		want = append(want, v.Unmap())
	}
	if !slices.IsSortedFunc(want, netip.Addr.Compare) { // the agent sends it sorted
		slices.SortFunc(want, netip.Addr.Compare)
	}
	want = slices.Compact(want)
	if slices.Equal(want, n.flood) {
		return
	}
	for _, v := range want {
		if _, ok := slices.BinarySearchFunc(n.flood, v, netip.Addr.Compare); !ok {
			a.change(overlay.OpAdd, overlay.FloodObject(n.vni, v))
		}
	}
	for _, v := range n.flood {
		if _, ok := slices.BinarySearchFunc(want, v, netip.Addr.Compare); !ok {
			a.change(overlay.OpDelete, overlay.FloodObject(n.vni, v))
		}
	}
	n.flood = want
}

func (a *applier) applyNeigh(n *network, nd overlay.Network) {
	var want []neighEntry
	if nd.Proxy() {
		want = make([]neighEntry, 0, len(nd.Remotes))
		for i, r := range nd.Remotes {
			if ip := r.IP.Unmap(); ip.Is4() {
				want = append(want, neighEntry{ip: overlay.IPv4Key(ip), ord: uint32(i), mac: overlay.MACKey(r.MAC)})
			}
		}
	}
	cmpN := func(x, y neighEntry) int { return cmp.Or(cmp.Compare(x.ip, y.ip), cmp.Compare(x.ord, y.ord)) }
	if !slices.IsSortedFunc(want, cmpN) {
		slices.SortFunc(want, cmpN)
	}
	want = slices.CompactFunc(want, func(x, y neighEntry) bool { return x.ip == y.ip })
	var dels []neighEntry
	i, j := 0, 0
	for i < len(n.neigh) || j < len(want) {
		switch {
		case j == len(want) || (i < len(n.neigh) && n.neigh[i].ip < want[j].ip):
			dels = append(dels, n.neigh[i])
			i++
		case i == len(n.neigh) || want[j].ip < n.neigh[i].ip:
			a.change(overlay.OpAdd, overlay.NeighObject(n.vni, overlay.IPv4FromKey(want[j].ip), overlay.MACFromKey(want[j].mac)))
			j++
		default:
			if n.neigh[i].mac != want[j].mac {
				a.change(overlay.OpUpdate, overlay.NeighObject(n.vni, overlay.IPv4FromKey(want[j].ip), overlay.MACFromKey(want[j].mac)))
			}
			i++
			j++
		}
	}
	for _, e := range dels {
		a.change(overlay.OpDelete, overlay.NeighObject(n.vni, overlay.IPv4FromKey(e.ip), overlay.MACFromKey(e.mac)))
	}
	n.neigh = want
}

// nftWant is the nftables state a desired state asks for, computed once per Apply.
type nftWant struct {
	plan   []overlay.NftChain
	sets   map[string][]netip.Addr
	chains map[string][]string // rule texts per "family chain"
	ports  []string            // the interfaces of the port chains, sorted
	vniOf  map[string]uint32   // the network of each port, by interface
}

// planNft plans as the Linux datapath does: a port's chain once its interface exists (links).
func planNft(desired overlay.DesiredState, links map[string]bool) nftWant {
	plan := overlay.PortChains(overlay.NftPlan(desired), func(iface string) bool { return links[iface] })
	w := nftWant{plan: plan, sets: map[string][]netip.Addr{}, chains: map[string][]string{}, ports: overlay.PortIfaces(plan),
		vniOf: desired.PortVNIs()}
	if len(w.plan) > 0 {
		w.sets = overlay.NftSets(desired)
		for _, name := range overlay.NftSetNames {
			w.sets[name] = w.sets[name] // every set exists while the plan does, empty or not
		}
	}
	for _, c := range w.plan {
		var texts []string
		for _, r := range c.Rules {
			texts = append(texts, r.String())
		}
		w.chains[c.Family+" "+c.Name] = texts
	}
	return w
}

// families are those of our tables, in the order the Linux datapath makes them.
var families = []string{"inet", "bridge", "netdev"}

// applyNft adds what is missing (deletes=false) or removes what is stale (deletes=true), so that
// like the Linux datapath every rule is in place before any old one goes.
func (a *applier) applyNft(w nftWant, deletes bool) {
	d := a.d
	plan, wantSets, wantChains := w.plan, w.sets, w.chains
	_, wantDrops := wantChains["netdev "+overlay.PortDropChain]
	if !deletes {
		for _, fam := range families {
			if len(plan) > 0 && !d.tables[fam] {
				d.tables[fam] = true
				a.change(overlay.OpAdd, overlay.TableObject(fam))
			}
		}
		// As the Linux datapath: the chain of a port about to be plugged is made anew.
		for _, c := range plan {
			key := c.Family + " " + c.Name
			if _, ok := d.chains[key]; ok && c.Device != "" {
				if n := d.nets[w.vniOf[c.Device]]; n == nil || !n.ports[c.Device] {
					delete(d.chains, key)
					a.change(overlay.OpDelete, overlay.ChainObject(c.Family, c.Name))
				}
			}
		}
		for _, c := range plan {
			key := c.Family + " " + c.Name
			have, ok := d.chains[key]
			if !ok {
				a.change(overlay.OpAdd, overlay.ChainObject(c.Family, c.Name))
			}
			merged, added := mergeRules(have, wantChains[key])
			for _, r := range added {
				a.change(overlay.OpAdd, overlay.RuleObject(c.Family, c.Name, r))
			}
			d.chains[key] = merged
		}
		for _, name := range overlay.NftSetNames {
			if want, ok := wantSets[name]; ok {
				d.sets[name] = addMissing(d.sets[name], want, netip.Addr.Compare,
					func(v netip.Addr) { a.change(overlay.OpAdd, overlay.SetElemObject(name, v)) })
			}
		}
		d.dropSet = d.dropSet || wantDrops
		return
	}
	if len(plan) == 0 {
		for _, fam := range families {
			if d.tables[fam] {
				a.change(overlay.OpDelete, overlay.TableObject(fam))
			}
		}
		clear(d.tables)
		clear(d.chains)
		clear(d.sets)
		clear(d.drops)
		d.dropSet = false
		return
	}
	var stale []string
	for _, key := range sortedKeys(d.chains) {
		want, ok := wantChains[key]
		if !ok {
			stale = append(stale, key)
			continue
		}
		fam, chain, _ := strings.Cut(key, " ")
		have := d.chains[key]
		matched := matchRules(have, want)
		for k, r := range have {
			if !matched[k] {
				a.change(overlay.OpDelete, overlay.RuleObject(fam, chain, r))
			}
		}
		d.chains[key] = slices.Clone(want)
	}
	for _, name := range sortedKeys(d.sets) {
		d.sets[name] = dropStale(d.sets[name], wantSets[name], netip.Addr.Compare,
			func(v netip.Addr) { a.change(overlay.OpDelete, overlay.SetElemObject(name, v)) })
	}
	if wantDrops {
		for _, iface := range sortedKeys(d.drops) {
			if _, ok := slices.BinarySearch(w.ports, iface); !ok {
				delete(d.drops, iface)
				a.change(overlay.OpDelete, overlay.PortDropElemObject(iface))
			}
		}
	}
	// A chain goes with its rules.
	for _, key := range stale {
		fam, chain, _ := strings.Cut(key, " ")
		a.change(overlay.OpDelete, overlay.ChainObject(fam, chain))
		delete(d.chains, key)
	}
	if d.dropSet && !wantDrops {
		a.change(overlay.OpDelete, overlay.SetObject("netdev", overlay.PortDropSet))
		clear(d.drops)
		d.dropSet = false
	}
}

// Drop stands for n frames from interface iface that port security dropped: they are counted when
// iface is a secured local port, as the kernel's rules would.
func (d *Datapath) Drop(iface string, n uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.chains["netdev "+overlay.PortChain(iface)]; ok {
		d.drops[iface] += n
	}
}

var _ overlay.DropCounter = (*Datapath)(nil)

// PortDrops implements overlay.DropCounter.
func (d *Datapath) PortDrops(context.Context) (map[string]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	return maps.Clone(d.drops), nil
}

// addMissing returns the union of two sorted sets without duplicates, reporting each element of
// want that have lacks.
func addMissing[T any](have, want []T, cmp func(T, T) int, added func(T)) []T {
	if slices.EqualFunc(have, want, func(a, b T) bool { return cmp(a, b) == 0 }) {
		return have // the common case: nothing to add, and comparing is cheaper than searching
	}
	missing := 0
	for _, v := range want {
		if _, found := slices.BinarySearchFunc(have, v, cmp); !found {
			added(v)
			missing++
		}
	}
	if missing == 0 {
		return have
	}
	union := append(slices.Clone(have), want...)
	slices.SortFunc(union, cmp)
	return slices.CompactFunc(union, func(a, b T) bool { return cmp(a, b) == 0 })
}

// dropStale returns the elements of the sorted set have that the sorted set want holds, reporting
// each one it drops. After addMissing have is a superset of want: equal lengths mean nothing stale.
func dropStale[T any](have, want []T, cmp func(T, T) int, dropped func(T)) []T {
	if want != nil && len(want) == len(have) {
		return have
	}
	var kept []T
	for _, v := range have {
		if _, found := slices.BinarySearchFunc(want, v, cmp); found {
			kept = append(kept, v)
		} else {
			dropped(v)
		}
	}
	return kept
}

// mergeRules inserts the wanted rules that are missing into have, each at its place relative to the
// kept ones (as the Linux datapath does with rule positions), and returns the result and the added
// rules. Stale rules stay until the delete pass.
func mergeRules(have, want []string) (merged, added []string) {
	// Greedy: walk want, keep the first match in have at or after the cursor.
	pos := make([]int, len(want)) // index in have, or -1
	cur := 0
	for i, w := range want {
		pos[i] = -1
		for k := cur; k < len(have); k++ {
			if have[k] == w {
				pos[i], cur = k, k+1
				break
			}
		}
	}
	merged = slices.Clone(have)
	// Insert from the back so earlier indices stay valid: a missing rule goes before the next kept one.
	next := len(have)
	for i := len(want) - 1; i >= 0; i-- {
		if pos[i] >= 0 {
			next = pos[i]
			continue
		}
		merged = slices.Insert(merged, next, want[i])
	}
	for i, w := range want {
		if pos[i] < 0 {
			added = append(added, w)
		}
	}
	return merged, added
}

// matchRules marks the rules of have that form the leftmost occurrence of want as a subsequence.
func matchRules(have, want []string) []bool {
	matched := make([]bool, len(have))
	k := 0
	for _, w := range want {
		for k < len(have) && have[k] != w {
			k++
		}
		if k == len(have) {
			break
		}
		matched[k] = true
		k++
	}
	return matched
}

func (d *Datapath) intern(a netip.Addr) uint32 {
	if a.Is4() {
		// Ten thousand lookups per Apply: a 4-byte key hashes far quicker than a netip.Addr.
		b := a.As4()
		k := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		if i, ok := d.vtepIdx4[k]; ok {
			return i
		}
		i := uint32(len(d.vteps))
		d.vteps = append(d.vteps, a)
		d.vtepIdx4[k] = i
		return i
	}
	if i, ok := d.vtepIdx[a]; ok {
		return i
	}
	i := uint32(len(d.vteps))
	d.vteps = append(d.vteps, a)
	d.vtepIdx[a] = i
	return i
}

// Dump prints the whole state as sorted lines: devices, addresses, FDB, flood and neighbour entries,
// plugged ports, nftables rules (numbered in chain order) and set elements, and the forwarding switch.
func (d *Datapath) Dump() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	if d.forwarding {
		owner := "someone else"
		if d.forwardingOurs {
			owner = "vxfabric"
		}
		add("%s=1 set by %s", overlay.ForwardingObject, owner)
	}
	for _, n := range d.nets {
		mac := n.bridgeMAC
		if mac == "" {
			mac = "kernel"
		}
		add("link %s bridge mtu %d addr %s up", overlay.BridgeName(n.vni), n.mtu, mac)
		if n.local.IsValid() {
			proxy := ""
			if n.proxy {
				proxy = " proxy"
			}
			add("link %s vxlan id %d local %s dstport %d nolearning%s mtu %d master %s up",
				overlay.VxlanName(n.vni), n.vni, n.local, overlay.VXLANPort, proxy, n.mtu, overlay.BridgeName(n.vni))
		}
		if n.addr.IsValid() {
			add("%s", overlay.AddrObject(n.vni, n.addr))
		}
		if n.uplink != "" {
			add("%s", overlay.UplinkObject(n.vni, n.uplink))
		}
		for _, e := range n.fdb {
			add("%s", overlay.FDBObject(n.vni, overlay.MACFromKey(e.mac), d.vteps[e.vtep]))
		}
		for _, v := range n.flood {
			add("%s", overlay.FloodObject(n.vni, v))
		}
		for _, e := range n.neigh {
			add("%s", overlay.NeighObject(n.vni, overlay.IPv4FromKey(e.ip), overlay.MACFromKey(e.mac)))
		}
		for p := range n.ports {
			add("%s mtu %d", overlay.PortObject(n.vni, p), n.mtu)
		}
	}
	for key, rules := range d.chains {
		fam, chain, _ := strings.Cut(key, " ")
		add("%s", overlay.ChainObject(fam, chain))
		for i, r := range rules {
			add("nft rule %s %s %s %02d %s", fam, overlay.TableName, chain, i, r)
		}
	}
	for name, elems := range d.sets {
		for _, v := range elems {
			add("%s", overlay.SetElemObject(name, v))
		}
	}
	for iface := range d.drops {
		add("%s", overlay.PortDropElemObject(iface))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

func sortedVNIs(m map[uint32]*network) []uint32 {
	out := make([]uint32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
