//go:build linux

package linux

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
)

// A host with many networks and many ports converges in one Apply, and leaves them all in one: the
// rules and set elements go to the kernel in batches that its netlink socket takes (a batch of a
// few hundred rules overflowed it, and 50 ports on one host could not be programmed).
func TestPrivilegedManyNetworksAndPorts(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	ns := nstest.New(t, "many")
	ns.MustRun(t, "ip", "addr", "add", "198.18.0.1/32", "dev", "lo")
	dp, err := New(Config{NetNS: ns.Path(), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ip := netip.MustParseAddr
	port := func(i int) overlay.LocalPort {
		mac, _ := net.ParseMAC(fmt.Sprintf("0e:00:00:00:%02x:%02x", i>>8, i&0xff))
		return overlay.LocalPort{Interface: fmt.Sprintf("tap%d", i), MAC: mac, IP: netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i&0xff + 1)})}
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
	}
	rules := ns.MustRun(t, "nft", "list", "table", "bridge", overlay.TableName)
	if !strings.Contains(rules, `elements = { "tap1" . 0e:00:00:00:00:01 }`) || strings.Contains(rules, "tap599") {
		t.Errorf("port sets after shrinking to one port:\n%s", rules)
	}
}
