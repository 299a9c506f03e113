//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
	if err := (Config{}).Validate(); err == nil {
		t.Error("nil logger accepted")
	}
	if err := (Config{Logger: discard(), NetNS: "/nonexistent/netns"}).Validate(); err == nil {
		t.Error("missing netns accepted")
	}
	if _, err := New(Config{Logger: discard(), NetNS: "/nonexistent/netns"}); err == nil {
		t.Error("New opened a missing netns")
	}
}

// TestPrivilegedOverlay runs every datapath behaviour against one shared lab, in order; each
// subtest leaves the lab converged for the next.
func TestPrivilegedOverlay(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	l := newLab(t)

	t.Run("SecondApplyChangesNothing", func(t *testing.T) {
		for i := range l.hosts {
			res, err := l.dps[i].Apply(context.Background(), l.desired(i))
			if err != nil || len(res.Changes) != 0 {
				t.Errorf("h%d second Apply: err %v, changes:\n%s", i+1, err, changeText(res))
			}
			want := map[string]bool{}
			for _, vm := range l.vms {
				if vm.host == i {
					want[vm.name] = true
				}
			}
			if fmt.Sprint(res.Plugged) != fmt.Sprint(want) {
				t.Errorf("h%d plugged = %v, want %v", i+1, res.Plugged, want)
			}
		}
	})

	// An operator's `nft list ruleset > saved; nft -f saved` (as nftables.service does at boot) loads
	// our tables back, and the datapath adopts them: the rules' comments survive the round trip.
	t.Run("SavedRulesetReloadsAndIsAdopted", func(t *testing.T) {
		if _, err := exec.LookPath("nft"); err != nil {
			t.Skip("the nft command is not installed (make deps installs it)")
		}
		h := l.hosts[0]
		saved := filepath.Join(t.TempDir(), "ruleset.nft")
		if err := os.WriteFile(saved, []byte(h.MustRun(t, "nft", "list", "ruleset")), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			h.MustRun(t, "nft", "delete", "table", f.name, overlay.TableName)
		}
		if out, err := h.Run("nft", "-f", saved); err != nil {
			t.Fatalf("nft -f of the saved ruleset: %v\n%s", err, out)
		}
		if res := l.apply(0); len(res.Changes) != 0 {
			t.Errorf("Apply after the reload: changes:\n%s", changeText(res))
		}
	})

	// Before rule texts quoted interface names with single quotes they used double quotes. A rule
	// left by that version is replaced by its new text on the first Apply (the new one is added
	// before the old one is deleted), and then left alone.
	t.Run("RulesOfTheOldTextAreReplaced", func(t *testing.T) {
		const text = `iifname 'vxbr101' oifname != 'vxbr101' oifname 'vxbr*' drop`
		old := strings.ReplaceAll(text, "'", `"`)
		var rule overlay.Rule
		for _, ch := range overlay.NftPlan(l.desired(0)) {
			for _, r := range ch.Rules {
				if ch.Family == "inet" && ch.Name == "forward" && r.String() == text {
					rule = r
				}
			}
		}
		if rule.Verdict == "" {
			t.Fatalf("no forward rule %q in the plan", text)
		}
		dp := l.dps[0]
		deleteOneRule(t, dp, "inet", "forward", text)
		tb := &nftables.Table{Name: overlay.TableName, Family: nftables.TableFamilyINet}
		dp.nft.AddRule(&nftables.Rule{Table: tb, Chain: &nftables.Chain{Name: "forward", Table: tb},
			Exprs: ruleExprs(nftables.TableFamilyINet, rule, nil), UserData: userdata.AppendString(nil, userdata.TypeComment, old)})
		if err := dp.nft.Flush(); err != nil {
			t.Fatal(err)
		}
		got := changeText(l.apply(0))
		want := "add " + overlay.RuleObject("inet", "forward", text) + "\ndelete " + overlay.RuleObject("inet", "forward", old) + "\n"
		if got != want {
			t.Errorf("Apply over a rule of the old text: changes\n%swant\n%s", got, want)
		}
		if res := l.apply(0); len(res.Changes) != 0 {
			t.Errorf("second Apply: changes:\n%s", changeText(res))
		}
		if !strings.Contains(rulesOf(t, dp), "inet forward "+text+"\n") || strings.Contains(rulesOf(t, dp), old) {
			t.Errorf("rules after the upgrade:\n%s", rulesOf(t, dp))
		}
	})

	t.Run("KernelObjects", func(t *testing.T) {
		h := l.dps[0].h
		link := func(name string) netlink.Link {
			t.Helper()
			lk, err := h.LinkByName(name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return lk
		}
		for _, n := range l.nets {
			br, vx := link(overlay.BridgeName(n.vni)), link(overlay.VxlanName(n.vni))
			v, ok := vx.(*netlink.Vxlan)
			if !ok {
				t.Fatalf("%s is a %s", vx.Attrs().Name, vx.Type())
			}
			if v.VxlanId != int(n.vni) || v.Learning || v.Port != overlay.VXLANPort || !v.SrcAddr.Equal(net.ParseIP("198.18.0.1")) ||
				v.Proxy != (n.mode != overlay.ModeBridged) || v.MTU != 1450 || v.MasterIndex != br.Attrs().Index {
				t.Errorf("vxlan %d: id %d learning %v port %d local %s proxy %v mtu %d master %d (bridge %d)",
					n.vni, v.VxlanId, v.Learning, v.Port, v.SrcAddr, v.Proxy, v.MTU, v.MasterIndex, br.Attrs().Index)
			}
			if br.Type() != "bridge" || br.Attrs().MTU != 1450 || br.Attrs().Flags&net.FlagUp == 0 || vx.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("bridge %d: type %s mtu %d flags %v", n.vni, br.Type(), br.Attrs().MTU, br.Attrs().Flags)
			}
			if n.gwMAC != nil && br.Attrs().HardwareAddr.String() != n.gwMAC.String() {
				t.Errorf("bridge %d has MAC %s, want the gateway's %s", n.vni, br.Attrs().HardwareAddr, n.gwMAC)
			}
			for _, lk := range []netlink.Link{br, vx} {
				if addrs, _ := h.AddrList(lk, netlink.FAMILY_V6); len(addrs) != 0 {
					t.Errorf("%s has IPv6 addresses %v: tenants would see them", lk.Attrs().Name, addrs)
				}
			}
		}
		fdb, err := h.NeighList(link("vxlan101").Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		var entries []string
		for _, e := range fdb {
			if e.IP != nil {
				entries = append(entries, e.HardwareAddr.String()+" dst "+e.IP.String())
			}
		}
		slices.Sort(entries)
		if got := strings.Join(entries, ", "); got != "00:00:00:00:00:00 dst 198.18.0.2, 0e:00:00:01:01:02 dst 198.18.0.2" {
			t.Errorf("vxlan101 FDB: %s", got)
		}
		neigh, err := h.NeighList(link("vxlan101").Attrs().Index, unix.AF_INET)
		if err != nil || len(neigh) != 1 || neigh[0].IP.String() != "10.10.0.2" || neigh[0].HardwareAddr.String() != "0e:00:00:01:01:02" ||
			neigh[0].State&unix.NUD_PERMANENT == 0 {
			t.Errorf("vxlan101 neighbours: %v, err %v", neigh, err)
		}
		a1 := link("a1")
		if a1.Attrs().MasterIndex != link("vxbr101").Attrs().Index || a1.Attrs().MTU != 1450 {
			t.Errorf("port a1: master %d mtu %d", a1.Attrs().MasterIndex, a1.Attrs().MTU)
		}
		if fdb := l.hosts[0].MustRun(t, "bridge", "fdb", "show", "dev", "a1"); !strings.Contains(fdb, "0e:00:00:01:01:01 sticky master vxbr101 static") {
			t.Errorf("a1's MAC is not pinned to its port:\n%s", fdb)
		}
		if v := strings.TrimSpace(l.hosts[0].MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward")); v != "1" {
			t.Errorf("h1 ip_forward = %s with nat and routed networks", v)
		}
	})

	t.Run("CrossHostPingAndTenantIsolation", func(t *testing.T) {
		if got := l.ping("a1", "10.10.0.2", 3); got != 3 {
			t.Fatalf("a1 -> a2: %d/3 replies", got)
		}
		if got := l.ping("b2", "10.10.0.1", 3); got != 3 {
			t.Fatalf("b2 -> b1: %d/3 replies", got)
		}
		// Same addresses in 101 and 102: a1's traffic, unicast and broadcast, reaches only 101.
		var b1, b2, a2 int64
		l.receivedFromDuring(t, l.vms["a1"].mac, map[string]*int64{"b1": &b1, "b2": &b2, "a2": &a2}, func() {
			l.ping("a1", "10.10.0.2", 3)
			l.vms["a1"].ns.Ping("10.10.0.255", 3, "0.05", "-b")
		})
		if b1+b2 != 0 {
			t.Errorf("network 102 VMs received %d IPv4/ARP frames from network 101", b1+b2)
		}
		if a2 < 6 {
			t.Errorf("a2 received %d frames, want at least 6 (3 unicast, 3 broadcast)", a2)
		}
		// Forwarding is on (nat and routed exist), yet one tenant cannot route into another.
		if got := l.ping("n1", "10.30.0.2", 2); got != 0 {
			t.Errorf("nat VM reached routed VM through the host: %d replies", got)
		}
	})

	t.Run("ARPSuppression", func(t *testing.T) {
		// p1 is h1's port on the underlay switch: everything h1 sends or receives.
		capt, err := l.sw.StartCapture("p1", nstest.IsVXLANARP)
		if err != nil {
			t.Fatal(err)
		}
		vx, err := l.sw.StartCapture("p1", nstest.IsVXLAN)
		if err != nil {
			t.Fatal(err)
		}
		// Fresh neighbour caches: the first ping must resolve its peer.
		l.vms["a1"].ns.MustRun(t, "ip", "neigh", "flush", "all")
		l.vms["a2"].ns.MustRun(t, "ip", "neigh", "flush", "all")
		got := l.ping("a1", "10.10.0.2", 1)
		// The gateway stays local: VMs on both hosts resolve and ping it without anything crossing.
		l.vms["n1"].ns.MustRun(t, "ip", "neigh", "flush", "all")
		l.vms["n2"].ns.MustRun(t, "ip", "neigh", "flush", "all")
		gw1, gw2 := l.ping("n1", "10.20.0.1", 1), l.ping("n2", "10.20.0.1", 1)
		arps, _ := capt.Stop()
		vxlan, _ := vx.Stop()
		if got != 1 || gw1 != 1 || gw2 != 1 {
			t.Fatalf("pings: a1->a2 %d, n1->gw %d, n2->gw %d; want 1 each", got, gw1, gw2)
		}
		if vxlan < 2 {
			t.Fatalf("capture saw %d VXLAN frames, want the echo request and reply", vxlan)
		}
		if arps != 0 {
			t.Errorf("%d ARP frames crossed the underlay", arps)
		}
	})

	t.Run("NATFromOutside", func(t *testing.T) {
		ln, err := l.out.Listen("198.18.0.100:7001")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		for _, c := range []struct{ vm, src string }{{"n1", "198.18.0.1"}, {"n2", "198.18.0.2"}} {
			done := make(chan string, 1)
			go func() { done <- nstest.Accepted(ln, 3*time.Second) }()
			conn, err := l.vms[c.vm].ns.Dial("198.18.0.100:7001", 2*time.Second)
			if err != nil {
				t.Fatalf("%s -> outside: %v", c.vm, err)
			}
			conn.Close()
			if got := <-done; got != c.src {
				t.Errorf("outside saw %s from %s, want the host address %s", got, c.vm, c.src)
			}
		}
		vmln, err := l.vms["n1"].ns.Listen("10.20.0.2:7002")
		if err != nil {
			t.Fatal(err)
		}
		defer vmln.Close()
		if conn, err := l.out.Dial("10.20.0.2:7002", 500*time.Millisecond); err == nil {
			conn.Close()
			t.Error("outside opened a connection to a nat VM")
		}
	})

	t.Run("RoutedFromOutside", func(t *testing.T) {
		vmln, err := l.vms["r1"].ns.Listen("10.30.0.2:7003")
		if err != nil {
			t.Fatal(err)
		}
		defer vmln.Close()
		done := make(chan string, 1)
		go func() { done <- nstest.Accepted(vmln, 3*time.Second) }()
		conn, err := l.out.Dial("10.30.0.2:7003", 2*time.Second)
		if err != nil {
			t.Fatalf("outside -> routed VM: %v", err)
		}
		conn.Close()
		if got := <-done; got != "198.18.0.100" {
			t.Errorf("routed VM saw %q, want outside's own address", got)
		}
	})

	t.Run("VMsCannotReachTheHost", func(t *testing.T) {
		hostln, err := l.hosts[0].Listen("0.0.0.0:7004")
		if err != nil {
			t.Fatal(err)
		}
		defer hostln.Close()
		for _, addr := range []string{"10.20.0.1:7004", "198.18.0.1:7004", "192.168.50.1:7004"} {
			if conn, err := l.vms["n1"].ns.Dial(addr, 500*time.Millisecond); err == nil {
				conn.Close()
				t.Errorf("VM n1 connected to the host at %s", addr)
			}
		}
		// The host itself cannot reach an isolated VM.
		if got := l.hosts[0].Ping("10.10.0.1", 1, "0.2"); got != 0 {
			t.Errorf("host reached isolated VM a1")
		}
	})

	// The host answers ARP on a bridge for the bridge's own addresses only: an isolated network's
	// VMs learn none of the host's addresses, a nat network's its gateway and nothing else (not the
	// underlay address, not another network's gateway), a bridged one the uplink's address.
	t.Run("HostAnswersARPOnlyForTheBridgesAddresses", func(t *testing.T) {
		for _, tc := range []struct {
			vm, target string
			answered   bool
		}{
			{"a1", "198.18.0.1", false},
			{"a1", "192.168.50.1", false},
			{"n1", "10.20.0.1", true},
			{"n1", "198.18.0.1", false},
			{"n1", "10.30.0.1", false},
			{"l2", "192.168.50.1", true}, // h1's bridge, across the fabric
			{"l2", "198.18.0.1", false},
			{"l2", "198.18.0.2", false}, // l2's own host
		} {
			vm, target := l.vms[tc.vm], netip.MustParseAddr(tc.target)
			c, err := vm.ns.StartInboundCapture("eth0", nstest.ARPReplyFrom(target))
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if err := vm.ns.SendFrame("eth0", nstest.ARPFrame(1, vm.mac, vm.mac, vm.ip, target)); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(200 * time.Millisecond)
			if n, _ := c.Stop(); (n > 0) != tc.answered {
				t.Errorf("%s asked who has %s: %d replies, want answered %v", tc.vm, tc.target, n, tc.answered)
			}
		}
	})

	t.Run("BridgedReachesLAN", func(t *testing.T) {
		if got := l.ping("l2", "192.168.50.10", 3); got != 3 {
			t.Errorf("VM on h2 -> LAN host behind h1's uplink: %d/3 replies", got)
		}
		out := l.hosts[0].MustRun(t, "ip", "-4", "-o", "addr", "show")
		if !strings.Contains(out, "vxbr400    inet 192.168.50.1/24") || strings.Contains(out, "lan0    inet") {
			t.Errorf("uplink address not moved to the bridge:\n%s", out)
		}
		if rt := l.hosts[0].MustRun(t, "ip", "route", "show", "default"); !strings.Contains(rt, "dev vxbr400") {
			t.Errorf("default route not moved to the bridge: %s", rt)
		}
		if got := l.lan.Ping("192.168.50.1", 2, "0.05"); got != 2 {
			t.Errorf("LAN -> host address on the bridge: %d/2", got)
		}
	})

	// A LAN device that sends with a VM's MAC as its source does not take the VM's frames on the
	// VM's host: the port's MAC is pinned there (bridges trust a LAN at L2 otherwise, as a switch).
	t.Run("BridgedLANCannotTakeAVMsMAC", func(t *testing.T) {
		l2 := l.vms["l2"]
		for range 3 {
			if err := l.lan.SendFrame("eth0", nstest.ARPFrame(1, l2.mac, l2.mac, netip.MustParseAddr("192.168.50.99"), netip.MustParseAddr("192.168.50.1"))); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(200 * time.Millisecond)
		fdb := l.hosts[1].MustRun(t, "bridge", "fdb", "show", "br", "vxbr400")
		var entry string
		for line := range strings.Lines(fdb) {
			if strings.HasPrefix(line, l2.mac.String()+" ") && strings.Contains(line, "master vxbr400") {
				entry = strings.TrimSpace(line)
			}
		}
		if !strings.Contains(entry, "dev l2 ") {
			t.Errorf("h2's bridge sends l2's frames to %q after the LAN spoofed its MAC:\n%s", entry, fdb)
		}
		if got := l.ping("l2", "192.168.50.10", 2); got != 2 {
			t.Errorf("l2 -> LAN host after the spoof: %d/2", got)
		}
	})

	t.Run("PortSecurity", func(t *testing.T) {
		a1 := l.vms["a1"].ns
		if got := l.ping("a1", "10.10.0.2", 1); got != 1 {
			t.Fatal("a1 -> a2 broken before spoofing")
		}
		a1.MustRun(t, "ip", "neigh", "flush", "all")
		a1.MustRun(t, "ip", "addr", "add", "10.10.0.9/24", "dev", "eth0")
		// Frames are counted from a1's source MAC only: interfaces coming up elsewhere send
		// multicast listener reports that flood to a2 too.
		var got int
		var n int64
		l.receivedFromDuring(t, l.vms["a1"].mac, map[string]*int64{"a2": &n}, func() { got = a1.Ping("10.10.0.2", 2, "0.05", "-I", "10.10.0.9") })
		a1.MustRun(t, "ip", "addr", "del", "10.10.0.9/24", "dev", "eth0")
		if got != 0 || n != 0 {
			t.Errorf("spoofed IP: %d replies, a2 received %d frames", got, n)
		}
		spoofed := net.HardwareAddr{0x0e, 0, 0, 1, 1, 0x99}
		a1.MustRun(t, "ip", "link", "set", "eth0", "address", spoofed.String())
		a1.MustRun(t, "ip", "neigh", "flush", "all")
		l.receivedFromDuring(t, spoofed, map[string]*int64{"a2": &n}, func() { got = l.ping("a1", "10.10.0.2", 2) })
		a1.MustRun(t, "ip", "link", "set", "eth0", "address", l.vms["a1"].mac.String())
		if got != 0 || n != 0 {
			t.Errorf("spoofed MAC: %d replies, a2 received %d frames", got, n)
		}
		if got := l.ping("a1", "10.10.0.2", 1); got != 1 {
			t.Error("a1 -> a2 broken after restoring its own addresses")
		}
		// What was dropped is counted on the port that sent it, and on no other; the datapath reads
		// the same counts as nft.
		drops := portDrops(t, l.hosts[0])
		if got, err := l.dps[0].PortDrops(context.Background()); err != nil || !maps.Equal(got, drops) {
			t.Errorf("PortDrops = %v, %v; nft lists %v", got, err, drops)
		}
		if drops["a1"] < 2 { // at least one ARP request from each spoofed address
			t.Errorf("port a1 sent at least 2 spoofed frames, port_drops counts %v", drops)
		}
		for _, other := range []string{"b1", "n1", "r1"} {
			if _, ok := drops[other]; ok {
				t.Errorf("port %s spoofed nothing, port_drops counts %v", other, drops)
			}
		}
	})

	t.Run("PortSecurityARP", func(t *testing.T) {
		// ARP never crosses the overlay (the vxlan device answers requests itself and drops the
		// rest), so what a forged ARP message can poison is the host's neighbour table: the
		// frames are looked for on r1's host, on its network's bridge.
		r1 := l.vms["r1"]
		before := portDrops(t, l.hosts[r1.host])["r1"]
		gw := netip.MustParseAddr("10.30.0.1")
		foreignMAC := net.HardwareAddr{0x0e, 0, 0, 1, 1, 0x99}
		foreignIP := netip.MustParseAddr("10.30.0.9")
		zero := netip.IPv4Unspecified()
		for _, tc := range []struct {
			name     string
			op       uint16 // 2 (a reply) when 0
			sha      net.HardwareAddr
			spa, tpa netip.Addr // tpa: the gateway when not valid
			accepted bool
			tagged   bool // in an 802.1Q frame: the ARP rules read ether type 0x8100 and pass it
		}{
			{"own addresses", 0, r1.mac, r1.ip, netip.Addr{}, true, false},
			// An address conflict probe (RFC 5227) has no sender address; no neighbour learns from
			// it. For its own address only: one for a neighbour's would make it give that up.
			{"no sender IP, a probe for its own address", 1, r1.mac, zero, r1.ip, true, false},
			{"no sender IP, a probe for another address", 1, r1.mac, zero, foreignIP, false, false},
			{"no sender IP, a reply", 2, r1.mac, zero, r1.ip, false, false},
			// The Ethernet source is r1's own MAC and ARP is not IP: only the ARP rules can drop these.
			{"another sender IP", 0, r1.mac, foreignIP, netip.Addr{}, false, false},
			{"another sender MAC", 0, foreignMAC, r1.ip, netip.Addr{}, false, false},
			{"another sender IP, VLAN-tagged", 0, r1.mac, foreignIP, netip.Addr{}, false, true},
		} {
			c, err := l.hosts[r1.host].StartInboundCapture("vxbr300", nstest.ARPFrom(tc.sha, tc.spa))
			if err != nil {
				t.Fatal(err)
			}
			op, tpa := tc.op, tc.tpa
			if op == 0 {
				op = 2
			}
			if !tpa.IsValid() {
				tpa = gw
			}
			frame := nstest.ARPFrame(op, r1.mac, tc.sha, tc.spa, tpa)
			if tc.tagged {
				frame = slices.Concat(frame[:12], []byte{0x81, 0x00, 0x00, 0x05}, frame[12:]) // VLAN 5
			}
			for range 3 {
				if err := r1.ns.SendFrame("eth0", frame); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(200 * time.Millisecond)
			n, _ := c.Stop()
			if tc.accepted && n < 3 || !tc.accepted && n != 0 { // r1 may ARP on its own too
				t.Errorf("ARP reply from r1 with %s (%s is %s): the host's bridge received %d of the 3 sent: %s",
					tc.name, tc.spa, tc.sha, n, strings.Join(c.Samples(), "; "))
			}
		}
		if got := portDrops(t, l.hosts[r1.host])["r1"] - before; got != 15 {
			t.Errorf("port r1 sent 15 forged ARP messages, port_drops counted %d more", got)
		}
	})

	// A port sends IPv4 and ARP only: not IPv6 (a router advertisement would give its neighbours
	// a default route through it; nothing checks IPv6 addresses), and no DHCP server's answers,
	// even from its own addresses.
	t.Run("PortSecurityIPv4Only", func(t *testing.T) {
		r1 := l.vms["r1"]
		before := portDrops(t, l.hosts[r1.host])["r1"]
		ra := slices.Concat([]byte{0x33, 0x33, 0, 0, 0, 1}, r1.mac, []byte{0x86, 0xdd},
			[]byte{0x60, 0, 0, 0, 0, 16, 58, 255}, // IPv6: payload 16 bytes of ICMPv6, hop limit 255
			netip.MustParseAddr("fe80::dead:1").AsSlice(), netip.MustParseAddr("ff02::1").AsSlice(),
			[]byte{134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}) // router advertisement
		dhcp := func(sport byte) []byte {
			return slices.Concat([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, r1.mac, []byte{0x08, 0x00},
				ipv4Header(r1.ip, netip.MustParseAddr("255.255.255.255"), 17, 8+4),
				[]byte{0, sport, 0, 68, 0, 12, 0, 0, 2, 1, 6, 0}) // UDP sport -> 68, a BOOTREPLY's first bytes
		}
		for _, tc := range []struct {
			name  string
			frame []byte
		}{{"an IPv6 router advertisement", ra}, {"a DHCP answer", dhcp(67)}, {"a DHCP answer from another port", dhcp(167)}} {
			c, err := l.hosts[r1.host].StartInboundCapture("vxbr300", func(f []byte) bool {
				return len(f) >= 14 && string(f[6:12]) == string(r1.mac) && string(f[12:]) == string(tc.frame[12:])
			})
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if err := r1.ns.SendFrame("eth0", tc.frame); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(200 * time.Millisecond)
			if n, _ := c.Stop(); n != 0 {
				t.Errorf("%s from r1: the host's bridge received %d of the 3 sent", tc.name, n)
			}
		}
		if got := portDrops(t, l.hosts[r1.host])["r1"] - before; got != 9 {
			t.Errorf("port r1 sent 9 frames port security drops, port_drops counted %d more", got)
		}
	})

	t.Run("UnderlayFilter", func(t *testing.T) {
		// The rogue speaks VXLAN 101 to h1 from a VTEP that is not in h1's desired state.
		r := l.rogue
		r.MustRun(t, "ip", "link", "add", "vxr", "type", "vxlan", "id", "101", "local", "198.18.0.99", "dstport", "4789", "nolearning")
		r.MustRun(t, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxr", "dst", "198.18.0.1")
		r.MustRun(t, "ip", "addr", "add", "10.10.0.77/24", "dev", "vxr")
		r.MustRun(t, "ip", "link", "set", "vxr", "up")
		defer r.Run("ip", "link", "del", "vxr")
		if n := l.received(t, "a1", func() { r.Ping("10.10.0.1", 3, "0.05") }); n != 0 {
			t.Errorf("a1 received %d frames from a VTEP that is not ours", n)
		}
		// Control: once the rogue is a known VTEP its frames do arrive, so the check above can fail.
		l.extraFlood[101] = []netip.Addr{netip.MustParseAddr("198.18.0.99")}
		l.apply(0)
		if n := l.received(t, "a1", func() { r.Ping("10.10.0.1", 3, "0.05") }); n == 0 {
			t.Error("control: a1 received nothing from a known VTEP either; the check proves nothing")
		}
		// A known VTEP's VXLAN to another address of h1 (its nat gateway): the kernel's VXLAN socket
		// would take it (a VM's packet masqueraded by its host looks so), the filter does not.
		const vxlanDrop = "udp dport 4789 counter drop"
		r.MustRun(t, "ip", "route", "add", "10.20.0.1/32", "via", "198.18.0.1")
		r.MustRun(t, "bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vxr", "dst", "198.18.0.1")
		r.MustRun(t, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxr", "dst", "10.20.0.1")
		before := ruleCount(t, l.hosts[0], "inet", "input", vxlanDrop)
		// Broadcast pings: flooded whatever the rogue's neighbour table holds.
		if n := l.received(t, "a1", func() { r.Ping("10.10.0.255", 3, "0.05", "-b") }); n != 0 {
			t.Errorf("a1 received %d frames sent by a known VTEP to another address of its host", n)
		}
		if got := ruleCount(t, l.hosts[0], "inet", "input", vxlanDrop) - before; got == 0 {
			t.Error("the underlay filter dropped none of the packets to another address of the host")
		}
		delete(l.extraFlood, 101)
		l.apply(0)

		// From the bridged LAN behind h1's uplink, with h2's VTEP as source and h1's as
		// destination: it reaches h1 through the bridge that holds the LAN, not the underlay.
		lan := l.lan
		lan.MustRun(t, "ip", "addr", "add", "198.18.0.2/32", "dev", "eth0")
		lan.MustRun(t, "ip", "route", "add", "198.18.0.1/32", "via", "192.168.50.1", "src", "198.18.0.2")
		lan.MustRun(t, "ip", "link", "add", "vxl", "type", "vxlan", "id", "101", "local", "198.18.0.2", "dstport", "4789", "nolearning")
		lan.MustRun(t, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxl", "dst", "198.18.0.1")
		lan.MustRun(t, "ip", "addr", "add", "10.10.0.78/24", "dev", "vxl")
		lan.MustRun(t, "ip", "link", "set", "vxl", "up")
		defer func() {
			lan.Run("ip", "link", "del", "vxl")
			lan.Run("ip", "route", "del", "198.18.0.1/32")
			lan.Run("ip", "addr", "del", "198.18.0.2/32", "dev", "eth0")
		}()
		before = ruleCount(t, l.hosts[0], "inet", "input", vxlanDrop)
		if n := l.received(t, "a1", func() { lan.Ping("10.10.0.255", 3, "0.05", "-b") }); n != 0 {
			t.Errorf("a1 received %d frames sent from the bridged LAN in a known VTEP's name", n)
		}
		if got := ruleCount(t, l.hosts[0], "inet", "input", vxlanDrop) - before; got == 0 {
			t.Error("the underlay filter dropped none of the packets from the bridged LAN")
		}
	})

	// h2 holds network 400's bridge, whose LAN is behind h1's uplink: to h2 it is a switch it is no
	// part of. A VM there that takes h2's bridge for its router reaches neither h2 nor, through h2,
	// the underlay.
	t.Run("BridgedBridgeIsNoWayIntoAnotherHost", func(t *testing.T) {
		l2 := l.vms["l2"].ns
		br, err := l.dps[1].h.LinkByName("vxbr400")
		if err != nil {
			t.Fatal(err)
		}
		l2.MustRun(t, "ip", "neigh", "replace", "192.168.50.98", "lladdr", br.Attrs().HardwareAddr.String(), "dev", "eth0", "nud", "permanent")
		l2.MustRun(t, "ip", "route", "add", "198.18.0.0/24", "via", "192.168.50.98")
		defer l2.Run("ip", "route", "del", "198.18.0.0/24")
		inputDrop, forwardDrop := "iifname 'vxbr400' counter drop", "iifname 'vxbr400' oifname != 'vxbr400' counter drop"
		in, fwd := ruleCount(t, l.hosts[1], "inet", "input", inputDrop), ruleCount(t, l.hosts[1], "inet", "forward", forwardDrop)
		if got := l2.Ping("198.18.0.2", 2, "0.05"); got != 0 {
			t.Errorf("l2 reached h2's underlay address through h2's bridge: %d replies", got)
		}
		l2.Ping("198.18.0.100", 2, "0.05")
		if got := ruleCount(t, l.hosts[1], "inet", "input", inputDrop) - in; got < 2 {
			t.Errorf("h2 dropped %d of l2's 2 pings to its own address, want 2", got)
		}
		if got := ruleCount(t, l.hosts[1], "inet", "forward", forwardDrop) - fwd; got < 2 {
			t.Errorf("h2 dropped %d of l2's 2 pings routed through it to the underlay, want 2", got)
		}
		// Nor into a routed network there, whose accepts come after every network's drops.
		l2.MustRun(t, "ip", "route", "add", "10.30.0.0/24", "via", "192.168.50.98")
		defer l2.Run("ip", "route", "del", "10.30.0.0/24")
		fwd = ruleCount(t, l.hosts[1], "inet", "forward", forwardDrop)
		l2.Ping("10.30.0.2", 2, "0.05")
		if got := ruleCount(t, l.hosts[1], "inet", "forward", forwardDrop) - fwd; got < 2 {
			t.Errorf("h2 dropped %d of l2's 2 pings routed through it into routed network 300, want 2", got)
		}
	})

	t.Run("AdoptionWithoutLoss", func(t *testing.T) {
		var wg sync.WaitGroup
		var got int
		wg.Add(1)
		go func() {
			defer wg.Done()
			got = l.vms["a1"].ns.Ping("10.10.0.2", 200, "0.01")
		}()
		time.Sleep(300 * time.Millisecond) // let the ping run before the restart (not a convergence wait)
		for i := range l.hosts {
			if err := l.dps[i].Close(); err != nil {
				t.Fatal(err)
			}
			dp, err := New(Config{NetNS: l.hosts[i].Path(), Logger: discard()})
			if err != nil {
				t.Fatal(err)
			}
			l.t.Cleanup(func() { _ = dp.Close() })
			l.dps[i] = dp
			res, err := dp.Apply(context.Background(), l.desired(i))
			if err != nil || len(res.Changes) != 0 {
				t.Errorf("h%d adoption: err %v, changes:\n%s", i+1, err, changeText(res))
			}
		}
		wg.Wait()
		if got != 200 {
			t.Errorf("ping every 10 ms across the restart: %d/200 replies", got)
		}
	})

	t.Run("DriftRepaired", func(t *testing.T) {
		h1 := l.hosts[0]
		h1.MustRun(t, "bridge", "fdb", "del", "0e:00:00:01:01:02", "dev", "vxlan101", "dst", "198.18.0.2")
		h1.MustRun(t, "ip", "neigh", "del", "10.10.0.2", "dev", "vxlan101")
		h1.MustRun(t, "ip", "link", "del", "vxlan102")
		deleteOneRule(t, l.dps[0], "inet", "forward", `iifname 'vxbr101' oifname != 'vxbr101' oifname 'vxbr*' drop`)
		h1.MustRun(t, "sysctl", "-q", "-w", "net.ipv4.conf.vxbr101.arp_ignore=0")
		h1.MustRun(t, "bridge", "fdb", "del", "0e:00:00:01:01:01", "dev", "a1", "master")
		h1.MustRun(t, "bridge", "fdb", "add", "0e:00:00:01:01:77", "dev", "b1", "master", "static", "sticky") // not b1's MAC
		res := l.apply(0)
		got := changeText(res)
		for _, want := range []string{
			"add fdb vxlan101 0e:00:00:01:01:02 dst 198.18.0.2",
			"add neigh vxlan101 10.10.0.2 lladdr 0e:00:00:01:01:02",
			"add vxlan vxlan102",
			"add fdb vxlan102 0e:00:00:01:02:02 dst 198.18.0.2",
			"add flood vxlan102 dst 198.18.0.2",
			`add nft rule inet vxfabric forward iifname 'vxbr101' oifname != 'vxbr101' oifname 'vxbr*' drop`,
			"update bridge vxbr101",
			"update " + overlay.PortObject(101, "a1"),
			"update " + overlay.PortObject(102, "b1"),
		} {
			if !strings.Contains(got, want+"\n") {
				t.Errorf("repair lacks %q; changes:\n%s", want, got)
			}
		}
		if res := l.apply(0); len(res.Changes) != 0 {
			t.Errorf("Apply after repair: changes:\n%s", changeText(res))
		}
		if l.ping("a1", "10.10.0.2", 1) != 1 || l.ping("b1", "10.10.0.2", 1) != 1 {
			t.Error("pings broken after repair")
		}
		if fdb := h1.MustRun(t, "bridge", "fdb", "show", "dev", "b1"); strings.Contains(fdb, "0e:00:00:01:01:77") || !strings.Contains(fdb, "0e:00:00:01:02:01 sticky") {
			t.Errorf("b1's pins after repair:\n%s", fdb)
		}
		if v := strings.TrimSpace(h1.MustRun(t, "sysctl", "-n", "net.ipv4.conf.vxbr101.arp_ignore")); v != "1" {
			t.Errorf("vxbr101 arp_ignore = %s after repair, want 1", v)
		}
	})

	t.Run("NetworkRemoval", func(t *testing.T) {
		h1 := l.hosts[0]
		before := h1.MustRun(t, "ip", "-o", "link", "show")
		l.skip[102], l.skip[400] = true, true
		l.applyAll()
		after := h1.MustRun(t, "ip", "-o", "link", "show")
		for _, gone := range []string{"vxbr102", "vxlan102", "vxbr400", "vxlan400"} {
			if strings.Contains(after, gone+":") || strings.Contains(after, gone+"@") {
				t.Errorf("%s still exists", gone)
			}
		}
		for _, kept := range []string{"b1@", "lan0@", "a1@", "vxbr101:", "vxlan101:", "eth0@"} {
			if !strings.Contains(before, kept) || !strings.Contains(after, kept) {
				t.Errorf("%s missing after removal", kept)
			}
		}
		if strings.Contains(after, "b1@") && strings.Contains(lineOf(after, "b1@"), "master") {
			t.Errorf("b1 still enslaved: %s", lineOf(after, "b1@"))
		}
		rules := rulesOf(t, l.dps[0])
		if strings.Contains(rules, "102") || strings.Contains(rules, "400") {
			t.Errorf("rules of removed networks remain:\n%s", rules)
		}
		if out := h1.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "lan0"); !strings.Contains(out, "192.168.50.1/24") {
			t.Errorf("uplink did not get its address back: %q", out)
		}
		if rt := h1.MustRun(t, "ip", "route", "show", "default"); !strings.Contains(rt, "dev lan0") {
			t.Errorf("default route not back on the uplink: %q", rt)
		}
		if l.ping("a1", "10.10.0.2", 1) != 1 {
			t.Error("remaining network broken by the removal")
		}

		// Everything away: our tables go, forwarding goes off where we turned it on, only there.
		for _, n := range l.nets {
			l.skip[n.vni] = true
		}
		l.applyAll()
		for i, h := range l.hosts {
			if out := h.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(out, ": vx") {
				t.Errorf("h%d still has our devices:\n%s", i+1, out)
			}
			tables, err := l.dps[i].nft.ListTables()
			if err != nil {
				t.Fatal(err)
			}
			for _, tb := range tables {
				if tb.Name == overlay.TableName {
					t.Errorf("h%d still has table %s", i+1, tb.Name)
				}
			}
		}
		if v := strings.TrimSpace(l.hosts[0].MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward")); v != "0" {
			t.Errorf("h1 ip_forward = %s after we left, want 0 (we turned it on)", v)
		}
		if v := strings.TrimSpace(l.hosts[1].MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward")); v != "1" {
			t.Errorf("h2 ip_forward = %s after we left, want 1 (someone else turned it on)", v)
		}
	})
}

func lineOf(text, substr string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, substr) {
			return line
		}
	}
	return ""
}

// rulesOf reads the comments of every rule in our tables, through the datapath's own connection.
func rulesOf(t *testing.T, dp *Datapath) string {
	t.Helper()
	var b strings.Builder
	for _, f := range families {
		chains, err := dp.nft.ListChainsOfTableFamily(f.fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			if ch.Table.Name != overlay.TableName {
				continue
			}
			rules, err := dp.nft.GetRules(ch.Table, ch)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rules {
				c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				fmt.Fprintf(&b, "%s %s %s\n", f.name, ch.Name, c)
			}
		}
	}
	return b.String()
}

func deleteOneRule(t *testing.T, dp *Datapath, family, chain, text string) {
	t.Helper()
	tb := &nftables.Table{Name: overlay.TableName, Family: familyOf(family)}
	ch := &nftables.Chain{Name: chain, Table: tb}
	rules, err := dp.nft.GetRules(tb, ch)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); c == text {
			if err := dp.nft.DelRule(r); err != nil {
				t.Fatal(err)
			}
			if err := dp.nft.Flush(); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("rule %q not found", text)
}

// TestPrivilegedPartialFailure: objects that cannot converge are reported one by one and the rest
// of the state still converges; a port whose interface does not exist is not an error.
func TestPrivilegedPartialFailure(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "part")
	// Someone else's device occupies the name of network 7's bridge.
	ns.MustRun(t, "ip", "link", "add", "vxbr7", "type", "veth", "peer", "name", "other7")
	ns.MustRun(t, "ip", "link", "add", "vxlan6", "type", "veth", "peer", "name", "other6")
	port := overlay.LocalPort{Interface: "tap-later", MAC: mustMAC("0e:00:00:00:00:01"), IP: netip.MustParseAddr("10.0.0.1")}
	desired := overlay.DesiredState{
		Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{
			{VNI: 7, Mode: overlay.ModeIsolated, MTU: 1450},
			{VNI: 6, Mode: overlay.ModeIsolated, MTU: 1450},
			{VNI: 8, Mode: overlay.ModeIsolated, MTU: 1450, Ports: []overlay.LocalPort{port},
				Remotes: []overlay.RemotePort{{MAC: mustMAC("0e:00:00:00:00:02"), IP: netip.MustParseAddr("10.0.0.2"),
					VTEP: netip.MustParseAddr("198.18.0.2")}}},
			{VNI: 9, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "nope0"},
		},
	}
	res, err := dp.Apply(context.Background(), desired)
	if !errors.Is(err, overlay.ErrUplinkMissing) {
		t.Errorf("err = %v, want it to wrap ErrUplinkMissing", err)
	}
	var objs []string
	for _, e := range res.Errors {
		objs = append(objs, e.Object)
	}
	if got := strings.Join(objs, ", "); got != "bridge vxbr7, vxlan vxlan6, uplink nope0 master vxbr9" {
		t.Errorf("errors for %q, want bridge vxbr7, vxlan vxlan6 and the uplink of 9", got)
	}
	if !strings.Contains(changeText(res), "add fdb vxlan8 0e:00:00:00:00:02 dst 198.18.0.2\n") {
		t.Errorf("network 8 did not converge:\n%s", changeText(res))
	}
	if len(res.Plugged) != 0 {
		t.Errorf("plugged %v, want none: tap-later does not exist", res.Plugged)
	}
	for _, foreign := range []string{"vxbr7@other7", "vxlan6@other6"} {
		name, _, _ := strings.Cut(foreign, "@")
		if out := ns.MustRun(t, "ip", "-o", "link", "show", name); !strings.Contains(out, foreign) {
			t.Errorf("the foreign %s was touched: %s", name, out)
		}
	}
	// The interface appears: the next Apply plugs it.
	nstest.MustVeth(t, nstest.End{NS: ns, Name: "tap-later"}, nstest.End{NS: nstest.New(t, "vm"), Name: "eth0"})
	res, _ = dp.Apply(context.Background(), desired)
	if !res.Plugged["tap-later"] || !strings.Contains(changeText(res), "add port tap-later master vxbr8\n") {
		t.Errorf("tap-later not plugged after it appeared: %v\n%s", res.Plugged, changeText(res))
	}
}

// TestPrivilegedUplinkRefused: a bridged network never takes the loopback, the underlay (the
// interface holding the VTEP address) or another network's uplink; the rest of its network still
// converges, and an uplink enslaved before this rule existed is given back with its addresses.
func TestPrivilegedUplinkRefused(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "upref")
	// The VTEP lives on ul0 here, not on lo as hostNS puts it.
	ns.MustRun(t, "ip", "addr", "del", "198.18.0.1/32", "dev", "lo")
	for _, l := range []struct{ name, addr string }{{"ul0", "198.18.0.1/24"}, {"lan0", "192.168.50.1/24"}} {
		ns.MustRun(t, "ip", "link", "add", l.name, "type", "veth", "peer", "name", l.name+"p")
		ns.MustRun(t, "ip", "addr", "add", l.addr, "dev", l.name)
		ns.MustRun(t, "ip", "link", "set", l.name, "up")
	}
	bridged := func(vni uint32, uplink string) overlay.Network {
		return overlay.Network{VNI: vni, Mode: overlay.ModeBridged, MTU: 1450, Uplink: uplink}
	}
	state := func(nets ...overlay.Network) overlay.DesiredState {
		return overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")}, Networks: nets}
	}
	refusals := func(res overlay.Result) string {
		var out []string
		for _, e := range res.Errors {
			if !errors.Is(e.Err, overlay.ErrUplinkRefused) {
				t.Errorf("%s: %v, want only refused uplinks", e.Object, e.Err)
			}
			out = append(out, e.Error())
		}
		return strings.Join(out, "\n")
	}
	master := func(dev string) string {
		line := ns.MustRun(t, "ip", "-o", "link", "show", "dev", dev)
		if _, rest, ok := strings.Cut(line, " master "); ok {
			return strings.Fields(rest)[0]
		}
		return ""
	}
	addrs := func(dev string) string {
		return strings.TrimSpace(ns.MustRun(t, "ip", "-4", "-br", "addr", "show", "dev", dev))
	}

	desired := state(bridged(10, "ul0"), bridged(11, "lo"), bridged(13, "lan0"), bridged(12, "lan0"))
	for i := range 2 {
		res, err := dp.Apply(context.Background(), desired)
		if !errors.Is(err, overlay.ErrUplinkRefused) {
			t.Fatalf("apply %d: err = %v, want ErrUplinkRefused", i, err)
		}
		want := `uplink ul0 master vxbr10: "ul0" holds the VTEP address 198.18.0.1: uplink refused
uplink lo master vxbr11: "lo" is a loopback interface: uplink refused
uplink lan0 master vxbr13: "lan0" is the uplink of network vni 12: uplink refused`
		if got := refusals(res); got != want {
			t.Errorf("apply %d: errors\n%s\nwant\n%s", i, got, want)
		}
		if got := master("ul0") + "," + master("lo") + "," + master("lan0"); got != ",,vxbr12" {
			t.Errorf("apply %d: masters of ul0, lo, lan0 = %s, want ,,vxbr12", i, got)
		}
		if a := addrs("ul0"); !strings.Contains(a, "198.18.0.1/24") {
			t.Errorf("apply %d: ul0 lost its address: %s", i, a)
		}
		for _, br := range []string{"vxbr10", "vxbr11", "vxbr13"} {
			if !strings.Contains(ns.MustRun(t, "ip", "-o", "link", "show"), br+":") {
				t.Errorf("apply %d: %s missing: the rest of its network must converge", i, br)
			}
			// Without its uplink the bridge holds no LAN of this host's: it is filtered as
			// another host's bridged bridge, which takes nothing.
			if rules := rulesOf(t, dp); !strings.Contains(rules, "inet input iifname '"+br+"' counter drop\n") {
				t.Errorf("apply %d: %s, whose uplink is refused, takes what comes through it:\n%s", i, br, rules)
			}
		}
		if rules := rulesOf(t, dp); !strings.Contains(rules, "inet input iifname 'vxbr12' ip daddr @infra4 counter drop\n") {
			t.Errorf("apply %d: vxbr12, which holds lan0, is not filtered as the uplink's bridge:\n%s", i, rules)
		}
	}

	// Network 12 goes: 13 takes lan0 over.
	if _, err := dp.Apply(context.Background(), state(bridged(10, "ul0"), bridged(13, "lan0"))); !errors.Is(err, overlay.ErrUplinkRefused) {
		t.Fatalf("err = %v, want ErrUplinkRefused for ul0", err)
	}
	if m := master("lan0"); m != "vxbr13" {
		t.Errorf("lan0 master %q, want vxbr13", m)
	}
	if a := addrs("vxbr13"); !strings.Contains(a, "192.168.50.1/24") {
		t.Errorf("vxbr13 lacks the LAN address it took over: %s", a)
	}

	// State from before the rule: ul0 in network 10's bridge, its address moved there.
	ns.MustRun(t, "ip", "link", "set", "ul0", "master", "vxbr10")
	ns.MustRun(t, "ip", "addr", "del", "198.18.0.1/24", "dev", "ul0")
	ns.MustRun(t, "ip", "addr", "add", "198.18.0.1/24", "dev", "vxbr10")
	if _, err := dp.Apply(context.Background(), state(bridged(10, "ul0"))); !errors.Is(err, overlay.ErrUplinkRefused) {
		t.Fatalf("err = %v, want ErrUplinkRefused", err)
	}
	if m := master("ul0"); m != "" {
		t.Errorf("ul0 still in %s", m)
	}
	if a := addrs("ul0"); !strings.Contains(a, "198.18.0.1/24") {
		t.Errorf("ul0 did not get its address back: %s", a)
	}
	if a := addrs("vxbr10"); strings.Contains(a, "198.18.0.1") {
		t.Errorf("vxbr10 kept the host's address: %s", a)
	}
}

// TestPrivilegedNoPlugWithoutPortSecurity: when the port security rules cannot be written (here the
// drop chain exists as a base chain), a port is not plugged and forwarding is not turned on, so
// nothing runs unchecked; once the rules go in, the port is plugged.
func TestPrivilegedNoPlugWithoutPortSecurity(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "noguard")
	ns.MustRun(t, "nft", "add table netdev vxfabric")
	ns.MustRun(t, "nft", "add chain netdev vxfabric "+overlay.PortDropChain+" { type filter hook ingress device lo priority 0 ; }")
	ns.MustRun(t, "ip", "link", "add", "tap1", "type", "veth", "peer", "name", "tap1p")
	ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	port := overlay.LocalPort{Interface: "tap1", MAC: mustMAC("0e:00:00:00:00:01"), IP: netip.MustParseAddr("10.0.0.2")}
	desired := overlay.DesiredState{
		Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{{VNI: 5, Mode: overlay.ModeNAT, MTU: 1450, CIDR: netip.MustParsePrefix("10.0.0.0/24"),
			Gateway: netip.MustParseAddr("10.0.0.1"), GatewayMAC: mustMAC("02:fb:00:00:00:05"), Ports: []overlay.LocalPort{port}}},
	}
	res, err := dp.Apply(context.Background(), desired)
	if err == nil {
		t.Fatal("Apply succeeded with the drop chain in the way")
	}
	if res.Plugged["tap1"] || strings.Contains(ns.MustRun(t, "ip", "-o", "link", "show", "tap1"), "master") {
		t.Error("tap1 plugged although port security is not in place")
	}
	if v := strings.TrimSpace(ns.MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward")); v != "0" {
		t.Errorf("ip_forward = %s, want 0 while the forward rules may be missing", v)
	}
	ns.MustRun(t, "nft", "flush chain netdev vxfabric "+overlay.PortDropChain)
	ns.MustRun(t, "nft", "delete chain netdev vxfabric "+overlay.PortDropChain)
	res, err = dp.Apply(context.Background(), desired)
	if err != nil || !res.Plugged["tap1"] {
		t.Fatalf("with the set out of the way: plugged %v, err %v", res.Plugged, err)
	}
	if v := strings.TrimSpace(ns.MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward")); v != "1" {
		t.Errorf("ip_forward = %s, want 1", v)
	}

	// An Apply cut short does not say which ports are plugged (not: none).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if res, err := dp.Apply(ctx, desired); err == nil || res.Plugged != nil {
		t.Errorf("cancelled Apply: plugged %v, err %v; want nil and an error", res.Plugged, err)
	}
}

// TestPrivilegedVNIReusedForAnotherMode: a host that missed a network's delete finds its bridge
// when the VNI comes back for a network of another mode. A bridged network's uplink goes back to
// the host with its address; a nat network's gateway address does not stay on an isolated one.
func TestPrivilegedVNIReusedForAnotherMode(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "reuse")
	ns.MustRun(t, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
	ns.MustRun(t, "ip", "addr", "add", "192.168.50.1/24", "dev", "lan0")
	ns.MustRun(t, "ip", "link", "set", "lan0", "up")
	apply := func(n overlay.Network) {
		t.Helper()
		d := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")}, Networks: []overlay.Network{n}}
		if _, err := dp.Apply(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	addrs := func(dev string) string {
		f := strings.Fields(ns.MustRun(t, "ip", "-4", "-br", "addr", "show", "dev", dev))
		if len(f) < 2 {
			return "" // ip prints nothing for a device without an IPv4 address
		}
		return strings.Join(f[2:], " ")
	}
	nat := overlay.Network{VNI: 20, Mode: overlay.ModeNAT, MTU: 1450, CIDR: netip.MustParsePrefix("10.0.0.0/24"),
		Gateway: netip.MustParseAddr("10.0.0.1"), GatewayMAC: mustMAC("02:fb:00:00:00:14")}

	apply(overlay.Network{VNI: 20, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "lan0"})
	if a := addrs("vxbr20"); a != "192.168.50.1/24" {
		t.Fatalf("bridged: vxbr20 holds %q, want the uplink's address", a)
	}
	apply(nat) // VNI 20 again, now a nat network: the delete of the bridged one was missed
	if line := ns.MustRun(t, "ip", "-o", "link", "show", "lan0"); strings.Contains(line, "master") {
		t.Errorf("lan0 still enslaved: %s", line)
	}
	if a := addrs("lan0"); a != "192.168.50.1/24" {
		t.Errorf("lan0 holds %q, want its address back", a)
	}
	if a := addrs("vxbr20"); a != "10.0.0.1/24" {
		t.Errorf("nat: vxbr20 holds %q, want the gateway only", a)
	}
	if alias := strings.TrimSpace(ns.MustRun(t, "cat", "/sys/class/net/vxbr20/ifalias")); alias != "" {
		t.Errorf("vxbr20 alias %q, want none", alias)
	}
	apply(overlay.Network{VNI: 20, Mode: overlay.ModeIsolated, MTU: 1450})
	if a := addrs("vxbr20"); a != "" {
		t.Errorf("isolated: vxbr20 holds %q, want no address (the VMs would reach the host)", a)
	}
	// From nat straight to bridged: the gateway goes, the uplink's address comes.
	apply(nat)
	apply(overlay.Network{VNI: 20, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "lan0"})
	if a := addrs("vxbr20"); a != "192.168.50.1/24" {
		t.Errorf("nat, then bridged: vxbr20 holds %q, want the uplink's address only", a)
	}
	apply(overlay.Network{VNI: 20, Mode: overlay.ModeIsolated, MTU: 1450})
	if a := addrs("lan0"); a != "192.168.50.1/24" {
		t.Fatalf("lan0 holds %q once VNI 20 is isolated again, want its address back", a)
	}

	// VNI 20 bridges lan0 again; then lan0 goes to network 10 while VNI 20 serves an isolated
	// network: 10 takes lan0 with its address, and 20 does not take it back.
	apply(overlay.Network{VNI: 20, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "lan0"})
	d := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")}, Networks: []overlay.Network{
		{VNI: 10, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "lan0"}, {VNI: 20, Mode: overlay.ModeIsolated, MTU: 1450}}}
	for i := range 2 {
		res, err := dp.Apply(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && len(res.Changes) != 0 {
			t.Errorf("second Apply changed %s", changeText(res))
		}
		if line := ns.MustRun(t, "ip", "-o", "link", "show", "lan0"); !strings.Contains(line, "master vxbr10") {
			t.Errorf("apply %d: lan0 not in vxbr10: %s", i, line)
		}
		if a := addrs("vxbr10"); a != "192.168.50.1/24" {
			t.Errorf("apply %d: vxbr10 holds %q, want the LAN address", i, a)
		}
		if a := addrs("vxbr20"); a != "" {
			t.Errorf("apply %d: vxbr20 holds %q, want none", i, a)
		}
	}
}

// TestPrivilegedOtherProgramsDevicesLeftAlone: devices named as ours but made by someone else (an
// operator's `ip link add vxlan100 type vxlan id 100`, a bridge vxbr5) are neither deleted as stale
// nor adopted for a network of their VNI: that network fails, naming the device, and they stay.
func TestPrivilegedOtherProgramsDevicesLeftAlone(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "foreign")
	ns.MustRun(t, "ip", "link", "add", "vxlan100", "type", "vxlan", "id", "100", "dstport", "4789", "local", "198.18.0.1")
	ns.MustRun(t, "ip", "link", "add", "vxbr5", "type", "bridge")
	index := func(dev string) string {
		t.Helper()
		return strings.TrimSpace(ns.MustRun(t, "cat", "/sys/class/net/"+dev+"/ifindex"))
	}
	before := index("vxlan100") + " " + index("vxbr5")
	vtep := overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")}
	if _, err := dp.Apply(context.Background(), overlay.DesiredState{Underlay: vtep,
		Networks: []overlay.Network{{VNI: 7, Mode: overlay.ModeIsolated, MTU: 1450}}}); err != nil {
		t.Fatal(err)
	}
	if after := index("vxlan100") + " " + index("vxbr5"); after != before {
		t.Fatalf("another program's devices were deleted or made anew: ifindex %s, then %s", before, after)
	}
	_, err := dp.Apply(context.Background(), overlay.DesiredState{Underlay: vtep,
		Networks: []overlay.Network{{VNI: 7, Mode: overlay.ModeIsolated, MTU: 1450}, {VNI: 100, Mode: overlay.ModeIsolated, MTU: 1450}}})
	if err == nil || !strings.Contains(err.Error(), "another program") {
		t.Errorf("a network whose VNI names another program's device: %v, want it refused, saying so", err)
	}
	if after := index("vxlan100") + " " + index("vxbr5"); after != before {
		t.Errorf("another program's devices were deleted or made anew: ifindex %s, then %s", before, after)
	}
	if line := ns.MustRun(t, "ip", "-o", "link", "show", "vxlan100"); strings.Contains(line, "master") {
		t.Errorf("another program's vxlan100 was enslaved: %s", line)
	}
}

// TestPrivilegedAdoptedDownDeviceGetsNoLinkLocal: a bridge left down by a crash right after its
// creation, before IPv6 address generation was turned off, is adopted and brought up without a
// link-local address (a tenant must never see one of the host's).
func TestPrivilegedAdoptedDownDeviceGetsNoLinkLocal(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "lladopt")
	ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0")
	ns.MustRun(t, "ip", "link", "add", "vxbr30", "type", "bridge")
	ns.MustRun(t, "ip", "link", "set", "vxbr30", "group", strconv.Itoa(linkGroupBase|30)) // as ours are made
	d := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{{VNI: 30, Mode: overlay.ModeIsolated, MTU: 1450}}}
	if _, err := dp.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{"vxbr30", "vxlan30"} {
		if out := ns.MustRun(t, "ip", "-6", "addr", "show", "dev", dev); strings.Contains(out, "fe80") {
			t.Errorf("%s has a link-local address:\n%s", dev, out)
		}
	}
}

// TestPrivilegedForwardingMarkKeptWhenOffFails: when the last routing network goes and turning
// ip_forward off fails, the record that we turned it on stays (in our inet table), so that a later
// Apply turns it off; it is not lost with the table.
func TestPrivilegedForwardingMarkKeptWhenOffFails(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "fwdmark")
	ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	nat := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{{VNI: 40, Mode: overlay.ModeNAT, MTU: 1450, CIDR: netip.MustParsePrefix("10.0.0.0/24"),
			Gateway: netip.MustParseAddr("10.0.0.1"), GatewayMAC: mustMAC("02:fb:00:00:00:28")}}}
	empty := overlay.DesiredState{Underlay: nat.Underlay}
	if _, err := dp.Apply(context.Background(), nat); err != nil {
		t.Fatal(err)
	}
	forwarding := func() string {
		return strings.TrimSpace(ns.MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward"))
	}
	if v := forwarding(); v != "1" {
		t.Fatalf("ip_forward = %s with a nat network", v)
	}
	dp.failSysctlWrite = func(string, string) error { return errors.New("read-only file system") }
	if _, err := dp.Apply(context.Background(), empty); err == nil {
		t.Fatal("Apply succeeded although ip_forward could not be turned off")
	}
	if out := ns.MustRun(t, "nft", "list", "chain", "inet", "vxfabric", overlay.ForwardingMarkChain); !strings.Contains(out, overlay.ForwardingMarkChain) {
		t.Fatalf("the forwarding record is gone:\n%s", out)
	}
	dp.failSysctlWrite = nil
	if _, err := dp.Apply(context.Background(), empty); err != nil {
		t.Fatal(err)
	}
	if v := forwarding(); v != "0" {
		t.Errorf("ip_forward = %s once the write works again, want 0", v)
	}
	if out, err := ns.Run("nft", "list", "tables"); err != nil || strings.Contains(out, "vxfabric") {
		t.Errorf("our tables remain: %q, %v", out, err)
	}
}

// TestPrivilegedBridgeARPFailureIsTheBridgesAlone: a bridge whose ARP settings cannot be written
// (a read-only /proc/sys) is reported, and its network is served all the same; the settings are
// written once they can be.
func TestPrivilegedBridgeARPFailureIsTheBridgesAlone(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "arpro")
	dp.failSysctlWrite = func(path, _ string) error {
		if strings.Contains(path, "/conf/vxbr") {
			return &os.PathError{Op: "open", Path: path, Err: unix.EROFS}
		}
		return nil
	}
	vtep := netip.MustParseAddr("198.18.0.2")
	st := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{{VNI: 41, Mode: overlay.ModeIsolated, MTU: 1450,
			Remotes: []overlay.RemotePort{{MAC: mustMAC("0e:00:00:00:29:02"), IP: netip.MustParseAddr("10.0.0.2"), VTEP: vtep}},
			Flood:   []netip.Addr{vtep}}}}
	res, err := dp.Apply(context.Background(), st)
	if err == nil || len(res.Errors) != 1 || res.Errors[0].Object != overlay.BridgeObject(41) || !overlay.OnlyStanding(err) {
		t.Fatalf("Apply with the bridge's sysctls read-only: err %v (standing %v), errors %v", err, overlay.OnlyStanding(err), res.Errors)
	}
	if fdb := ns.MustRun(t, "bridge", "fdb", "show", "dev", "vxlan41"); !strings.Contains(fdb, "0e:00:00:00:29:02 dst 198.18.0.2") {
		t.Errorf("the network was not served: vxlan41 FDB:\n%s", fdb)
	}
	dp.failSysctlWrite = nil
	res, err = dp.Apply(context.Background(), st)
	if err != nil || changeText(res) != "update "+overlay.BridgeObject(41)+"\n" {
		t.Errorf("Apply once writable: err %v, changes:\n%s", err, changeText(res))
	}
	if v := strings.TrimSpace(ns.MustRun(t, "sysctl", "-n", "net.ipv4.conf.vxbr41.arp_ignore", "net.ipv4.conf.vxbr41.arp_announce")); v != "1\n2" {
		t.Errorf("vxbr41 arp_ignore, arp_announce = %q, want 1 and 2", v)
	}
}

// TestPrivilegedVTEPNotHeld: a VTEP that no interface of the host has (a typo, a copied
// configuration, an address not up yet) is reported on every Apply; the networks are converged all
// the same, and the error goes once the address is there.
func TestPrivilegedVTEPNotHeld(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "vtepgone") // holds 198.18.0.1
	vtep := netip.MustParseAddr("198.18.0.9")
	st := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: vtep},
		Networks: []overlay.Network{{VNI: 42, Mode: overlay.ModeIsolated, MTU: 1450}}}
	for range 2 {
		res, err := dp.Apply(context.Background(), st)
		if err == nil || len(res.Errors) != 1 || res.Errors[0].Object != overlay.VTEPObject(vtep) || !overlay.OnlyStanding(err) {
			t.Fatalf("Apply with a VTEP the host does not have: err %v (standing %v), errors %v", err, overlay.OnlyStanding(err), res.Errors)
		}
	}
	if out := ns.MustRun(t, "ip", "-d", "link", "show", "vxlan42"); !strings.Contains(out, "local 198.18.0.9") {
		t.Errorf("vxlan42 not made:\n%s", out)
	}
	ns.MustRun(t, "ip", "addr", "add", "198.18.0.9/32", "dev", "lo")
	if res, err := dp.Apply(context.Background(), st); err != nil || len(res.Changes) != 0 {
		t.Errorf("Apply once the host has the VTEP: err %v, changes:\n%s", err, changeText(res))
	}
}

// TestPrivilegedPortWithTheUplinksMACIsNotPinned: a port whose MAC is the bridge's own (a tenant
// who chose the MAC of a bridged network's uplink, seen on the LAN) is plugged but not pinned: the
// pin would take the bridge's address, and the host's traffic from the LAN would go to the VM.
func TestPrivilegedPortWithTheUplinksMACIsNotPinned(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "pinown")
	lan := nstest.New(t, "pinlan")
	nstest.MustVeth(t, nstest.End{NS: ns, Name: "up0", Addr: "192.168.60.1/24"}, nstest.End{NS: lan, Name: "eth0", Addr: "192.168.60.10/24"})
	upMAC := mustMAC(strings.TrimSpace(ns.MustRun(t, "cat", "/sys/class/net/up0/address")))
	vm := nstest.New(t, "pinvm")
	nstest.MustVeth(t, nstest.End{NS: ns, Name: "tapx"}, nstest.End{NS: vm, Name: "eth0", Addr: "192.168.60.20/24", MAC: upMAC.String()})
	st := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{{VNI: 43, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "up0",
			Ports: []overlay.LocalPort{{Interface: "tapx", MAC: upMAC, IP: netip.MustParseAddr("192.168.60.20")}}}}}
	for range 2 {
		res, err := dp.Apply(context.Background(), st)
		if err == nil || !overlay.OnlyStanding(err) || len(res.Errors) != 1 || res.Errors[0].Object != overlay.PortObject(43, "tapx") || !res.Plugged["tapx"] {
			t.Fatalf("Apply with a port of the uplink's MAC: err %v, errors %v, plugged %v", err, res.Errors, res.Plugged)
		}
	}
	if fdb := ns.MustRun(t, "bridge", "fdb", "show", "dev", "tapx"); strings.Contains(fdb, upMAC.String()) {
		t.Errorf("the uplink's MAC is on the port:\n%s", fdb)
	}
	if got := lan.Ping("192.168.60.1", 2, "0.05"); got != 2 {
		t.Errorf("LAN -> the host's address on the bridge: %d/2", got)
	}
}

// TestPrivilegedGatewayNeverTakesTheHostsRoutes: a nat or routed network's gateway address is not
// put on its bridge when its connected route would take traffic the host sends outside the fabric
// (its underlay subnet, its servers): that would cut the host off. The network's other objects
// still converge; one such address already there (an earlier version put it) is removed.
func TestPrivilegedGatewayNeverTakesTheHostsRoutes(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "gwclash")
	nstest.MustVeth(t, nstest.End{NS: ns, Name: "ul0"}, nstest.End{NS: nstest.New(t, "sw"), Name: "h1"})
	ns.MustRun(t, "ip", "addr", "add", "198.18.4.11/24", "dev", "ul0")
	ns.MustRun(t, "ip", "link", "set", "ul0", "up")
	ns.MustRun(t, "ip", "route", "add", "default", "via", "198.18.4.254")
	// A summary route through the router: a more specific tenant gateway takes only the tenant's
	// own range from it, which is no clash.
	ns.MustRun(t, "ip", "route", "add", "10.0.0.0/8", "via", "198.18.4.254")
	// A route through a tunnel, without a next hop (as wg-quick adds for its allowed addresses): not
	// a subnet the host is attached to.
	ns.MustRun(t, "ip", "route", "add", "10.50.0.0/16", "dev", "ul0")
	// A router outside every subnet (an onlink route), and a subnet whose route a DHCP client
	// would add itself (an address without its prefix route).
	ns.MustRun(t, "ip", "route", "add", "203.0.113.0/24", "via", "10.250.0.1", "dev", "ul0", "onlink")
	ns.MustRun(t, "ip", "addr", "add", "192.168.60.5/24", "dev", "ul0", "noprefixroute")
	// A LAN whose uplink a bridged network takes in the same Apply as a nat network over it.
	nstest.MustVeth(t, nstest.End{NS: ns, Name: "lan0"}, nstest.End{NS: nstest.New(t, "lan"), Name: "h1"})
	ns.MustRun(t, "ip", "addr", "add", "192.168.61.5/24", "dev", "lan0")
	ns.MustRun(t, "ip", "link", "set", "lan0", "up")
	gw := func(vni uint32, mode overlay.Mode, cidr, gateway string) overlay.Network {
		return overlay.Network{VNI: vni, Mode: mode, MTU: 1450, CIDR: netip.MustParsePrefix(cidr),
			Gateway: netip.MustParseAddr(gateway), GatewayMAC: mustMAC(fmt.Sprintf("02:fb:00:00:00:%02x", vni))}
	}
	desired := overlay.DesiredState{
		Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{
			gw(30, overlay.ModeNAT, "198.18.4.0/29", "198.18.4.1"),  // the host's underlay subnet
			gw(31, overlay.ModeRouted, "10.99.0.0/24", "10.99.0.1"), // holds a server, reached by the default route
			gw(32, overlay.ModeNAT, "10.0.0.0/24", "10.0.0.1"),
			gw(33, overlay.ModeNAT, "10.0.0.0/24", "10.0.0.1"), // another of the fabric's: not the host's underlay
			gw(34, overlay.ModeRouted, "10.50.1.0/24", "10.50.1.1"),
			gw(35, overlay.ModeNAT, "10.250.0.0/24", "10.250.0.2"),     // holds the onlink router
			gw(36, overlay.ModeNAT, "192.168.60.0/24", "192.168.60.1"), // the subnet without its route
			{VNI: 37, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "lan0"},
			gw(38, overlay.ModeNAT, "192.168.61.0/24", "192.168.61.1"), // the LAN the bridged network takes
		},
		Infrastructure: []netip.Addr{netip.MustParseAddr("10.99.0.5")},
	}
	underlayKept := func(when string) {
		t.Helper()
		for _, dst := range []string{"198.18.4.2", "10.99.0.5"} {
			if out := ns.MustRun(t, "ip", "-4", "route", "get", dst); !strings.Contains(out, "dev ul0") {
				t.Errorf("%s: the host's route to %s: %s, want it through ul0", when, dst, strings.TrimSpace(out))
			}
		}
	}
	res, err := dp.Apply(context.Background(), desired)
	var objs []string
	for _, e := range res.Errors {
		objs = append(objs, e.Object)
	}
	want := []string{overlay.AddrObject(30, netip.MustParsePrefix("198.18.4.1/29")), overlay.AddrObject(31, netip.MustParsePrefix("10.99.0.1/24")),
		overlay.AddrObject(35, netip.MustParsePrefix("10.250.0.2/24")), overlay.AddrObject(36, netip.MustParsePrefix("192.168.60.1/24")),
		overlay.AddrObject(38, netip.MustParsePrefix("192.168.61.1/24"))}
	if !slices.Equal(objs, want) {
		t.Errorf("errors for %v, want %v", objs, want)
	}
	underlayKept("first apply")
	for br, gateway := range map[string]string{"vxbr32": "10.0.0.1/24", "vxbr33": "10.0.0.1/24", "vxbr34": "10.50.1.1/24"} {
		if out := ns.MustRun(t, "ip", "-o", "-4", "addr", "show", "dev", br); !strings.Contains(out, gateway) {
			t.Errorf("%s, which clashes with nothing of the host's: %q, want its gateway", br, out)
		}
	}
	// What the host reaches: its subnet and its router, none of the fabric's own routes, nor the
	// tunnel's (the router is on the subnet: reporting the subnet covers it).
	if got, want := fmt.Sprint(overlay.SelectUnderlay(res.UnderlayRoutes, 64)), "[10.250.0.1/32 192.168.60.0/24 192.168.61.0/24 198.18.4.0/24]"; got != want {
		t.Errorf("underlay routes %s (read: %v), want %s", got, res.UnderlayRoutes, want)
	}
	if !overlay.OnlyStanding(err) {
		t.Errorf("the first apply's error %v: want only standing refusals", err)
	}
	if out := ns.MustRun(t, "ip", "-o", "link", "show", "vxlan30"); !strings.Contains(out, "master vxbr30") {
		t.Errorf("network 30's vxlan device: %q, want it in its bridge", out)
	}

	// An address an earlier version put there goes.
	ns.MustRun(t, "ip", "addr", "add", "198.18.4.1/29", "dev", "vxbr30")
	if _, err := dp.Apply(context.Background(), desired); err == nil {
		t.Error("second apply: no error, want the clash reported again")
	}
	if out := ns.MustRun(t, "ip", "-o", "-4", "addr", "show", "dev", "vxbr30"); strings.TrimSpace(out) != "" {
		t.Errorf("vxbr30 after the second apply: %q, want the clashing address removed", out)
	}
	underlayKept("second apply")
}

// TestPrivilegedMigratedVMReachedAtOnce: h1's bridge learned a2's MAC behind the tunnel (a1 pinged
// it on h2); a2, quiet since, migrates to h1 (its NIC's host end moves, the desired states follow).
// The Apply that plugs it on h1 deletes what the bridge learned, so a1's next ping reaches a2 at once
// instead of going into the tunnel until the bridge's entry ages out (300 s) or a2 sends a frame.
func TestPrivilegedMigratedVMReachedAtOnce(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	l := newLab(t)
	a2 := l.vms["a2"]
	if got := l.ping("a1", a2.ip.String(), 1); got != 1 {
		t.Fatalf("a1 -> a2 before the migration: %d of 1", got)
	}
	learned := func() bool {
		t.Helper()
		out := l.hosts[0].MustRun(t, "bridge", "fdb", "show", "br", "vxbr101")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, a2.mac.String()+" dev vxlan101 ") && strings.Contains(line, "master vxbr101") {
				return true
			}
		}
		return false
	}
	if !learned() {
		t.Fatal("h1's bridge did not learn a2 on vxlan101: the test sets up nothing")
	}

	l.hosts[1].MustRun(t, "ip", "link", "set", a2.name, "netns", l.hosts[0].Name)
	a2.host = 0
	res := l.apply(0)
	l.apply(1)
	if !res.Plugged[a2.name] {
		t.Fatalf("a2 not plugged on h1: %v", res.Plugged)
	}
	if !strings.Contains(changeText(res), "delete "+overlay.LearnedObject(101, a2.mac)+"\n") {
		t.Errorf("h1's apply: changes\n%swant the learned entry of a2 deleted", changeText(res))
	}
	if learned() {
		t.Error("h1's bridge still sends a2's frames into the tunnel")
	}
	if got := l.ping("a1", a2.ip.String(), 1); got != 1 {
		t.Errorf("a1 -> a2 right after a2 came to h1: %d of 1", got)
	}
	if res := l.apply(0); len(res.Changes) != 0 {
		t.Errorf("second apply on h1: changes\n%s", changeText(res))
	}
}

// ipv4Header is an IPv4 header without options, with its checksum, for a payload of n bytes.
func ipv4Header(src, dst netip.Addr, proto byte, n int) []byte {
	h := []byte{0x45, 0, byte((20 + n) >> 8), byte(20 + n), 0, 0, 0, 0, 64, proto, 0, 0}
	h = slices.Concat(h, src.AsSlice(), dst.AsSlice())
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	h[10], h[11] = byte(^sum>>8), byte(^sum)
	return h
}

// TestPrivilegedFDBDumpOfOneDevice: the per-device FDB dump a full Apply makes for each network
// reads that device's entries only, not the FDB of every device on the host (which would make a
// pass over many networks cost networks × all entries).
func TestPrivilegedFDBDumpOfOneDevice(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns, dp := hostNS(t, "fdbdump")
	for _, vni := range []string{"7", "8"} {
		ns.MustRun(t, "ip", "link", "add", "vx"+vni, "type", "vxlan", "id", vni, "local", "198.18.0.1", "dstport", "4789", "nolearning")
		for i := range 20 {
			ns.MustRun(t, "bridge", "fdb", "add", fmt.Sprintf("0e:00:00:00:%s:%02x", vni, i), "dev", "vx"+vni, "dst", "198.18.0.9")
		}
	}
	vx7, err := dp.h.LinkByName("vx7")
	if err != nil {
		t.Fatal(err)
	}
	ours, others := 0, 0
	var m neighMsg
	err = neighDumpRequest(dp.dump1, unix.AF_BRIDGE, vx7.Attrs().Index).ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEIGH, func(b []byte) bool {
		if parseNeigh(b, &m) {
			if int(m.ifindex) == vx7.Attrs().Index {
				ours++
			} else {
				others++
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if ours < 20 || others != 0 {
		t.Errorf("the FDB dump of vx7 returned %d of its entries and %d of other devices; want its 20 (and its own address) and none else", ours, others)
	}
}
