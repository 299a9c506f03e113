//go:build linux

package linux

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/fake"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
)

// TestPrivilegedFakeMatchesKernel applies the same sequence of states to the kernel and to the fake
// and compares what each reports, so that tests and simulations on the fake stay honest.
func TestPrivilegedFakeMatchesKernel(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "fid")
	vm := nstest.New(t, "fidvm")
	nstest.MustVeth(t, nstest.End{NS: ns, Name: "tap1"}, nstest.End{NS: vm, Name: "eth0"})
	nstest.MustVeth(t, nstest.End{NS: ns, Name: "tap2"}, nstest.End{NS: vm, Name: "eth1"})
	fk := fake.New()
	fk.SetLink("tap1", true)
	fk.SetLink("tap2", true)

	ip := netip.MustParseAddr
	remote := func(i byte, vtep string) overlay.RemotePort {
		return overlay.RemotePort{MAC: mustMAC("0e:00:00:00:09:0" + string('0'+i)), IP: netip.AddrFrom4([4]byte{10, 9, 0, i}), VTEP: ip(vtep)}
	}
	base := overlay.DesiredState{
		Underlay: overlay.Underlay{VTEP: ip("198.18.0.1")},
		Networks: []overlay.Network{
			{VNI: 11, Mode: overlay.ModeIsolated, MTU: 1450,
				Ports:   []overlay.LocalPort{{Interface: "tap1", MAC: mustMAC("0e:00:00:00:01:01"), IP: ip("10.9.0.9")}},
				Remotes: []overlay.RemotePort{remote(1, "198.18.0.2"), remote(2, "198.18.0.3")},
				Flood:   []netip.Addr{ip("198.18.0.2"), ip("198.18.0.3")}},
			{VNI: 12, Mode: overlay.ModeNAT, MTU: 1400, CIDR: netip.MustParsePrefix("10.12.0.0/24"),
				Gateway: ip("10.12.0.1"), GatewayMAC: mustMAC("02:00:00:00:12:01"),
				Ports:   []overlay.LocalPort{{Interface: "tap2", MAC: mustMAC("0e:00:00:00:12:02"), IP: ip("10.12.0.2")}},
				Remotes: []overlay.RemotePort{remote(3, "198.18.0.2")}, Flood: []netip.Addr{ip("198.18.0.2")}},
			{VNI: 13, Mode: overlay.ModeRouted, MTU: 1450, CIDR: netip.MustParsePrefix("10.13.0.0/24"),
				Gateway: ip("10.13.0.1"), GatewayMAC: mustMAC("02:00:00:00:13:01")},
		},
	}
	moved := base
	moved.Networks = []overlay.Network{base.Networks[0], base.Networks[2]}
	moved.Networks[0].Remotes = []overlay.RemotePort{remote(1, "198.18.0.4"), remote(4, "198.18.0.2")}
	moved.Networks[0].Flood = []netip.Addr{ip("198.18.0.2"), ip("198.18.0.4")}
	moved.DisablePortSecurity = true

	// A VM's NIC goes (its port leaves the bridge, its chain is deleted) and comes back.
	vanish := func() {
		ns.MustRun(t, "ip", "link", "del", "tap1")
		fk.SetLink("tap1", false)
	}
	reappear := func() {
		nstest.MustVeth(t, nstest.End{NS: ns, Name: "tap1"}, nstest.End{NS: vm, Name: "eth0"})
		fk.SetLink("tap1", true)
	}
	for i, step := range []struct {
		state  overlay.DesiredState
		before func()
	}{{base, nil}, {base, nil}, {base, vanish}, {base, reappear}, {base, nil}, {moved, nil}, {moved, nil}, {overlay.DesiredState{Underlay: base.Underlay}, nil}} {
		if step.before != nil {
			step.before()
		}
		s := step.state
		kr, kerr := dp.Apply(context.Background(), s)
		fr, ferr := fk.Apply(context.Background(), s)
		if kerr != nil || ferr != nil {
			t.Fatalf("step %d: kernel err %v, fake err %v", i, kerr, ferr)
		}
		k, f := sortedChanges(kr), sortedChanges(fr)
		t.Logf("step %d: %d changes", i, len(kr.Changes))
		if k != f {
			t.Errorf("step %d: kernel and fake differ\n--- kernel\n%s--- fake\n%s", i, k, f)
		}
		if !mapsEqual(kr.Plugged, fr.Plugged) {
			t.Errorf("step %d: plugged: kernel %v, fake %v", i, kr.Plugged, fr.Plugged)
		}
	}
}

func sortedChanges(r overlay.Result) string {
	var lines []string
	for _, c := range r.Changes {
		lines = append(lines, c.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n") + "\n"
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
