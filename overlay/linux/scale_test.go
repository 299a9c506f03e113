//go:build linux

package linux

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
)

// A host with many networks and many ports converges in one Apply, and leaves them all in one: the
// rules and set elements go to the kernel in batches that its netlink socket takes (a batch of a
// few hundred rules overflowed it, and 50 ports on one host could not be programmed).
func TestPrivilegedManyNetworksAndPorts(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "many")
	ip := netip.MustParseAddr
	port := func(i int) overlay.LocalPort {
		mac, _ := net.ParseMAC(fmt.Sprintf("0e:00:00:00:%02x:%02x", i>>8, i&0xff))
		return overlay.LocalPort{Interface: fmt.Sprintf("tap%d", i), MAC: mac, IP: netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})}
	}
	many := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: ip("198.18.0.1")}}
	for v := range 80 { // about 480 rules in the inet chains
		many.Networks = append(many.Networks, overlay.Network{VNI: uint32(1000 + v), Mode: overlay.ModeIsolated, MTU: 1450,
			Ports: []overlay.LocalPort{port(v)}})
	}
	for i := 80; i < 600; i++ { // 600 ports: 600 ingress chains of 6 rules
		many.Networks[0].Ports = append(many.Networks[0].Ports, port(i))
	}
	// A port's chain is written once its interface exists, as the port is plugged.
	var taps strings.Builder
	for i := range 600 {
		fmt.Fprintf(&taps, "tuntap add mode tap name tap%d\n", i)
	}
	batch := filepath.Join(t.TempDir(), "taps")
	if err := os.WriteFile(batch, []byte(taps.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "-batch", batch)
	few := overlay.DesiredState{Underlay: many.Underlay, Networks: []overlay.Network{many.Networks[1]}}
	if got, err := dp.PortDrops(context.Background()); err != nil || len(got) != 0 {
		t.Fatalf("PortDrops before any Apply = %v, %v; want none", got, err)
	}

	for i, step := range []struct {
		state overlay.DesiredState
		what  string
	}{{many, "80 networks, 600 ports"}, {many, "the same again"}, {few, "1 network, 1 port"}, {few, "the same again"}} {
		start := time.Now()
		res, err := dp.Apply(context.Background(), step.state)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, step.what, err)
		}
		if len(res.Errors) > 0 {
			t.Fatalf("step %d (%s): failed objects %v", i, step.what, res.Errors)
		}
		if i%2 == 1 && len(res.Changes) != 0 {
			t.Errorf("step %d (%s): %d changes, want none", i, step.what, len(res.Changes))
		}
		t.Logf("step %d (%s): %d changes in %s", i, step.what, len(res.Changes), took.Round(time.Millisecond))
		if i == 0 {
			// Drop counts, as the rules would leave them: an Apply keeps those of the ports it
			// keeps, and removes only those of the ports it removes.
			ns.MustRun(t, "nft", "add", "element", "netdev", overlay.TableName, overlay.PortDropSet, `{ "tap1", "tap5", "tap599" }`)
		}
	}
	if got := portDrops(t, ns); len(got) != 1 || got["tap1"] != 0 {
		t.Errorf("drop counts after shrinking to port tap1: %v, want tap1 only", got)
	}
	if got, err := dp.PortDrops(context.Background()); err != nil || len(got) != 1 || got["tap1"] != 0 {
		t.Errorf("PortDrops after shrinking to port tap1 = %v, %v; want tap1 only", got, err)
	}
	rules := ns.MustRun(t, "nft", "list", "table", "netdev", overlay.TableName)
	if !strings.Contains(rules, `chain portsec_tap1 {`) || strings.Contains(rules, "tap599") || strings.Count(rules, "hook ingress") != 1 {
		t.Errorf("port chains after shrinking to one port:\n%s", rules)
	}
}

// What the previous version wrote for one port, tap1 (0e:00:00:00:00:01, 10.9.0.2): port security in
// bridge prerouting, each check a lookup in the port sets.
const setBasedPortSecurity = `table bridge vxfabric {
	set ports { type ifname; elements = { "tap1" } }
	set ports4 { type ifname; elements = { "tap1" } }
	set port_macs { type ifname . ether_addr; elements = { "tap1" . 0e:00:00:00:00:01 } }
	set port_ips4 { type ifname . ipv4_addr; elements = { "tap1" . 10.9.0.2 } }
	set port_drops { type ifname; size 65535; flags dynamic; counter; }
	chain port_drop {
		update @port_drops { iifname }
		drop
	}
	chain prerouting {
		type filter hook prerouting priority 0; policy accept;
		iifname @ports iifname . ether saddr != @port_macs counter jump port_drop
		ether type 8021q iifname @ports counter jump port_drop
		ether type 8021ad iifname @ports counter jump port_drop
		ether type arp iifname @ports iifname . arp saddr ether != @port_macs counter jump port_drop
		ether type arp iifname @ports4 iifname . arp saddr ip != @port_ips4 counter jump port_drop
		ether type ip iifname @ports4 iifname . ip saddr != @port_ips4 counter jump port_drop
	}
	chain postrouting {
		type filter hook postrouting priority 0; policy accept;
	}
}
`

// Upgrading from the set-based port security of the previous version: the port's ingress chain is
// written before anything of the old goes (port security never goes off on the way), then the old
// chains and sets go, and nothing changes after.
func TestPrivilegedPortSecurityUpgrade(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp, state := previousVersionHost(t, "psup")

	res, err := dp.Apply(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	got := changeText(res)
	added := strings.Index(got, "add "+overlay.RuleObject("netdev", overlay.PortChain("tap1"), "ether type ip ip saddr != 10.9.0.2 counter jump port_drop")+"\n")
	removed := strings.Index(got, "delete "+overlay.ChainObject("bridge", "prerouting")+"\n")
	if added < 0 || removed < 0 || added > removed {
		t.Errorf("changes: want the port's ingress chain complete before the old prerouting chain goes:\n%s", got)
	}
	for _, set := range []string{"ports", "ports4", "port_macs", "port_ips4", overlay.PortDropSet} {
		if !strings.Contains(got, "delete "+overlay.SetObject("bridge", set)+"\n") {
			t.Errorf("changes lack the deletion of the old set %s:\n%s", set, got)
		}
	}
	if left := ns.MustRun(t, "nft", "list", "table", "bridge", overlay.TableName); strings.Contains(left, "chain") || strings.Contains(left, "set") {
		t.Errorf("the old bridge table still holds:\n%s", left)
	}
	if res, err := dp.Apply(context.Background(), state); err != nil || len(res.Changes) != 0 {
		t.Errorf("second Apply: err %v, changes:\n%s", err, changeText(res))
	}
}

// An upgrade whose new port security cannot be made keeps the old: here the port's ingress chain
// exists without a hook, so the Apply fails, and the set-based rules of the previous version stay
// in bridge prerouting until a later Apply has the new ones in place.
func TestPrivilegedPortSecurityUpgradeKeepsTheOldWhenTheNewFails(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp, state := previousVersionHost(t, "psold")
	ns.MustRun(t, "nft", "add", "chain", "netdev", overlay.TableName, overlay.PortChain("tap1"))
	if _, err := dp.Apply(context.Background(), state); err == nil {
		t.Fatal("Apply succeeded with the port's chain in the way")
	}
	if rules := ns.MustRun(t, "nft", "list", "table", "bridge", overlay.TableName); !strings.Contains(rules, "chain prerouting") ||
		!strings.Contains(rules, "@port_macs") {
		t.Errorf("the old port security went while the new could not be made:\n%s", rules)
	}
	ns.MustRun(t, "nft", "flush", "chain", "netdev", overlay.TableName, overlay.PortChain("tap1"))
	ns.MustRun(t, "nft", "delete", "chain", "netdev", overlay.TableName, overlay.PortChain("tap1"))
	if _, err := dp.Apply(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	if rules := ns.MustRun(t, "nft", "list", "table", "bridge", overlay.TableName); strings.Contains(rules, "chain") {
		t.Errorf("the old port security stayed once the new was in place:\n%s", rules)
	}
}

// The ingress chain of a port about to be plugged is made anew, on the interface of that name now:
// before Linux 6.16 a hook follows its device through a rename, and a chain adopted by name would
// check the renamed interface while the new one went unchecked. A plugged port's chain is kept.
func TestPrivilegedPortChainMadeAnewForANewInterface(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "psnew")
	_, state := onePort()
	ns.MustRun(t, "ip", "tuntap", "add", "mode", "tap", "name", "tap1")
	if _, err := dp.Apply(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "ip", "link", "set", "tap1", "nomaster")
	ns.MustRun(t, "ip", "link", "set", "tap1", "name", "tapold")
	ns.MustRun(t, "ip", "tuntap", "add", "mode", "tap", "name", "tap1")
	res, err := dp.Apply(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	got := changeText(res)
	chain := overlay.ChainObject("netdev", overlay.PortChain("tap1"))
	del, add, plug := strings.Index(got, "delete "+chain+"\n"), strings.Index(got, "add "+chain+"\n"), strings.Index(got, "add port tap1 ")
	if del < 0 || add < del || plug < add {
		t.Errorf("changes: want the chain deleted, made again, then the port plugged:\n%s", got)
	}
	if res, err := dp.Apply(context.Background(), state); err != nil || len(res.Changes) != 0 {
		t.Errorf("second Apply: err %v, changes:\n%s", err, changeText(res))
	}
}

// A batch of new chains that the kernel refuses whole is made again chain by chain: the chain it
// refuses is reported, and the others are made and filled. Here a chain of a planned port's name
// appears, with another priority, between the Apply's read of the kernel and its write, as another
// program could make it; before Linux 6.16, a port's interface gone in that window has the same
// effect.
func TestPrivilegedRefusedChainBatchMadeChainByChain(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "psbatch")
	_, state := onePort()
	var ports []overlay.LocalPort
	for i := 1; i <= 3; i++ {
		mac, _ := net.ParseMAC(fmt.Sprintf("0e:00:00:00:00:%02x", i))
		ports = append(ports, overlay.LocalPort{Interface: fmt.Sprintf("tap%d", i), MAC: mac, IP: netip.AddrFrom4([4]byte{10, 9, 0, byte(1 + i)})})
		ns.MustRun(t, "ip", "tuntap", "add", "mode", "tap", "name", ports[i-1].Interface)
	}
	state.Networks[0].Ports = ports
	inTheWay := overlay.PortChain("tap2")
	t.Cleanup(func() { testHookChainBatch = nil })
	testHookChainBatch = func() {
		testHookChainBatch = nil
		ns.MustRun(t, "nft", "add", "chain", "netdev", overlay.TableName, inTheWay, "{ type filter hook ingress device tap2 priority 10; }")
	}
	res, err := dp.Apply(context.Background(), state)
	if err == nil || !strings.Contains(err.Error(), overlay.ChainObject("netdev", inTheWay)) {
		t.Errorf("Apply with %s in the way: err %v, want one naming that chain", inTheWay, err)
	}
	got := changeText(res)
	for _, p := range []overlay.LocalPort{ports[0], ports[2]} {
		rule := overlay.RuleObject("netdev", overlay.PortChain(p.Interface), fmt.Sprintf("ether type ip ip saddr != %s counter jump port_drop", p.IP))
		if !strings.Contains(got, "add "+rule+"\n") {
			t.Errorf("changes lack %s's check, made apart from the refused batch:\n%s", p.Interface, got)
		}
	}
	if strings.Contains(got, "add "+overlay.ChainObject("netdev", inTheWay)+"\n") {
		t.Errorf("changes claim the refused chain %s was made:\n%s", inTheWay, got)
	}
	if rules := ns.MustRun(t, "nft", "list", "chain", "netdev", overlay.TableName, inTheWay); strings.Contains(rules, "port_drop") {
		t.Errorf("rules written into the chain that is not ours to fill:\n%s", rules)
	}
}

// previousVersionHost is a host with port tap1 plugged and the previous version's port security in
// place (setBasedPortSecurity); state is what the current version wants there.
func previousVersionHost(t *testing.T, label string) (*nstest.NS, *Datapath, overlay.DesiredState) {
	t.Helper()
	ns, dp := hostNS(t, label)
	_, state := onePort()
	ns.MustRun(t, "ip", "tuntap", "add", "mode", "tap", "name", "tap1")
	off := state
	off.DisablePortSecurity = true
	if _, err := dp.Apply(context.Background(), off); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "old.nft")
	if err := os.WriteFile(old, []byte(setBasedPortSecurity), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "nft", "-f", old)
	return ns, dp, state
}

// A count set that cannot serve (another key type) is reported, and port security goes on without
// counting until it is cleared; then the count comes back.
func TestPrivilegedPortDropSetInTheWay(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "pdup")
	_, state := onePort()
	ns.MustRun(t, "ip", "tuntap", "add", "mode", "tap", "name", "tap1")
	if _, err := dp.Apply(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "nft", "flush", "chain", "netdev", overlay.TableName, overlay.PortDropChain)
	ns.MustRun(t, "nft", "delete", "set", "netdev", overlay.TableName, overlay.PortDropSet)
	ns.MustRun(t, "nft", "add", "set", "netdev", overlay.TableName, overlay.PortDropSet, "{ type ipv4_addr; }")
	if _, err := dp.Apply(context.Background(), state); err == nil || !strings.Contains(err.Error(), overlay.PortDropSet) {
		t.Errorf("Apply with %s of another type: err %v, want one naming the set", overlay.PortDropSet, err)
	}
	rules := rulesOf(t, dp)
	if !strings.Contains(rules, "netdev port_drop drop\n") || strings.Contains(rules, "update @port_drops") ||
		!strings.Contains(rules, "counter jump port_drop\n") {
		t.Errorf("rules with an unusable count set: want the jumps and a drop chain that drops without counting:\n%s", rules)
	}
	ns.MustRun(t, "nft", "delete", "set", "netdev", overlay.TableName, overlay.PortDropSet)
	if _, err := dp.Apply(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	if rules := rulesOf(t, dp); !strings.Contains(rules, "netdev port_drop update @port_drops { iifname }\n") {
		t.Errorf("the count is not back once the set could be made:\n%s", rules)
	}
}

// onePort is a host with one secured port, tap1, in one isolated network.
func onePort() (overlay.LocalPort, overlay.DesiredState) {
	mac, _ := net.ParseMAC("0e:00:00:00:00:01")
	p := overlay.LocalPort{Interface: "tap1", MAC: mac, IP: netip.MustParseAddr("10.9.0.2")}
	return p, overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{{VNI: 11, Mode: overlay.ModeIsolated, MTU: 1450, Ports: []overlay.LocalPort{p}}}}
}
