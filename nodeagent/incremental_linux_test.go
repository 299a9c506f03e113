package nodeagent

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"pgregory.net/rapid"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/linux"
)

// TestPrivilegedIncrementalMatchesFullPass is TestIncrementalMatchesFullPass on the real kernel, in a
// namespace of its own: after every pass of a random sequence of deltas, a full Apply of the whole
// desired state, which reads the kernel back, changes nothing.
func TestPrivilegedIncrementalMatchesFullPass(t *testing.T) {
	if os.Geteuid() != 0 || os.Getenv("VXFAB_SKIP_PRIVILEGED") != "" {
		t.Skip("needs root (and VXFAB_SKIP_PRIVILEGED unset)")
	}
	name := fmt.Sprintf("vxt-inc-%d", os.Getpid())
	ns := newNamespace(t, name)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, 0, 1), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	dp, err := linux.New(linux.Config{NetNS: "/var/run/netns/" + name, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	rapid.Check(t, func(rt *rapid.T) {
		incrementalProperty(t, rt, dp, func(want overlay.DesiredState) (overlay.Result, error) {
			return dp.Apply(context.Background(), want)
		})
	})
}
