package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// The outside reaches a routed network as a router in front of a real fabric would be set up to
// (see the lab README): a static route to the network through one lab host with a port of it, and
// a host route (/32) to each of its VMs on another host, through that host. A routed network's
// gateway is on every host with a port of it, but the distributed gateway's frames never cross the
// overlay, so a host delivers only to its own VMs, and the answers of a VM elsewhere come back to
// that VM's host only through its host route. Ports come, move and go, through the lab's vm
// commands or straight through the API, so the lab does not track the routes per operation: it
// compares every routed network's routes with where the network's ports are, after each vm command
// and on each lab status, one command at a time.

// routeProtocol marks the routes the lab writes into the outside (rtnetlink's protocol field; 118,
// "v", is assigned to nothing), so that a route of someone else's is never changed or removed.
const routeProtocol = netlink.RouteProtocol(118)

// SyncOutsideRoutes brings the outside's routes to routed networks in line with where their ports
// are. The network's route goes through its host while it has a port of the network, else through
// prefer (a VM's new host) when it has one, else through the first such host by name; with no port
// on a lab host it goes. A route through an address that is not a lab host's, or of another kind
// than a route through one gateway, is someone else's and stays. Of two tenants' routed networks
// with the same CIDR, the first listed gets the routes. Routes the lab wrote (and only those) to
// networks that are gone, and host routes to ports that are gone, go. Routes to networks of other
// modes stay (the demo routes a nat network on purpose).
func (l *Lab) SyncOutsideRoutes(ctx context.Context, c *Client, prefer string) error {
	unlock, err := l.lockRoutes(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nets, err := c.Networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	if err != nil {
		return fmt.Errorf("list networks: %w", err)
	}
	ports, err := c.Ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{})
	if err != nil {
		return fmt.Errorf("list ports: %w", err)
	}
	return l.syncOutsideRoutes(nets.GetNetworks(), ports.GetPorts(), prefer)
}

func (l *Lab) syncOutsideRoutes(nets []*vxfabricv1.Network, ports []*vxfabricv1.Port, prefer string) error {
	if !namespaceExists(l.Namespace(RoleOutside)) {
		return nil // a lab of the API alone (tests): no outside to route
	}
	h, err := l.Handle(RoleOutside)
	if err != nil {
		return err
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("%s: list routes: %w", RoleOutside, err)
	}
	// By destination: the gateway of a plain route through one gateway (invalid for any other
	// route: a device route, a blackhole, several next hops), and whether the lab wrote it.
	have := map[netip.Prefix]netip.Addr{}
	ours := map[netip.Prefix]bool{}
	for _, r := range routes {
		dst, ok := routeDst(r)
		if !ok {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if _, seen := have[dst]; seen || len(r.MultiPath) > 0 || r.Type != unix.RTN_UNICAST {
			gw = netip.Addr{} // several routes to dst, or not a plain one
		}
		have[dst] = gw.Unmap()
		ours[dst] = r.Protocol == routeProtocol
	}
	// theirs: a route to dst that the lab must leave alone, through an address that is not a lab
	// host's, or of another kind than the lab writes.
	theirs := func(dst netip.Prefix) bool {
		via, ok := have[dst]
		return ok && !ours[dst] && l.hostWithAddr(via) == ""
	}

	portsOf := map[string][]*vxfabricv1.Port{} // tenant/network: its ports on lab hosts
	for _, p := range ports {
		if slices.Contains(l.Hosts(), p.GetNode()) {
			k := p.GetTenant() + "/" + p.GetNetwork()
			portsOf[k] = append(portsOf[k], p)
		}
	}
	want := map[netip.Prefix]netip.Addr{}
	keep := map[netip.Prefix]bool{}
	for _, n := range nets {
		cidr, err := netip.ParsePrefix(n.GetCidr())
		if err != nil {
			continue
		}
		if n.GetMode() != vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED {
			keep[cidr] = true
			continue
		}
		if _, taken := want[cidr]; taken || theirs(cidr) {
			continue // another tenant's network of the same CIDR came first, or someone else's route
		}
		cur := l.hostWithAddr(have[cidr])
		var hosts []string
		for _, p := range portsOf[n.GetTenant()+"/"+n.GetName()] {
			if !slices.Contains(hosts, p.GetNode()) {
				hosts = append(hosts, p.GetNode())
			}
		}
		main := outsideRouteHost(cur, hosts, prefer)
		if main == "" {
			continue
		}
		want[cidr] = l.hostAddr(main)
		for _, p := range portsOf[n.GetTenant()+"/"+n.GetName()] {
			if ip, err := netip.ParseAddr(p.GetIp()); err == nil && p.GetNode() != main && cidr.Contains(ip) {
				want[netip.PrefixFrom(ip, 32)] = l.hostAddr(p.GetNode())
			}
		}
	}

	var errs []error
	for _, dst := range sortedPrefixes(want) {
		via := want[dst]
		if got, ok := have[dst]; ok && got == via && ours[dst] || theirs(dst) {
			continue
		}
		l.log.Info("lab: the outside's route to a routed network or VM", "dst", dst, "via", via)
		if err := l.RouteReplace(RoleOutside, dst, via); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dst := range sortedPrefixes(have) {
		if _, wanted := want[dst]; wanted || keep[dst] || !ours[dst] {
			continue
		}
		l.log.Info("lab: the outside's route to a network or VM that is gone", "dst", dst)
		if err := deleteLabRoutes(h, RoleOutside, dst); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// outsideRouteHost is the lab host the outside's route to a routed network goes through, given the
// route's host now (cur, "" for none) and the hosts with a port of the network: cur while it has a
// port, else prefer when it has one, else the first by name; "" when no host has a port.
func outsideRouteHost(cur string, hosts []string, prefer string) string {
	switch {
	case cur != "" && slices.Contains(hosts, cur):
		return cur
	case prefer != "" && slices.Contains(hosts, prefer):
		return prefer
	case len(hosts) == 0:
		return ""
	}
	return slices.Min(hosts)
}

// hostWithAddr is the lab host whose underlay address is a ("" when none is).
func (l *Lab) hostWithAddr(a netip.Addr) string {
	for _, h := range l.Hosts() {
		if l.hostAddr(h) == a {
			return h
		}
	}
	return ""
}

// hostAddr is the underlay address of lab host h.
func (l *Lab) hostAddr(h string) netip.Addr {
	i, _ := HostIndex(h)
	return HostAddr(i)
}

func routeDst(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	ones, bits := r.Dst.Mask.Size()
	if !ok || bits != net.IPv4len*8 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func sortedPrefixes[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// lockRoutes makes the commands that change the outside's routes take turns (a status reading the
// ports just before a migration rebinds them must not point a route back at the VM's old host): an
// exclusive flock of the lab's routes.lock, waited for until ctx ends.
func (l *Lab) lockRoutes(ctx context.Context) (unlock func(), err error) {
	if err := os.MkdirAll(l.runDir(), 0o755); err != nil {
		return nil, fmt.Errorf("lab %q: %w", l.cfg.Name, err)
	}
	f, err := os.OpenFile(filepath.Join(l.runDir(), "routes.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lab %q: %w", l.cfg.Name, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lab %q: lock routes.lock: %w", l.cfg.Name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lab %q: waiting for another command changing routes: %w", l.cfg.Name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
