package overlay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
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

// The port sets hold each port once in ports and port_macs, and only IPv4 ports in ports4 and
// port_ips4 (an IPv6 port is held to its MAC alone); none with port security off.
func TestNftPortSets(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	d := DesiredState{Networks: []Network{
		{VNI: 1, Ports: []LocalPort{{Interface: "tap2", MAC: mac("0e:00:00:00:00:02"), IP: netip.MustParseAddr("10.0.0.2")}}},
		{VNI: 2, Ports: []LocalPort{
			{Interface: "tap1", MAC: mac("0e:00:00:00:00:01"), IP: netip.MustParseAddr("10.0.1.1")},
			{Interface: "tap6", MAC: mac("0e:00:00:00:00:06"), IP: netip.MustParseAddr("fd00::6")},
		}},
	}}
	got := map[string]string{}
	for name, elems := range NftPortSets(d) {
		got[name] = fmt.Sprint(elems)
	}
	want := map[string]string{
		PortSet:    "[tap1 tap2 tap6]",
		PortSet4:   "[tap1 tap2]",
		PortMACSet: "[tap1 . 0e:00:00:00:00:01 tap2 . 0e:00:00:00:00:02 tap6 . 0e:00:00:00:00:06]",
		PortIP4Set: "[tap1 . 10.0.1.1 tap2 . 10.0.0.2]",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("port sets\n%v\nwant\n%v", got, want)
	}
	d.DisablePortSecurity = true
	if sets := NftPortSets(d); len(sets) != 0 {
		t.Errorf("port sets with port security off: %v", sets)
	}
}
