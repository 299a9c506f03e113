//go:build linux

package linux

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
)

// The lab: two hosts on an underlay switch (198.18.0.0/24), an "outside" namespace and a rogue one
// on the same underlay, a LAN behind host 1's uplink, and VM namespaces on the hosts' bridges.
//
//	vni 101 isolated  a1 (h1) 10.10.0.1   a2 (h2) 10.10.0.2
//	vni 102 isolated  b1 (h1) 10.10.0.1   b2 (h2) 10.10.0.2     same addresses as 101
//	vni 200 nat       n1 (h1) 10.20.0.2   n2 (h2) 10.20.0.3     gateway 10.20.0.1
//	vni 300 routed    r1 (h1) 10.30.0.2                         gateway 10.30.0.1
//	vni 400 bridged   uplink lan0 on h1 -> lan 192.168.50.10;  l2 (h2) 192.168.50.20

type labVM struct {
	name string // the host-side interface, also the VM namespace's label
	ns   *nstest.NS
	host int
	vni  uint32
	mac  net.HardwareAddr
	ip   netip.Addr
}

type labNet struct {
	vni     uint32
	mode    overlay.Mode
	cidr    netip.Prefix
	gw      netip.Addr
	gwMAC   net.HardwareAddr
	uplink  string // on host 0 only
	outside bool
}

type lab struct {
	t     *testing.T
	sw    *nstest.NS
	hosts []*nstest.NS
	vteps []netip.Addr
	dps   []*Datapath
	out   *nstest.NS
	rogue *nstest.NS
	lan   *nstest.NS
	nets  []labNet
	vms   map[string]*labVM
	// skip names networks left out of the desired state (removal tests).
	skip map[uint32]bool
	// extraFlood adds flood VTEPs to one network on every host (underlay filter control).
	extraFlood map[uint32][]netip.Addr
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// hostNS makes a host namespace with the VTEP 198.18.0.1 on its loopback and a datapath on it,
// closed (before the namespace goes) when the test ends.
func hostNS(t *testing.T, label string) (*nstest.NS, *Datapath) {
	t.Helper()
	ns := nstest.New(t, label)
	ns.MustRun(t, "ip", "addr", "add", "198.18.0.1/32", "dev", "lo")
	dp, err := New(Config{NetNS: ns.Path(), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dp.Close() })
	return ns, dp
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{t: t, vms: map[string]*labVM{}, skip: map[uint32]bool{}, extraFlood: map[uint32][]netip.Addr{}}
	l.sw = nstest.New(t, "sw")
	l.sw.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	l.sw.MustRun(t, "ip", "link", "set", "br0", "up")
	port := 0
	attach := func(ns *nstest.NS, addr string) {
		port++
		p := fmt.Sprintf("p%d", port)
		nstest.MustVeth(t, nstest.End{NS: ns, Name: "eth0", Addr: addr}, nstest.End{NS: l.sw, Name: p})
		l.sw.MustRun(t, "ip", "link", "set", p, "master", "br0")
	}
	for i := range 2 {
		h := nstest.New(t, fmt.Sprintf("h%d", i+1))
		vtep := netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
		attach(h, vtep.String()+"/24")
		l.hosts = append(l.hosts, h)
		l.vteps = append(l.vteps, vtep)
	}
	// Someone else turned forwarding on on h2 before we came: it must stay on after we leave.
	l.hosts[1].MustRun(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.out = nstest.New(t, "out")
	attach(l.out, "198.18.0.100/24")
	l.out.MustRun(t, "ip", "route", "add", "10.20.0.0/24", "via", "198.18.0.1")
	l.out.MustRun(t, "ip", "route", "add", "10.30.0.0/24", "via", "198.18.0.1")
	l.rogue = nstest.New(t, "rogue")
	attach(l.rogue, "198.18.0.99/24")
	l.lan = nstest.New(t, "lan")
	nstest.MustVeth(t, nstest.End{NS: l.hosts[0], Name: "lan0", Addr: "192.168.50.1/24"},
		nstest.End{NS: l.lan, Name: "eth0", Addr: "192.168.50.10/24"})
	l.hosts[0].MustRun(t, "ip", "route", "add", "default", "via", "192.168.50.254", "dev", "lan0", "onlink")

	l.nets = []labNet{
		{vni: 101, mode: overlay.ModeIsolated},
		{vni: 102, mode: overlay.ModeIsolated},
		{vni: 200, mode: overlay.ModeNAT, cidr: netip.MustParsePrefix("10.20.0.0/24"),
			gw: netip.MustParseAddr("10.20.0.1"), gwMAC: mustMAC("02:00:00:00:20:01")},
		{vni: 300, mode: overlay.ModeRouted, cidr: netip.MustParsePrefix("10.30.0.0/24"),
			gw: netip.MustParseAddr("10.30.0.1"), gwMAC: mustMAC("02:00:00:00:30:01")},
		{vni: 400, mode: overlay.ModeBridged, uplink: "lan0"},
	}
	for _, v := range []struct {
		name string
		host int
		vni  uint32
		mac  string
		ip   string
	}{
		{"a1", 0, 101, "0e:00:00:01:01:01", "10.10.0.1/24"},
		{"a2", 1, 101, "0e:00:00:01:01:02", "10.10.0.2/24"},
		{"b1", 0, 102, "0e:00:00:01:02:01", "10.10.0.1/24"},
		{"b2", 1, 102, "0e:00:00:01:02:02", "10.10.0.2/24"},
		{"n1", 0, 200, "0e:00:00:02:00:02", "10.20.0.2/24"},
		{"n2", 1, 200, "0e:00:00:02:00:03", "10.20.0.3/24"},
		{"r1", 0, 300, "0e:00:00:03:00:02", "10.30.0.2/24"},
		{"l2", 1, 400, "0e:00:00:04:00:20", "192.168.50.20/24"},
	} {
		ns := nstest.New(t, v.name)
		if err := ns.DisableIPv6(); err != nil {
			t.Fatal(err)
		}
		p := netip.MustParsePrefix(v.ip)
		nstest.MustVeth(t, nstest.End{NS: l.hosts[v.host], Name: v.name},
			nstest.End{NS: ns, Name: "eth0", Addr: v.ip, MAC: v.mac})
		vm := &labVM{name: v.name, ns: ns, host: v.host, vni: v.vni, mac: mustMAC(v.mac), ip: p.Addr()}
		l.vms[v.name] = vm
		if n := l.net(v.vni); n.gw.IsValid() {
			ns.MustRun(t, "ip", "route", "add", "default", "via", n.gw.String())
		}
	}
	for i, h := range l.hosts {
		dp, err := New(Config{NetNS: h.Path(), Logger: discard()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = dp.Close() })
		l.dps = append(l.dps, dp)
		l.apply(i)
	}
	return l
}

func (l *lab) net(vni uint32) labNet {
	for _, n := range l.nets {
		if n.vni == vni {
			return n
		}
	}
	panic(vni)
}

// desired is host i's desired state, computed as the control plane would.
func (l *lab) desired(i int) overlay.DesiredState {
	d := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: l.vteps[i], Interface: "eth0"}}
	for _, n := range l.nets {
		if l.skip[n.vni] {
			continue
		}
		nw := overlay.Network{VNI: n.vni, Mode: n.mode, MTU: 1450, CIDR: n.cidr, Gateway: n.gw, GatewayMAC: n.gwMAC}
		if i == 0 {
			nw.Uplink = n.uplink
		}
		for _, name := range []string{"a1", "a2", "b1", "b2", "n1", "n2", "r1", "l2"} {
			vm := l.vms[name]
			if vm.vni != n.vni {
				continue
			}
			if vm.host == i {
				nw.Ports = append(nw.Ports, overlay.LocalPort{Interface: vm.name, MAC: vm.mac, IP: vm.ip})
			} else {
				nw.Remotes = append(nw.Remotes, overlay.RemotePort{MAC: vm.mac, IP: vm.ip, VTEP: l.vteps[vm.host]})
			}
		}
		for j, v := range l.vteps {
			if j != i {
				nw.Flood = append(nw.Flood, v)
			}
		}
		nw.Flood = append(nw.Flood, l.extraFlood[n.vni]...)
		d.Networks = append(d.Networks, nw)
	}
	return d
}

func (l *lab) apply(i int) overlay.Result {
	l.t.Helper()
	res, err := l.dps[i].Apply(context.Background(), l.desired(i))
	if err != nil {
		l.t.Fatalf("apply h%d: %v", i+1, err)
	}
	return res
}

func (l *lab) applyAll() {
	l.t.Helper()
	for i := range l.hosts {
		l.apply(i)
	}
}

func changeText(r overlay.Result) string {
	var b strings.Builder
	for _, c := range r.Changes {
		b.WriteString(c.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// receivedDuring counts the IPv4 and ARP frames each named VM receives while f runs. (Frames,
// not interface counters: the host ends of the VMs' veths send IPv6 noise of their own.)
func (l *lab) receivedDuring(t *testing.T, counts map[string]*int64, f func()) {
	t.Helper()
	l.receivedFromDuring(t, nil, counts, f)
}

// receivedFromDuring counts only frames from the given source MAC (all when nil).
func (l *lab) receivedFromDuring(t *testing.T, src net.HardwareAddr, counts map[string]*int64, f func()) {
	t.Helper()
	match := func(frame []byte) bool {
		return nstest.IsIPv4OrARP(frame) && (src == nil || string(frame[6:12]) == string(src))
	}
	caps := map[string]*nstest.Capture{}
	for name := range counts {
		c, err := l.vms[name].ns.StartInboundCapture("eth0", match)
		if err != nil {
			t.Fatal(err)
		}
		caps[name] = c
	}
	f()
	for name, c := range caps {
		*counts[name], _ = c.Stop()
		if *counts[name] > 0 {
			t.Logf("%s received: %s", name, strings.Join(c.Samples(), "; "))
		}
	}
}

// received is receivedDuring for one VM.
func (l *lab) received(t *testing.T, vm string, f func()) int64 {
	t.Helper()
	var n int64
	l.receivedDuring(t, map[string]*int64{vm: &n}, f)
	return n
}

func (l *lab) ping(from, to string, count int) int {
	return l.vms[from].ns.Ping(to, count, "0.05")
}

// portDrops reads the frames port security dropped per interface, from the port_drops set of ns's
// bridge table.
func portDrops(t *testing.T, ns *nstest.NS) map[string]uint64 {
	t.Helper()
	out := ns.MustRun(t, "nft", "-j", "list", "set", "netdev", overlay.TableName, overlay.PortDropSet)
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []struct {
					Elem struct {
						Val     string `json:"val"`
						Counter struct {
							Packets uint64 `json:"packets"`
						} `json:"counter"`
					} `json:"elem"`
				} `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j list set %s: %v\n%s", overlay.PortDropSet, err, out)
	}
	drops := map[string]uint64{}
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, e := range o.Set.Elem {
			drops[e.Elem.Val] = e.Elem.Counter.Packets
		}
	}
	return drops
}

// ruleCount reads the packet counter of the rule of ours whose text is text, in chain of family.
func ruleCount(t *testing.T, ns *nstest.NS, family, chain, text string) uint64 {
	t.Helper()
	out := ns.MustRun(t, "nft", "-j", "list", "chain", family, overlay.TableName, chain)
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Comment string           `json:"comment"`
				Expr    []map[string]any `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j list chain %s %s: %v", family, chain, err)
	}
	for _, o := range doc.Nftables {
		if o.Rule == nil || o.Rule.Comment != text {
			continue
		}
		for _, e := range o.Rule.Expr {
			if c, ok := e["counter"].(map[string]any); ok {
				n, _ := c["packets"].(float64)
				return uint64(n)
			}
		}
		t.Fatalf("rule %q of %s %s has no counter", text, family, chain)
	}
	t.Fatalf("no rule %q in %s %s:\n%s", text, family, chain, out)
	return 0
}
