package overlay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The control plane names port interfaces "vxp<id>": they must pass, while our own device names
// must not be taken by a port or an uplink (regression: every real port was refused).
func TestValidatePortAndUplinkNames(t *testing.T) {
	mac := net.HardwareAddr{0x0e, 0, 0, 0, 0, 1}
	state := func(port, uplink string) DesiredState {
		mode := ModeIsolated
		if uplink != "" {
			mode = ModeBridged
		}
		return DesiredState{
			Underlay: Underlay{VTEP: netip.MustParseAddr("198.18.0.11")},
			Networks: []Network{{
				VNI: 4096, Mode: mode, MTU: 1450, Uplink: uplink,
				Ports: []LocalPort{{Interface: port, MAC: mac, IP: netip.MustParseAddr("10.0.0.2")}},
			}},
		}
	}
	for _, tc := range []struct {
		port, uplink string
		ok           bool
	}{
		{"vxp0123456789", "", true},
		{"tap0", "", true},
		{"vxbr4096", "", false},
		{"vxlan4096", "", false},
		{"tap0", "eth1", true},
		{"tap0", "vxbr7", false},
		{"tap0", "vxlan7", false},
	} {
		err := state(tc.port, tc.uplink).Validate()
		if tc.ok && err != nil {
			t.Errorf("port %q uplink %q: %v, want valid", tc.port, tc.uplink, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalid) {
			t.Errorf("port %q uplink %q: err %v, want ErrInvalid", tc.port, tc.uplink, err)
		}
	}
}

// TestNftSetsSorted checks that the underlay sets come out in netip.Addr order without duplicates,
// IPv4 (sorted as numbers) and IPv6 alike.
func TestNftSetsSorted(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	d := DesiredState{Networks: []Network{{VNI: 1}, {VNI: 2}}, Infrastructure: []netip.Addr{netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::1")}}
	for i := range 500 {
		v := netip.AddrFrom4([4]byte{198, byte(18 + rng.IntN(2)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		d.Networks[i%2].Remotes = append(d.Networks[i%2].Remotes, RemotePort{VTEP: v})
		if i%7 == 0 {
			d.Networks[i%2].Flood = append(d.Networks[i%2].Flood, v, netip.AddrFrom16(v.As16())) // v4-mapped: the same VTEP
		}
	}
	d.Networks[1].Flood = append(d.Networks[1].Flood, netip.MustParseAddr("fd00::9"), netip.MustParseAddr("fd00::3"))
	sets := NftSets(d)
	for name, want := range map[string]int{VTEPSet4: -1, VTEPSet6: 2, InfraSet6: 2} {
		got := sets[name]
		if !slices.IsSortedFunc(got, netip.Addr.Compare) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Errorf("set %s not sorted or with duplicates: %v", name, got)
		}
		if want >= 0 && len(got) != want {
			t.Errorf("set %s has %d elements, want %d: %v", name, len(got), want, got)
		}
	}
	seen := map[netip.Addr]bool{}
	for _, n := range d.Networks {
		for _, r := range n.Remotes {
			seen[r.VTEP] = true
		}
	}
	if len(sets[VTEPSet4]) != len(seen) {
		t.Errorf("set %s has %d elements, want %d", VTEPSet4, len(sets[VTEPSet4]), len(seen))
	}
}

// Each port has its own ingress chain, named by its interface, checking its one MAC, untagged
// frames, and for an IPv4 port its one address (an IPv6 port is held to its MAC alone); they come
// after the drop chain they jump to, sorted by interface, and none with port security off. A port's
// chain is planned once its interface exists.
func TestNftPlanPortChains(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	d := DesiredState{Networks: []Network{
		{VNI: 1, Mode: ModeIsolated, Ports: []LocalPort{{Interface: "tap2", MAC: mac("0e:00:00:00:00:02"), IP: netip.MustParseAddr("10.0.0.2")}}},
		{VNI: 2, Mode: ModeIsolated, Ports: []LocalPort{
			{Interface: "tap1", MAC: mac("0e:00:00:00:00:01"), IP: netip.MustParseAddr("10.0.1.1")},
			{Interface: "tap6", MAC: mac("0e:00:00:00:00:06"), IP: netip.MustParseAddr("fd00::6")},
		}},
	}}
	var got []string
	for _, c := range NftPlan(d) {
		if c.Family != "netdev" {
			continue
		}
		got = append(got, fmt.Sprintf("%s hook=%q device=%q", c.Name, c.Hook, c.Device))
		for _, r := range c.Rules {
			got = append(got, "  "+r.String())
		}
	}
	want := []string{
		`port_drop hook="" device=""`,
		"  update @port_drops { iifname }",
		"  drop",
		`portsec_tap1 hook="ingress" device="tap1"`,
		"  ether saddr != 0e:00:00:00:00:01 counter jump port_drop",
		"  ether type != ip ether type != arp counter jump port_drop",
		"  ether type arp arp saddr ether != 0e:00:00:00:00:01 counter jump port_drop",
		"  ether type arp arp saddr ip != 10.0.1.1 arp saddr ip != 0.0.0.0 counter jump port_drop",
		"  ether type arp arp saddr ip 0.0.0.0 arp operation != request counter jump port_drop",
		"  ether type arp arp saddr ip 0.0.0.0 arp daddr ip != 10.0.1.1 counter jump port_drop",
		"  ether type ip ip saddr != 10.0.1.1 counter jump port_drop",
		"  ether type ip udp dport 68 counter jump port_drop",
		`portsec_tap2 hook="ingress" device="tap2"`,
		"  ether saddr != 0e:00:00:00:00:02 counter jump port_drop",
		"  ether type != ip ether type != arp counter jump port_drop",
		"  ether type arp arp saddr ether != 0e:00:00:00:00:02 counter jump port_drop",
		"  ether type arp arp saddr ip != 10.0.0.2 arp saddr ip != 0.0.0.0 counter jump port_drop",
		"  ether type arp arp saddr ip 0.0.0.0 arp operation != request counter jump port_drop",
		"  ether type arp arp saddr ip 0.0.0.0 arp daddr ip != 10.0.0.2 counter jump port_drop",
		"  ether type ip ip saddr != 10.0.0.2 counter jump port_drop",
		"  ether type ip udp dport 68 counter jump port_drop",
		`portsec_tap6 hook="ingress" device="tap6"`,
		"  ether saddr != 0e:00:00:00:00:06 counter jump port_drop",
		"  ether type != ip ether type != arp counter jump port_drop",
		"  ether type arp arp saddr ether != 0e:00:00:00:00:06 counter jump port_drop",
		"  ether type ip udp dport 68 counter jump port_drop",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("netdev chains\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ifaces := PortIfaces(PortChains(NftPlan(d), func(iface string) bool { return iface != "tap2" })); !slices.Equal(ifaces, []string{"tap1", "tap6"}) {
		t.Errorf("port chains with tap2 missing: %v, want tap1 and tap6", ifaces)
	}
	d.DisablePortSecurity = true
	for _, c := range NftPlan(d) {
		if c.Family == "netdev" {
			t.Errorf("chain %s with port security off", c.Name)
		}
	}
}

// A base chain without rules is not planned: an isolated network has no gateway, so no bridge
// postrouting chain, and no nat network no nat chain.
func TestNftPlanLeavesOutEmptyBaseChains(t *testing.T) {
	d := DesiredState{Networks: []Network{{VNI: 1, Mode: ModeIsolated}}}
	var names []string
	for _, c := range NftPlan(d) {
		names = append(names, c.Family+" "+c.Name)
	}
	if want := []string{"inet input", "inet forward"}; !slices.Equal(names, want) {
		t.Errorf("chains %v, want %v", names, want)
	}
}

// TestNftPlanForwardDropsBeforeAccepts: a routed network accepts what is routed to it, so every
// network's drops come first, whatever the VNIs' order: a nat network of a higher VNI reaches a
// routed one of a lower VNI no more than one of a lower VNI does.
func TestNftPlanForwardDropsBeforeAccepts(t *testing.T) {
	gw := func(vni uint32, mode Mode, cidr string) Network {
		p := netip.MustParsePrefix(cidr)
		return Network{VNI: vni, Mode: mode, CIDR: p, Gateway: p.Addr().Next(), GatewayMAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(vni)}}
	}
	d := DesiredState{Underlay: Underlay{VTEP: netip.MustParseAddr("198.18.0.1"), Interface: "eth0"}, Networks: []Network{
		gw(300, ModeRouted, "10.30.0.0/24"), gw(500, ModeNAT, "10.50.0.0/24"), gw(600, ModeRouted, "10.60.0.0/24"),
		{VNI: 700, Mode: ModeIsolated}, {VNI: 800, Mode: ModeBridged},
	}}
	for _, c := range NftPlan(d) {
		if c.Family != "inet" || c.Name != "forward" {
			continue
		}
		lastDrop, firstAccept := -1, len(c.Rules)
		for i, r := range c.Rules {
			switch {
			case r.Verdict == Drop:
				lastDrop = i
			case r.Verdict == Accept && i > 0 && firstAccept == len(c.Rules): // rule 0 accepts replies
				firstAccept = i
			}
		}
		if lastDrop > firstAccept {
			var text []string
			for _, r := range c.Rules {
				text = append(text, r.String())
			}
			t.Errorf("forward: a drop (rule %d) after an accept (rule %d):\n%s", lastDrop, firstAccept, strings.Join(text, "\n"))
		}
		return
	}
	t.Fatal("no forward chain")
}
