// Design note: why the kernel tables look as they do.
//
// This file holds what the Linux datapath and the fake share: validation of a desired state, the
// names of kernel objects as they appear in Result.Changes, and the nftables rule plan. Both
// implementations derive their output from here, so a golden test on the fake pins the same rule
// text the kernel carries in each rule's UserData (its nft comment).
//
// Devices. One bridge plus one vxlan device per VNI (the kernel here has no vlan_filtering and no
// vrf, see PLATFORM.md). Both carry link group 0x76000000|VNI so that removing a network is one
// RTM_DELLINK for the group (17 ms instead of 2 x 56 ms holding rtnl), done only after checking that
// the group holds nothing but the pair. IPv6 address generation is set to none before a device goes
// up: no link-local address ever exists, so a tenant never sees one of the host's. Each bridge
// answers ARP only for an address on the bridge itself and asks with one (arp_ignore 1, arp_announce
// 2): by default Linux answers on any interface for any address of the host, so an isolated
// network's VMs would learn its underlay addresses. The MTU is the
// network's, i.e. the underlay's minus VXLANOverhead (50 bytes); ports get it too. A vxlan device
// whose VNI, VTEP or proxy flag differ is the only thing ever recreated (the kernel cannot change
// those in place); everything else is changed in place or left alone.
//
// FDB, written in this order per network: unicast entries (one permanent MAC -> VTEP entry per
// remote port, NeighSet, which replaces in place), then the all-zero flood entries appended per
// remote VTEP (head-end replication), so a new flood target never receives frames for MACs that
// are not pinned yet; deletions come last. Learning is off: the control plane is the only source.
// In the bridge, each local port's MAC is pinned to its port with a static, sticky entry when it is
// plugged: a frame that arrives through the tunnel or a bridged network's LAN with that source MAC
// does not move it, and a quiet VM's frames are never flooded. A MAC that is the bridge's own (its
// address, a bridged uplink's) is never pinned: the pin would take it from the bridge.
//
// ARP suppression. One permanent neighbour entry per remote IPv4 port on the vxlan device, and the
// vxlan proxy flag: the vxlan driver answers ARP requests from these entries and consumes every ARP
// request it would transmit, so no ARP crosses the underlay at all. Bridged networks go without the
// proxy flag (and without the entries): their VMs must resolve hosts on the uplink's LAN, which the
// control plane does not know.
//
// Distributed gateway (nat, routed). Every host's bridge carries the same gateway IP and takes the
// gateway MAC as its own address; bridge postrouting drops frames from that MAC and ARP requests for
// that IP on the way out of the vxlan device, so each host answers for the gateway and routes its
// own VMs' traffic. A route from outside must therefore point at the host of the VM.
//
// Filtering. Our objects live in three tables named vxfabric (families inet, bridge and netdev) with
// base chains at priority 0 (filter) and 100 (nat), policy accept: we only drop what we must and
// never decide for traffic that is not ours. Port security is one netdev ingress chain per local
// port (PortChain). See NftPlan for the rules. The Linux datapath compares the comment of
// every rule with the plan: matching rules stay (a restarted process re-creates nothing), missing
// ones are inserted at their place by handle, stale ones deleted afterwards; tables are never flushed.
// br_netfilter (loaded on Docker hosts and on many others; every new namespace then starts with it on)
// sends frames switched inside a bridge
// through the inet forward hook with the bridge as both iif and oif; every forward rule that names a
// bridge therefore excludes that case.
//
// Forwarding. net.ipv4.ip_forward is turned on only when a nat or routed network exists and was off;
// the empty, hookless chain ForwardingMarkChain records in the kernel that we did, so that only then
// (by this or a later process) it is turned off again when the last such network goes.

package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// ErrInvalid marks a desired state that Apply rejects as a whole, before touching the kernel.
var ErrInvalid = errors.New("invalid desired state")

// ErrUplinkMissing marks a bridged network whose uplink interface does not exist on this host.
var ErrUplinkMissing = errors.New("uplink interface not found")

// ErrUplinkRefused marks a bridged network whose uplink interface must not be enslaved: the
// loopback, the underlay (it carries VXLAN itself), or another network's uplink.
var ErrUplinkRefused = errors.New("uplink refused")

// ErrGatewayRefused marks a nat or routed network whose gateway stays off its bridge: its route
// would take traffic the host sends outside the fabric (see overlay/linux's underlayClash).
var ErrGatewayRefused = errors.New("gateway refused")

// ErrVTEPMissing marks a VTEP that no interface of the host has: VXLAN is neither sent from it nor
// received on it. Everything else is converged all the same, and works once the address is there.
var ErrVTEPMissing = errors.New("no interface of this host has this address")

// ErrSettingRefused marks a setting the host does not let us write (a read-only /proc/sys, as in an
// unprivileged container).
var ErrSettingRefused = errors.New("the host refuses the setting")

// Standing reports whether an object error is a refusal or a condition that stands until the
// desired state or the host changes (ErrUplinkRefused, ErrGatewayRefused, ErrVTEPMissing,
// ErrSettingRefused), not a failure that trying again may mend.
func Standing(err error) bool {
	for _, e := range []error{ErrUplinkRefused, ErrGatewayRefused, ErrVTEPMissing, ErrSettingRefused} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// OnlyStanding reports whether an Apply's error consists of Standing refusals alone (the join of
// its object errors): such an Apply converged everything it may. An Apply cut short returns its own
// error, which is not one.
func OnlyStanding(err error) bool {
	if err == nil {
		return false
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return Standing(err)
	}
	parts := joined.Unwrap()
	for _, e := range parts {
		if !OnlyStanding(e) {
			return false
		}
	}
	return len(parts) > 0
}

// UplinkRefusal tells why n's uplink must stay out of n's bridge, or returns nil. The host's
// interface is described by loopback and addrs (its IPv4 addresses); holder is the VNI of the
// network whose bridge holds it now (0: none). Of networks naming the same uplink, the holder keeps
// it, else the lowest VNI takes it; the control plane refuses such a second network, so this only
// meets state written before it did. Both datapaths decide with this one rule.
func UplinkRefusal(d DesiredState, n Network, loopback bool, addrs []netip.Addr, holder uint32) error {
	switch {
	case loopback:
		return fmt.Errorf("%q is a loopback interface: %w", n.Uplink, ErrUplinkRefused)
	case n.Uplink == d.Underlay.Interface:
		return fmt.Errorf("%q carries the underlay: %w", n.Uplink, ErrUplinkRefused)
	case d.Underlay.VTEP.IsValid() && slices.Contains(addrs, d.Underlay.VTEP):
		return fmt.Errorf("%q holds the VTEP address %s: %w", n.Uplink, d.Underlay.VTEP, ErrUplinkRefused)
	}
	owner, shared := n.VNI, false
	for _, o := range d.Networks {
		if o.Mode != ModeBridged || o.Uplink != n.Uplink || o.VNI == n.VNI {
			continue
		}
		shared = true
		if o.VNI == holder || owner != holder && o.VNI < owner {
			owner = o.VNI
		}
	}
	if shared && owner != n.VNI {
		return fmt.Errorf("%q is the uplink of network vni %d: %w", n.Uplink, owner, ErrUplinkRefused)
	}
	return nil
}

// BridgePrefix starts every bridge name (see BridgeName); nftables matches it as a wildcard.
const BridgePrefix = "vxbr"

// VxlanPrefix starts every vxlan device name (see VxlanName).
const VxlanPrefix = "vxlan"

// IsDeviceName reports whether name belongs to the devices this package creates (bridges and vxlan
// devices). Port and uplink interfaces may not use these names; other "vx" names (the control
// plane's "vxp<id>" port interfaces) are fine.
func IsDeviceName(name string) bool {
	return strings.HasPrefix(name, BridgePrefix) || strings.HasPrefix(name, VxlanPrefix)
}

// TableName is the name of our nftables tables (one each of families inet, bridge and netdev).
const TableName = "vxfabric"

// ForwardingMarkChain is an empty, hookless chain in our inet table whose existence records that we
// (not someone else) turned net.ipv4.ip_forward on in this namespace, so that only then we turn it
// off again. It lives in the kernel so a restarted process knows it too.
const ForwardingMarkChain = "ip-forward-set-by-vxfabric"

// VTEPSet4 and VTEPSet6 are the named sets of the underlay filter, updated element by element.
// InfraSet4 and InfraSet6 hold the fabric's own addresses that VMs may not connect to.
const (
	VTEPSet4  = "vteps4"
	VTEPSet6  = "vteps6"
	InfraSet4 = "infra4"
	InfraSet6 = "infra6"
)

// NftSetNames are our named sets, in the order they are created.
var NftSetNames = []string{VTEPSet4, VTEPSet6, InfraSet4, InfraSet6}

// NftSetIs6 tells whether a set of ours holds IPv6 addresses.
func NftSetIs6(name string) bool { return name == VTEPSet6 || name == InfraSet6 }

// Port security lives in our netdev table, on the ingress hook of each local port's interface: a
// frame is checked where the port's interface receives it from the VM, before any bridge sees it,
// against constants (the port's one MAC and IPv4 address), so the cost per frame does not grow with
// the number of ports, and frames from the fabric (the vxlan device) and the uplink pass no check at
// all. The chain hooks the interface by name: on kernels that keep a netdev hook while its device is
// away (6.16 on), it attaches again when the interface comes back; earlier ones delete the chain with
// its device, and the next Apply writes it again, before it plugs the port.
//
// PortDropSet, in the netdev table too, counts what port security drops, per port: a frame that
// fails a check jumps to PortDropChain, whose first rule adds the frame's input interface to the
// set and counts the frame on that element (`nft list set netdev vxfabric port_drops`), and whose
// second drops it. The kernel fills the set; an Apply only removes the interfaces of ports gone.
// The count is a rule of its own because adding an element can fail (the set full, no memory),
// which ends that rule: the drop must not depend on it.
const (
	PortDropSet   = "port_drops"
	PortDropChain = "port_drop"
	// PortChainPrefix starts the name of each port's ingress chain (PortChain).
	PortChainPrefix = "portsec_"
)

// PortChain names the ingress chain that checks what the local port on interface iface sends.
func PortChain(iface string) string { return PortChainPrefix + iface }

// PortChains returns the port ingress chains of plan whose interface exists (by exists), and every
// other chain: a port's chain is written once its interface is there, as the port is plugged.
func PortChains(plan []NftChain, exists func(iface string) bool) []NftChain {
	return slices.DeleteFunc(slices.Clone(plan), func(c NftChain) bool { return c.Device != "" && !exists(c.Device) })
}

// PortIfaces returns the interfaces whose port ingress chain plan holds, sorted.
func PortIfaces(plan []NftChain) []string {
	var ifaces []string
	for _, c := range plan {
		if c.Device != "" {
			ifaces = append(ifaces, c.Device)
		}
	}
	slices.Sort(ifaces)
	return ifaces
}

// PortVNIs returns the network (VNI) of each local port, by interface.
func (d DesiredState) PortVNIs() map[string]uint32 {
	vnis := make(map[string]uint32)
	for _, n := range d.Networks {
		for _, p := range n.Ports {
			vnis[p.Interface] = n.VNI
		}
	}
	return vnis
}

// Validate checks a desired state; the error wraps ErrInvalid and names the first bad object.
func (d DesiredState) Validate() error {
	if len(d.Networks) > 0 && !d.Underlay.VTEP.IsValid() {
		return fmt.Errorf("underlay vtep missing: %w", ErrInvalid)
	}
	vnis := make(map[uint32]bool, len(d.Networks))
	ports := make(map[string]uint32)
	for _, n := range d.Networks {
		if err := checkVNI("network", n.VNI); err != nil {
			return err
		}
		if vnis[n.VNI] {
			return fmt.Errorf("network vni %d: listed twice: %w", n.VNI, ErrInvalid)
		}
		vnis[n.VNI] = true
		if n.MTU < 576 || n.MTU > 65535 {
			return fmt.Errorf("network vni %d: mtu %d out of range 576..65535: %w", n.VNI, n.MTU, ErrInvalid)
		}
		switch n.Mode {
		case ModeIsolated:
		case ModeNAT, ModeRouted:
			if !n.CIDR.IsValid() || !n.CIDR.Addr().Is4() {
				return fmt.Errorf("network vni %d: %s mode needs an IPv4 cidr: %w", n.VNI, n.Mode, ErrInvalid)
			}
			if !n.Gateway.Is4() || !n.CIDR.Contains(n.Gateway) {
				return fmt.Errorf("network vni %d: gateway %s not in %s: %w", n.VNI, n.Gateway, n.CIDR, ErrInvalid)
			}
			if len(n.GatewayMAC) != 6 {
				return fmt.Errorf("network vni %d: gateway mac %q: %w", n.VNI, n.GatewayMAC, ErrInvalid)
			}
		case ModeBridged:
			// Only the host that owns the uplink names it; the others just carry the segment.
			if len(n.Uplink) > 15 {
				return fmt.Errorf("network vni %d: uplink name %q too long: %w", n.VNI, n.Uplink, ErrInvalid)
			}
			if IsDeviceName(n.Uplink) {
				return fmt.Errorf("network vni %d: uplink %q uses our own prefix: %w", n.VNI, n.Uplink, ErrInvalid)
			}
		default:
			return fmt.Errorf("network vni %d: %s: %w", n.VNI, n.Mode, ErrInvalid)
		}
		for _, p := range n.Ports {
			if p.Interface == "" || len(p.Interface) > 15 || IsDeviceName(p.Interface) {
				return fmt.Errorf("network vni %d: port interface %q: %w", n.VNI, p.Interface, ErrInvalid)
			}
			if other, dup := ports[p.Interface]; dup {
				return fmt.Errorf("port %q: in networks %d and %d: %w", p.Interface, other, n.VNI, ErrInvalid)
			}
			ports[p.Interface] = n.VNI
			if len(p.MAC) != 6 {
				return fmt.Errorf("port %q: mac %q: %w", p.Interface, p.MAC, ErrInvalid)
			}
		}
		for _, r := range n.Remotes {
			if len(r.MAC) != 6 || !r.VTEP.IsValid() {
				return fmt.Errorf("network vni %d: remote port %s at %s: %w", n.VNI, r.MAC, r.VTEP, ErrInvalid)
			}
		}
		for _, v := range n.Flood {
			if !v.IsValid() {
				return fmt.Errorf("network vni %d: flood vtep missing: %w", n.VNI, ErrInvalid)
			}
		}
	}
	return nil
}

// NeedsForwarding reports whether any network of d routes (nat or routed mode).
func (d DesiredState) NeedsForwarding() bool {
	for _, n := range d.Networks {
		if n.Mode == ModeNAT || n.Mode == ModeRouted {
			return true
		}
	}
	return false
}

// HasGateway reports whether the network's bridge carries the distributed gateway.
func (n Network) HasGateway() bool { return n.Mode == ModeNAT || n.Mode == ModeRouted }

// Proxy reports whether the network's vxlan device answers ARP from its neighbour table. Bridged
// networks go without: the vxlan proxy consumes every ARP request it cannot answer, and in bridged
// mode remote VMs must resolve hosts on the uplink's LAN, which we know nothing about.
func (n Network) Proxy() bool { return n.Mode != ModeBridged }

// The object names below are the Object field of a Change; Linux and fake produce the same text.

// BridgeObject names a network's bridge.
func BridgeObject(vni uint32) string { return "bridge " + BridgeName(vni) }

// VxlanObject names a network's vxlan device.
func VxlanObject(vni uint32) string { return "vxlan " + VxlanName(vni) }

// FDBObject names a unicast FDB entry.
func FDBObject(vni uint32, mac net.HardwareAddr, vtep netip.Addr) string {
	return "fdb " + VxlanName(vni) + " " + mac.String() + " dst " + vtep.String()
}

// LearnedObject names the entry a network's bridge learned for mac on its vxlan port: for a local
// port's MAC, a stale one (the VM was behind the tunnel before it came to this host).
func LearnedObject(vni uint32, mac net.HardwareAddr) string {
	return "learned " + mac.String() + " dev " + VxlanName(vni) + " master " + BridgeName(vni)
}

// FloodObject names an all-zero-MAC flood entry.
func FloodObject(vni uint32, vtep netip.Addr) string {
	return "flood " + VxlanName(vni) + " dst " + vtep.String()
}

// NeighObject names an ARP suppression neighbour entry.
func NeighObject(vni uint32, ip netip.Addr, mac net.HardwareAddr) string {
	return "neigh " + VxlanName(vni) + " " + ip.String() + " lladdr " + mac.String()
}

// PortObject names a local port's attachment to its bridge.
func PortObject(vni uint32, iface string) string {
	return "port " + iface + " master " + BridgeName(vni)
}

// UplinkObject names a bridged network's uplink attachment.
func UplinkObject(vni uint32, iface string) string {
	return "uplink " + iface + " master " + BridgeName(vni)
}

// AddrObject names an address on a bridge.
func AddrObject(vni uint32, p netip.Prefix) string {
	return "addr " + BridgeName(vni) + " " + p.String()
}

// RouteObject names the default route moved to a bridged network's bridge.
func RouteObject(vni uint32, gw netip.Addr) string {
	return "route default via " + gw.String() + " dev " + BridgeName(vni)
}

// ForwardingObject names the IPv4 forwarding switch.
const ForwardingObject = "sysctl net.ipv4.ip_forward"

// VTEPObject names the host's VTEP address: an error on it means VXLAN cannot work on this host.
func VTEPObject(vtep netip.Addr) string { return "vtep " + vtep.String() }

// TableObject, ChainObject, RuleObject and SetElemObject name nftables objects.
func TableObject(family string) string { return "nft table " + family + " " + TableName }
func ChainObject(family, chain string) string {
	return "nft chain " + family + " " + TableName + " " + chain
}
func RuleObject(family, chain, rule string) string {
	return "nft rule " + family + " " + TableName + " " + chain + " " + rule
}
func SetElemObject(set string, a netip.Addr) string {
	return "nft element inet " + TableName + " " + set + " " + a.String()
}

// PortDropElemObject names the element of PortDropSet that counts the drops of port iface.
func PortDropElemObject(iface string) string {
	return "nft element netdev " + TableName + " " + PortDropSet + " " + iface
}

// SetObject names a set of ours as a whole.
func SetObject(family, set string) string { return "nft set " + family + " " + TableName + " " + set }

// NftChain is one chain of ours with its rules in order: a base chain on a hook, or a regular
// chain (no Type, Hook or Priority) that rules of the same table jump to.
type NftChain struct {
	Family   string // "inet", "bridge" or "netdev"
	Name     string
	Type     string // "filter" or "nat"; "" for a regular chain
	Hook     string // "prerouting", "input", "forward", "postrouting", "ingress"; "" for a regular chain
	Device   string // the interface of an ingress chain (netdev)
	Priority int
	Rules    []Rule
}

// Rule is one nftables rule as a list of matches and a verdict. Its String is canonical: it is what
// the Linux datapath stores in the rule's UserData and compares on the next Apply.
type Rule struct {
	Matches []Match
	// Counter counts the packets the rule matched (port security drops).
	Counter bool
	// Tally names a dynamic set of interface names (PortDropSet): the rule adds the frame's input
	// interface to it, and the element counts the frames.
	Tally string
	// Verdict ends the rule; none lets the frame go on to the next rule.
	Verdict Verdict
}

// Verdict ends a rule.
type Verdict string

const (
	Accept     Verdict = "accept"
	Drop       Verdict = "drop"
	Masquerade Verdict = "masquerade"
)

// JumpTo is the verdict that goes on in a regular chain of the same table (and comes back after it
// unless that chain ends the frame).
func JumpTo(chain string) Verdict { return Verdict("jump " + chain) }

// JumpTarget is the chain a JumpTo verdict names, or "".
func (v Verdict) JumpTarget() string {
	target, _ := strings.CutPrefix(string(v), "jump ")
	if target == string(v) {
		return ""
	}
	return target
}

// Field is what a Match looks at.
type Field int

const (
	FieldIIFName     Field = iota + 1 // Name; a trailing "*" matches a prefix
	FieldOIFName                      // Name; a trailing "*" matches a prefix
	FieldEtherType                    // Num: 0x0800 ip, 0x0806 arp, 0x8100 vlan, 0x88a8 8021ad
	FieldEtherSaddr                   // MAC
	FieldARPOp                        // Num
	FieldARPSha                       // MAC
	FieldARPSpa                       // Prefix (a single address)
	FieldARPTpa                       // Prefix (a single address)
	FieldIPSaddr                      // Prefix
	FieldIPDaddr                      // Prefix
	FieldUDPDport                     // Num
	FieldICMPType                     // Num
	FieldCtState                      // Num: established|related when 0
	FieldIPSaddrSet                   // Name: an ipv4 set
	FieldIP6SaddrSet                  // Name: an ipv6 set
	FieldIPDaddrSet                   // Name: an ipv4 set
	FieldIP6DaddrSet                  // Name: an ipv6 set
	FieldUDPSport                     // Num
)

// Match is one condition of a rule.
type Match struct {
	Field  Field
	Neg    bool
	Name   string
	MAC    net.HardwareAddr
	Prefix netip.Prefix
	Num    uint16
}

func (m Match) String() string {
	op := " "
	if m.Neg {
		op = " != "
	}
	switch m.Field {
	case FieldIIFName:
		return "iifname" + op + quoteName(m.Name)
	case FieldOIFName:
		return "oifname" + op + quoteName(m.Name)
	case FieldEtherType:
		switch m.Num {
		case 0x0800:
			return "ether type" + op + "ip"
		case 0x0806:
			return "ether type" + op + "arp"
		case 0x8100:
			return "ether type" + op + "vlan"
		case 0x88a8:
			return "ether type" + op + "8021ad"
		}
		return fmt.Sprintf("ether type%s0x%04x", op, m.Num)
	case FieldEtherSaddr:
		return "ether saddr" + op + m.MAC.String()
	case FieldARPOp:
		if m.Num == 1 {
			return "arp operation" + op + "request"
		}
		return fmt.Sprintf("arp operation%s%d", op, m.Num)
	case FieldARPSha:
		return "arp saddr ether" + op + m.MAC.String()
	case FieldARPSpa:
		return "arp saddr ip" + op + prefixText(m.Prefix)
	case FieldARPTpa:
		return "arp daddr ip" + op + prefixText(m.Prefix)
	case FieldIPSaddr:
		return "ip saddr" + op + prefixText(m.Prefix)
	case FieldIPDaddr:
		return "ip daddr" + op + prefixText(m.Prefix)
	case FieldUDPDport:
		return fmt.Sprintf("udp dport%s%d", op, m.Num)
	case FieldUDPSport:
		return fmt.Sprintf("udp sport%s%d", op, m.Num)
	case FieldICMPType:
		if m.Num == 8 {
			return "icmp type" + op + "echo-request"
		}
		return fmt.Sprintf("icmp type%s%d", op, m.Num)
	case FieldCtState:
		return "ct state" + op + "established,related"
	case FieldIPSaddrSet:
		return "ip saddr" + op + "@" + m.Name
	case FieldIP6SaddrSet:
		return "ip6 saddr" + op + "@" + m.Name
	case FieldIPDaddrSet:
		return "ip daddr" + op + "@" + m.Name
	case FieldIP6DaddrSet:
		return "ip6 daddr" + op + "@" + m.Name
	}
	return fmt.Sprintf("field(%d)", int(m.Field))
}

// quoteName quotes an interface name in a rule's text with single quotes. The text is the rule's
// nft comment, and nft prints a comment between double quotes without escaping what is inside: a
// double quote there would make `nft list ruleset` output that `nft -f` cannot load back.
func quoteName(name string) string {
	return "'" + strings.ReplaceAll(name, `"`, "'") + "'"
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (r Rule) String() string {
	var b strings.Builder
	for _, m := range r.Matches {
		b.WriteString(m.String())
		b.WriteByte(' ')
	}
	if r.Counter {
		b.WriteString("counter ")
	}
	if r.Tally != "" {
		b.WriteString("update @" + r.Tally + " { iifname } ")
	}
	b.WriteString(string(r.Verdict))
	return strings.TrimSuffix(b.String(), " ")
}

// PortDropChainPlan is the regular chain port security jumps to: count the frame on its port, then
// drop it.
func PortDropChainPlan() NftChain {
	return NftChain{Family: "netdev", Name: PortDropChain,
		Rules: []Rule{{Tally: PortDropSet}, {Verdict: Drop}}}
}

func iif(name string) Match    { return Match{Field: FieldIIFName, Name: name} }
func oif(name string) Match    { return Match{Field: FieldOIFName, Name: name} }
func notIIF(name string) Match { return Match{Field: FieldIIFName, Neg: true, Name: name} }
func notOIF(name string) Match { return Match{Field: FieldOIFName, Neg: true, Name: name} }
func host(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}

// WithoutUplinks returns d with the uplink of each bridged network that held reports this host
// does not hold (refused, or its interface missing) left out: NftPlan then filters that network's
// bridge as another host's, which takes nothing and routes nothing, rather than as one holding the
// LAN's addresses. d is not modified.
func (d DesiredState) WithoutUplinks(held func(Network) bool) DesiredState {
	out := d
	out.Networks = slices.Clone(d.Networks)
	for i, n := range out.Networks {
		if n.Mode == ModeBridged && n.Uplink != "" && !held(n) {
			out.Networks[i].Uplink = ""
		}
	}
	return out
}

// NftPlan returns our chains with their rules for a desired state, in the order they are written.
// An empty desired state (no networks) has no chains: our tables are removed then.
//
// Why these rules (tenant isolation on a host that forwards):
//   - inet input: VXLAN is accepted only from known VTEPs, to this host's VTEP, and not through one
//     of our bridges; a VM may ping its gateway and get replies to what the host opened, nothing
//     else (it never reaches this host's agent, server, etcd or gossip ports); another host's
//     bridged LAN reaches nothing of this host, the uplink's LAN none of the fabric's addresses.
//   - inet forward: nor does a VM reach those of any other host or server of the fabric: new
//     connections routed from a vx bridge to an address of the infrastructure sets are dropped.
//   - inet forward: every rule that names a bridge excludes traffic that enters and leaves the same
//     bridge, because with br_netfilter loaded (Docker hosts and many others) frames switched
//     inside a bridge traverse the inet forward hook too, with the bridge as both iif and oif.
//     Replies pass first, then every network's drops, then the accepts: a non-bridged network's
//     traffic never goes to another vx bridge (two tenants with the same CIDR stay apart even with
//     forwarding on), so a routed network's accepts take nothing of another network's; nat
//     networks accept no new connections from outside; isolated networks forward nothing at all; a
//     bridged network's bridge routes nothing on a host without its uplink, and nothing between the
//     LAN and the underlay interface on the uplink's.
//   - inet postrouting (nat): masquerade a nat network's CIDR leaving anywhere but its own bridge.
//   - netdev ingress of each local port (PortChain): port security, a port sends only IPv4 and ARP,
//     untagged, from its own MAC and IPv4 address (ARP without a sender address only as its own
//     address conflict probe), and nothing to a DHCP client's port; a frame that fails a check
//     goes to PortDropChain, which counts it on its port and drops it.
//   - bridge postrouting: the distributed gateway stays local: frames from the gateway MAC and ARP
//     requests for the gateway IP never leave through a vxlan device.
//
// A base chain without rules is left out: a hook costs every packet that passes it something, even
// with nothing to check.
func NftPlan(d DesiredState) []NftChain {
	if len(d.Networks) == 0 {
		return nil
	}
	input := NftChain{Family: "inet", Name: "input", Type: "filter", Hook: "input", Priority: 0}
	forward := NftChain{Family: "inet", Name: "forward", Type: "filter", Hook: "forward", Priority: 0}
	nat := NftChain{Family: "inet", Name: "postrouting", Type: "nat", Hook: "postrouting", Priority: 100}
	bpost := NftChain{Family: "bridge", Name: "postrouting", Type: "filter", Hook: "postrouting", Priority: 0}

	udp := Match{Field: FieldUDPDport, Num: VXLANPort}
	ct := Match{Field: FieldCtState}
	if !d.DisableUnderlayFilter {
		// VXLAN from a known VTEP to this host's VTEP, and not through one of our bridges. The
		// kernel's VXLAN socket takes a packet to any address of the host, and a source address
		// proves little: a VM's packet masqueraded by its host carries that host's VTEP as its
		// source (to a gateway address of another host), and a frame from a bridged LAN may carry
		// any (to this host's VTEP, through the bridge that holds the LAN). VTEPs are IPv4 only.
		input.Rules = append(input.Rules,
			Rule{Matches: []Match{udp, notIIF(BridgePrefix + "*"), {Field: FieldIPDaddr, Prefix: host(d.Underlay.VTEP)},
				{Field: FieldIPSaddrSet, Name: VTEPSet4}}, Verdict: Accept},
			Rule{Matches: []Match{udp}, Counter: true, Verdict: Drop},
		)
	}
	forward.Rules = append(forward.Rules, Rule{Matches: []Match{ct}, Verdict: Accept},
		// New connections from any VM routed towards the fabric's own hosts and servers: never, in
		// any mode (what is switched inside one bridge is not routed, and not ours to judge here).
		Rule{Matches: []Match{iif(BridgePrefix + "*"), notOIF(BridgePrefix + "*"), {Field: FieldIPDaddrSet, Name: InfraSet4}}, Counter: true, Verdict: Drop},
		Rule{Matches: []Match{iif(BridgePrefix + "*"), notOIF(BridgePrefix + "*"), {Field: FieldIP6DaddrSet, Name: InfraSet6}}, Counter: true, Verdict: Drop})
	// Every network's drops come before any network's accepts: a routed network accepts what is
	// routed to it, which another network's traffic must never be, whichever VNI comes first.
	var drops, accepts []Rule
	for _, n := range d.Networks {
		br := BridgeName(n.VNI)
		if n.Mode == ModeBridged {
			// Another host's LAN: to this host the bridge is a switch it is no part of. On the
			// uplink's host the bridge holds the LAN's addresses, as the NIC did: the host's own
			// traffic there is its business, but the LAN reaches none of the fabric's addresses
			// there, and the host does not route the LAN into its underlay interface.
			if n.Uplink == "" {
				input.Rules = append(input.Rules, Rule{Matches: []Match{iif(br)}, Counter: true, Verdict: Drop})
				drops = append(drops,
					Rule{Matches: []Match{iif(br), notOIF(br)}, Counter: true, Verdict: Drop},
					Rule{Matches: []Match{oif(br), notIIF(br)}, Counter: true, Verdict: Drop})
			} else {
				input.Rules = append(input.Rules,
					Rule{Matches: []Match{iif(br), {Field: FieldIPDaddrSet, Name: InfraSet4}}, Counter: true, Verdict: Drop})
				if d.Underlay.Interface != "" {
					drops = append(drops,
						Rule{Matches: []Match{iif(br), oif(d.Underlay.Interface)}, Counter: true, Verdict: Drop},
						Rule{Matches: []Match{iif(d.Underlay.Interface), oif(br)}, Counter: true, Verdict: Drop})
				}
			}
		}
		if n.Mode != ModeBridged {
			input.Rules = append(input.Rules, Rule{Matches: []Match{iif(br), ct}, Verdict: Accept})
			if n.HasGateway() {
				input.Rules = append(input.Rules, Rule{Matches: []Match{iif(br),
					{Field: FieldIPDaddr, Prefix: host(n.Gateway)}, {Field: FieldICMPType, Num: 8}}, Verdict: Accept})
			}
			input.Rules = append(input.Rules, Rule{Matches: []Match{iif(br)}, Verdict: Drop})
			drops = append(drops, Rule{Matches: []Match{iif(br), notOIF(br), oif(BridgePrefix + "*")}, Verdict: Drop})
		}
		switch n.Mode {
		case ModeIsolated:
			drops = append(drops,
				Rule{Matches: []Match{iif(br), notOIF(br)}, Verdict: Drop},
				Rule{Matches: []Match{oif(br), notIIF(br)}, Verdict: Drop})
		case ModeNAT:
			drops = append(drops, Rule{Matches: []Match{oif(br), notIIF(br)}, Verdict: Drop})
			accepts = append(accepts, Rule{Matches: []Match{iif(br)}, Verdict: Accept})
			nat.Rules = append(nat.Rules, Rule{Matches: []Match{
				{Field: FieldIPSaddr, Prefix: n.CIDR.Masked()}, {Field: FieldOIFName, Neg: true, Name: br}}, Verdict: Masquerade})
		case ModeRouted:
			accepts = append(accepts,
				Rule{Matches: []Match{iif(br)}, Verdict: Accept},
				Rule{Matches: []Match{oif(br)}, Verdict: Accept})
		}
		if n.HasGateway() {
			vx := VxlanName(n.VNI)
			bpost.Rules = append(bpost.Rules,
				Rule{Matches: []Match{oif(vx), {Field: FieldEtherSaddr, MAC: n.GatewayMAC}}, Verdict: Drop},
				Rule{Matches: []Match{oif(vx), {Field: FieldEtherType, Num: 0x0806},
					{Field: FieldARPTpa, Prefix: host(n.Gateway)}}, Verdict: Drop})
		}
	}
	forward.Rules = append(append(forward.Rules, drops...), accepts...)
	// The drop chain before the chains that jump to it: its rules are in place first.
	plan := []NftChain{input, forward, nat}
	if ports := portChains(d); len(ports) > 0 {
		plan = append(append(plan, PortDropChainPlan()), ports...)
	}
	plan = append(plan, bpost)
	return slices.DeleteFunc(plan, func(c NftChain) bool { return c.Hook != "" && len(c.Rules) == 0 })
}

// portChains returns the ingress chain of each local port, sorted by interface; none when port
// security is off.
func portChains(d DesiredState) []NftChain {
	if d.DisablePortSecurity {
		return nil
	}
	arp, ip := Match{Field: FieldEtherType, Num: 0x0806}, Match{Field: FieldEtherType, Num: 0x0800}
	notARP, notIP := arp, ip
	notARP.Neg, notIP.Neg = true, true
	drop := JumpTo(PortDropChain)
	unspecified := host(netip.IPv4Unspecified())
	var chains []NftChain
	for _, n := range d.Networks {
		for _, p := range n.Ports {
			rules := []Rule{
				{Matches: []Match{{Field: FieldEtherSaddr, Neg: true, MAC: p.MAC}}, Counter: true, Verdict: drop},
				// A port has an IPv4 address: it sends IPv4 and ARP, nothing else. Not IPv6, whose
				// router advertisements and addresses nothing here checks; not VLAN-tagged frames,
				// in which the rules below would read the tag's ether type and let any sender through.
				{Matches: []Match{notIP, notARP}, Counter: true, Verdict: drop},
				{Matches: []Match{arp, {Field: FieldARPSha, Neg: true, MAC: p.MAC}}, Counter: true, Verdict: drop},
			}
			if p.IP.Is4() {
				self := host(p.IP)
				zero := Match{Field: FieldARPSpa, Prefix: unspecified}
				rules = append(rules,
					Rule{Matches: []Match{arp, {Field: FieldARPSpa, Neg: true, Prefix: self}, {Field: FieldARPSpa, Neg: true, Prefix: unspecified}},
						Counter: true, Verdict: drop},
					// Without a sender address only the port's own address conflict probe (RFC 5227),
					// which no neighbour learns from: not one for a neighbour's address, which would
					// make it give its address up.
					Rule{Matches: []Match{arp, zero, {Field: FieldARPOp, Neg: true, Num: 1}}, Counter: true, Verdict: drop},
					Rule{Matches: []Match{arp, zero, {Field: FieldARPTpa, Neg: true, Prefix: self}}, Counter: true, Verdict: drop},
					Rule{Matches: []Match{ip, {Field: FieldIPSaddr, Neg: true, Prefix: self}}, Counter: true, Verdict: drop})
			}
			// A VM is no DHCP server to its neighbours, whatever port it answers from (clients look
			// at the port they are answered on).
			rules = append(rules, Rule{Matches: []Match{ip, {Field: FieldUDPDport, Num: 68}}, Counter: true, Verdict: drop})
			chains = append(chains, NftChain{Family: "netdev", Name: PortChain(p.Interface), Type: "filter",
				Hook: "ingress", Device: p.Interface, Priority: 0, Rules: rules})
		}
	}
	slices.SortFunc(chains, func(a, b NftChain) int { return strings.Compare(a.Device, b.Device) })
	return chains
}

// NftSets returns the elements of each of our named sets (NftSetNames), sorted, without duplicates.
func NftSets(d DesiredState) map[string][]netip.Addr {
	v4, v6 := UnderlayVTEPs(d)
	sets := map[string][]netip.Addr{VTEPSet4: v4, VTEPSet6: v6}
	for _, a := range d.Infrastructure {
		if a = a.Unmap(); !a.IsValid() {
			continue
		}
		name := InfraSet4
		if a.Is6() {
			name = InfraSet6
		}
		sets[name] = append(sets[name], a)
	}
	for name, addrs := range sets {
		sets[name] = slices.Compact(sortAddrs(addrs))
	}
	return sets
}

// sortAddrs sorts addrs in netip.Addr.Compare order; IPv4 alone sorts as 32-bit numbers, several
// times quicker than comparing netip.Addr values (a thousand VTEPs on every Apply).
func sortAddrs(addrs []netip.Addr) []netip.Addr {
	keys := make([]uint32, len(addrs))
	for i, a := range addrs {
		if !a.Is4() {
			slices.SortFunc(addrs, netip.Addr.Compare)
			return addrs
		}
		b := a.As4()
		keys[i] = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	slices.Sort(keys)
	for i, k := range keys {
		addrs[i] = netip.AddrFrom4([4]byte{byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)})
	}
	return addrs
}

// UnderlayVTEPs returns the VTEPs the underlay filter accepts: every remote port's and flood VTEP
// of every network, split by family, without duplicates.
func UnderlayVTEPs(d DesiredState) (v4, v6 []netip.Addr) {
	if d.DisableUnderlayFilter {
		return nil, nil
	}
	// Remote ports outnumber VTEPs by far (ten thousand ports on a thousand hosts): the map is
	// sized for the VTEPs (the flood lists name them), and a run of ports behind one VTEP costs one
	// comparison each.
	hint := 0
	for _, n := range d.Networks {
		hint += len(n.Flood)
	}
	// IPv4 keys hash as 4 bytes, not as a 24-byte netip.Addr.
	seen4 := make(map[uint32]struct{}, hint)
	seen6 := make(map[netip.Addr]struct{})
	var last netip.Addr
	add := func(a netip.Addr) {
		a = a.Unmap()
		if a == last && a.IsValid() {
			return
		}
		last = a
		if a.Is4() {
			b := a.As4()
			k := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
			if _, dup := seen4[k]; dup {
				return
			}
			seen4[k] = struct{}{}
			v4 = append(v4, a)
			return
		}
		if _, dup := seen6[a]; dup {
			return
		}
		seen6[a] = struct{}{}
		v6 = append(v6, a)
	}
	for _, n := range d.Networks {
		for _, r := range n.Remotes {
			add(r.VTEP)
		}
		for _, v := range n.Flood {
			add(v)
		}
	}
	return v4, v6
}
