package nodeagent

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
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
	go func() { done <- w.Run(ctx, func(n string) { changed <- n }, func() {}) }()
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
	// An attribute change alone (here: up, and the peer's carrier) is not an appearance.
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-changed:
		t.Fatalf("link event for %s after an attribute change", n)
	case <-time.After(100 * time.Millisecond):
	}
	if err := h.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	expect("tapw2")
}
