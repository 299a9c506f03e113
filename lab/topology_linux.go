package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Bridges of the switch namespace.
const (
	underlayBridge = "br-ul"
	lanBridge      = "br-lan"
)

// wire is one cable: a veth from a bridge of the switch namespace into an endpoint namespace.
type wire struct {
	switchEnd string // name in the switch namespace, at most 15 characters
	bridge    string
	ns        string // the endpoint's namespace
	nsEnd     string // name in the endpoint's namespace
	addr      netip.Prefix
	// mac of the endpoint is fixed, so that a cable made again (repaired) keeps the MAC its
	// neighbours have cached.
	mac net.HardwareAddr
	// mtu of both ends; 0 leaves the default.
	mtu int
}

// addrMAC derives a locally administered MAC from an IPv4 address: 02:00:a:b:c:d.
func addrMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x00, b[0], b[1], b[2], b[3]}
}

// wires lists every cable of the lab; the switch end of a host's underlay cable is what `host cut`
// takes down.
func (l *Lab) wires() []wire {
	w := []wire{
		{switchEnd: "ctl-ul", bridge: underlayBridge, ns: l.Namespace(RoleControl), nsEnd: UnderlayIface,
			addr: netip.PrefixFrom(ControlAddr, UnderlayPrefix.Bits()), mac: addrMAC(ControlAddr)},
		{switchEnd: "out-ul", bridge: underlayBridge, ns: l.Namespace(RoleOutside), nsEnd: UnderlayIface,
			addr: netip.PrefixFrom(OutsideAddr, UnderlayPrefix.Bits()), mac: addrMAC(OutsideAddr)},
		{switchEnd: "lan-lan", bridge: lanBridge, ns: l.Namespace(RoleLAN), nsEnd: LANIface,
			addr: netip.PrefixFrom(LANAddr, LANPrefix.Bits()), mac: addrMAC(LANAddr), mtu: LANMTU},
	}
	for i := 1; i <= l.cfg.Hosts; i++ {
		h := HostName(i)
		w = append(w,
			wire{switchEnd: hostUnderlayPort(h), bridge: underlayBridge, ns: l.Namespace(h), nsEnd: UnderlayIface,
				addr: netip.PrefixFrom(HostAddr(i), UnderlayPrefix.Bits()), mac: addrMAC(HostAddr(i))},
			wire{switchEnd: h + "-lan", bridge: lanBridge, ns: l.Namespace(h), nsEnd: LANIface,
				mac: net.HardwareAddr{0x02, 0x01, 0, 0, 0, byte(i)}, mtu: LANMTU})
	}
	return w
}

func hostUnderlayPort(host string) string { return host + "-ul" }

// cutMarker records that a host's underlay is cut, so that Up does not silently restore it.
func (l *Lab) cutMarker(host string) string { return filepath.Join(l.runDir(), "cut-"+host) }

// ensureTopology creates whatever namespace, bridge, cable, address or route of the lab is
// missing and leaves what exists alone.
func (l *Lab) ensureTopology(ctx context.Context) error {
	roles := []string{RoleSwitch, RoleControl, RoleOutside, RoleLAN}
	roles = append(roles, l.Hosts()...)
	for _, r := range roles {
		if err := ensureNamespace(ctx, l.Namespace(r)); err != nil {
			return err
		}
	}
	for _, r := range append([]string{RoleSwitch}, l.Hosts()...) {
		if err := ensureBridgeNetfilter(l.Namespace(r), l.cfg.BridgeNetfilter); err != nil {
			return err
		}
	}
	sw, err := handleAt(l.Namespace(RoleSwitch))
	if err != nil {
		return err
	}
	defer sw.Close()
	bridges := map[string]int{}
	for _, name := range []string{underlayBridge, lanBridge} {
		idx, err := ensureBridge(sw, name)
		if err != nil {
			return fmt.Errorf("switch namespace: %w", err)
		}
		bridges[name] = idx
	}
	for _, w := range l.wires() {
		up := true
		if _, err := os.Stat(l.cutMarker(hostOfPort(w.switchEnd))); err == nil {
			up = false
		}
		if err := l.ensureWire(sw, bridges[w.bridge], w, up); err != nil {
			return err
		}
	}
	// Hosts and the control node reach anything beyond the underlay through the outside namespace,
	// the lab's external network.
	for _, r := range append([]string{RoleControl}, l.Hosts()...) {
		if err := ensureDefaultRoute(l.Namespace(r), UnderlayIface, OutsideAddr); err != nil {
			return err
		}
	}
	return nil
}

// hostOfPort returns "hN" for the switch end of a host cable, "" otherwise.
func hostOfPort(switchEnd string) string {
	for i := len(switchEnd) - 1; i > 0; i-- {
		if switchEnd[i] == '-' {
			if _, ok := HostIndex(switchEnd[:i]); ok {
				return switchEnd[:i]
			}
			return ""
		}
	}
	return ""
}

// bridgeNetfilterSysctls are br_netfilter's per-namespace switches; they exist only while the
// module is loaded.
var bridgeNetfilterSysctls = []string{
	"/proc/sys/net/bridge/bridge-nf-call-arptables",
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
}

// ensureBridgeNetfilter sets whether the bridges of a namespace pass frames through the arp, ip
// and ip6 hooks (and conntrack). Without the br_netfilter module there is nothing to set.
func ensureBridgeNetfilter(ns string, on bool) error {
	want := "0"
	if on {
		want = "1"
	}
	return inNamespace(ns, func() error {
		for _, path := range bridgeNetfilterSysctls {
			b, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("namespace %q: read %s: %w", ns, path, err)
			}
			if strings.TrimSpace(string(b)) == want {
				continue
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				return fmt.Errorf("namespace %q: set %s to %s: %w", ns, path, want, err)
			}
		}
		return nil
	})
}

func ensureBridge(h *netlink.Handle, name string) (int, error) {
	link, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(br); err != nil {
			return 0, fmt.Errorf("create bridge %q: %w", name, err)
		}
		if link, err = h.LinkByName(name); err != nil {
			return 0, fmt.Errorf("read bridge %q: %w", name, err)
		}
	case err != nil:
		return 0, fmt.Errorf("read bridge %q: %w", name, err)
	case link.Type() != "bridge":
		return 0, fmt.Errorf("link %q is a %s, not a bridge", name, link.Type())
	}
	if err := h.LinkSetUp(link); err != nil {
		return 0, fmt.Errorf("set bridge %q up: %w", name, err)
	}
	return link.Attrs().Index, nil
}

// ensureWire makes one cable whole: both ends present (a lone end is removed and the pair made
// again), the switch end on its bridge, both up unless the cable is cut, the endpoint's address set.
func (l *Lab) ensureWire(sw *netlink.Handle, bridgeIdx int, w wire, up bool) error {
	ep, err := handleAt(w.ns)
	if err != nil {
		return err
	}
	defer ep.Close()
	swLink, swErr := sw.LinkByName(w.switchEnd)
	epLink, epErr := ep.LinkByName(w.nsEnd)
	if swErr != nil || epErr != nil {
		if swErr == nil {
			if err := sw.LinkDel(swLink); err != nil {
				return fmt.Errorf("remove half cable %q: %w", w.switchEnd, err)
			}
		}
		if epErr == nil {
			if err := ep.LinkDel(epLink); err != nil {
				return fmt.Errorf("remove half cable %q in %s: %w", w.nsEnd, w.ns, err)
			}
		}
		nsh, err := netns.GetFromName(w.ns)
		if err != nil {
			return fmt.Errorf("open namespace %q: %w", w.ns, err)
		}
		veth := &netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: w.switchEnd, MTU: w.mtu},
			PeerName:         w.nsEnd,
			PeerHardwareAddr: w.mac,
			PeerNamespace:    netlink.NsFd(int(nsh)),
			PeerMTU:          uint32(w.mtu),
		}
		err = sw.LinkAdd(veth)
		nsh.Close()
		if err != nil {
			return fmt.Errorf("create cable %q to %s/%s: %w", w.switchEnd, w.ns, w.nsEnd, err)
		}
		if swLink, err = sw.LinkByName(w.switchEnd); err != nil {
			return fmt.Errorf("read cable %q: %w", w.switchEnd, err)
		}
		if epLink, err = ep.LinkByName(w.nsEnd); err != nil {
			return fmt.Errorf("read cable end %q in %s: %w", w.nsEnd, w.ns, err)
		}
	}
	if w.mtu != 0 {
		for _, end := range []struct {
			h    *netlink.Handle
			link netlink.Link
		}{{sw, swLink}, {ep, epLink}} {
			if end.link.Attrs().MTU != w.mtu {
				if err := end.h.LinkSetMTU(end.link, w.mtu); err != nil {
					return fmt.Errorf("mtu %d on %s: %w", w.mtu, end.link.Attrs().Name, err)
				}
			}
		}
	}
	if swLink.Attrs().MasterIndex != bridgeIdx {
		if err := sw.LinkSetMasterByIndex(swLink, bridgeIdx); err != nil {
			return fmt.Errorf("attach %q to %s: %w", w.switchEnd, w.bridge, err)
		}
	}
	if w.addr.IsValid() {
		addr := &netlink.Addr{IPNet: prefixToIPNet(w.addr)}
		if err := ep.AddrReplace(epLink, addr); err != nil {
			return fmt.Errorf("address %s on %s/%s: %w", w.addr, w.ns, w.nsEnd, err)
		}
	}
	if err := ep.LinkSetUp(epLink); err != nil {
		return fmt.Errorf("set %s/%s up: %w", w.ns, w.nsEnd, err)
	}
	if up {
		err = sw.LinkSetUp(swLink)
	} else {
		err = sw.LinkSetDown(swLink)
	}
	if err != nil {
		return fmt.Errorf("set %q up=%t: %w", w.switchEnd, up, err)
	}
	return nil
}

func ensureDefaultRoute(ns, dev string, via netip.Addr) error {
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("namespace %q: read %s: %w", ns, dev, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(via.AsSlice()),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("namespace %q: default route via %s: %w", ns, via, err)
	}
	return nil
}

// RouteReplace sets a static route in one of the lab's namespaces (for example, in outside, the
// route to a routed network through the host that serves it), marked as the lab's (routeProtocol).
func (l *Lab) RouteReplace(target string, dst netip.Prefix, via netip.Addr) error {
	h, err := l.Handle(target)
	if err != nil {
		return err
	}
	defer h.Close()
	route := &netlink.Route{Dst: prefixToIPNet(dst), Gw: net.IP(via.AsSlice()), Protocol: routeProtocol}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("%s: route %s via %s: %w", target, dst, via, err)
	}
	return nil
}

// RouteVia returns the gateway of the static route to dst in one of the lab's namespaces (ok false
// when there is none).
func (l *Lab) RouteVia(target string, dst netip.Prefix) (via netip.Addr, ok bool, err error) {
	h, err := l.Handle(target)
	if err != nil {
		return netip.Addr{}, false, err
	}
	defer h.Close()
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: prefixToIPNet(dst)}, netlink.RT_FILTER_DST)
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("%s: list routes to %s: %w", target, dst, err)
	}
	for _, r := range routes {
		if gw, okGw := netip.AddrFromSlice(r.Gw); okGw {
			return gw.Unmap(), true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// RouteDelete removes the static routes to dst set by RouteReplace (those marked as the lab's,
// and no other); a route that is gone is success.
func (l *Lab) RouteDelete(target string, dst netip.Prefix) error {
	h, err := l.Handle(target)
	if err != nil {
		return err
	}
	defer h.Close()
	return deleteLabRoutes(h, target, dst)
}

// deleteLabRoutes deletes the routes to dst in target's namespace (h) that the lab wrote.
func deleteLabRoutes(h *netlink.Handle, target string, dst netip.Prefix) error {
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: prefixToIPNet(dst), Protocol: routeProtocol},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("%s: list routes to %s: %w", target, dst, err)
	}
	for i := range routes {
		if err := h.RouteDel(&routes[i]); err != nil {
			return fmt.Errorf("%s: delete route to %s: %w", target, dst, err)
		}
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// setHostCable sets the switch end of a host's underlay cable up or down.
func (l *Lab) setHostCable(host string, up bool) error {
	sw, err := handleAt(l.Namespace(RoleSwitch))
	if err != nil {
		return err
	}
	defer sw.Close()
	name := hostUnderlayPort(host)
	link, err := sw.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host %s: read switch port %q: %w", host, name, err)
	}
	if up {
		err = sw.LinkSetUp(link)
	} else {
		err = sw.LinkSetDown(link)
	}
	if err != nil {
		return fmt.Errorf("host %s: set switch port %q up=%t: %w", host, name, up, err)
	}
	return nil
}

// CutHost takes a host off the underlay (its switch port goes down): its gossip and its VXLAN
// traffic stop, as when a host's cable is pulled. Cutting a cut host is success.
func (l *Lab) CutHost(host string) error {
	if err := l.checkHost(host); err != nil {
		return err
	}
	if err := os.WriteFile(l.cutMarker(host), nil, 0o600); err != nil {
		return fmt.Errorf("host %s: record cut: %w", host, err)
	}
	return l.setHostCable(host, false)
}

// RestoreHost puts a cut host back on the underlay.
func (l *Lab) RestoreHost(host string) error {
	if err := l.checkHost(host); err != nil {
		return err
	}
	if err := l.setHostCable(host, true); err != nil {
		return err
	}
	if err := os.Remove(l.cutMarker(host)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("host %s: clear cut record: %w", host, err)
	}
	return nil
}

// HostCut reports whether a host's underlay cable is down (read from the kernel).
func (l *Lab) HostCut(host string) (bool, error) {
	sw, err := handleAt(l.Namespace(RoleSwitch))
	if err != nil {
		return false, err
	}
	defer sw.Close()
	link, err := sw.LinkByName(hostUnderlayPort(host))
	if err != nil {
		return false, fmt.Errorf("host %s: read switch port: %w", host, err)
	}
	return link.Attrs().Flags&net.FlagUp == 0, nil
}

func (l *Lab) checkHost(host string) error {
	i, ok := HostIndex(host)
	if !ok || i > l.cfg.Hosts {
		return fmt.Errorf("host %q: the lab has hosts h1..h%d", host, l.cfg.Hosts)
	}
	return nil
}
