package api

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/store"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// The validation table of the API: anything refused here is InvalidArgument and nothing is written.

// validRequestIDChars: request ids are 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'.
func validRequestIDChars(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// specialPrefixes are IPv4 ranges no network may overlap: a gateway or port address in them would be
// this-network, loopback, link-local, multicast or reserved/broadcast, which the kernel treats
// specially (or refuses) on every host with a port in the network.
var specialPrefixes = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this-network range 0.0.0.0/8"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback range 127.0.0.0/8"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local range 169.254.0.0/16"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast range 224.0.0.0/4"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved range 240.0.0.0/4 (broadcast included)"},
}

const (
	minMTU = 576
	maxMTU = 9000
)

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, store.ErrInvalidArgument)...)
}

// validName checks a tenant, network, port, node or vm name.
func validName(field, s string) error {
	if s == "" {
		return invalid("%s is required", field)
	}
	if !vxfabricv1.ValidName(s) {
		return invalid("%s %s: want %s", field, vxfabricv1.Quote(s), vxfabricv1.NameRule)
	}
	return nil
}

func validOptionalName(field, s string) error {
	if s == "" {
		return nil
	}
	return validName(field, s)
}

func validRequestID(s string) error {
	if s != "" && !validRequestIDChars(s) {
		return invalid("request_id %s: want 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'", vxfabricv1.Quote(s))
	}
	return nil
}

func validExpected(rev int64) error {
	if rev < 0 {
		return invalid("expected_revision %d: must not be negative", rev)
	}
	return nil
}

// validCIDR parses an IPv4 network address with prefix /8 to /29 and no host bits, outside the
// special-purpose ranges.
func validCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, invalid("cidr %s: want an IPv4 network such as 10.0.0.0/24", vxfabricv1.Quote(s))
	}
	if p.Bits() < 8 || p.Bits() > 29 {
		return netip.Prefix{}, invalid("cidr %s: prefix length must be /8 to /29", vxfabricv1.Quote(s))
	}
	if p.Masked() != p {
		return netip.Prefix{}, invalid("cidr %s: host bits set (the network address is %s)", vxfabricv1.Quote(s), p.Masked())
	}
	for _, sp := range specialPrefixes {
		if p.Overlaps(sp.prefix) {
			return netip.Prefix{}, invalid("cidr %s: overlaps the %s", vxfabricv1.Quote(s), sp.what)
		}
	}
	return p, nil
}

// validVNI checks a requested VNI (0: allocate one) against the fabric's pool (nil: 1-MaxVNI).
func validVNI(v uint32, pool *alloc.VNIPool) error {
	switch {
	case v > alloc.MaxVNI:
		return invalid("vni %d: must be 1-%d", v, alloc.MaxVNI)
	case v != 0 && pool != nil && !pool.Contains(v):
		var ranges []string
		for _, r := range pool.Ranges() {
			ranges = append(ranges, r.String())
		}
		what := "range"
		if len(ranges) > 1 {
			what = "ranges"
		}
		return invalid("vni %d: outside this fabric's VNI %s %s", v, what, strings.Join(ranges, ", "))
	}
	return nil
}

// validMTU checks a network MTU (0: the default) against what the underlay carries: a frame larger
// than the underlay's MTU less VXLAN's 50 bytes would not cross between hosts.
func validMTU(v, underlayMTU uint32) error {
	if ceiling := min(maxMTU, underlayMTU-50); v != 0 && (v < minMTU || v > ceiling) {
		if v > ceiling && ceiling < maxMTU {
			return invalid("mtu %d: at most %d, the underlay's %d less VXLAN's 50 bytes (server --underlay-mtu)", v, ceiling, underlayMTU)
		}
		return invalid("mtu %d: must be %d-%d", v, minMTU, ceiling)
	}
	return nil
}

func validMode(m vxfabricv1.NetworkMode) error {
	switch m {
	case vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, vxfabricv1.NetworkMode_NETWORK_MODE_NAT,
		vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED:
		return nil
	case vxfabricv1.NetworkMode_NETWORK_MODE_UNSPECIFIED:
		return invalid("mode: required (isolated, nat, routed or bridged)")
	}
	return invalid("mode %d: unknown", m)
}

func hasGateway(m vxfabricv1.NetworkMode) bool {
	return m == vxfabricv1.NetworkMode_NETWORK_MODE_NAT || m == vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED
}

// validInterface checks a Linux interface name as the kernel's dev_valid_name() does: 1-15 bytes,
// not "." or "..", no '/', ':', NUL or whitespace (the kernel's isspace() includes 0xa0). We also
// refuse other control bytes, which no real NIC has and which garble every listing, and quotes,
// which the nftables rules naming the interface could not carry in their comments. It also refuses
// "lo": the loopback device cannot be enslaved to a bridge, so an uplink on it could never work.
func validInterface(s string) error {
	if s == "lo" {
		return invalid("interface %s: the loopback interface cannot be an uplink, want the host's NIC", vxfabricv1.Quote(s))
	}
	bad := s == "" || len(s) > 15 || s == "." || s == ".."
	for i := 0; i < len(s) && !bad; i++ {
		c := s[i]
		bad = c == '/' || c == ':' || c <= ' ' || c == 0x7f || c == 0xa0 || c == '"' || c == '\''
	}
	if bad {
		return invalid("interface %s: want a Linux interface name of 1-15 characters, without '/', ':', quotes or spaces", vxfabricv1.Quote(s))
	}
	if overlay.IsDeviceName(s) || strings.HasPrefix(s, alloc.InterfacePrefix) {
		return invalid("interface %s: names starting %q, %q or %q are vxfabric's own bridges, vxlan devices and ports, want the host's NIC",
			vxfabricv1.Quote(s), overlay.BridgePrefix, overlay.VxlanPrefix, alloc.InterfacePrefix)
	}
	return nil
}

// validMAC parses a unicast, non-zero MAC and returns it lowercase and colon separated.
func validMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", invalid("mac %s: want six hex octets such as 0e:00:00:00:00:01", vxfabricv1.Quote(s))
	}
	if hw[0]&1 != 0 {
		return "", invalid("mac %s: multicast, want a unicast address", vxfabricv1.Quote(s))
	}
	if string(hw) == string(make([]byte, 6)) {
		return "", invalid("mac %s: all-zero", vxfabricv1.Quote(s))
	}
	return hw.String(), nil
}

// validIPSyntax parses the IPv4 address of a request field (named in the refusal).
func validIPSyntax(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, invalid("%s %s: want an IPv4 address such as 10.0.0.1", field, vxfabricv1.Quote(s))
	}
	return a, nil
}

// checkCreateNetwork validates a create request and returns the network to write (without id and
// allocated VNI), defaults applied. A requested VNI must lie in pool (nil: only 1-MaxVNI is checked).
func checkCreateNetwork(req *vxfabricv1.CreateNetworkRequest, underlayMTU uint32, pool *alloc.VNIPool) (*vxfabricv1.Network, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, err
	}
	if err := validName("network name", req.Name); err != nil {
		return nil, err
	}
	prefix, err := validCIDR(req.Cidr)
	if err != nil {
		return nil, err
	}
	if err := validMode(req.Mode); err != nil {
		return nil, err
	}
	if err := validVNI(req.Vni, pool); err != nil {
		return nil, err
	}
	if err := validMTU(req.Mtu, underlayMTU); err != nil {
		return nil, err
	}
	if err := validRequestID(req.RequestId); err != nil {
		return nil, err
	}
	n := &vxfabricv1.Network{
		Tenant: req.Tenant, Name: req.Name, Cidr: prefix.String(), Mode: req.Mode, Vni: req.Vni, Mtu: req.Mtu,
	}
	if n.Mtu == 0 {
		n.Mtu = underlayMTU - 50
	}
	sub, err := alloc.NewSubnet(prefix, netip.Addr{})
	if err != nil {
		return nil, invalid("cidr %s: %v", vxfabricv1.Quote(req.Cidr), err)
	}
	switch {
	case hasGateway(req.Mode) && req.Gateway == "":
		n.Gateway = sub.FirstHost().String()
	case hasGateway(req.Mode):
		gw, err := validIPSyntax("gateway", req.Gateway)
		if err != nil {
			return nil, err
		}
		if !sub.Assignable(gw) {
			return nil, invalid("gateway %s: not a host address of %s", gw, prefix)
		}
		n.Gateway = gw.String()
	case req.Gateway != "":
		return nil, invalid("gateway: only nat and routed networks have one")
	}
	if req.AllocationPool != "" {
		gw, _ := netip.ParseAddr(n.Gateway) // validated above, or none
		withGW, err := alloc.NewSubnet(prefix, gw)
		if err != nil {
			return nil, invalid("cidr %s: %v", vxfabricv1.Quote(req.Cidr), err)
		}
		first, last, err := withGW.ParsePool(req.AllocationPool)
		if err != nil {
			return nil, invalid("%s", err)
		}
		n.AllocationPool = first.String() + "-" + last.String()
	}
	bridged := req.Mode == vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED
	switch {
	case bridged && req.Uplink == nil:
		return nil, invalid("uplink: required for a bridged network")
	case bridged:
		if err := validName("uplink node", req.Uplink.Node); err != nil {
			return nil, err
		}
		if err := validInterface(req.Uplink.Interface); err != nil {
			return nil, err
		}
		n.Uplink = &vxfabricv1.Uplink{Node: req.Uplink.Node, Interface: req.Uplink.Interface}
	case req.Uplink != nil:
		return nil, invalid("uplink: only bridged networks have one")
	}
	return n, nil
}

// checkCreatePort validates what can be checked without the network; checkPortInNetwork does the rest.
func checkCreatePort(req *vxfabricv1.CreatePortRequest) (*vxfabricv1.Port, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, err
	}
	if err := validName("network", req.Network); err != nil {
		return nil, err
	}
	if err := validName("port name", req.Name); err != nil {
		return nil, err
	}
	if err := validName("node", req.Node); err != nil {
		return nil, err
	}
	if err := validOptionalName("vm", req.Vm); err != nil {
		return nil, err
	}
	if err := validRequestID(req.RequestId); err != nil {
		return nil, err
	}
	p := &vxfabricv1.Port{Tenant: req.Tenant, Network: req.Network, Name: req.Name, Node: req.Node, Vm: req.Vm}
	if req.Mac != "" {
		mac, err := validMAC(req.Mac)
		if err != nil {
			return nil, err
		}
		p.Mac = mac
	}
	if req.Ip != "" {
		ip, err := validIPSyntax("ip", req.Ip)
		if err != nil {
			return nil, err
		}
		p.Ip = ip.String()
	}
	return p, nil
}

// checkPortInNetwork refuses a requested address that is not assignable in the network (outside the
// CIDR, or its network, broadcast or gateway address) and a requested MAC equal to the gateway's.
func checkPortInNetwork(p *vxfabricv1.Port, n *vxfabricv1.Network, admin bool) error {
	if p.Ip != "" {
		sub, err := alloc.SubnetOf(n)
		if err != nil {
			return err
		}
		ip := netip.MustParseAddr(p.Ip)
		if !sub.Assignable(ip) {
			return invalid("ip %s: not assignable in %s (network, broadcast and gateway addresses are reserved)", p.Ip, n.Cidr)
		}
		// The rest of the CIDR is not the fabric's to give (on a bridged network: the LAN's router
		// and hosts); an admin may still place a port there by hand.
		if !admin && !sub.InPool(ip) {
			return invalid("ip %s: outside the allocation pool %s of network %s (only an admin may give a port an address outside it)",
				p.Ip, n.AllocationPool, n.Name)
		}
	}
	if p.Mac != "" && p.Mac == alloc.GatewayMAC(n.Vni) {
		return invalid("mac %s: reserved for the gateway of network %q", p.Mac, n.Name)
	}
	return nil
}

// checkVTEPs refuses a network whose CIDR contains the VTEP of a known node: a routed gateway (or a
// port address) equal to a host's underlay address would make that address local on every host with
// a port in the network and cut the host off the fabric. This is a conflict with the stored state,
// hence FailedPrecondition. Only the nodes known now are checked: a node that registers later with a
// VTEP inside an existing network's CIDR is not re-checked. (What else a host reaches outside the
// fabric, its subnets and router, is checked when a nat or routed network's port is bound to it:
// store's gateway guard.)
//
// Node names and underlay addresses are the admin's (NodeService is admin-only): the refusal names
// them only when admin is set; a tenant learns that some host's address is in the way.
func checkVTEPs(cidr string, nodes []nodeVTEP, admin bool) error {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return fmt.Errorf("cidr %q: %w", cidr, err)
	}
	for _, n := range nodes {
		if !prefix.Contains(n.vtep) {
			continue
		}
		if !admin {
			return fmt.Errorf("cidr %s contains the underlay address of a host of this fabric (a port or gateway given that address would cut the host off the fabric): %w",
				prefix, store.ErrFailedPrecondition)
		}
		return fmt.Errorf("cidr %s contains the vtep %s of node %s (a port or gateway given that address would cut the host off the fabric): %w",
			prefix, n.vtep, n.node, store.ErrFailedPrecondition)
	}
	return nil
}
