package alloc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/protobuf/proto"
)

const (
	// smallPool: pools up to this size are allocated from their taken set on every attempt (one
	// keys-only read of at most this many keys), which never wastes a transaction on a taken value.
	smallPool = 4096
	// probes: larger pools try this many random candidates before reading the taken set. At 50%
	// occupancy the chance that all fail is 1.5e-5.
	probes = 16
	// maxAttempts bounds the transactions of one create before giving up with ErrContention.
	maxAttempts = 64
)

// Allocator creates networks and ports with their VNI, address and MAC.
type Allocator struct {
	store *store.Store
	vnis  *VNIPool
}

// New returns an Allocator drawing VNIs from pool.
func New(st *store.Store, pool *VNIPool) *Allocator { return &Allocator{store: st, vnis: pool} }

// NewID returns a random resource id: 10 lowercase hex characters.
func NewID() string {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// NewMAC returns a random locally administered unicast MAC: 0e:xx:xx:xx:xx:xx. It never equals a
// gateway MAC (those start with 02:fb).
func NewMAC() string {
	var b [6]byte
	if _, err := rand.Read(b[1:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	b[0] = 0x0e
	return net.HardwareAddr(b[:]).String()
}

// GatewayMAC is the MAC of a network's gateway, the same on every host: 02:fb:<vni>:01.
func GatewayMAC(vni uint32) string {
	return net.HardwareAddr{0x02, 0xfb, byte(vni >> 16), byte(vni >> 8), byte(vni), 0x01}.String()
}

// networkName is how messages name a network: tenant/name, never its internal id.
func networkName(n *vxfabricv1.Network) string { return n.Tenant + "/" + n.Name }

// InterfacePrefix starts the host interface name of every port (InterfaceName).
const InterfacePrefix = "vxp"

// InterfaceName is the host interface name of a port: InterfacePrefix + id, 13 characters.
func InterfaceName(portID string) string { return InterfacePrefix + portID }

// nextVNI returns the candidate VNI of attempt n.
func (a *Allocator) nextVNI(ctx context.Context, n int) (uint32, error) {
	if a.vnis.Size() > smallPool && n < probes {
		return a.vnis.Random(), nil
	}
	var taken []uint32
	for _, r := range a.vnis.ranges {
		t, err := a.store.TakenVNIs(ctx, r.First, r.Last)
		if err != nil {
			return 0, err
		}
		taken = append(taken, t...)
	}
	v, ok := a.vnis.PickFree(taken)
	if !ok {
		return 0, fmt.Errorf("no free vni in the pool %s: %w", a.vnis, store.ErrExhausted)
	}
	return v, nil
}

// CreateNetwork creates n (every field set by the caller but id, VNI when zero, and gateway MAC) in
// one transaction with its VNI allocation; see store.CreateNetwork, also for nodesRev (0: no node
// guard; store.ErrNodesChanged is returned, not retried). A requested VNI (n.Vni != 0) is honoured or
// refused with store.ErrVNITaken (an ErrAlreadyExists); an allocated one is retried until a
// transaction wins or the pool is exhausted (store.ErrExhausted).
//
// A request id that made a network with another VNI than the one n asks for was used for another
// request: store.ErrRequestMismatch, as for the fields store compares.
func (a *Allocator) CreateNetwork(ctx context.Context, n *vxfabricv1.Network, requestID string, nodesRev int64) (*vxfabricv1.Network, error) {
	out, err := a.createNetwork(ctx, n, requestID, nodesRev)
	return keptVNI(n, out, err)
}

// NetworkForRequest is store.NetworkForRequest, the requested VNI compared too.
func (a *Allocator) NetworkForRequest(ctx context.Context, requestID string, n *vxfabricv1.Network) (*vxfabricv1.Network, error) {
	out, err := a.store.NetworkForRequest(ctx, requestID, n)
	return keptVNI(n, out, err)
}

// keptVNI refuses a network (out) that a request id made with another VNI than the one n requests:
// store cannot compare the VNI, which the allocator may have picked.
func keptVNI(n, out *vxfabricv1.Network, err error) (*vxfabricv1.Network, error) {
	if err == nil && out != nil && n.Vni != 0 && out.Vni != n.Vni {
		return nil, fmt.Errorf("network %s: %w", networkName(n), store.ErrRequestMismatch)
	}
	return out, err
}

func (a *Allocator) createNetwork(ctx context.Context, n *vxfabricv1.Network, requestID string, nodesRev int64) (*vxfabricv1.Network, error) {
	// A retry of a create that succeeded is answered by the transaction (its compare on the request
	// record fails, and store returns the recorded network), without a read before it. Only a full
	// pool is checked against the request record first: it must not turn a retry into
	// ResourceExhausted.
	requested := n.Vni != 0
	for attempt := range maxAttempts {
		try := proto.Clone(n).(*vxfabricv1.Network)
		try.Id = NewID()
		if !requested {
			v, err := a.nextVNI(ctx, attempt)
			if errors.Is(err, store.ErrExhausted) {
				if prev, perr := a.store.NetworkForRequest(ctx, requestID, n); prev != nil || perr != nil {
					return prev, perr
				}
			}
			if err != nil {
				return nil, fmt.Errorf("network %s: %w", networkName(n), err)
			}
			try.Vni = v
		}
		if try.Gateway != "" {
			try.GatewayMac = GatewayMAC(try.Vni)
		}
		out, err := a.store.CreateNetwork(ctx, try, requestID, nodesRev)
		switch {
		case errors.Is(err, store.ErrIDTaken), errors.Is(err, store.ErrVNITaken) && !requested:
			continue
		case err != nil:
			return nil, err
		}
		return out, nil
	}
	return nil, fmt.Errorf("create network %s: %w", networkName(n), store.ErrContention)
}

// nextIP returns the candidate address of attempt n in a network.
func (a *Allocator) nextIP(ctx context.Context, network *vxfabricv1.Network, sub *Subnet, n int) (netip.Addr, error) {
	if sub.Size() > smallPool && n < probes {
		return sub.Random(), nil
	}
	taken, err := a.store.TakenIPs(ctx, network.Id)
	if err != nil {
		return netip.Addr{}, err
	}
	ip, ok := sub.PickFree(taken)
	if !ok {
		space := network.Cidr
		if network.AllocationPool != "" {
			space = "its allocation pool " + network.AllocationPool
		}
		return netip.Addr{}, fmt.Errorf("network %s is full: no free address in %s: %w", networkName(network), space, store.ErrExhausted)
	}
	return ip, nil
}

// CreatePort creates p on network net in one transaction with its address and MAC allocations; see
// store.CreatePort. The caller has validated p.Ip and p.Mac when set (requested values are honoured
// or refused with ErrIPTaken / ErrMACTaken); empty ones are allocated and retried on conflict.
// A request id that made a port with another address or MAC than p asks for was used for another
// request: store.ErrRequestMismatch.
func (a *Allocator) CreatePort(ctx context.Context, network *vxfabricv1.Network, p *vxfabricv1.Port, requestID string) (*vxfabricv1.Port, error) {
	out, err := a.createPort(ctx, network, p, requestID)
	if err == nil && out != nil && (p.Ip != "" && out.Ip != p.Ip || p.Mac != "" && out.Mac != p.Mac) {
		return nil, fmt.Errorf("port %s/%s: %w", p.Tenant, p.Name, store.ErrRequestMismatch)
	}
	return out, err
}

// SubnetOf is the address space of a stored network: its CIDR less the network, broadcast and
// gateway addresses, narrowed to its allocation pool.
func SubnetOf(network *vxfabricv1.Network) (*Subnet, error) {
	prefix, err := netip.ParsePrefix(network.Cidr)
	if err != nil {
		return nil, fmt.Errorf("network %s cidr %q: %w", networkName(network), network.Cidr, err)
	}
	var gw netip.Addr
	if network.Gateway != "" {
		if gw, err = netip.ParseAddr(network.Gateway); err != nil {
			return nil, fmt.Errorf("network %s gateway %q: %w", networkName(network), network.Gateway, err)
		}
	}
	sub, err := NewSubnet(prefix, gw)
	if err == nil {
		sub, err = sub.WithPool(network.AllocationPool)
	}
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", networkName(network), err)
	}
	return sub, nil
}

func (a *Allocator) createPort(ctx context.Context, network *vxfabricv1.Network, p *vxfabricv1.Port, requestID string) (*vxfabricv1.Port, error) {
	sub, err := SubnetOf(network)
	if err != nil {
		return nil, err
	}
	if prev, err := a.store.PortForRequest(ctx, requestID, p); prev != nil || err != nil {
		return prev, err
	}
	wantIP, wantMAC := p.Ip != "", p.Mac != ""
	for attempt := range maxAttempts {
		try := proto.Clone(p).(*vxfabricv1.Port)
		try.Id = NewID()
		try.InterfaceName = InterfaceName(try.Id)
		try.NetworkId, try.Network = network.Id, network.Name
		if !wantIP {
			ip, err := a.nextIP(ctx, network, sub, attempt)
			if err != nil {
				return nil, err
			}
			try.Ip = ip.String()
		}
		if !wantMAC {
			try.Mac = NewMAC()
		}
		out, err := a.store.CreatePort(ctx, try, requestID)
		switch {
		case errors.Is(err, store.ErrIDTaken),
			errors.Is(err, store.ErrIPTaken) && !wantIP,
			errors.Is(err, store.ErrMACTaken) && !wantMAC:
			continue
		case err != nil:
			return nil, err
		}
		return out, nil
	}
	return nil, fmt.Errorf("create port %s/%s: %w", p.Tenant, p.Name, store.ErrContention)
}
