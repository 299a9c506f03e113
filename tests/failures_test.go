//go:build linux

package tests

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/vxfabric/vxfabric/lab"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const isolated = vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED

// backgroundPing runs `ping -i interval -c count` from one namespace to dst and delivers the result.
func backgroundPing(f *fixture, from string, dst lab.VM, count int, interval time.Duration) <-chan lab.PingResult {
	ch := make(chan lab.PingResult, 1)
	// A test that ends early (t.Fatal) stops the ping with it, before its fixture deletes the VMs.
	ctx, cancel := context.WithCancel(f.ctx)
	f.t.Cleanup(cancel)
	go func() {
		res, err := f.l.Ping(ctx, from, dst.IP(0), lab.PingOptions{Count: count, Interval: interval, Wait: time.Second})
		if err != nil {
			res.Output = err.Error()
		}
		ch <- res
	}()
	return ch
}

func bridgeIndex(f *fixture, host string, vni uint32) int {
	f.t.Helper()
	h, err := f.l.Handle(host)
	if err != nil {
		f.t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(overlay.BridgeName(vni))
	if err != nil {
		f.t.Fatalf("%s: %s: %v", host, overlay.BridgeName(vni), err)
	}
	return link.Attrs().Index
}

// TestPrivilegedAgentKill kills both agents of a VM pair with SIGKILL and restarts them during a
// ping every 10 ms: at most one echo is lost and the kernel objects are adopted, not recreated: no
// host (the killed ones and their peer h3, which has a port in the network too) sees a link of the
// fabric go down or an FDB or neighbour entry of a vxlan device deleted.
func TestPrivilegedAgentKill(t *testing.T) {
	f := newFixture(t, "e2e-kill")
	n := f.network("net", "10.50.0.0/24", isolated)
	a := f.vm("kill-a", "h1", "net")
	b := f.vm("kill-b", "h2", "net")
	f.vm("kill-d", "h3", "net")
	f.reach("kill-a", b.IP(0), 5*time.Second)
	f.reach("kill-d", a.IP(0), 5*time.Second)
	bridges := map[string]int{"h1": bridgeIndex(f, "h1", n.GetVni()), "h2": bridgeIndex(f, "h2", n.GetVni())}
	restoreOnCleanup(t, "agent", "start", "h1")
	restoreOnCleanup(t, "agent", "start", "h2")
	kernel := watchKernel(t, f.l, "h1", "h2", "h3")

	const count = 600 // 6 s at 10 ms: room for two kills and restarts
	pings := backgroundPing(f, "kill-a", b, count, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // let the ping run before the first kill
	began := time.Now()
	for _, h := range []string{"h1", "h2"} {
		if out := mustVxfab(t, "lab", "agent", "kill", h); out != "agent "+h+": killed\n" {
			t.Errorf("lab agent kill %s said %q", h, out)
		}
		if out := mustVxfab(t, "lab", "agent", "start", h); out != "agent "+h+": started, ALIVE\n" {
			t.Errorf("lab agent start %s said %q", h, out)
		}
	}
	restarted := time.Since(began)
	if out := mustVxfab(t, "lab", "agent", "resume", "h1"); out != "agent h1: was not paused: nothing done\n" {
		t.Errorf("lab agent resume h1 (running) said %q", out)
	}
	res := <-pings
	if restarted > time.Duration(count)*10*time.Millisecond-time.Second {
		t.Fatalf("kills and restarts took %s, longer than the ping: raise count", restarted)
	}
	t.Logf("two agents killed and restarted in %s; ping %d sent, %d received", restarted.Round(time.Millisecond), res.Sent, res.Received)
	if res.Sent < count/2 || res.Sent-res.Received > 1 {
		t.Fatalf("ping during kill+restart: %d sent, %d received, want at most 1 lost:\n%s", res.Sent, res.Received, res.Output)
	}
	for h, idx := range bridges {
		if got := bridgeIndex(f, h, n.GetVni()); got != idx {
			t.Errorf("%s: bridge recreated after restart (ifindex %d -> %d)", h, idx, got)
		}
	}
	// The record ends here: the new port below legitimately creates links on h3.
	events := stopWatch(t, kernel)
	t.Logf("%d kernel events on h1-h3 during the kills and restarts", len(events))
	if bad := disruptions(events); len(bad) > 0 {
		t.Errorf("%d disruptive kernel changes during the kills and restarts:%s", len(bad), eventLines(bad))
	}
	f.reach("kill-b", a.IP(0), 2*time.Second)
	// The restarted agents are live, not just running: a new port elsewhere reaches their kernels.
	c := f.vm("kill-c", "h3", "net")
	for _, h := range []string{"h1", "h2"} {
		if _, err := lab.WaitFor(f.ctx, 5*time.Second, func() (bool, error) {
			return hasMAC(f.fdbTo(h, n.GetVni(), lab.HostAddr(3)), c.Ports[0].GetMac()), nil
		}); err != nil {
			t.Errorf("restarted agent on %s did not program a new remote port: %v", h, err)
		}
	}
}

// serverDown is how long TestPrivilegedServerDown keeps the server stopped (VXFAB_E2E_SERVER_DOWN
// shortens it while iterating; the suite's default is the 30 s).
func serverDown(t *testing.T) time.Duration {
	if s := os.Getenv("VXFAB_E2E_SERVER_DOWN"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("VXFAB_E2E_SERVER_DOWN: %v", err)
		}
		return d
	}
	return 30 * time.Second
}

// TestPrivilegedServerDown stops the server for 30 s during a ping between VMs on two hosts: zero
// lost. Once it is back, a new port is programmed everywhere and reachable.
func TestPrivilegedServerDown(t *testing.T) {
	f := newFixture(t, "e2e-srv")
	f.network("net", "10.51.0.0/24", isolated)
	a := f.vm("srv-a", "h1", "net")
	b := f.vm("srv-b", "h3", "net")
	f.reach("srv-a", b.IP(0), 5*time.Second)
	restoreOnCleanup(t, "server", "start")

	down := serverDown(t)
	interval := 20 * time.Millisecond
	count := int((down + 3*time.Second) / interval)
	pings := backgroundPing(f, "srv-a", b, count, interval)
	mustVxfab(t, "lab", "server", "stop")
	time.Sleep(down) // the outage itself, not a wait for convergence
	mustVxfab(t, "lab", "server", "start")
	res := <-pings
	t.Logf("server down %s; ping %d sent, %d received", down, res.Sent, res.Received)
	if res.Sent < count/2 || res.Received != res.Sent {
		t.Fatalf("ping while the server was down: %d sent, %d received, want none lost:\n%s", res.Sent, res.Received, res.Output)
	}
	c := f.vm("srv-c", "h2", "net")
	f.reach("srv-c", a.IP(0), 5*time.Second)
	f.reach("srv-b", c.IP(0), 5*time.Second)
}

// TestPrivilegedHostCut cuts h3 off the underlay: the other hosts withdraw every FDB entry that
// points at it within 2.5 s (gossip suspects h3 and its host answers no dial; DEAD would take ~4 s),
// and get them back after the cable is restored.
func TestPrivilegedHostCut(t *testing.T) {
	f := newFixture(t, "e2e-cut")
	n := f.network("net", "10.52.0.0/24", isolated)
	vni := n.GetVni()
	f.vm("cut-1", "h1", "net")
	f.vm("cut-2", "h2", "net")
	v3 := f.vm("cut-3", "h3", "net")
	f.reach("cut-1", v3.IP(0), 5*time.Second)
	h3 := lab.HostAddr(3)
	peers := []string{"h1", "h2"}
	present := func() (bool, error) {
		for _, h := range peers {
			if e := f.fdbTo(h, vni, h3); !hasMAC(e, v3.Ports[0].GetMac()) || !hasMAC(e, "00:00:00:00:00:00") {
				return false, nil
			}
		}
		return true, nil
	}
	if _, err := lab.WaitFor(f.ctx, 5*time.Second, present); err != nil {
		t.Fatalf("entries to h3 before the cut: %v", err)
	}
	restoreOnCleanup(t, "host", "restore", "h3")

	mustVxfab(t, "lab", "host", "cut", "h3")
	took, err := lab.WaitFor(f.ctx, 5*time.Second, func() (bool, error) {
		for _, h := range peers {
			if len(f.fdbTo(h, vni, h3)) > 0 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("entries to h3 still on its peers 5 s after the cut: h1 %v, h2 %v", f.fdbTo("h1", vni, h3), f.fdbTo("h2", vni, h3))
	}
	t.Logf("h3 cut: its entries withdrawn on h1 and h2 in %s", took.Round(time.Millisecond))
	if took > 2500*time.Millisecond {
		t.Errorf("h3's entries withdrawn %s after the cut, want within 2.5 s", took.Round(time.Millisecond))
	}
	// The node list says why: h3's host does not answer.
	if _, err := lab.WaitFor(f.ctx, 5*time.Second, func() (bool, error) {
		return f.node("h3").GetUnreachable(), nil
	}); err != nil {
		t.Errorf("node list does not show h3 unreachable after the cut: %v", f.node("h3"))
	}

	mustVxfab(t, "lab", "host", "restore", "h3")
	took, err = lab.WaitFor(f.ctx, 30*time.Second, present)
	if err != nil {
		t.Fatalf("entries to h3 not back after restore: %v", err)
	}
	t.Logf("h3 restored: its entries back in %s", took.Round(time.Millisecond))
	f.reach("cut-1", v3.IP(0), 5*time.Second)
}

// TestPrivilegedServerRestartedWhileAHostIsDown: h2 is cut off while the server is stopped. The
// restarted server's gossip never hears of h2 (memberlist passes on no death of a member it does not
// know), so only its dials can tell that h2's record, ALIVE, is wrong: it becomes SUSPECT and
// unreachable (or DEAD, should gossip still have passed h2 on). An agent restarted then, whose
// gossip does not know h2 either, takes that record and programs nothing towards h2. Restored, h2
// is ALIVE and reachable again.
func TestPrivilegedServerRestartedWhileAHostIsDown(t *testing.T) {
	f := newFixture(t, "e2e-srv-cut")
	n := f.network("net", "10.48.0.0/24", isolated)
	vni := n.GetVni()
	v1 := f.vm("sc-1", "h1", "net")
	v2 := f.vm("sc-2", "h2", "net")
	f.vm("sc-3", "h3", "net")
	f.reach("sc-3", v2.IP(0), 5*time.Second)
	restoreOnCleanup(t, "server", "start")
	restoreOnCleanup(t, "host", "restore", "h2")

	mustVxfab(t, "lab", "server", "stop")
	mustVxfab(t, "lab", "host", "cut", "h2")
	if _, err := lab.WaitFor(f.ctx, 5*time.Second, func() (bool, error) {
		return len(f.fdbTo("h1", vni, lab.HostAddr(2)))+len(f.fdbTo("h3", vni, lab.HostAddr(2))) == 0, nil
	}); err != nil {
		t.Fatalf("h1 and h3 did not withdraw h2's entries after the cut: %v", err)
	}
	// The scenario: the agents' gossip declares h2 DEAD once its suspicion times out (about 4 s),
	// and from then on tells a newly started member nothing of it.
	if _, err := lab.WaitFor(f.ctx, 15*time.Second, func() (bool, error) {
		for _, h := range []string{"h1", "h3"} {
			if !strings.Contains(f.scrape(h), `vxfabric_gossip_members{role="agent",state="dead"} 1`) {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("the gossip of h1 and h3 does not declare h2 dead: %v", err)
	}
	mustVxfab(t, "lab", "server", "start")
	took, err := lab.WaitFor(f.ctx, 15*time.Second, func() (bool, error) {
		n := f.node("h2")
		return n.GetUnreachable() && n.GetStatus() != vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, nil
	})
	if err != nil {
		t.Fatalf("h2, cut off while the server was stopped, is recorded as %v 15 s after the server started; want not ALIVE, unreachable", f.node("h2"))
	}
	t.Logf("the restarted server recorded h2 unreachable after %s", took.Round(time.Millisecond))

	mustVxfab(t, "lab", "agent", "stop", "h3")
	mustVxfab(t, "lab", "agent", "start", "h3")
	if _, err := lab.WaitFor(f.ctx, 15*time.Second, func() (bool, error) {
		return hasMAC(f.fdbTo("h3", vni, lab.HostAddr(1)), v1.Ports[0].GetMac()), nil
	}); err != nil {
		t.Fatalf("h3's restarted agent did not program sc-1 on h1: %v", err)
	}
	if e := f.fdbTo("h3", vni, lab.HostAddr(2)); len(e) > 0 {
		t.Errorf("h3's restarted agent programmed entries towards h2, which is cut off: %v", e)
	}

	mustVxfab(t, "lab", "host", "restore", "h2")
	f.waitNode("h2", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 30*time.Second, "once restored")
	f.reach("sc-3", v2.IP(0), 10*time.Second)
}

// TestPrivilegedPortMove moves a VM (its port's MAC and IP) from h1 to h2: traffic from h3 reaches
// it on h2 within 2 s, and no FDB entry points at h1 for it any more.
func TestPrivilegedPortMove(t *testing.T) {
	f := newFixture(t, "e2e-move")
	n := f.network("net", "10.53.0.0/24", isolated)
	vni := n.GetVni()
	w := f.vm("mv-w", "h3", "net")
	m := f.vm("mv-m", "h1", "net")
	f.reach("mv-w", m.IP(0), 5*time.Second)
	mac, ip := m.Ports[0].GetMac(), m.Ports[0].GetIp()

	f.deleteVM("mv-m")
	began := time.Now()
	f.createVM(lab.VMSpec{Name: "mv-m", Host: "h2", NICs: []lab.NICSpec{{Tenant: f.tenant, Network: "net", IP: ip, MAC: mac}}})
	plugged := time.Since(began) // the port made, the VM's namespace and NIC made, h2's agent plugged it
	f.reach("mv-w", m.IP(0), 2*time.Second)
	took := time.Since(began)
	t.Logf("moved: h3 reaches the VM on h2 %s after the port was created there (plugged on h2 after %s)",
		took.Round(time.Millisecond), plugged.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("h3 reached the moved VM after %s, want within 2 s", took)
	}
	if !hasMAC(f.fdbTo("h3", vni, lab.HostAddr(2)), mac) {
		t.Errorf("h3 has no FDB entry for %s to h2", mac)
	}
	for _, h := range []string{"h2", "h3"} {
		if e := f.fdbTo(h, vni, lab.HostAddr(1)); hasMAC(e, mac) || hasMAC(e, "00:00:00:00:00:00") {
			t.Errorf("%s still points at h1 (no port of the network is left there): %v", h, e)
		}
	}
	f.reach("mv-m", w.IP(0), 2*time.Second)
}

// TestPrivilegedLiveMigration migrates a VM from h1 to h2 (lab vm migrate: its NIC moves, then its
// port) while h3 pings it every 10 ms: the VM keeps its address, h3's FDB follows it to h2, h1 holds
// no trace of it, and the pings lost while the fabric catches up add up to well under a second.
func TestPrivilegedLiveMigration(t *testing.T) {
	f := newFixture(t, "e2e-migrate")
	n := f.network("net", "10.59.0.0/24", isolated)
	vni := n.GetVni()
	w := f.vm("mg-w", "h3", "net")
	m := f.vm("mg-m", "h1", "net")
	f.reach("mg-w", m.IP(0), 5*time.Second)
	mac := m.Ports[0].GetMac()

	pings := backgroundPing(f, "mg-w", m, 300, 10*time.Millisecond)
	time.Sleep(500 * time.Millisecond) // pings flow before the migration
	began := time.Now()
	moved, err := f.l.MigrateVM(f.ctx, "mg-m", "h2")
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	res := <-pings
	lost := res.Sent - res.Received
	t.Logf("migrated in %s (port plugged on h2); ping every 10 ms: %d sent, %d lost", took.Round(time.Millisecond), res.Sent, lost)
	if moved.Ports[0].GetNode() != "h2" || moved.IP(0) != m.IP(0) {
		t.Errorf("after the migration: node %s, ip %s; want h2, %s", moved.Ports[0].GetNode(), moved.IP(0), m.IP(0))
	}
	if res.Sent == 0 || lost > 30 {
		t.Errorf("pings across the migration: %d sent, %d lost; want at most 30 (300 ms):\n%s", res.Sent, lost, res.Output)
	}
	if !hasMAC(f.fdbTo("h3", vni, lab.HostAddr(2)), mac) {
		t.Errorf("h3 has no FDB entry for %s to h2", mac)
	}
	if e := f.fdbTo("h3", vni, lab.HostAddr(1)); hasMAC(e, mac) {
		t.Errorf("h3 still sends %s to h1: %v", mac, e)
	}
	h1, err := f.l.Handle("h1")
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	if _, err := h1.LinkByName(m.Ports[0].GetInterfaceName()); err == nil {
		t.Errorf("the VM's NIC is still on h1")
	}
	f.reach("mg-m", w.IP(0), 2*time.Second)
	// Migrating again to where it is changes nothing and succeeds.
	if _, err := f.l.MigrateVM(f.ctx, "mg-m", "h2"); err != nil {
		t.Errorf("migrating to the host it is on: %v", err)
	}
	// A migration cut short after the NIC moved (here to h3) but before the port followed is
	// undone by migrating back to where the port is bound.
	h2, err := f.l.Handle("h2")
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	nic, err := h2.LinkByName(m.Ports[0].GetInterfaceName())
	if err != nil {
		t.Fatal(err)
	}
	h3ns, err := netns.GetFromName(f.l.Namespace("h3"))
	if err != nil {
		t.Fatal(err)
	}
	defer h3ns.Close()
	if err := h2.LinkSetNsFd(nic, int(h3ns)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.MigrateVM(f.ctx, "mg-m", "h2"); err != nil {
		t.Fatalf("migrating back after a migration cut short: %v", err)
	}
	f.reach("mg-w", m.IP(0), 2*time.Second)
}

// TestPrivilegedMigrationToAHostWithoutAgentUndone: h3's agent is stopped, so nothing plugs a VM
// migrated there; after the plug timeout the migration fails saying the VM stays where it was, and
// it does: bound to h1, plugged, reached.
func TestPrivilegedMigrationToAHostWithoutAgentUndone(t *testing.T) {
	f := newFixture(t, "e2e-mig-undo")
	f.network("net", "10.47.0.0/24", isolated)
	m := f.vm("mu-m", "h1", "net")
	w := f.vm("mu-w", "h2", "net")
	f.reach(w.Name, m.IP(0), 5*time.Second)
	restoreOnCleanup(t, "agent", "start", "h3")
	mustVxfab(t, "lab", "agent", "stop", "h3")
	_, err := f.l.MigrateVM(f.ctx, m.Name, "h3")
	if err == nil || !strings.Contains(err.Error(), "stays where it was") {
		t.Fatalf("migrating to h3, whose agent is stopped: %v; want an error saying the VM stays where it was", err)
	}
	got, err := f.c.Ports.GetPort(f.ctx, &vxfabricv1.GetPortRequest{Tenant: f.tenant, Name: m.Ports[0].GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetPort().GetNode() != "h1" || !got.GetPort().GetPlugged() {
		t.Errorf("after the undone migration the port is on %s, plugged %t; want h1, plugged", got.GetPort().GetNode(), got.GetPort().GetPlugged())
	}
	f.reach(w.Name, m.IP(0), 5*time.Second)
	mustVxfab(t, "lab", "agent", "start", "h3")
	f.waitNode("h3", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 15*time.Second, "once its agent started again")
}

// TestPrivilegedMigrationOntoAHostThatKnewTheVMRemote: mm-b on h2 talked to mm-q on h3, so h2's
// bridge learned mm-q's MAC behind the tunnel; mm-q, quiet since (no IPv6 chatter), migrates to h2.
// Its neighbours reach it at once, from another host and from h2 itself: the frames for it do not
// go into the tunnel until the bridge's entry ages out (300 s) or mm-q speaks first.
func TestPrivilegedMigrationOntoAHostThatKnewTheVMRemote(t *testing.T) {
	f := newFixture(t, "e2e-mig-learned")
	f.network("net", "10.57.0.0/24", isolated)
	q := f.vm("mm-q", "h3", "net")
	a := f.vm("mm-a", "h1", "net")
	b := f.vm("mm-b", "h2", "net")
	if out, err := f.l.Output(f.ctx, q.Name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.eth0.disable_ipv6=1"); err != nil {
		t.Fatalf("quieten %s: %v\n%s", q.Name, err, out)
	}
	f.reach(b.Name, q.IP(0), 5*time.Second)
	f.reach(a.Name, q.IP(0), 5*time.Second)
	if _, err := f.l.MigrateVM(f.ctx, q.Name, "h2"); err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{b.Name, a.Name} {
		res, err := f.l.Ping(f.ctx, from, q.IP(0), lab.PingOptions{Count: 3, Interval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Received == 0 {
			t.Errorf("%s -> %s right after it came to h2: %d of %d replies\n%s", from, q.Name, res.Received, res.Sent, res.Output)
		}
	}
}

// TestPrivilegedDriftRepairedAtOnce: someone removes an FDB entry of a running agent's vxlan device,
// and sets the device down: the agent repairs both within a second or two (the kernel tells it),
// not at its next periodic pass (up to 37.5 s).
func TestPrivilegedDriftRepairedAtOnce(t *testing.T) {
	f := newFixture(t, "e2e-drift")
	n := f.network("net", "10.61.0.0/24", isolated)
	vxlan := overlay.VxlanName(n.GetVni())
	f.vm("dr-a", "h1", "net")
	b := f.vm("dr-b", "h2", "net")
	f.reach("dr-a", b.IP(0), 5*time.Second)
	mac := b.Ports[0].GetMac()

	h, err := f.l.Handle("h1")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(vxlan)
	if err != nil {
		t.Fatal(err)
	}
	hw, _ := net.ParseMAC(mac)
	entry := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: net.IP(lab.HostAddr(2).AsSlice()), HardwareAddr: hw}
	began := time.Now()
	if err := h.NeighDel(entry); err != nil {
		t.Fatalf("delete h1's FDB entry for %s: %v", mac, err)
	}
	if err := h.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	for !hasMAC(f.fdbTo("h1", n.GetVni(), lab.HostAddr(2)), mac) || !isUp(t, h, vxlan) {
		if time.Since(began) > 5*time.Second {
			t.Fatalf("after 5 s: FDB entry for %s back %v, %s up %v", mac,
				hasMAC(f.fdbTo("h1", n.GetVni(), lab.HostAddr(2)), mac), vxlan, isUp(t, h, vxlan))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("h1's FDB entry and %s up again %s after they were taken", vxlan, time.Since(began).Round(time.Millisecond))
	f.reach("dr-a", b.IP(0), 2*time.Second)
}

func isUp(t *testing.T, h *netlink.Handle, name string) bool {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Flags&net.FlagUp != 0
}

// TestPrivilegedChangesWhileAgentDown deletes a port and creates another while h2's agent is
// stopped; after it starts again h2 converges: the new port is programmed, the deleted one is gone.
func TestPrivilegedChangesWhileAgentDown(t *testing.T) {
	f := newFixture(t, "e2e-away")
	n := f.network("net", "10.54.0.0/24", isolated)
	vni := n.GetVni()
	f.vm("away-x", "h1", "net")
	f.vm("away-y", "h2", "net")
	z := f.vm("away-z", "h1", "net")
	f.reach("away-y", z.IP(0), 5*time.Second)
	restoreOnCleanup(t, "agent", "start", "h2")

	mustVxfab(t, "lab", "agent", "stop", "h2")
	f.deleteVM("away-z")
	nw := f.vm("away-n", "h3", "net")
	// A VM on h2 itself: its port waits for h2's agent.
	local := f.createVM(lab.VMSpec{Name: "away-l", Host: "h2", NICs: []lab.NICSpec{{Tenant: f.tenant, Network: "net"}}, NoWait: true})
	began := time.Now()
	mustVxfab(t, "lab", "agent", "start", "h2")
	_, err := lab.WaitFor(f.ctx, 10*time.Second, func() (bool, error) {
		entries, err := f.l.FDB("h2", vni)
		if err != nil {
			return false, err
		}
		return hasMAC(entries, nw.Ports[0].GetMac()) && !hasMAC(entries, z.Ports[0].GetMac()), nil
	})
	if err != nil {
		entries, _ := f.l.FDB("h2", vni)
		t.Fatalf("h2 did not converge after its agent returned: %v; fdb %v", err, entries)
	}
	t.Logf("h2 converged %s after its agent was started", time.Since(began).Round(time.Millisecond))
	f.reach("away-y", nw.IP(0), 5*time.Second)
	if err := f.l.WaitPlugged(f.ctx, local); err != nil {
		t.Fatalf("a port created on h2 while its agent was down: %v", err)
	}
	f.reach("away-l", nw.IP(0), 5*time.Second)
}

// TestPrivilegedDeadAgentLiveHost kills h2's agent and leaves it down until gossip declares it
// DEAD. h2's kernel still answers on the underlay, and still forwards to its VMs: its peers keep its
// entries (no FDB or neighbour entry deleted anywhere) and the VMs keep talking throughout. Then the
// agent starts again and its host is ALIVE.
func TestPrivilegedDeadAgentLiveHost(t *testing.T) {
	f := newFixture(t, "e2e-dead")
	f.network("net", "10.64.0.0/24", isolated)
	a := f.vm("dead-a", "h1", "net")
	b := f.vm("dead-b", "h2", "net")
	f.reach("dead-a", b.IP(0), 5*time.Second)
	restoreOnCleanup(t, "agent", "start", "h2")
	kernel := watchKernel(t, f.l, "h1", "h2", "h3")
	status := func() vxfabricv1.NodeStatus { return f.node("h2").GetStatus() }

	const count = 800 // 8 s at 10 ms: the kill, the death (about 4 s) and 2 s more
	pings := backgroundPing(f, "dead-a", b, count, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	mustVxfab(t, "lab", "agent", "kill", "h2")
	killed := time.Now()
	took, err := lab.WaitFor(f.ctx, 8*time.Second, func() (bool, error) {
		return status() == vxfabricv1.NodeStatus_NODE_STATUS_DEAD, nil
	})
	if err != nil {
		t.Fatalf("h2 not DEAD in the node list 8 s after its agent was killed (status %s)", status())
	}
	t.Logf("h2's agent killed: DEAD after %s", took.Round(time.Millisecond))
	if f.node("h2").GetUnreachable() {
		t.Errorf("node list shows h2's host unreachable, but its kernel answers: %v", f.node("h2"))
	}
	res := <-pings
	t.Logf("ping from h1 to h2's VM over the kill and the death (%s): %d sent, %d received", time.Since(killed).Round(time.Millisecond), res.Sent, res.Received)
	if res.Sent < count/2 || res.Received != res.Sent {
		t.Errorf("ping while h2's agent was dead but its kernel up: %d sent, %d received, want none lost:\n%s", res.Sent, res.Received, res.Output)
	}
	if bad := disruptions(stopWatch(t, kernel)); len(bad) > 0 {
		t.Errorf("%d disruptive kernel changes while h2's agent was dead:%s", len(bad), eventLines(bad))
	}

	mustVxfab(t, "lab", "agent", "start", "h2")
	if _, err := lab.WaitFor(f.ctx, 10*time.Second, func() (bool, error) {
		return status() == vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, nil
	}); err != nil {
		t.Fatalf("h2 not ALIVE after its agent started again (status %s)", status())
	}
	f.reach("dead-b", a.IP(0), 2*time.Second)
}

// TestPrivilegedNodeDelete decommissions h3: refused while its agent runs (the CLI prints one line
// and exits non-zero) and while a port is bound to it; once its agent has left, the node is
// forgotten and stays forgotten; when the agent starts again, the host is recorded anew and its
// ports work.
func TestPrivilegedNodeDelete(t *testing.T) {
	f := newFixture(t, "e2e-decom")
	f.network("net", "10.57.0.0/24", isolated)
	f.vm("decom-a", "h1", "net")
	f.vm("decom-c", "h3", "net")
	del := func() error {
		_, err := f.c.Nodes.DeleteNode(f.ctx, &vxfabricv1.DeleteNodeRequest{Name: "h3"})
		return err
	}

	ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Getenv("VXFAB_BIN"), "node", "delete", "h3")
	cmd.Env = append(os.Environ(), "VXFAB_PROFILE="+f.l.ProfilePath())
	out, err := cmd.CombinedOutput()
	line := strings.TrimSpace(string(out))
	if err == nil || strings.Count(line, "\n") != 0 || !strings.Contains(line, "FailedPrecondition") || !strings.Contains(line, "h3 is ALIVE") {
		t.Errorf("vxfab node delete h3 while its agent runs: %v, %q; want a non-zero exit and one FailedPrecondition line", err, line)
	}

	restoreOnCleanup(t, "agent", "start", "h3")
	mustVxfab(t, "lab", "agent", "stop", "h3")
	f.waitNode("h3", vxfabricv1.NodeStatus_NODE_STATUS_LEFT, 10*time.Second, "agent stopped")
	if err := del(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "e2e-decom/") {
		t.Errorf("delete of h3 holding a port: %v, want FailedPrecondition naming the port", err)
	}
	f.deleteVM("decom-c")
	if err := del(); err != nil {
		t.Fatalf("delete of h3, left and holding nothing: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // gossip still remembers h3: it must not come back by itself
	if _, err := f.c.Nodes.GetNode(f.ctx, &vxfabricv1.GetNodeRequest{Name: "h3"}); status.Code(err) != codes.NotFound {
		t.Errorf("h3 after its delete: %v, want NotFound", err)
	}
	if err := del(); status.Code(err) != codes.NotFound {
		t.Errorf("second delete of h3: %v, want NotFound", err)
	}

	mustVxfab(t, "lab", "agent", "start", "h3")
	f.waitNode("h3", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 10*time.Second, "recorded again once its agent started")
	c := f.vm("decom-d", "h3", "net")
	f.reach("decom-a", c.IP(0), 5*time.Second)
}

// TestPrivilegedMigrationMovesTheOutsideRoute: a VM alone in a routed network on h3 is reached from
// the outside through the static route its creation set, to h3; it migrates to h2: the route
// follows, and the outside reaches the VM there; migrated back, the route comes back. Then a
// migration the fabric refuses for one NIC of a VM leaves the VM as it was, and deleting VMs moves
// the route to a host that still has a port of the network, or removes it with the last one.
func TestPrivilegedMigrationMovesTheOutsideRoute(t *testing.T) {
	f := newFixture(t, "e2e-rtmig")
	f.network("rt", "10.62.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED)
	vm := f.vm("rtm-a", "h3", "rt")
	cidr := netip.MustParsePrefix("10.62.0.0/24")
	if via, ok, err := f.l.RouteVia(lab.RoleOutside, cidr); err != nil || !ok || via != lab.HostAddr(3) {
		t.Fatalf("after the VM's creation on h3 the outside's route goes via %s (%t, %v), want %s", via, ok, err, lab.HostAddr(3))
	}
	f.reach(lab.RoleOutside, vm.IP(0), 5*time.Second)
	for _, step := range []struct {
		host string
		i    int
	}{{"h2", 2}, {"h3", 3}} {
		if _, err := f.l.MigrateVM(f.ctx, vm.Name, step.host); err != nil {
			t.Fatal(err)
		}
		if via, ok, err := f.l.RouteVia(lab.RoleOutside, cidr); err != nil || !ok || via != lab.HostAddr(step.i) {
			t.Fatalf("after the migration to %s the outside's route goes via %s (%t, %v), want %s", step.host, via, ok, err, lab.HostAddr(step.i))
		}
		f.reach(lab.RoleOutside, vm.IP(0), 5*time.Second)
	}

	// rtm-b on h3 has a NIC on an isolated network, then one on rt; h1 hosts a routed network that
	// overlaps rt, so the fabric refuses rt's port on h1 after the first NIC has moved.
	f.network("iso", "10.63.0.0/24", isolated)
	f.network("wide", "10.62.0.0/16", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED)
	f.vm("rtm-c", "h1", "wide")
	b := f.vm("rtm-b", "h3", "iso", "rt")
	_, err := f.l.MigrateVM(f.ctx, b.Name, "h1")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "stays where it was") {
		t.Fatalf("migrating rtm-b to h1: %v; want FailedPrecondition, the VM staying where it was", err)
	}
	h3, err := f.l.Handle("h3")
	if err != nil {
		t.Fatal(err)
	}
	defer h3.Close()
	for _, p := range b.Ports {
		got, err := f.c.Ports.GetPort(f.ctx, &vxfabricv1.GetPortRequest{Tenant: p.GetTenant(), Name: p.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetPort().GetNode() != "h3" || !got.GetPort().GetPlugged() {
			t.Errorf("after the refused migration port %s is on %s, plugged %t; want h3, plugged", p.GetName(), got.GetPort().GetNode(), got.GetPort().GetPlugged())
		}
		if _, err := h3.LinkByName(p.GetInterfaceName()); err != nil {
			t.Errorf("after the refused migration the NIC of port %s is not on h3: %v", p.GetName(), err)
		}
	}
	f.reach(vm.Name, b.IP(1), 5*time.Second)

	// Deleting the VM the route goes through moves the route to a host with a port of rt left (rtm-b,
	// on h3 too: the route stays), then, with rtm-b gone, to rtm-d's h2; the network's last VM takes
	// the route with it.
	d := f.vm("rtm-d", "h2", "rt")
	for _, step := range []struct {
		vm  string
		via netip.Addr
	}{{vm.Name, lab.HostAddr(3)}, {b.Name, lab.HostAddr(2)}} {
		f.deleteVM(step.vm)
		if via, ok, err := f.l.RouteVia(lab.RoleOutside, cidr); err != nil || !ok || via != step.via {
			t.Fatalf("after deleting %s the outside's route goes via %s (%t, %v), want %s", step.vm, via, ok, err, step.via)
		}
	}
	f.reach(lab.RoleOutside, d.IP(0), 5*time.Second)

	// A port made through the API, not by the lab, counts as well: with rtm-d gone the route moves
	// to its h3; deleted through the API, it takes the route with it at the next lab status.
	if _, err := f.c.Ports.CreatePort(f.ctx, &vxfabricv1.CreatePortRequest{Tenant: f.tenant, Network: "rt", Name: "api-port", Node: "h3"}); err != nil {
		t.Fatal(err)
	}
	f.deleteVM(d.Name)
	if via, ok, err := f.l.RouteVia(lab.RoleOutside, cidr); err != nil || !ok || via != lab.HostAddr(3) {
		t.Fatalf("after deleting rt's last VM, with a port made through the API on h3, the outside's route goes via %s (%t, %v), want %s", via, ok, err, lab.HostAddr(3))
	}
	if _, err := f.c.Ports.DeletePort(f.ctx, &vxfabricv1.DeletePortRequest{Tenant: f.tenant, Name: "api-port"}); err != nil {
		t.Fatal(err)
	}
	if st := f.l.Status(f.ctx); len(st.Errors) > 0 {
		t.Fatalf("lab status: %v", st.Errors)
	}
	if via, ok, err := f.l.RouteVia(lab.RoleOutside, cidr); err != nil || ok {
		t.Errorf("after rt's last port was deleted through the API and a lab status, the outside still routes it via %s (%v)", via, err)
	}
}
