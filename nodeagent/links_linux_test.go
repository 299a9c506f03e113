package nodeagent

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNamespace creates a named namespace without leaving the calling thread in it.
func newNamespace(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the original namespace: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		_ = netns.DeleteNamed(name)
	})
	return ns
}

func TestPrivilegedNetlinkLinksSeesInterfaces(t *testing.T) {
	if os.Geteuid() != 0 || os.Getenv("VXFAB_SKIP_PRIVILEGED") != "" {
		t.Skip("needs root (and VXFAB_SKIP_PRIVILEGED unset)")
	}
	ns := newNamespace(t, fmt.Sprintf("vxt-links-%d", os.Getpid()))
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	changed := make(chan string, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	w := NetlinkLinks{Namespace: &ns, Logger: testLogger()}
	resyncs := make(chan struct{}, 64)
	resync := func() {
		select {
		case resyncs <- struct{}{}:
		default:
		}
	}
	go func() { done <- w.Run(ctx, func(n string) { changed <- n }, resync) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("link watch: %v", err)
		}
	}()
	expect := func(name string) time.Duration {
		t.Helper()
		start := time.Now()
		timeout := time.After(2 * time.Second)
		for {
			select {
			case n := <-changed:
				if n == name {
					return time.Since(start)
				}
			case <-timeout:
				t.Fatalf("no link event for %s", name)
			}
		}
	}
	expect("lo") // listed at subscription

	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tapw1"}, PeerName: "tapw1p"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("interface created -> event in %s", expect("tapw1"))
	link, err := h.LinkByName("tapw1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetName(link, "tapw2"); err != nil {
		t.Fatal(err)
	}
	expect("tapw1") // renamed away
	expect("tapw2")
	// An attribute change that does not matter (here: the MTU) is not reported...
	if err := h.LinkSetMTU(link, 1400); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-changed:
		t.Fatalf("link event for %s after an MTU change", n)
	case <-time.After(100 * time.Millisecond):
	}
	// ...going up or down, or another master, is.
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	expect("tapw2")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vxbr7"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	expect("vxbr7")
	if err := h.LinkSetMaster(link, br); err != nil {
		t.Fatal(err)
	}
	expect("tapw2")
	if err := h.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	expect("tapw2")

	// An FDB entry taken from a vxlan device of ours is reported as that device.
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxlan7"}, VxlanId: 7, Port: 4789}
	if err := h.LinkAdd(vx); err != nil {
		t.Fatal(err)
	}
	expect("vxlan7")
	vxl, err := h.LinkByName("vxlan7")
	if err != nil {
		t.Fatal(err)
	}
	entry := &netlink.Neigh{LinkIndex: vxl.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: net.ParseIP("198.18.0.2"), HardwareAddr: net.HardwareAddr{0x0e, 0, 0, 0, 0, 2}}
	if err := h.NeighAppend(entry); err != nil {
		t.Fatal(err)
	}
	if err := h.NeighDel(entry); err != nil {
		t.Fatal(err)
	}
	t.Logf("FDB entry deleted -> event in %s", expect("vxlan7"))

	// An entry the bridge learned on the vxlan port ages out all the time: not drift.
	if err := h.LinkSetMaster(vxl, br); err != nil {
		t.Fatal(err)
	}
	expect("vxlan7")
	for _, l := range []netlink.Link{br, vxl} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	expect("vxlan7")
	learned := &netlink.Neigh{LinkIndex: vxl.Attrs().Index, MasterIndex: br.Attrs().Index, Family: unix.AF_BRIDGE,
		State: netlink.NUD_REACHABLE, Flags: netlink.NTF_MASTER, HardwareAddr: net.HardwareAddr{0x0e, 0, 0, 0, 0, 3}}
	if err := h.NeighAppend(learned); err != nil {
		t.Fatal(err)
	}
	if err := h.NeighDel(learned); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-changed:
		t.Fatalf("event for %s after a learned entry went", n)
	case <-time.After(200 * time.Millisecond):
	}

	// An IPv4 address that comes on an interface not of ours (the VTEP, at last) asks for a full
	// pass; one on our bridge (a gateway we set) does not.
	for len(resyncs) > 0 {
		<-resyncs
	}
	addr := func(l netlink.Link, cidr string) {
		t.Helper()
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
	}
	addr(br, "10.20.0.1/24")
	select {
	case <-resyncs:
		t.Fatal("resync after an address on our bridge")
	case <-time.After(200 * time.Millisecond):
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	addr(lo, "198.18.0.9/32")
	select {
	case <-resyncs:
		t.Logf("address added -> resync in %s", time.Since(start))
	case <-time.After(2 * time.Second):
		t.Fatal("no resync after an IPv4 address came on lo")
	}
	// A new lifetime for the same address (a DHCP renewal) is no news.
	renewed, err := netlink.ParseAddr("198.18.0.9/32")
	if err != nil {
		t.Fatal(err)
	}
	renewed.ValidLft, renewed.PreferedLft = 3600, 3600
	if err := h.AddrReplace(lo, renewed); err != nil {
		t.Fatal(err)
	}
	select {
	case <-resyncs:
		t.Fatal("resync after an address's lifetime was renewed")
	case <-time.After(1500 * time.Millisecond):
	}
	start = time.Now()
	if err := h.AddrDel(lo, renewed); err != nil {
		t.Fatal(err)
	}
	select {
	case <-resyncs:
		t.Logf("address removed -> resync in %s", time.Since(start))
	case <-time.After(2 * time.Second):
		t.Fatal("no resync after an IPv4 address went from lo")
	}
}
