package tests

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/lab"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// TestPrivilegedRoutedVMsReachTheOutsideFromEveryHost: a routed network with VMs on three hosts.
// The outside reaches each VM, and each VM reaches the outside, whichever host its network's route
// goes through: the lab gives the outside a host route to each VM not on that host, as a router in
// front of a real fabric needs (a host delivers to its own VMs only).
func TestPrivilegedRoutedVMsReachTheOutsideFromEveryHost(t *testing.T) {
	f := newFixture(t, "e2e-routed3")
	f.network("rt", "10.46.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED)
	var vms []lab.VM
	for _, h := range []string{"h1", "h2", "h3"} {
		vms = append(vms, f.vm("r3-"+h, h, "rt"))
	}
	for _, vm := range vms {
		f.reach(lab.RoleOutside, vm.IP(0), 5*time.Second)
		f.reach(vm.Name, lab.OutsideAddr, 5*time.Second)
	}
	// The VM on h2 goes: so does the outside's host route to it.
	f.deleteVM(vms[1].Name)
	if via, ok, err := f.l.RouteVia(lab.RoleOutside, netip.PrefixFrom(vms[1].IP(0), 32)); err != nil || ok {
		t.Errorf("after deleting %s the outside still routes its address via %s (%v)", vms[1].Name, via, err)
	}
	// An operator's route into the network is theirs: a VM taking its address changes nothing.
	blackhole := vms[1].IP(0).String() + "/32"
	if out, err := f.l.Output(f.ctx, lab.RoleOutside, "ip", "route", "add", "blackhole", blackhole); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	f.createVM(lab.VMSpec{Name: "r3-again", Host: "h2", NICs: []lab.NICSpec{{Tenant: f.tenant, Network: "rt", IP: vms[1].IP(0).String()}}})
	if st := f.l.Status(f.ctx); len(st.Errors) > 0 {
		t.Fatal(st.Errors)
	}
	if out, _ := f.l.Output(f.ctx, lab.RoleOutside, "ip", "route", "show", blackhole); !strings.Contains(out, "blackhole") {
		t.Errorf("the operator's blackhole route to %s: %q after a VM took the address, want it kept", blackhole, out)
	}
	f.deleteVM("r3-again")
	if out, _ := f.l.Output(f.ctx, lab.RoleOutside, "ip", "route", "show", blackhole); !strings.Contains(out, "blackhole") {
		t.Errorf("the operator's blackhole route to %s: %q after the VM went, want it kept", blackhole, out)
	}
	if out, err := f.l.Output(f.ctx, lab.RoleOutside, "ip", "route", "del", "blackhole", blackhole); err != nil {
		t.Errorf("%v\n%s", err, out)
	}
}

// TestPrivilegedMultiHomedVMAnswersOnEveryNIC: a VM with two NICs on one isolated network, and one
// with a NIC on a nat network (its default route) and one on a routed network. Each NIC answers,
// and its answers leave through it (port security drops what leaves through another NIC).
func TestPrivilegedMultiHomedVMAnswersOnEveryNIC(t *testing.T) {
	f := newFixture(t, "e2e-multihome")
	f.network("iso", "10.45.0.0/24", isolated)
	f.network("nat", "10.44.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_NAT)
	f.network("rt", "10.43.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED)
	two := f.vm("mh-two", "h1", "iso", "iso")
	peer := f.vm("mh-peer", "h2", "iso")
	for i := range 2 {
		f.reach(peer.Name, two.IP(i), 5*time.Second)
	}
	gw := f.vm("mh-gw", "h3", "nat", "rt")
	f.reach(gw.Name, lab.OutsideAddr, 5*time.Second)
	f.reach(lab.RoleOutside, gw.IP(1), 5*time.Second)
}
