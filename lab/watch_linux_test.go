package lab

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestParseTCPListeners(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 020012C6:1CE8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 020012C6:1CE8 0B0012C6:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
`
	got, err := parseTCPListeners(table)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:40001"), netip.MustParseAddrPort("198.18.0.2:7400")}
	if !slices.Equal(got, want) {
		t.Fatalf("parseTCPListeners = %v, want %v (an established socket is no listener)", got, want)
	}
}

// TestPrivilegedWatchKernel checks the kernel watch against changes made from outside it: a link
// created, set down and deleted, and an FDB entry of a vxlan device added and deleted. It also
// finds a TCP listener of a namespace.
func TestPrivilegedWatchKernel(t *testing.T) {
	privileged(t)
	ctx := context.Background()
	l := topologyLab(t, 1)
	w, err := l.WatchKernel("h1")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	h, err := l.Handle("h1")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxlan77"}, VxlanId: 77, Port: 4789,
		SrcAddr: net.IP(HostAddr(1).AsSlice()), Learning: false}
	if err := h.LinkAdd(vx); err != nil {
		t.Fatal(err)
	}
	link, err := h.LinkByName("vxlan77")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	fdb := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, HardwareAddr: net.HardwareAddr{0, 0, 0, 0, 0, 0}, IP: net.IP(HostAddr(2).AsSlice())}
	if err := h.NeighAppend(fdb); err != nil {
		t.Fatal(err)
	}
	if err := h.NeighDel(fdb); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	want := []string{"link new down", "link new up", "fdb new", "fdb del", "link new down", "link del"}
	seen := func() []string {
		var got []string
		for _, e := range w.Events() {
			if e.Device != "vxlan77" {
				continue
			}
			switch {
			case e.Link && e.Deleted:
				got = append(got, "link del")
			case e.Link && e.Up:
				got = append(got, "link new up")
			case e.Link:
				got = append(got, "link new down")
			case e.Family == unix.AF_BRIDGE && e.IP == HostAddr(2):
				if e.Deleted {
					got = append(got, "fdb del")
				} else {
					got = append(got, "fdb new")
				}
			}
		}
		return slices.Compact(got) // the kernel may announce one change in several messages
	}
	if _, err := WaitFor(ctx, 2*time.Second, func() (bool, error) { return slices.Equal(seen(), want), nil }); err != nil {
		t.Errorf("events of vxlan77: %v, want %v", seen(), want)
	}
	if _, err := w.Stop(); err != nil {
		t.Errorf("watch: %v", err)
	}

	ln, err := l.ListenTCP(RoleOutside, netip.AddrPortFrom(OutsideAddr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	listeners, err := l.TCPListeners(RoleOutside)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(listeners, ln.Addr()) {
		t.Errorf("TCP listeners of outside: %v, want %s among them", listeners, ln.Addr())
	}
}
