//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/overlay"
)

// linkGroupBase | vni is the link group of a network's bridge and vxlan device, so that removing a
// network is one group delete (cheaper on the rtnl lock than two single deletes). 0x76 is "v".
const linkGroupBase = 0x76000000

// uplinkAliasPrefix starts a bridged network's bridge alias; the rest is the uplink's name, which
// a later process needs to give the uplink its addresses back when the network goes away.
const uplinkAliasPrefix = "vxfabric uplink="

// run is one Apply: the kernel state it read and what it did.
type run struct {
	d       *Datapath
	ctx     context.Context
	desired overlay.DesiredState
	res     overlay.Result

	links map[string]netlink.Link
	nft   nftRun
	// refused holds the bridged networks whose uplink stays out of their bridge (UplinkRefusal),
	// with the reason; decided before any network is touched.
	refused map[uint32]error
	// unguarded tells why the nftables rules are not all in place (nil: they are): then no port is
	// newly plugged and forwarding is not turned on, so that nothing goes unchecked.
	unguarded error
	// keepForwardingMark: forwardingOff failed, so the inet table (with ForwardingMarkChain) stays
	// even with nothing else in it, for a later Apply to try again.
	keepForwardingMark bool
	// underlay is hostUnderlay's answer, read once per Apply (routesRead); routesErr is why the
	// host's routes could not be read.
	underlay   []overlay.UnderlayRoute
	routesRead bool
	routesErr  error
	// vtepHeld: an address of the host is the VTEP (hostUnderlay reads the addresses).
	vtepHeld bool
}

func (r *run) change(op overlay.Op, obj string) {
	r.res.Changes = append(r.res.Changes, overlay.Change{Op: op, Object: obj})
}

func (r *run) fail(obj string, err error) {
	r.res.Errors = append(r.res.Errors, overlay.ObjectError{Object: obj, Err: err})
}

// apply converges in this order: nftables additions (port security is in place before a port is
// plugged, the VTEP set before the FDB points at a VTEP), forwarding, each network's devices and
// entries, then the deletions: ports released, networks removed, stale rules, forwarding off.
func (r *run) apply() error {
	if err := r.readLinks(); err != nil {
		return err
	}
	if err := r.checkUplinks(); err != nil {
		return err
	}
	before := len(r.res.Errors)
	r.nftAdd()
	r.unguarded = rulesMissing(r.res.Errors[before:])
	r.forwardingOn()
	for _, n := range r.desired.Networks {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		r.ensureNetwork(n)
	}
	if err := r.readLinks(); err != nil {
		return err
	}
	r.releasePorts()
	r.removeNetworks()
	r.forwardingOff()
	r.nftDelete()
	if err := r.readLinks(); err != nil {
		return err
	}
	r.routesRead = false // the networks converged above may have changed the routes
	if under, err := r.hostUnderlay(); err == nil {
		r.res.UnderlayRoutes = slices.Clip(append([]overlay.UnderlayRoute{}, under...))
		if vtep := r.desired.Underlay.VTEP; vtep.Unmap().Is4() && !r.vtepHeld {
			// Everything else is converged all the same: the address may come later (DHCP, a
			// late network service), and the devices then work as they are.
			r.fail(overlay.VTEPObject(vtep), fmt.Errorf("%w: VXLAN is neither sent from it nor received on it, so no port here reaches another host", overlay.ErrVTEPMissing))
		}
	}
	return nil
}

func (r *run) readLinks() error {
	links, err := retryDump(r.d.h.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	r.links = make(map[string]netlink.Link, len(links))
	for _, l := range links {
		r.links[l.Attrs().Name] = l
	}
	return nil
}

// retryDump repeats a netlink dump that the kernel interrupted (the table changed while it was
// being read), a bounded number of times.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var v T
	var err error
	for range 10 {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func (r *run) ensureNetwork(n overlay.Network) {
	// Whether the bridge, if there is one, already holds this uplink: then the addresses on it are
	// the uplink's, moved there. The kernel says so, not the bridge's alias, which is set before the
	// addresses are seen to (an Apply cut short in between must not make a stale gateway look like
	// the uplink's). ensureUplink enslaves an uplink only once its addresses are on the bridge.
	servedUplink := false
	if old, up := r.links[overlay.BridgeName(n.VNI)], r.links[n.Uplink]; old != nil && up != nil {
		servedUplink = up.Attrs().MasterIndex == old.Attrs().Index
	}
	br, err := r.ensureBridge(n)
	if err != nil {
		r.fail(overlay.BridgeObject(n.VNI), err)
		return
	}
	vx, err := r.ensureVxlan(n, br)
	if err != nil {
		r.fail(overlay.VxlanObject(n.VNI), err)
		return
	}
	if n.Mode != overlay.ModeBridged || !servedUplink {
		// A bridged network's bridge that does not hold its uplink yet holds no address of its
		// own: one there is the gateway of a nat or routed network that had its VNI before.
		r.ensureBridgeAddrs(n, br)
	}
	if n.Mode == overlay.ModeBridged && n.Uplink != "" {
		if err := r.refused[n.VNI]; err != nil {
			r.fail(overlay.UplinkObject(n.VNI, n.Uplink), err)
			r.restoreUplink(n.VNI, br, n.Uplink) // enslaved before the rule existed
		} else {
			r.ensureUplink(n, br)
		}
	}
	r.ensureEntries(n, vx)
	r.ensurePorts(n, br)
}

func (r *run) bridgeMAC(n overlay.Network) net.HardwareAddr {
	switch {
	case n.HasGateway():
		return n.GatewayMAC
	case n.Mode == overlay.ModeBridged && r.refused[n.VNI] == nil:
		if up := r.links[n.Uplink]; up != nil {
			return up.Attrs().HardwareAddr
		}
	}
	return nil
}

// ensureBridge creates the network's bridge (IPv6 address generation off before it goes up, so
// no link-local address ever appears) or brings an adopted one to the desired MTU, MAC and state.
func (r *run) ensureBridge(n overlay.Network) (netlink.Link, error) {
	h := r.d.h
	name := overlay.BridgeName(n.VNI)
	mac := r.bridgeMAC(n)
	alias := ""
	if n.Mode == overlay.ModeBridged && n.Uplink != "" {
		alias = uplinkAliasPrefix + n.Uplink
	}
	l := r.links[name]
	if err := notOurs(l, n.VNI); err != nil {
		return nil, err
	}
	created, updated := l == nil, false
	if created {
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.HardwareAddr, la.Group = name, n.MTU, mac, linkGroupBase|n.VNI
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return nil, fmt.Errorf("create bridge %q (vni %d): %w", name, n.VNI, err)
		}
		var err error
		if l, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("read back bridge %q: %w", name, err)
		}
		r.change(overlay.OpAdd, overlay.BridgeObject(n.VNI))
		if alias != "" {
			// The kernel ignores an alias in the creating request.
			if err := h.LinkSetAlias(l, alias); err != nil {
				return nil, fmt.Errorf("bridge %q: set alias: %w", name, err)
			}
		}
		r.links[name] = l
	} else {
		a := l.Attrs()
		if old, ok := strings.CutPrefix(a.Alias, uplinkAliasPrefix); ok && a.Alias != alias {
			// The bridge served a bridged network with another uplink (its VNI was freed and
			// reused while this host missed the delete): the uplink gets its addresses and route
			// back before the bridge serves the new network.
			r.restoreUplink(n.VNI, l, old)
		}
		if a.MTU != n.MTU {
			if err := h.LinkSetMTU(l, n.MTU); err != nil {
				return nil, fmt.Errorf("bridge %q: set mtu %d: %w", name, n.MTU, err)
			}
			updated = true
		}
		if mac != nil && !slices.Equal(a.HardwareAddr, mac) {
			if err := h.LinkSetHardwareAddr(l, mac); err != nil {
				return nil, fmt.Errorf("bridge %q: set address %s: %w", name, mac, err)
			}
			updated = true
		}
		if a.Alias != alias {
			if err := h.LinkSetAlias(l, alias); err != nil {
				return nil, fmt.Errorf("bridge %q: set alias: %w", name, err)
			}
		}
	}
	// Before a new bridge goes up (part of its creation); on an adopted one a difference is an
	// update (a bridge of an earlier version, or an operator's sysctl). A failure (a read-only
	// /proc/sys) is the bridge's alone: the network is served all the same.
	arpChanged, err := r.d.syncDeviceSysctls(name, bridgeARP)
	if err != nil {
		r.fail(overlay.BridgeObject(n.VNI), fmt.Errorf("bridge %q: %w", name, err))
	}
	if !created && (updated || arpChanged) {
		r.change(overlay.OpUpdate, overlay.BridgeObject(n.VNI))
	}
	if err := r.bringUp(l); err != nil {
		return nil, fmt.Errorf("bridge %q: %w", name, err)
	}
	return l, nil
}

// notOurs refuses a device (nil: none) that has the name of network vni's bridge or vxlan device
// but is not ours (ourVNI): another program's, which this package leaves alone.
func notOurs(l netlink.Link, vni uint32) error {
	if l == nil {
		return nil
	}
	if v, ok := ourVNI(l); !ok || v != vni {
		return fmt.Errorf("%q exists as a %s device of another program (not in vxfabric's link group %#x): rename or remove it",
			l.Attrs().Name, l.Type(), linkGroupBase|vni)
	}
	return nil
}

func vxlanCompatible(l netlink.Link, n overlay.Network, local netip.Addr) bool {
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		return false
	}
	src, _ := netip.AddrFromSlice(v.SrcAddr)
	return v.VxlanId == int(n.VNI) && src.Unmap() == local.Unmap() && v.Port == overlay.VXLANPort &&
		!v.Learning && v.Proxy == n.Proxy() && !v.FlowBased && v.Group == nil
}

// ensureVxlan creates the vxlan device or adopts a compatible one. An incompatible one (other
// VNI, VTEP or proxy flag: attributes the kernel cannot change in place) is recreated.
func (r *run) ensureVxlan(n overlay.Network, br netlink.Link) (netlink.Link, error) {
	h := r.d.h
	name := overlay.VxlanName(n.VNI)
	local := r.desired.Underlay.VTEP
	l := r.links[name]
	if err := notOurs(l, n.VNI); err != nil {
		return nil, err
	}
	if l != nil && !vxlanCompatible(l, n, local) {
		if err := h.LinkDel(l); err != nil {
			return nil, fmt.Errorf("delete incompatible vxlan %q (vni %d): %w", name, n.VNI, err)
		}
		r.change(overlay.OpDelete, overlay.VxlanObject(n.VNI))
		l = nil
	}
	if l == nil {
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU, la.Group = name, n.MTU, linkGroupBase|n.VNI
		v := &netlink.Vxlan{LinkAttrs: la, VxlanId: int(n.VNI), SrcAddr: net.IP(local.AsSlice()),
			Port: overlay.VXLANPort, Learning: false, Proxy: n.Proxy()}
		if err := h.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("create vxlan %q (vni %d): %w", name, n.VNI, err)
		}
		var err error
		if l, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("read back vxlan %q: %w", name, err)
		}
		r.change(overlay.OpAdd, overlay.VxlanObject(n.VNI))
		r.links[name] = l
	} else if l.Attrs().MTU != n.MTU {
		if err := h.LinkSetMTU(l, n.MTU); err != nil {
			return nil, fmt.Errorf("vxlan %q: set mtu %d: %w", name, n.MTU, err)
		}
		r.change(overlay.OpUpdate, overlay.VxlanObject(n.VNI))
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			return nil, fmt.Errorf("vxlan %q: enslave to %q: %w", name, br.Attrs().Name, err)
		}
	}
	if err := r.bringUp(l); err != nil {
		return nil, fmt.Errorf("vxlan %q: %w", name, err)
	}
	return l, nil
}

// bringUp sets a device of ours up, with IPv6 address generation off first, so that it never gets a
// link-local address: also one adopted down (a crash between its creation and this step).
func (r *run) bringUp(l netlink.Link) error {
	if l.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := r.d.h.LinkSetIP6AddrGenMode(l, addrGenModeNone); err != nil {
		return fmt.Errorf("ipv6 address generation off: %w", err)
	}
	if err := r.d.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return nil
}

// ensureBridgeAddrs puts the distributed gateway address on a nat or routed network's bridge and
// removes any other IPv4 address from it; an isolated network's bridge keeps none (a bridge whose
// VNI served another network before may still hold its gateway), nor does a bridged network's
// before its uplink's addresses move there. The bridge is ours, so is every address on it.
func (r *run) ensureBridgeAddrs(n overlay.Network, br netlink.Link) {
	h := r.d.h
	var want netip.Prefix // none: an isolated network's bridge has no address
	keep := false         // the host's routes could not be read: the addresses on the bridge stay as they are
	if n.HasGateway() {
		want = netip.PrefixFrom(n.Gateway, n.CIDR.Bits())
		clash, err := r.underlayClash(want.Masked())
		switch {
		case err != nil:
			r.fail(overlay.AddrObject(n.VNI, want), err)
			keep = true
		case clash != nil:
			// The gateway's connected route would take the host's own traffic (to its servers,
			// its router, its LAN) into the bridge. One already there (put by an earlier version)
			// goes with the stale ones below: it cuts the host off.
			r.fail(overlay.AddrObject(n.VNI, want), clash)
			want = netip.Prefix{}
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(br, netlink.FAMILY_V4) })
	if err != nil {
		r.fail(overlay.BridgeObject(n.VNI), fmt.Errorf("list addresses of %q: %w", br.Attrs().Name, err))
		return
	}
	if keep {
		return
	}
	var stale []netlink.Addr
	found := false
	for _, a := range addrs {
		if p, ok := addrPrefix(a); ok && p == want {
			found = true
		} else {
			stale = append(stale, a)
		}
	}
	if want.IsValid() && !found {
		if err := h.AddrReplace(br, toNetlinkAddr(want)); err != nil {
			r.fail(overlay.AddrObject(n.VNI, want), fmt.Errorf("add gateway address: %w", err))
			return
		}
		r.change(overlay.OpAdd, overlay.AddrObject(n.VNI, want))
	}
	for _, a := range stale {
		p, _ := addrPrefix(a)
		if err := h.AddrDel(br, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			r.fail(overlay.AddrObject(n.VNI, p), fmt.Errorf("delete stale address: %w", err))
			continue
		}
		r.change(overlay.OpDelete, overlay.AddrObject(n.VNI, p))
	}
}

// underlayClash tells whether a gateway prefix would capture traffic the host sends outside the
// fabric (clash, nil: it would not): whether it holds the host's VTEP or an address of
// DesiredState.Infrastructure (its servers and peers), or overlaps one of the host's underlay
// routes (hostUnderlay: the subnets it is attached to, its next hops). Routes through a router (a
// summary route, a tunnel's) do not count: a more specific gateway takes only what the host sends
// there, which is the tenant network's own range. err is set when the host's routes could not be
// read.
func (r *run) underlayClash(p netip.Prefix) (clash, err error) {
	under, err := r.hostUnderlay()
	if err != nil {
		return nil, fmt.Errorf("read the host's routes to check gateway %s against them: %w", p, err)
	}
	holds := func(a netip.Addr, what string) error {
		if a.IsValid() && p.Contains(a.Unmap()) {
			return fmt.Errorf("cidr %s holds %s %s: its gateway would cut the host off it: %w", p, what, a.Unmap(), overlay.ErrGatewayRefused)
		}
		return nil
	}
	if err := holds(r.desired.Underlay.VTEP, "the host's vtep"); err != nil {
		return err, nil
	}
	for _, a := range r.desired.Infrastructure {
		if err := holds(a, "the fabric's underlay address"); err != nil {
			return err, nil
		}
	}
	for _, u := range under {
		if u.Clash(p) {
			return fmt.Errorf("cidr %s overlaps %s, which the host reaches outside the fabric: its gateway would take that traffic into the network: %w",
				p, u.Prefix, overlay.ErrGatewayRefused), nil
		}
	}
	return nil, nil
}

// hostUnderlay is what the host reaches outside the fabric, read once per Apply (routesErr when the
// kernel could not be read): the subnets of its own addresses (masked to their prefix, whoever made
// their routes) on links that are not the fabric's, but for a bridged network's bridge, which holds
// its uplink's LAN, and the next hops of its routes. Down links count: their routes come back with
// the carrier. Routes without a next hop that no address of the host's explains (a tunnel's, as
// wg-quick adds) do not: they lead through a device, not to a subnet the host is on.
func (r *run) hostUnderlay() ([]overlay.UnderlayRoute, error) {
	if r.routesRead {
		return r.underlay, r.routesErr
	}
	r.routesRead = true
	h := r.d.h
	// Read anew: this pass may have made bridges (and moved an uplink's addresses onto one).
	links, err := retryDump(h.LinkList)
	var routes []netlink.Route
	var addrs []netlink.Addr
	if err == nil {
		routes, err = retryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
	}
	if err == nil {
		addrs, err = retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	}
	if err != nil {
		r.routesErr = err
		return nil, err
	}
	// A bridged network's bridge is the host's LAN: known from the desired state, not only from its
	// alias, which a bridge made in this pass may not carry yet.
	uplinkBridges := map[string]bool{}
	for _, n := range r.desired.Networks {
		if n.Mode == overlay.ModeBridged && n.Uplink != "" {
			uplinkBridges[overlay.BridgeName(n.VNI)] = true
		}
	}
	type role struct{ counts, uplink bool }
	roles := make(map[int]role, len(links))
	for _, l := range links {
		a := l.Attrs()
		_, ours := ourVNI(l)
		switch {
		case ours:
			up := uplinkBridges[a.Name] || strings.HasPrefix(a.Alias, uplinkAliasPrefix)
			roles[a.Index] = role{counts: up, uplink: up}
		case a.Flags&net.FlagLoopback == 0:
			roles[a.Index] = role{counts: true, uplink: a.Name == r.desired.Underlay.Interface}
		}
	}
	var out []overlay.UnderlayRoute
	r.vtepHeld = false
	for _, a := range addrs {
		p, ok := addrPrefix(a)
		if ok && p.Addr() == r.desired.Underlay.VTEP.Unmap() {
			r.vtepHeld = true
		}
		if rl := roles[a.LinkIndex]; ok && rl.counts && p.Addr().Is4() {
			out = append(out, overlay.UnderlayRoute{Prefix: p.Masked(), Uplink: rl.uplink})
		}
	}
	for _, rt := range routes {
		hops := []netlink.NexthopInfo{{LinkIndex: rt.LinkIndex, Gw: rt.Gw}}
		for _, nh := range rt.MultiPath {
			hops = append(hops, *nh)
		}
		for _, nh := range hops {
			a, ok := netip.AddrFromSlice(nh.Gw)
			if ok && a.Unmap().Is4() && !a.IsUnspecified() && (nh.LinkIndex == 0 || roles[nh.LinkIndex].counts) {
				out = append(out, overlay.UnderlayRoute{Prefix: netip.PrefixFrom(a.Unmap(), 32), NextHop: true})
			}
		}
	}
	r.underlay = out
	return out, nil
}

func addrPrefix(a netlink.Addr) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok || a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

func toNetlinkAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}

// checkUplinks decides which bridged networks' uplinks must stay out (overlay.UplinkRefusal). An
// uplink already in its network's bridge is judged with the addresses it moved there.
func (r *run) checkUplinks() error {
	r.refused = make(map[uint32]error)
	wanted := make(map[uint32]overlay.Network, len(r.desired.Networks))
	for _, n := range r.desired.Networks {
		wanted[n.VNI] = n
	}
	for _, n := range r.desired.Networks {
		up := r.links[n.Uplink]
		if n.Mode != overlay.ModeBridged || n.Uplink == "" || up == nil {
			continue
		}
		holder, holderBr := r.uplinkHolder(up)
		if h, ok := wanted[holder]; holder != 0 && holder != n.VNI && (!ok || h.Mode != overlay.ModeBridged || h.Uplink != n.Uplink) {
			// Held by a network on its way out, or whose VNI now serves another network: it
			// gives the uplink back (addresses and route) now, so that n takes it over in this
			// same Apply with them.
			r.restoreUplink(holder, holderBr, n.Uplink)
			fresh, err := r.d.h.LinkByName(n.Uplink)
			if err != nil {
				return fmt.Errorf("read uplink %q: %w", n.Uplink, err)
			}
			r.links[n.Uplink], up = fresh, fresh
			holder, holderBr = r.uplinkHolder(up)
		}
		from := []netlink.Link{up}
		if holder == n.VNI {
			from = append(from, holderBr)
		}
		var addrs []netip.Addr
		for _, l := range from {
			list, err := retryDump(func() ([]netlink.Addr, error) { return r.d.h.AddrList(l, netlink.FAMILY_V4) })
			if err != nil {
				return fmt.Errorf("list addresses of %q: %w", l.Attrs().Name, err)
			}
			for _, a := range list {
				if p, ok := addrPrefix(a); ok {
					addrs = append(addrs, p.Addr())
				}
			}
		}
		loopback := up.Attrs().Flags&net.FlagLoopback != 0
		if err := overlay.UplinkRefusal(r.desired, n, loopback, addrs, holder); err != nil {
			r.refused[n.VNI] = err
		}
	}
	return nil
}

// uplinkHolder returns the network whose bridge up is enslaved to, and that bridge (0, nil: none of
// ours).
func (r *run) uplinkHolder(up netlink.Link) (uint32, netlink.Link) {
	mi := up.Attrs().MasterIndex
	if mi == 0 {
		return 0, nil
	}
	for _, l := range r.links {
		if l.Attrs().Index == mi {
			if vni, ok := ourVNI(l); ok && l.Type() == "bridge" {
				return vni, l
			}
			return 0, nil
		}
	}
	return 0, nil
}

// ensureUplink enslaves a bridged network's uplink and moves its IPv4 addresses and default route to
// the bridge, as netplan does for br0: addresses are copied to the bridge first, the route is
// replaced, and only then the uplink's copies go, so the host keeps its address throughout.
func (r *run) ensureUplink(n overlay.Network, br netlink.Link) {
	h := r.d.h
	obj := overlay.UplinkObject(n.VNI, n.Uplink)
	up := r.links[n.Uplink]
	if up == nil {
		r.fail(obj, overlay.ErrUplinkMissing)
		return
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(up, netlink.FAMILY_V4) })
	if err != nil {
		r.fail(obj, fmt.Errorf("list addresses of %q: %w", n.Uplink, err))
		return
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: up.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		r.fail(obj, fmt.Errorf("list routes of %q: %w", n.Uplink, err))
		return
	}
	for _, a := range addrs {
		p, ok := addrPrefix(a)
		if !ok {
			continue
		}
		moved := toNetlinkAddr(p)
		moved.Broadcast = a.Broadcast
		if err := h.AddrReplace(br, moved); err != nil {
			r.fail(obj, fmt.Errorf("copy address %s to %q: %w", p, br.Attrs().Name, err))
			return
		}
		r.change(overlay.OpAdd, overlay.AddrObject(n.VNI, p))
	}
	if up.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMasterByIndex(up, br.Attrs().Index); err != nil {
			r.fail(obj, fmt.Errorf("enslave uplink: %w", err))
			return
		}
		r.change(overlay.OpAdd, obj)
		if fresh, err := h.LinkByName(n.Uplink); err == nil {
			r.links[n.Uplink] = fresh // its master as it is now, for the networks after this one
		}
	}
	for _, rt := range routes {
		if rt.Dst != nil && rt.Dst.String() != "0.0.0.0/0" || rt.Gw == nil {
			continue // only the default route moves; connected routes follow the addresses
		}
		moved := rt
		moved.LinkIndex = br.Attrs().Index
		if err := h.RouteReplace(&moved); err != nil {
			r.fail(obj, fmt.Errorf("move default route via %s to %q: %w", rt.Gw, br.Attrs().Name, err))
			return
		}
		gw, _ := netip.AddrFromSlice(rt.Gw)
		r.change(overlay.OpUpdate, overlay.RouteObject(n.VNI, gw.Unmap()))
	}
	for _, a := range addrs {
		if err := h.AddrDel(up, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			r.fail(obj, fmt.Errorf("remove moved address %s from %q: %w", a.IPNet, n.Uplink, err))
		}
	}
}

// restoreUplink undoes ensureUplink: before a bridged network's bridge is deleted, or when its uplink
// is refused.
func (r *run) restoreUplink(vni uint32, br netlink.Link, uplink string) {
	h := r.d.h
	obj := overlay.UplinkObject(vni, uplink)
	up := r.links[uplink]
	if up == nil || up.Attrs().MasterIndex != br.Attrs().Index {
		return // gone, or another bridge's now
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(br, netlink.FAMILY_V4) })
	if err != nil {
		r.fail(obj, fmt.Errorf("list addresses of %q: %w", br.Attrs().Name, err))
		return
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: br.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		r.fail(obj, fmt.Errorf("list routes of %q: %w", br.Attrs().Name, err))
		return
	}
	if err := h.LinkSetNoMaster(up); err != nil {
		r.fail(obj, fmt.Errorf("release uplink: %w", err))
		return
	}
	r.change(overlay.OpDelete, obj)
	for _, a := range addrs {
		p, ok := addrPrefix(a)
		if !ok {
			continue
		}
		back := toNetlinkAddr(p)
		back.Broadcast = a.Broadcast
		if err := h.AddrReplace(up, back); err != nil {
			r.fail(obj, fmt.Errorf("give address %s back to %q: %w", p, uplink, err))
		}
	}
	for _, rt := range routes {
		if rt.Dst != nil && rt.Dst.String() != "0.0.0.0/0" || rt.Gw == nil {
			continue
		}
		back := rt
		back.LinkIndex = up.Attrs().Index
		if err := h.RouteReplace(&back); err != nil {
			r.fail(obj, fmt.Errorf("give default route via %s back to %q: %w", rt.Gw, uplink, err))
		}
	}
	// The bridge may stay (its uplink refused): it must not keep the host's addresses.
	for _, a := range addrs {
		if err := h.AddrDel(br, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			r.fail(obj, fmt.Errorf("remove address %s from %q: %w", a.IPNet, br.Attrs().Name, err))
		}
	}
}

// ensurePorts enslaves the local ports that exist to the bridge with the network's MTU, their MACs
// pinned to them (portEntry), and up. A port whose interface does not exist yet is skipped without
// error: the next Apply plugs it.
func (r *run) ensurePorts(n overlay.Network, br netlink.Link) {
	h := r.d.h
	own := r.bridgeOwnMACs(n, br)
	for _, p := range n.Ports {
		l := r.links[p.Interface]
		if l == nil {
			continue
		}
		obj := overlay.PortObject(n.VNI, p.Interface)
		a := l.Attrs()
		plugged, updated := a.MasterIndex == br.Attrs().Index, false
		if a.MTU != n.MTU {
			if err := h.LinkSetMTU(l, n.MTU); err != nil {
				r.fail(obj, fmt.Errorf("set mtu %d: %w", n.MTU, err))
				continue
			}
			updated = true
		}
		if !plugged {
			if r.unguarded != nil && !r.desired.DisablePortSecurity {
				r.fail(obj, fmt.Errorf("not plugged until port security is in place: %w", r.unguarded))
				continue
			}
			if err := h.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
				r.fail(obj, fmt.Errorf("enslave: %w", err))
				continue
			}
			r.change(overlay.OpAdd, obj)
		}
		if r.pinPort(obj, a.Index, p.MAC, plugged, own) {
			updated = true
		}
		if plugged && updated {
			r.change(overlay.OpUpdate, obj)
		}
		if a.Flags&net.FlagUp == 0 {
			if err := h.LinkSetUp(l); err != nil {
				r.fail(obj, fmt.Errorf("set up: %w", err))
				continue
			}
		}
		r.res.Plugged[p.Interface] = true
	}
}

// pinPort pins mac to the port (ifindex) as part of plugging it, and unpins any other MAC pinned
// there; on a port plugged before, it reads the bridge's entries first and writes only what
// differs. It reports whether it wrote anything. A MAC of the bridge's own (own) is not pinned: the
// entry would take the bridge's address from it (a tenant who chose the MAC of a bridged network's
// uplink would receive the host's traffic). A failure is the pin's alone: the port is plugged
// without it, as before pins existed.
func (r *run) pinPort(obj string, port int, mac net.HardwareAddr, plugged bool, own map[macKey]bool) (wrote bool) {
	h := r.d.h
	pinned, stale := false, []net.HardwareAddr(nil)
	if plugged {
		var err error
		if pinned, stale, err = portPins(r.d.dump1, port, mac); err != nil {
			r.fail(obj, fmt.Errorf("read the bridge's entries of the port: %w", err))
			return false
		}
	}
	for _, m := range stale {
		if err := h.NeighDel(portEntry(port, m)); err != nil && !errors.Is(err, unix.ENOENT) {
			r.fail(obj, fmt.Errorf("unpin mac %s from the port: %w", m, err))
			continue
		}
		wrote = true
	}
	switch {
	case own[keyOf(mac)]:
		r.fail(obj, fmt.Errorf("%w: mac %s is the bridge's own or one of its interfaces': plugged, not pinned", overlay.ErrSettingRefused, mac))
	case !pinned:
		if err := h.NeighSet(portEntry(port, mac)); err != nil {
			r.fail(obj, fmt.Errorf("pin mac %s to the port: %w", mac, err))
			return wrote
		}
		wrote = true
	}
	return wrote
}

// bridgeOwnMACs are the addresses the bridge holds as its own (local entries): its MAC, as it is
// and as this pass sets it, and those of the interfaces in it (the vxlan device, a bridged
// network's uplink, the host sides of ports).
func (r *run) bridgeOwnMACs(n overlay.Network, br netlink.Link) map[macKey]bool {
	own := map[macKey]bool{}
	add := func(m net.HardwareAddr) {
		if len(m) == 6 {
			own[keyOf(m)] = true
		}
	}
	add(br.Attrs().HardwareAddr)
	add(r.bridgeMAC(n))
	if up := r.links[n.Uplink]; n.Uplink != "" && up != nil {
		add(up.Attrs().HardwareAddr)
	}
	for _, l := range r.links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			add(l.Attrs().HardwareAddr)
		}
	}
	return own
}

// rulesMissing tells whether errs (those of nftAdd) leave a table, set, chain or rule missing,
// and returns the first such error. A failed count of port security drops is not one: the drop
// chain drops without counting.
func rulesMissing(errs []overlay.ObjectError) error {
	for _, e := range errs {
		if e.Object != overlay.PortDropElemObject("*") {
			return e
		}
	}
	return nil
}

// ourVNI is the VNI of a device of ours: a "vxbr<vni>" bridge or "vxlan<vni>" vxlan device in the
// network's link group, which every device this package makes carries. Another program's device
// of such a name (an operator's `ip link add vxlan100 type vxlan id 100`) is not ours: it is never
// adopted, changed or deleted.
func ourVNI(l netlink.Link) (uint32, bool) {
	vni, ok := namedVNI(l)
	return vni, ok && l.Attrs().Group == linkGroupBase|vni
}

// namedVNI parses the name of a device of ours ("vxbr<vni>" bridge or "vxlan<vni>" vxlan).
func namedVNI(l netlink.Link) (uint32, bool) {
	name := l.Attrs().Name
	var rest string
	switch {
	case l.Type() == "bridge" && strings.HasPrefix(name, overlay.BridgePrefix):
		rest = name[len(overlay.BridgePrefix):]
	case l.Type() == "vxlan" && strings.HasPrefix(name, overlay.VxlanPrefix):
		rest = name[len(overlay.VxlanPrefix):]
	default:
		return 0, false
	}
	v, err := strconv.ParseUint(rest, 10, 32)
	if err != nil || v == 0 || v >= 1<<24 || strconv.FormatUint(v, 10) != rest {
		return 0, false
	}
	return uint32(v), true
}

// releasePorts takes interfaces that are no longer desired off our bridges. The vxlan device and a
// bridged network's recorded uplink are not ports; the uplink is handled by removeNetworks.
func (r *run) releasePorts() {
	want := r.desired.PortVNIs()
	bridges := make(map[int]netlink.Link)
	for _, l := range r.links {
		if _, ok := ourVNI(l); ok && l.Type() == "bridge" {
			bridges[l.Attrs().Index] = l
		}
	}
	var names []string
	for name := range r.links {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		l := r.links[name]
		br := bridges[l.Attrs().MasterIndex]
		if br == nil || overlay.IsDeviceName(name) {
			continue
		}
		vni, _ := ourVNI(br)
		if v, ok := want[name]; ok && v == vni {
			continue
		}
		if br.Attrs().Alias == uplinkAliasPrefix+name {
			continue
		}
		if err := r.d.h.LinkSetNoMaster(l); err != nil {
			r.fail(overlay.PortObject(vni, name), fmt.Errorf("release: %w", err))
			continue
		}
		r.change(overlay.OpDelete, overlay.PortObject(vni, name))
	}
}

// removeNetworks deletes the devices of networks that are no longer desired; the kernel drops
// their FDB and neighbour entries with them. A bridged network's uplink gets its addresses back
// first.
func (r *run) removeNetworks() {
	want := make(map[uint32]bool)
	for _, n := range r.desired.Networks {
		want[n.VNI] = true
	}
	type pair struct{ br, vx netlink.Link }
	stale := make(map[uint32]*pair)
	for _, l := range r.links {
		vni, ok := ourVNI(l)
		if !ok || want[vni] {
			continue
		}
		p := stale[vni]
		if p == nil {
			p = &pair{}
			stale[vni] = p
		}
		if l.Type() == "bridge" {
			p.br = l
		} else {
			p.vx = l
		}
	}
	vnis := make([]uint32, 0, len(stale))
	for v := range stale {
		vnis = append(vnis, v)
	}
	slices.Sort(vnis)
	for _, vni := range vnis {
		p := stale[vni]
		if p.br != nil {
			if up, ok := strings.CutPrefix(p.br.Attrs().Alias, uplinkAliasPrefix); ok {
				r.restoreUplink(vni, p.br, up)
			}
		}
		if r.groupDelete(vni, p.br, p.vx) {
			continue
		}
		if p.vx != nil {
			if err := r.d.h.LinkDel(p.vx); err != nil && !errors.Is(err, unix.ENODEV) {
				r.fail(overlay.VxlanObject(vni), fmt.Errorf("delete: %w", err))
			} else {
				r.change(overlay.OpDelete, overlay.VxlanObject(vni))
			}
		}
		if p.br != nil {
			if err := r.d.h.LinkDel(p.br); err != nil && !errors.Is(err, unix.ENODEV) {
				r.fail(overlay.BridgeObject(vni), fmt.Errorf("delete: %w", err))
			} else {
				r.change(overlay.OpDelete, overlay.BridgeObject(vni))
			}
		}
	}
}

// groupDelete removes a network's two devices with one request when they, and nothing else in the
// namespace, carry the network's link group. It reports whether it did.
func (r *run) groupDelete(vni uint32, br, vx netlink.Link) bool {
	if br == nil || vx == nil {
		return false
	}
	group := linkGroupBase | vni
	for _, l := range r.links {
		if l.Attrs().Group == group && l != br && l != vx {
			return false
		}
	}
	if br.Attrs().Group != group || vx.Attrs().Group != group {
		return false
	}
	if err := r.d.deleteLinkGroup(group); err != nil {
		r.d.log.Warn("group delete failed, deleting devices one by one", "vni", vni, "err", err)
		return false
	}
	r.change(overlay.OpDelete, overlay.VxlanObject(vni))
	r.change(overlay.OpDelete, overlay.BridgeObject(vni))
	return true
}

// ensureEntries converges the FDB (unicast then flood) and, in parallel on the second handle, the
// ARP suppression neighbour table of one vxlan device.
func (r *run) ensureEntries(n overlay.Network, vx netlink.Link) {
	var fdb, neigh entryResult
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		neigh = syncNeigh(r.d.h2, r.d.dump2, n, vx.Attrs().Index)
	}()
	local := make(map[macKey]bool, len(n.Ports))
	for _, p := range n.Ports {
		if r.links[p.Interface] != nil {
			local[keyOf(p.MAC)] = true
		}
	}
	fdb = syncFDB(r.d.h, r.d.dump1, n, vx.Attrs().Index, local)
	wg.Wait()
	for _, e := range []entryResult{fdb, neigh} {
		r.res.Changes = append(r.res.Changes, e.changes...)
		r.res.Errors = append(r.res.Errors, e.errs...)
	}
}

// addrGenModeNone is IN6_ADDR_GEN_MODE_NONE: the kernel creates no IPv6 link-local address on the
// device, so a tenant never sees one of the host's.
const addrGenModeNone = 1
