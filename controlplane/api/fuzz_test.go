package api

// Fuzz targets for the request validators (issue 7). Each checks what an accepted request
// guarantees with code written independently of the validators, that every refusal is
// InvalidArgument, and that what a validator returns is accepted again unchanged. The seed corpora
// run as ordinary tests; `go test -fuzz FuzzX -fuzztime 60s ./controlplane/api` explores.

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// nameOK is the name rule: 1-63 of [a-z0-9-], starting with a letter.
func nameOK(s string) bool {
	if len(s) < 1 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// kernelIfnameOK is the kernel's dev_valid_name(): 1-15 bytes, not "." or "..", and no '/', ':',
// NUL or whitespace as the kernel's isspace() sees it (which includes 0xa0). A name the API accepts
// but the kernel refuses fails only later, on the agent, where the user cannot see why.
func kernelIfnameOK(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '/' || c == ':' || c == 0:
			return false
		case c == ' ' || c >= '\t' && c <= '\r' || c == 0xa0:
			return false
		}
	}
	return true
}

func isInvalidArgument(err error) bool { return errors.Is(err, store.ErrInvalidArgument) }

func addSeedsNetwork(f *testing.F) {
	type seed struct {
		tenant, name, cidr string
		mode               int32
		vni, mtu           uint32
		gateway            string
		uplink             bool
		upNode, upIface    string
		requestID          string
	}
	for _, s := range []seed{
		{"acme", "web", "10.0.0.0/24", 1, 0, 0, "", false, "", "", ""},
		{"acme", "web", "10.0.0.0/24", 2, 4096, 1450, "10.0.0.1", false, "", "", "req-1"},
		{"acme", "web", "10.0.0.0/24", 3, 16777214, 9000, "10.0.0.254", false, "", "", ""},
		{"acme", "lan", "192.168.0.0/16", 4, 0, 576, "", true, "h1", "eth1", ""},
		{"acme", "web", "10.0.0.1/24", 1, 0, 0, "", false, "", "", ""},
		{"acme", "web", "10.0.0.0/30", 1, 0, 0, "", false, "", "", ""},
		{"acme", "web", "10.0.0.0/7", 1, 0, 0, "", false, "", "", ""},
		{"acme", "web", "fd00::/64", 1, 0, 0, "", false, "", "", ""},
		{"acme", "web", "10.0.0.0/24", 0, 0, 0, "", false, "", "", ""},
		{"acme", "web", "10.0.0.0/24", 9, 0, 0, "", false, "", "", ""},
		{"acme", "web", "10.0.0.0/24", 2, 16777215, 0, "", false, "", "", ""},
		{"acme", "web", "10.0.0.0/24", 2, 0, 575, "10.0.0.0", false, "", "", ""},
		{"acme", "web", "10.0.0.0/24", 2, 0, 0, "10.0.0.255", false, "", "", ""},
		{"acme", "web", "10.0.0.0/24", 1, 0, 0, "10.0.0.1", false, "", "", ""},
		{"Acme", "web", "10.0.0.0/24", 1, 0, 0, "", false, "", "", ""},
		{"acme", strings.Repeat("a", 64), "10.0.0.0/24", 1, 0, 0, "", false, "", "", ""},
		{"acme", "web\n", "10.0.0.0/24", 1, 0, 0, "", false, "", "", "x\ny"},
		{"acme", "web", "10.0.0.0/24", 1, 0, 0, "", true, "h1", "eth1", ""},
	} {
		f.Add(s.tenant, s.name, s.cidr, s.mode, s.vni, s.mtu, s.gateway, s.uplink, s.upNode, s.upIface, s.requestID)
	}
}

// fuzzPool is the default VNI pool, 4096-16777214.
var fuzzPool, _ = alloc.NewVNIPool(alloc.DefaultRanges())

func FuzzCheckCreateNetwork(f *testing.F) {
	addSeedsNetwork(f)
	f.Fuzz(func(t *testing.T, tenant, name, cidr string, mode int32, vni, mtu uint32, gateway string, hasUplink bool, upNode, upIface, requestID string) {
		req := &vxfabricv1.CreateNetworkRequest{
			Tenant: tenant, Name: name, Cidr: cidr, Mode: vxfabricv1.NetworkMode(mode), Vni: vni, Mtu: mtu,
			Gateway: gateway, RequestId: requestID,
		}
		if hasUplink {
			req.Uplink = &vxfabricv1.Uplink{Node: upNode, Interface: upIface}
		}
		n, err := checkCreateNetwork(req, 1500, fuzzPool)
		if err != nil {
			if !isInvalidArgument(err) {
				t.Fatalf("refusal is not InvalidArgument: %v", err)
			}
			return
		}
		if !nameOK(n.Tenant) || !nameOK(n.Name) || n.Tenant != tenant || n.Name != name {
			t.Fatalf("accepted names %q/%q", n.Tenant, n.Name)
		}
		p, err := netip.ParsePrefix(n.Cidr)
		if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 29 || p.Masked() != p || p.String() != cidr {
			t.Fatalf("accepted cidr %q (from %q)", n.Cidr, cidr)
		}
		if n.Vni != 0 && (n.Vni < 4096 || n.Vni > 1<<24-2) {
			t.Fatalf("accepted vni %d, outside the pool 4096-16777214", n.Vni)
		}
		if n.Mtu < 576 || n.Mtu > 9000 {
			t.Fatalf("accepted mtu %d", n.Mtu)
		}
		if len(requestID) > 128 || strings.ContainsAny(requestID, " /\n\x00") {
			t.Fatalf("accepted request_id %q", requestID)
		}
		switch n.Mode {
		case vxfabricv1.NetworkMode_NETWORK_MODE_NAT, vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED:
			gw, err := netip.ParseAddr(n.Gateway)
			if err != nil || !p.Contains(gw) || gw == p.Addr() || gw == broadcast(p) {
				t.Fatalf("accepted gateway %q in %s", n.Gateway, p)
			}
		case vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED:
			if n.Gateway != "" {
				t.Fatalf("gateway %q on a %v network", n.Gateway, n.Mode)
			}
		default:
			t.Fatalf("accepted mode %v", n.Mode)
		}
		bridged := n.Mode == vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED
		if bridged != (n.Uplink != nil) {
			t.Fatalf("uplink %v on a %v network", n.Uplink, n.Mode)
		}
		if n.Uplink != nil && (!nameOK(n.Uplink.Node) || !kernelIfnameOK(n.Uplink.Interface)) {
			t.Fatalf("accepted uplink %q:%q, which no kernel accepts", n.Uplink.Node, n.Uplink.Interface)
		}
		// What was accepted is accepted again as it is.
		again, err := checkCreateNetwork(&vxfabricv1.CreateNetworkRequest{
			Tenant: n.Tenant, Name: n.Name, Cidr: n.Cidr, Mode: n.Mode, Vni: n.Vni, Mtu: n.Mtu,
			Gateway: n.Gateway, Uplink: n.Uplink, RequestId: requestID,
		}, 1500, fuzzPool)
		if err != nil || !proto.Equal(again, n) {
			t.Fatalf("normalised network not stable: %v then %v (%v)", n, again, err)
		}
	})
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func FuzzCheckCreatePort(f *testing.F) {
	for _, s := range [][8]string{
		{"acme", "web", "p1", "h1", "", "", "", ""},
		{"acme", "web", "p1", "h1", "0e:00:00:00:00:01", "10.0.0.5", "vm1", "r"},
		{"acme", "web", "p1", "h1", "0E-00-00-00-00-01", "10.0.0.5", "", ""},
		{"acme", "web", "p1", "h1", "0e00.0000.0001", "", "", ""},
		{"acme", "web", "p1", "h1", "01:00:5e:00:00:01", "", "", ""},
		{"acme", "web", "p1", "h1", "00:00:00:00:00:00", "", "", ""},
		{"acme", "web", "p1", "h1", "00:00:00:00:00:00:00:01", "", "", ""},
		{"acme", "web", "p1", "h1", "", "10.0.0.5/24", "", ""},
		{"acme", "web", "p1", "h1", "", "::ffff:10.0.0.5", "", ""},
		{"acme", "web", "p1", "h1", "", "010.0.0.5", "", ""},
		{"acme", "web", "p1", "", "", "", "", ""},
		{"acme", "web", "p1", "h1", "", "", "VM", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
	}
	f.Fuzz(func(t *testing.T, tenant, network, name, node, mac, ip, vm, requestID string) {
		req := &vxfabricv1.CreatePortRequest{Tenant: tenant, Network: network, Name: name, Node: node, Mac: mac, Ip: ip, Vm: vm, RequestId: requestID}
		p, err := checkCreatePort(req)
		if err != nil {
			if !isInvalidArgument(err) {
				t.Fatalf("refusal is not InvalidArgument: %v", err)
			}
			return
		}
		for _, s := range []string{p.Tenant, p.Network, p.Name, p.Node} {
			if !nameOK(s) {
				t.Fatalf("accepted name %q", s)
			}
		}
		if p.Vm != "" && !nameOK(p.Vm) {
			t.Fatalf("accepted vm %q", p.Vm)
		}
		if p.Mac != "" {
			hw, err := net.ParseMAC(p.Mac)
			if err != nil || len(hw) != 6 || hw[0]&1 != 0 || string(hw) == string(make([]byte, 6)) || p.Mac != strings.ToLower(hw.String()) {
				t.Fatalf("accepted mac %q (from %q)", p.Mac, mac)
			}
		} else if mac != "" {
			t.Fatalf("mac %q dropped", mac)
		}
		if p.Ip != "" {
			a, err := netip.ParseAddr(p.Ip)
			if err != nil || !a.Is4() || a.String() != p.Ip {
				t.Fatalf("accepted ip %q (from %q)", p.Ip, ip)
			}
		} else if ip != "" {
			t.Fatalf("ip %q dropped", ip)
		}
		again, err := checkCreatePort(&vxfabricv1.CreatePortRequest{Tenant: p.Tenant, Network: p.Network, Name: p.Name, Node: p.Node, Mac: p.Mac, Ip: p.Ip, Vm: p.Vm, RequestId: requestID})
		if err != nil || !proto.Equal(again, p) {
			t.Fatalf("normalised port not stable: %v then %v (%v)", p, again, err)
		}
	})
}

// FuzzCheckPortInNetwork: an address accepted for a port is a host address of the network and not
// its gateway, and inside the network's allocation pool unless an admin asks; a MAC accepted is not
// the gateway's.
func FuzzCheckPortInNetwork(f *testing.F) {
	f.Add("10.0.0.0/24", "", "", int32(2), uint32(4096), "10.0.0.1", "", false)
	f.Add("10.0.0.0/24", "10.0.0.7", "", int32(3), uint32(4096), "10.0.0.7", "", false)
	f.Add("10.0.0.0/29", "", "", int32(2), uint32(4096), "10.0.0.7", "", false)
	f.Add("10.0.0.0/8", "", "", int32(1), uint32(4096), "10.255.255.254", "02:fb:00:10:00:01", false)
	f.Add("10.0.0.0/24", "", "", int32(1), uint32(4096), "10.0.1.5", "", false)
	f.Add("192.168.77.0/24", "", "192.168.77.100-192.168.77.199", int32(1), uint32(4096), "192.168.77.1", "", false)
	f.Add("192.168.77.0/24", "", "192.168.77.100-192.168.77.199", int32(1), uint32(4096), "192.168.77.1", "", true)
	f.Add("10.0.0.0/24", "", "10.0.0.1-10.0.0.9", int32(2), uint32(4096), "10.0.0.9", "", false)
	f.Fuzz(func(t *testing.T, cidr, gateway, pool string, mode int32, vni uint32, ip, mac string, admin bool) {
		n, err := checkCreateNetwork(&vxfabricv1.CreateNetworkRequest{Tenant: "t", Name: "n", Cidr: cidr, Mode: vxfabricv1.NetworkMode(mode),
			Gateway: gateway, Vni: vni, AllocationPool: pool}, 1500, nil)
		if err != nil || n.Vni == 0 {
			return
		}
		p, err := checkCreatePort(&vxfabricv1.CreatePortRequest{Tenant: "t", Network: "n", Name: "p", Node: "h", Ip: ip, Mac: mac})
		if err != nil {
			return
		}
		err = checkPortInNetwork(p, n, admin)
		if err != nil {
			if !isInvalidArgument(err) {
				t.Fatalf("refusal is not InvalidArgument: %v", err)
			}
			return
		}
		if p.Ip != "" {
			prefix := netip.MustParsePrefix(n.Cidr)
			a := netip.MustParseAddr(p.Ip)
			if !prefix.Contains(a) || a == prefix.Addr() || a == broadcast(prefix) || p.Ip == n.Gateway {
				t.Fatalf("accepted ip %s in %s with gateway %q", p.Ip, n.Cidr, n.Gateway)
			}
			if first, last, ok := strings.Cut(n.AllocationPool, "-"); ok && !admin &&
				(a.Less(netip.MustParseAddr(first)) || netip.MustParseAddr(last).Less(a)) {
				t.Fatalf("accepted ip %s outside the pool %s for a tenant", p.Ip, n.AllocationPool)
			}
		}
		if p.Mac != "" {
			gw := net.HardwareAddr{0x02, 0xfb, byte(n.Vni >> 16), byte(n.Vni >> 8), byte(n.Vni), 0x01}.String()
			if p.Mac == gw {
				t.Fatalf("accepted the gateway MAC %s for a port", p.Mac)
			}
		}
	})
}

// FuzzNamesAndIDs covers the validators of the Get/Update/Delete requests.
func FuzzNamesAndIDs(f *testing.F) {
	for _, s := range []string{"", "a", "a-1", "1a", "-a", "A", "a_b", "a.b", strings.Repeat("a", 63), strings.Repeat("a", 64), "é", "req:1.2_3-4", strings.Repeat("r", 129)} {
		f.Add(s, int64(0), uint32(0))
	}
	f.Add("x", int64(-1), uint32(575))
	f.Add("x", int64(1), uint32(9001))
	f.Fuzz(func(t *testing.T, s string, rev int64, mtu uint32) {
		if err := validName("name", s); (err == nil) != nameOK(s) {
			t.Fatalf("validName(%q) = %v, rule says %v", s, err, nameOK(s))
		} else if err != nil && !isInvalidArgument(err) {
			t.Fatalf("refusal is not InvalidArgument: %v", err)
		}
		if err := validRequestID(s); err == nil && s != "" {
			if len(s) > 128 {
				t.Fatalf("accepted request_id of %d bytes", len(s))
			}
			for i := 0; i < len(s); i++ {
				c := s[i]
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._:-", c) >= 0) {
					t.Fatalf("accepted request_id %q", s)
				}
			}
		}
		if err := validExpected(rev); (err == nil) != (rev >= 0) {
			t.Fatalf("validExpected(%d) = %v", rev, err)
		}
		for _, underlay := range []uint32{1500, 9050, 65535} {
			if err := validMTU(mtu, underlay); (err == nil) != (mtu == 0 || mtu >= 576 && mtu <= min(9000, underlay-50)) {
				t.Fatalf("validMTU(%d, underlay %d) = %v", mtu, underlay, err)
			}
		}
	})
}

// FuzzValidInterface: an uplink interface name the API accepts is one the kernel accepts too.
func FuzzValidInterface(f *testing.F) {
	for _, s := range []string{"eth0", "enp0s31f6", "br-lan", "a", strings.Repeat("e", 15), strings.Repeat("e", 16), ".", "..", "a/b", "a:1", "a b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := validInterface(s)
		if err == nil && !kernelIfnameOK(s) {
			t.Fatalf("validInterface accepted %q, which the kernel refuses", s)
		}
		if err != nil && !isInvalidArgument(err) {
			t.Fatalf("refusal is not InvalidArgument: %v", err)
		}
	})
}
