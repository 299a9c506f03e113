package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// NICSpec is one NIC of a VM: a port on TENANT/NETWORK, with an optional fixed IP.
type NICSpec struct {
	Tenant  string
	Network string
	IP      string // empty: allocated by the server
}

// ParseNIC parses TENANT/NETWORK[=IP], the form of `lab vm create --nic`.
func ParseNIC(s string) (NICSpec, error) {
	spec, ip, _ := strings.Cut(s, "=")
	tenant, network, ok := strings.Cut(spec, "/")
	if !ok || tenant == "" || network == "" || strings.Contains(network, "/") {
		return NICSpec{}, fmt.Errorf("nic %q: want TENANT/NETWORK[=IP]", s)
	}
	if ip != "" {
		if _, err := netip.ParseAddr(ip); err != nil {
			return NICSpec{}, fmt.Errorf("nic %q: %w", s, err)
		}
	}
	return NICSpec{Tenant: tenant, Network: network, IP: ip}, nil
}

func (n NICSpec) String() string {
	s := n.Tenant + "/" + n.Network
	if n.IP != "" {
		s += "=" + n.IP
	}
	return s
}

// VMSpec is a VM to create: a namespace on a host with one NIC per port.
type VMSpec struct {
	Name string
	Host string
	NICs []NICSpec
}

// VM is a created VM: its ports, in NIC order (ports[i] is eth<i>).
type VM struct {
	Name  string
	Host  string
	Ports []*vxfabricv1.Port
	// Networks[i] is the network of Ports[i].
	Networks []*vxfabricv1.Network
}

// IP returns the address of the VM's i-th NIC.
func (vm VM) IP(i int) netip.Addr {
	a, _ := netip.ParseAddr(vm.Ports[i].GetIp())
	return a
}

// portName names the i-th NIC's port: <vm>-<network>-<i>, or <vm>-<i> when that would be too long.
func portName(vm, network string, i int) string {
	name := fmt.Sprintf("%s-%s-%d", vm, network, i)
	if len(name) > 63 {
		name = fmt.Sprintf("%s-%d", vm, i)
	}
	return name
}

func requestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "lab-" + hex.EncodeToString(b)
}

// PlugTimeout bounds how long CreateVM waits for the agent to report every port plugged.
const PlugTimeout = 10 * time.Second

// CreateVM creates one port per NIC through the API (bound to the VM's host, named
// <vm>-<network>-<i>, with the VM's name), then the VM's namespace with, per NIC, a veth whose
// host end carries the port's interface name (the agent plugs it in) and whose VM end ethN gets the
// port's MAC, address and the network's MTU; the first NIC on a nat or routed network gives the
// default route through that network's gateway. It returns once every port is plugged. If a step
// fails, what was made is removed again.
func (l *Lab) CreateVM(ctx context.Context, spec VMSpec) (vm VM, err error) {
	if err := ValidateVMName(spec.Name); err != nil {
		return VM{}, err
	}
	if err := l.checkHost(spec.Host); err != nil {
		return VM{}, err
	}
	if len(spec.NICs) == 0 {
		return VM{}, fmt.Errorf("vm %q: at least one --nic is required", spec.Name)
	}
	ns := l.VMNamespace(spec.Name)
	if namespaceExists(ns) {
		return VM{}, fmt.Errorf("vm %q exists (namespace %s): delete it first", spec.Name, ns)
	}
	c, err := l.Client()
	if err != nil {
		return VM{}, err
	}
	defer c.Conn.Close()
	vm = VM{Name: spec.Name, Host: spec.Host}
	defer func() {
		if err == nil {
			return
		}
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if derr := l.deleteVM(cleanup, c, spec.Name, vm.Ports); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", derr))
		}
	}()
	for i, nic := range spec.NICs {
		netw, err := getNetwork(ctx, c, nic.Tenant, nic.Network)
		if err != nil {
			return vm, fmt.Errorf("vm %q nic %s: %w", spec.Name, nic, err)
		}
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := c.Ports.CreatePort(callCtx, &vxfabricv1.CreatePortRequest{
			Tenant: nic.Tenant, Network: nic.Network, Name: portName(spec.Name, nic.Network, i),
			Node: spec.Host, Ip: nic.IP, Vm: spec.Name, RequestId: requestID(),
		})
		cancel()
		if err != nil {
			return vm, fmt.Errorf("vm %q nic %s: create port: %w", spec.Name, nic, err)
		}
		vm.Ports = append(vm.Ports, resp.GetPort())
		vm.Networks = append(vm.Networks, netw)
	}
	if err := ensureNamespace(ctx, ns); err != nil {
		return vm, err
	}
	routed := false
	for i := range vm.Ports {
		gw := netip.Addr{}
		if m := vm.Networks[i].GetMode(); !routed && (m == vxfabricv1.NetworkMode_NETWORK_MODE_NAT || m == vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED) {
			if gw, err = netip.ParseAddr(vm.Networks[i].GetGateway()); err != nil {
				return vm, fmt.Errorf("vm %q: network %s/%s gateway %q: %w", spec.Name,
					vm.Networks[i].GetTenant(), vm.Networks[i].GetName(), vm.Networks[i].GetGateway(), err)
			}
			routed = true
		}
		if err := l.plugNIC(ns, spec.Host, i, vm.Ports[i], vm.Networks[i], gw); err != nil {
			return vm, fmt.Errorf("vm %q: %w", spec.Name, err)
		}
	}
	if err := waitPlugged(ctx, c, vm.Ports); err != nil {
		return vm, fmt.Errorf("vm %q: %w", spec.Name, err)
	}
	l.log.Info("lab vm created", "vm", spec.Name, "node", spec.Host, "ports", len(vm.Ports))
	return vm, nil
}

func getNetwork(ctx context.Context, c *Client, tenant, name string) (*vxfabricv1.Network, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.Networks.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: tenant, Name: name})
	if err != nil {
		return nil, fmt.Errorf("get network: %w", err)
	}
	return resp.GetNetwork(), nil
}

// plugNIC makes the VM's i-th NIC: veth ethN (VM side) <-> port interface (host side).
func (l *Lab) plugNIC(vmNS, host string, i int, port *vxfabricv1.Port, netw *vxfabricv1.Network, gw netip.Addr) error {
	mac, err := net.ParseMAC(port.GetMac())
	if err != nil {
		return fmt.Errorf("port %s mac %q: %w", port.GetName(), port.GetMac(), err)
	}
	ip, err := netip.ParseAddr(port.GetIp())
	if err != nil {
		return fmt.Errorf("port %s ip %q: %w", port.GetName(), port.GetIp(), err)
	}
	cidr, err := netip.ParsePrefix(netw.GetCidr())
	if err != nil {
		return fmt.Errorf("network %s cidr %q: %w", netw.GetName(), netw.GetCidr(), err)
	}
	ifname := port.GetInterfaceName()
	if ifname == "" || len(ifname) > 15 {
		return fmt.Errorf("port %s: interface name %q unusable", port.GetName(), ifname)
	}
	vh, err := handleAt(vmNS)
	if err != nil {
		return err
	}
	defer vh.Close()
	hostNS := l.Namespace(host)
	hh, err := handleAt(hostNS)
	if err != nil {
		return err
	}
	defer hh.Close()
	nsh, err := netns.GetFromName(hostNS)
	if err != nil {
		return fmt.Errorf("open namespace %q: %w", hostNS, err)
	}
	defer nsh.Close()
	eth := fmt.Sprintf("eth%d", i)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: eth, HardwareAddr: mac, MTU: int(netw.GetMtu())},
		PeerName:      ifname,
		PeerNamespace: netlink.NsFd(int(nsh)),
	}
	if err := vh.LinkAdd(veth); err != nil {
		return fmt.Errorf("create %s <-> %s/%s: %w", eth, host, ifname, err)
	}
	link, err := vh.LinkByName(eth)
	if err != nil {
		return fmt.Errorf("read %s: %w", eth, err)
	}
	if err := vh.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(ip, cidr.Bits()))}); err != nil {
		return fmt.Errorf("address %s/%d on %s: %w", ip, cidr.Bits(), eth, err)
	}
	if err := vh.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", eth, err)
	}
	hostEnd, err := hh.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("read %s on %s: %w", ifname, host, err)
	}
	if err := hh.LinkSetUp(hostEnd); err != nil {
		return fmt.Errorf("set %s up on %s: %w", ifname, host, err)
	}
	if gw.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice()),
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
		if err := vh.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s on %s: %w", gw, eth, err)
		}
	}
	return nil
}

// waitPlugged polls the ports until the agent reports every one plugged into its bridge.
func waitPlugged(ctx context.Context, c *Client, ports []*vxfabricv1.Port) error {
	var waiting []string
	err := poll(ctx, PlugTimeout, func() (bool, error) {
		waiting = waiting[:0]
		for _, p := range ports {
			callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := c.Ports.GetPort(callCtx, &vxfabricv1.GetPortRequest{Tenant: p.GetTenant(), Name: p.GetName()})
			cancel()
			if err != nil || !resp.GetPort().GetPlugged() {
				waiting = append(waiting, p.GetName())
			}
		}
		return len(waiting) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("ports not plugged by the agent (%s): %w", strings.Join(waiting, ", "), err)
	}
	return nil
}

// DeleteVM deletes the VM's ports (every port with its vm name) and its namespace. Deleting a VM
// that is gone is success.
func (l *Lab) DeleteVM(ctx context.Context, name string) error {
	if err := ValidateVMName(name); err != nil {
		return err
	}
	c, err := l.Client()
	if err != nil {
		return err
	}
	defer c.Conn.Close()
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := c.Ports.ListPorts(callCtx, &vxfabricv1.ListPortsRequest{Vm: name})
	cancel()
	if err != nil {
		return fmt.Errorf("vm %q: list ports: %w", name, err)
	}
	return l.deleteVM(ctx, c, name, resp.GetPorts())
}

func (l *Lab) deleteVM(ctx context.Context, c *Client, name string, ports []*vxfabricv1.Port) error {
	var errs []error
	for _, p := range ports {
		if p.GetVm() != name {
			continue // a filter the server ignored must not delete someone else's port
		}
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Ports.DeletePort(callCtx, &vxfabricv1.DeletePortRequest{Tenant: p.GetTenant(), Name: p.GetName()})
		cancel()
		if err != nil && status.Code(err) != codes.NotFound {
			errs = append(errs, fmt.Errorf("delete port %s/%s: %w", p.GetTenant(), p.GetName(), err))
		}
	}
	if err := deleteNamespace(ctx, l.VMNamespace(name)); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("vm %q: %w", name, errors.Join(errs...))
	}
	l.log.Info("lab vm deleted", "vm", name, "ports", len(ports))
	return nil
}
