// Package overlay is the datapath: it converges one host's kernel to the desired state of the
// networks that host takes part in.
//
// Per network (VNI) the kernel holds, written in this order:
//
//  1. a bridge (the virtual switch), named BridgeName(vni), IPv6 off before it goes up;
//  2. a vxlan device named VxlanName(vni): nolearning, dstport 4789, local VTEP address, the network's
//     MTU (the underlay MTU minus the 50 bytes of outer Ethernet, IPv4, UDP and VXLAN headers),
//     enslaved to the bridge;
//  3. unicast FDB entries, one permanent entry per remote MAC pointing at its VTEP, written before
//  4. the all-zero-MAC flood entries, one per remote VTEP (head-end replication, no underlay multicast),
//     so that a new flood target never sees frames for MACs we have not pinned yet;
//  5. neighbour entries for remote ports on the vxlan device (ARP suppression with the vxlan proxy flag);
//  6. local ports (the VM NICs' host interfaces) enslaved to the bridge, with port security: a port
//     sends from its own MAC, IPv4 from its own address and ARP about it, and nothing else (no
//     IPv6, no VLAN tags, no DHCP server's answers); an entry the bridge learned for a local port's
//     MAC on the vxlan port (the VM was remote before it came here) is deleted;
//  7. per mode: the gateway address on the bridge, forwarding, NAT in our own nftables table; and
//     the underlay filter: VXLAN only from a known VTEP to this host's VTEP, never through one of
//     our bridges, and no way through a bridged network's bridge into this host or its underlay.
//
// Reconcile reads what the kernel reports, diffs it against the desired state and writes only the
// difference: add before delete, never flush, and never touch an object that is not ours (every
// device name starts with "vx", every nftables object lives in our own table). Between full passes
// a change of remote entries (a port or flood target coming, moving or going in a network already
// programmed) is written as it is, entry by entry, in the same order and without reading the kernel
// (Datapath.ApplyDelta): its cost follows the change, not the ten thousand entries around it.
//
// This package must never switch the namespace of a shared goroutine: the Linux implementation works
// through handles bound to a namespace.
package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
)

// Mode mirrors the network modes of the API.
type Mode int

const (
	ModeIsolated Mode = iota + 1
	ModeNAT
	ModeRouted
	ModeBridged
)

func (m Mode) String() string {
	switch m {
	case ModeIsolated:
		return "isolated"
	case ModeNAT:
		return "nat"
	case ModeRouted:
		return "routed"
	case ModeBridged:
		return "bridged"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// VXLANPort is the IANA VXLAN UDP port.
const VXLANPort = 4789

// VXLANOverhead is what VXLAN encapsulation adds to a frame on an IPv4 underlay:
// outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
const VXLANOverhead = 50

// DeviceNamePrefix starts the name of every link this package creates.
const DeviceNamePrefix = "vx"

// BridgeName is the name of a network's bridge on every host (at most 12 characters).
func BridgeName(vni uint32) string { return BridgePrefix + strconv.FormatUint(uint64(vni), 10) }

// VxlanName is the name of a network's vxlan device on every host (at most 12 characters).
func VxlanName(vni uint32) string { return VxlanPrefix + strconv.FormatUint(uint64(vni), 10) }

// DesiredState is everything one host's kernel must show.
type DesiredState struct {
	Underlay Underlay
	Networks []Network
	// DisablePortSecurity turns off source MAC/IP enforcement on local ports (on by default).
	DisablePortSecurity bool
	// DisableUnderlayFilter turns off the filter that accepts VXLAN only from known VTEPs (on by default).
	DisableUnderlayFilter bool
	// Infrastructure lists the fabric's own underlay addresses (other hosts, API servers, etcd):
	// VMs may not open connections to them, whatever their network's mode. The host itself is
	// protected by the input rules already.
	Infrastructure []netip.Addr
}

// Underlay is the host's attachment to the physical network.
type Underlay struct {
	// VTEP is the local address VXLAN packets are sent from and received on.
	VTEP netip.Addr
	// Interface carries the VTEP address; NAT masquerades traffic leaving through it. Optional.
	Interface string
}

// Network is one VNI as this host must program it.
type Network struct {
	VNI  uint32
	Mode Mode
	MTU  int
	// CIDR is the network's IPv4 prefix (NAT masquerades it, routed forwards it).
	CIDR netip.Prefix
	// Gateway and GatewayMAC are the distributed gateway (NAT and routed): the same on every host.
	Gateway    netip.Addr
	GatewayMAC net.HardwareAddr
	// Uplink is the physical NIC to enslave (bridged mode, on the one host that owns it).
	Uplink  string
	Ports   []LocalPort
	Remotes []RemotePort
	// Flood lists the remote VTEPs that get a copy of broadcast, unknown unicast and multicast frames.
	Flood []netip.Addr
}

// LocalPort is a VM NIC on this host.
type LocalPort struct {
	// Interface is the host end of the NIC (a tap, or a veth in the lab). It may not exist yet:
	// it is plugged as soon as it appears and Apply is called again.
	Interface string
	MAC       net.HardwareAddr
	IP        netip.Addr
}

// RemotePort is a VM NIC on another host of the same network.
type RemotePort struct {
	MAC  net.HardwareAddr
	IP   netip.Addr
	VTEP netip.Addr
}

// Op is what Apply did to one kernel object.
type Op string

const (
	OpAdd    Op = "add"
	OpUpdate Op = "update"
	OpDelete Op = "delete"
)

// Change is one kernel object written by Apply.
type Change struct {
	Op Op
	// Object names the object, e.g. "fdb vxlan4096 0e:00:00:00:00:01 dst 198.18.0.2".
	Object string
}

func (c Change) String() string { return string(c.Op) + " " + c.Object }

// ObjectError is a failure to converge one object; the rest of the state still converges.
type ObjectError struct {
	Object string
	Err    error
}

func (e ObjectError) Error() string { return e.Object + ": " + e.Err.Error() }
func (e ObjectError) Unwrap() error { return e.Err }

// Result reports what one Apply did and what it found.
type Result struct {
	Changes []Change
	// Plugged holds the interface names of the local ports that exist and are enslaved to their bridge.
	Plugged map[string]bool
	// Errors lists the objects that could not be converged; Apply's error joins them.
	Errors []ObjectError
	// UnderlayRoutes is what the host reaches outside the fabric, as Apply read it from the kernel:
	// the subnets it is attached to (not the fabric's own bridges, but a bridged network's LAN) and
	// the next hops of its routes. A nat or routed gateway over one of them would take that traffic
	// into its bridge: the datapath leaves such a gateway off (ErrGatewayRefused), and the caller
	// reports them (SelectUnderlay) to the control plane, which refuses to bind such a network's
	// ports to this host. Nil when not read (ApplyDelta, a fake, an Apply cut short).
	UnderlayRoutes []UnderlayRoute
}

// Datapath converges a host's kernel to a desired state.
//
// Apply may be called again with the same state: the second call changes nothing. Apply, ApplyDelta
// and Close are never called concurrently with each other (the caller serialises them); both may block
// on the kernel.
//
// Apply is the declarative path: it reads the kernel, diffs and converges everything (devices, ports,
// nftables, entries), and repairs drift. ApplyDelta is the incremental one for the common change, a
// remote port or flood entry coming or going in a network the kernel already holds: it writes exactly
// the entries it is given and reads nothing, so its cost follows the change, not the state. A caller
// mixes them so that after any sequence of ApplyDelta calls, an Apply of the state those changes
// describe changes nothing; the periodic Apply still repairs whatever drifted.
type Datapath interface {
	Apply(ctx context.Context, desired DesiredState) (Result, error)
	// ApplyDelta writes the entries of delta, network by network in the order of Apply: unicast FDB
	// entries set (replaced in place), flood entries appended, neighbour entries set; then, for every
	// network, the deletions (an entry already gone is success). Every network must have been
	// programmed by an earlier Apply (its vxlan device exists), or ApplyDelta fails with
	// ErrNotProgrammed before writing anything; every VTEP it names must be one the last Apply's
	// underlay filter accepts already (the caller's contract: ApplyDelta never touches nftables).
	// Result.Changes reports what was written as the kernel acknowledges it, without reading
	// anything: for unicast FDB and neighbour entries OpAdd when none existed for the MAC or IP and
	// OpUpdate when one was replaced (values are not compared); OpAdd for every flood entry appended
	// (appending one that exists changes nothing, and the kernel does not say); OpDelete for every
	// deletion unless the kernel found no entry for the MAC or IP at all (an FDB MAC present under
	// another destination is acknowledged and left alone). Result.Plugged is nil.
	ApplyDelta(ctx context.Context, delta Delta) (Result, error)
	Close() error
}

// DropCounter is a Datapath that counts, per local port, the frames port security dropped.
type DropCounter interface {
	// PortDrops returns the frames dropped per local port interface since its count began (when the
	// port first sent a frame that was dropped); ports that never did are absent.
	PortDrops(ctx context.Context) (map[string]uint64, error)
}

// ErrNotProgrammed marks an ApplyDelta naming a network whose devices the kernel does not hold: the
// caller must Apply the whole state instead.
var ErrNotProgrammed = errors.New("network not programmed")

// Delta is a change to the remote entries of networks the kernel already holds (see ApplyDelta).
type Delta struct {
	Networks []NetworkDelta
}

// Empty reports whether the delta writes nothing.
func (d Delta) Empty() bool {
	for _, n := range d.Networks {
		if len(n.SetFDB)+len(n.AddFlood)+len(n.SetNeigh)+len(n.DelFDB)+len(n.DelFlood)+len(n.DelNeigh) > 0 {
			return false
		}
	}
	return true
}

// NetworkDelta is the change to one network's FDB, flood and neighbour (ARP suppression) entries.
type NetworkDelta struct {
	VNI uint32
	// SetFDB, AddFlood and SetNeigh are written first, in this order.
	SetFDB   []FDBEntry
	AddFlood []netip.Addr
	SetNeigh []NeighEntry
	// DelFDB names each entry as the kernel holds it: its MAC and the VTEP it points at.
	DelFDB   []FDBEntry
	DelFlood []netip.Addr
	// DelNeigh entries are removed by IP; the MAC only names the object in Result.Changes.
	DelNeigh []NeighEntry
}

// FDBEntry is a unicast FDB entry: a remote MAC behind a VTEP.
type FDBEntry struct {
	MAC  net.HardwareAddr
	VTEP netip.Addr
}

// NeighEntry is an ARP suppression entry on a vxlan device.
type NeighEntry struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// checkVNI refuses a VNI outside the 24 bits of the VXLAN header, or 0; what names the object.
func checkVNI(what string, vni uint32) error {
	if vni == 0 || vni >= 1<<24 {
		return fmt.Errorf("%s vni %d: out of range 1..16777215: %w", what, vni, ErrInvalid)
	}
	return nil
}

// Validate checks a delta; the error wraps ErrInvalid and names the first bad entry.
func (d Delta) Validate() error {
	seen := make(map[uint32]bool, len(d.Networks))
	for _, n := range d.Networks {
		if err := checkVNI("delta network", n.VNI); err != nil {
			return err
		}
		if seen[n.VNI] {
			return fmt.Errorf("delta network vni %d: listed twice: %w", n.VNI, ErrInvalid)
		}
		seen[n.VNI] = true
		for _, e := range slices.Concat(n.SetFDB, n.DelFDB) {
			if len(e.MAC) != 6 || !e.VTEP.IsValid() {
				return fmt.Errorf("delta network vni %d: fdb entry %s at %s: %w", n.VNI, e.MAC, e.VTEP, ErrInvalid)
			}
		}
		for _, v := range slices.Concat(n.AddFlood, n.DelFlood) {
			if !v.IsValid() {
				return fmt.Errorf("delta network vni %d: flood vtep missing: %w", n.VNI, ErrInvalid)
			}
		}
		for _, e := range n.SetNeigh {
			if !e.IP.Unmap().Is4() || len(e.MAC) != 6 {
				return fmt.Errorf("delta network vni %d: neighbour %s lladdr %s: %w", n.VNI, e.IP, e.MAC, ErrInvalid)
			}
		}
		for _, e := range n.DelNeigh {
			if !e.IP.Unmap().Is4() {
				return fmt.Errorf("delta network vni %d: neighbour %s: %w", n.VNI, e.IP, ErrInvalid)
			}
		}
	}
	return nil
}
