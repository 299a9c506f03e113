//go:build linux

package linux

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

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
	for i := 80; i < 600; i++ { // 600 ports: 2,400 elements in the port sets
		many.Networks[0].Ports = append(many.Networks[0].Ports, port(i))
	}
	few := overlay.DesiredState{Underlay: many.Underlay, Networks: []overlay.Network{many.Networks[1]}}
	if got, err := dp.PortDrops(context.Background()); err != nil || len(got) != 0 {
		t.Fatalf("PortDrops before any Apply = %v, %v; want none", got, err)
	}

	for i, step := range []struct {
		state overlay.DesiredState
		what  string
	}{{many, "80 networks, 600 ports"}, {many, "the same again"}, {few, "1 network, 1 port"}, {few, "the same again"}} {
		res, err := dp.Apply(context.Background(), step.state)
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, step.what, err)
		}
		if len(res.Errors) > 0 {
			t.Fatalf("step %d (%s): failed objects %v", i, step.what, res.Errors)
		}
		if i%2 == 1 && len(res.Changes) != 0 {
			t.Errorf("step %d (%s): %d changes, want none", i, step.what, len(res.Changes))
		}
		t.Logf("step %d (%s): %d changes", i, step.what, len(res.Changes))
		if i == 0 {
			// Drop counts, as the rules would leave them: an Apply keeps those of the ports it
			// keeps, and removes only those of the ports it removes.
			ns.MustRun(t, "nft", "add", "element", "bridge", overlay.TableName, overlay.PortDropSet, `{ "tap1", "tap5", "tap599" }`)
		}
	}
	if got := portDrops(t, ns); len(got) != 1 || got["tap1"] != 0 {
		t.Errorf("drop counts after shrinking to port tap1: %v, want tap1 only", got)
	}
	if got, err := dp.PortDrops(context.Background()); err != nil || len(got) != 1 || got["tap1"] != 0 {
		t.Errorf("PortDrops after shrinking to port tap1 = %v, %v; want tap1 only", got, err)
	}
	rules := ns.MustRun(t, "nft", "list", "table", "bridge", overlay.TableName)
	if !strings.Contains(rules, `elements = { "tap1" . 0e:00:00:00:00:01 }`) || strings.Contains(rules, "tap599") {
		t.Errorf("port sets after shrinking to one port:\n%s", rules)
	}
}

// Upgrading from the per-port rules of earlier versions: the old rules stay until the set-based
// ones are in place, also when the sets cannot be made (port security never goes off on the way),
// and go once they are.
func TestPrivilegedPortSecurityUpgrade(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "psup")
	p, state := onePort()

	// What an earlier version left: our tables, and the port's four rules in bridge prerouting.
	off := state
	off.DisablePortSecurity = true
	if _, err := dp.Apply(context.Background(), off); err != nil {
		t.Fatal(err)
	}
	in := overlay.Match{Field: overlay.FieldIIFName, Name: p.Interface}
	arp, ip4 := overlay.Match{Field: overlay.FieldEtherType, Num: 0x0806}, overlay.Match{Field: overlay.FieldEtherType, Num: 0x0800}
	host := netip.PrefixFrom(p.IP, 32)
	old := []overlay.Rule{
		{Matches: []overlay.Match{in, {Field: overlay.FieldEtherSaddr, Neg: true, MAC: p.MAC}}, Counter: true, Verdict: overlay.Drop},
		{Matches: []overlay.Match{in, arp, {Field: overlay.FieldARPSha, Neg: true, MAC: p.MAC}}, Counter: true, Verdict: overlay.Drop},
		{Matches: []overlay.Match{in, arp, {Field: overlay.FieldARPSpa, Neg: true, Prefix: host}}, Counter: true, Verdict: overlay.Drop},
		{Matches: []overlay.Match{in, ip4, {Field: overlay.FieldIPSaddr, Neg: true, Prefix: host}}, Counter: true, Verdict: overlay.Drop},
	}
	writePrerouting(t, dp, old)
	oldKept := func() bool {
		rules := rulesOf(t, dp)
		for _, r := range old {
			if !strings.Contains(rules, "bridge prerouting "+r.String()+"\n") {
				return false
			}
		}
		return true
	}

	// A set of ours in the way, with another key type: the Apply fails, naming it, and the old
	// rules stay.
	ns.MustRun(t, "nft", "delete", "set", "bridge", overlay.TableName, overlay.PortMACSet)
	ns.MustRun(t, "nft", "add", "set", "bridge", overlay.TableName, overlay.PortMACSet, "{ type ifname; }")
	if _, err := dp.Apply(context.Background(), state); err == nil || !strings.Contains(err.Error(), overlay.PortMACSet) {
		t.Errorf("Apply with %s of another type: err %v, want one naming the set", overlay.PortMACSet, err)
	}
	if !oldKept() {
		t.Errorf("the old per-port rules went while the sets could not be made:\n%s", rulesOf(t, dp))
	}

	// Once the way is clear, the set rules come and the old ones go; then nothing changes.
	ns.MustRun(t, "nft", "delete", "set", "bridge", overlay.TableName, overlay.PortMACSet)
	res, err := dp.Apply(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	checkDeleted(t, res, old)
	if oldKept() || !strings.Contains(rulesOf(t, dp), "bridge prerouting iifname @ports iifname . ether saddr != @port_macs counter jump port_drop\n") {
		t.Errorf("rules after the upgrade:\n%s", rulesOf(t, dp))
	}
	if res, err := dp.Apply(context.Background(), state); err != nil || len(res.Changes) != 0 {
		t.Errorf("second Apply: err %v, changes:\n%s", err, changeText(res))
	}
}

// Keys of the port sets read back as the elements they were made from.
func TestPortSetKeysRoundTrip(t *testing.T) {
	mac, _ := net.ParseMAC("0e:00:00:00:12:34")
	for _, tc := range []struct {
		set  string
		elem overlay.PortSetElem
	}{
		{overlay.PortSet, overlay.PortSetElem{Interface: "vxp0123456789ab"}}, // 15 characters
		{overlay.PortMACSet, overlay.PortSetElem{Interface: "tap1", MAC: mac}},
		{overlay.PortIP4Set, overlay.PortSetElem{Interface: "tap1", IP: netip.MustParseAddr("10.0.0.2")}},
	} {
		key := portSetKey(tc.elem)
		if got := portSetElemText(tc.set, key); got != tc.elem.String() {
			t.Errorf("%s: %q read back as %q (key %x)", tc.set, tc.elem, got, key)
		}
		if want := map[string]int{overlay.PortSet: 16, overlay.PortMACSet: 24, overlay.PortIP4Set: 20}[tc.set]; len(key) != want {
			t.Errorf("%s: key of %d bytes, want %d", tc.set, len(key), want)
		}
	}
}

// Upgrading from the set-based rules that dropped in place (no per-port counts): the rules that
// jump to the counting drop chain come in, the old ones go, and nothing changes after.
func TestPrivilegedPortDropUpgrade(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "pdup")
	_, state := onePort()
	if _, err := dp.Apply(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	// What the earlier version left: its four rules dropping in place, no drop chain, no count set.
	var old []overlay.Rule
	for _, r := range overlay.NftPlan(state) {
		if r.Family == "bridge" && r.Name == "prerouting" {
			for _, rule := range r.Rules {
				rule.Verdict = overlay.Drop
				old = append(old, rule)
			}
		}
	}
	ns.MustRun(t, "nft", "flush", "chain", "bridge", overlay.TableName, "prerouting")
	ns.MustRun(t, "nft", "delete", "chain", "bridge", overlay.TableName, overlay.PortDropChain)
	ns.MustRun(t, "nft", "delete", "set", "bridge", overlay.TableName, overlay.PortDropSet)
	writePrerouting(t, dp, old)
	if rules := rulesOf(t, dp); !strings.Contains(rules, "bridge prerouting "+old[0].String()+"\n") {
		t.Fatalf("the old rules are not in place:\n%s", rules)
	}

	res, err := dp.Apply(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	checkDeleted(t, res, old)
	rules := rulesOf(t, dp)
	for _, want := range []string{
		"bridge prerouting iifname @ports iifname . ether saddr != @port_macs counter jump port_drop\n",
		"bridge port_drop update @port_drops { iifname }\n",
		"bridge port_drop drop\n",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules after the upgrade lack %q:\n%s", want, rules)
		}
	}
	if res, err := dp.Apply(context.Background(), state); err != nil || len(res.Changes) != 0 {
		t.Errorf("second Apply: err %v, changes:\n%s", err, changeText(res))
	}

	// A count set that cannot serve (another key type) is reported, and port security goes on
	// without counting until it is cleared.
	ns.MustRun(t, "nft", "flush", "chain", "bridge", overlay.TableName, overlay.PortDropChain)
	ns.MustRun(t, "nft", "delete", "set", "bridge", overlay.TableName, overlay.PortDropSet)
	ns.MustRun(t, "nft", "add", "set", "bridge", overlay.TableName, overlay.PortDropSet, "{ type ipv4_addr; }")
	if _, err := dp.Apply(context.Background(), state); err == nil || !strings.Contains(err.Error(), overlay.PortDropSet) {
		t.Errorf("Apply with %s of another type: err %v, want one naming the set", overlay.PortDropSet, err)
	}
	rules = rulesOf(t, dp)
	if !strings.Contains(rules, "bridge port_drop drop\n") || strings.Contains(rules, "update @port_drops") ||
		!strings.Contains(rules, "counter jump port_drop\n") {
		t.Errorf("rules with an unusable count set: want the jumps and a drop chain that drops without counting:\n%s", rules)
	}
	ns.MustRun(t, "nft", "delete", "set", "bridge", overlay.TableName, overlay.PortDropSet)
	if _, err := dp.Apply(context.Background(), state); err != nil {
		t.Fatal(err)
	}
	if rules := rulesOf(t, dp); !strings.Contains(rules, "bridge port_drop update @port_drops { iifname }\n") {
		t.Errorf("the count is not back once the set could be made:\n%s", rules)
	}
}

// writePrerouting adds rules to our bridge prerouting chain as an earlier version wrote them.
func writePrerouting(t *testing.T, dp *Datapath, rules []overlay.Rule) {
	t.Helper()
	tb := &nftables.Table{Name: overlay.TableName, Family: nftables.TableFamilyBridge}
	for _, r := range rules {
		dp.nft.AddRule(&nftables.Rule{Table: tb, Chain: &nftables.Chain{Name: "prerouting", Table: tb},
			Exprs: ruleExprs(nftables.TableFamilyBridge, r, nil), UserData: userdata.AppendString(nil, userdata.TypeComment, r.String())})
	}
	if err := dp.nft.Flush(); err != nil {
		t.Fatal(err)
	}
}

// checkDeleted fails unless res reports the deletion of every rule of old from bridge prerouting.
func checkDeleted(t *testing.T, res overlay.Result, old []overlay.Rule) {
	t.Helper()
	got := changeText(res)
	for _, r := range old {
		if !strings.Contains(got, "delete "+overlay.RuleObject("bridge", "prerouting", r.String())+"\n") {
			t.Errorf("changes lack the deletion of %q:\n%s", r.String(), got)
		}
	}
}

// onePort is a host with one secured port, tap1, in one isolated network.
func onePort() (overlay.LocalPort, overlay.DesiredState) {
	mac, _ := net.ParseMAC("0e:00:00:00:00:01")
	p := overlay.LocalPort{Interface: "tap1", MAC: mac, IP: netip.MustParseAddr("10.9.0.2")}
	return p, overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{{VNI: 11, Mode: overlay.ModeIsolated, MTU: 1450, Ports: []overlay.LocalPort{p}}}}
}
