package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// The outside reaches a routed network through a static route to one lab host that has a port of
// it, as a router in front of a real fabric would be configured (see the lab README). Ports come,
// move and go, through the lab's vm commands or straight through the API, so the lab does not
// track the route per operation: it compares every routed network's route with where the
// network's ports are, after each vm command and on each lab status.

// SyncOutsideRoutes points the outside's static route to every routed network at a lab host with a
// port of it: the route's host while it has one, else prefer (a VM's new host) when it has one,
// else the first such host by name; with no port on a lab host the route goes. Routes through an
// address that is not a lab host's are someone else's and stay, as do routes to networks of other
// modes (the demo routes a nat network on purpose).
func (l *Lab) SyncOutsideRoutes(ctx context.Context, c *Client, prefer string) error {
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
	hostsOf := map[string][]string{} // tenant/network: the lab hosts with a port of it
	for _, p := range ports {
		if slices.Contains(l.Hosts(), p.GetNode()) {
			k := p.GetTenant() + "/" + p.GetNetwork()
			if !slices.Contains(hostsOf[k], p.GetNode()) {
				hostsOf[k] = append(hostsOf[k], p.GetNode())
			}
		}
	}
	var errs []error
	for _, n := range nets {
		if n.GetMode() != vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED {
			continue
		}
		name := n.GetTenant() + "/" + n.GetName()
		if err := l.syncOutsideRoute(name, n.GetCidr(), hostsOf[name], prefer); err != nil {
			errs = append(errs, fmt.Errorf("the outside's route to %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// syncOutsideRoute is SyncOutsideRoutes for one routed network, whose ports are on hosts.
func (l *Lab) syncOutsideRoute(network, cidr string, hosts []string, prefer string) error {
	dst, err := netip.ParsePrefix(cidr)
	if err != nil {
		return err
	}
	via, routed, err := l.RouteVia(RoleOutside, dst)
	if err != nil {
		return err
	}
	cur := ""
	if routed {
		if cur = l.hostWithAddr(via); cur == "" {
			return nil // not through a lab host: someone else's route
		}
	}
	want := outsideRouteHost(cur, hosts, prefer)
	switch {
	case want == cur:
		return nil
	case want == "":
		l.log.Info("lab: the outside's route to a routed network goes with its last port", "network", network, "cidr", dst)
		return l.RouteDelete(RoleOutside, dst)
	}
	i, _ := HostIndex(want)
	l.log.Info("lab: the outside reaches a routed network through a host with a port of it", "network", network,
		"cidr", dst, "from", cur, "to", want)
	return l.RouteReplace(RoleOutside, dst, HostAddr(i))
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
		if i, ok := HostIndex(h); ok && HostAddr(i) == a {
			return h
		}
	}
	return ""
}
