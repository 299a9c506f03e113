//go:build linux

package linux

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/fake"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
)

// TestPrivilegedDeltaMatchesFakeAndFullApply writes deltas (entries added, moved, removed; flood
// entries in and out; a proxy and a non-proxy network) to the kernel and to the fake: both report the
// same changes, and a full Apply of the state the deltas describe then changes nothing in either, as
// read back from the kernel. The same delta written twice is harmless, and a delta for a network the
// kernel does not hold is refused before anything is written.
func TestPrivilegedDeltaMatchesFakeAndFullApply(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	_, dp := hostNS(t, "dlt")
	fk := fake.New()
	ctx := context.Background()

	ip := netip.MustParseAddr
	port := func(mac string, addr, vtep string) overlay.RemotePort {
		return overlay.RemotePort{MAC: mustMAC(mac), IP: ip(addr), VTEP: ip(vtep)}
	}
	r1, r2, r3 := port("0e:00:00:00:21:01", "10.21.0.1", "198.18.0.2"), port("0e:00:00:00:21:02", "10.21.0.2", "198.18.0.3"), port("0e:00:00:00:22:03", "10.22.0.3", "198.18.0.2")
	r1moved, r4 := port("0e:00:00:00:21:01", "10.21.0.1", "198.18.0.3"), port("0e:00:00:00:21:04", "10.21.0.4", "198.18.0.3")
	base := overlay.DesiredState{
		Underlay: overlay.Underlay{VTEP: ip("198.18.0.1")},
		Networks: []overlay.Network{
			{VNI: 21, Mode: overlay.ModeIsolated, MTU: 1450, Remotes: []overlay.RemotePort{r1, r2}, Flood: []netip.Addr{ip("198.18.0.2"), ip("198.18.0.3")}},
			{VNI: 22, Mode: overlay.ModeBridged, MTU: 1450, Remotes: []overlay.RemotePort{r3}, Flood: []netip.Addr{ip("198.18.0.2")}},
		},
	}
	after := base
	after.Networks = []overlay.Network{
		{VNI: 21, Mode: overlay.ModeIsolated, MTU: 1450, Remotes: []overlay.RemotePort{r1moved, r4}, Flood: []netip.Addr{ip("198.18.0.2"), ip("198.18.0.3")}},
		{VNI: 22, Mode: overlay.ModeBridged, MTU: 1450, Flood: []netip.Addr{ip("198.18.0.3")}},
	}
	delta := overlay.Delta{Networks: []overlay.NetworkDelta{
		{VNI: 21,
			SetFDB:   []overlay.FDBEntry{{MAC: r1moved.MAC, VTEP: r1moved.VTEP}, {MAC: r4.MAC, VTEP: r4.VTEP}},
			SetNeigh: []overlay.NeighEntry{{IP: r4.IP, MAC: r4.MAC}},
			DelFDB:   []overlay.FDBEntry{{MAC: r2.MAC, VTEP: r2.VTEP}},
			DelNeigh: []overlay.NeighEntry{{IP: r2.IP, MAC: r2.MAC}}},
		{VNI: 22,
			AddFlood: []netip.Addr{ip("198.18.0.3")},
			DelFDB:   []overlay.FDBEntry{{MAC: r3.MAC, VTEP: r3.VTEP}},
			DelFlood: []netip.Addr{ip("198.18.0.2")}},
	}}

	both := func(step string, kr, fr overlay.Result, kerr, ferr error) {
		t.Helper()
		if kerr != nil || ferr != nil {
			t.Fatalf("%s: kernel err %v, fake err %v", step, kerr, ferr)
		}
		if k, f := sortedChanges(kr), sortedChanges(fr); k != f {
			t.Errorf("%s: kernel and fake differ\n--- kernel\n%s--- fake\n%s", step, k, f)
		}
	}
	apply := func(step string, s overlay.DesiredState, wantChanges bool) {
		t.Helper()
		kr, kerr := dp.Apply(ctx, s)
		fr, ferr := fk.Apply(ctx, s)
		both(step, kr, fr, kerr, ferr)
		if !wantChanges && len(kr.Changes) > 0 {
			t.Errorf("%s: the kernel still needed %v", step, kr.Changes)
		}
	}
	apply("base", base, true)

	kr, kerr := dp.ApplyDelta(ctx, delta)
	fr, ferr := fk.ApplyDelta(ctx, delta)
	both("delta", kr, fr, kerr, ferr)
	if len(kr.Changes) != 8 {
		t.Errorf("delta wrote %d objects, want 8: %v", len(kr.Changes), kr.Changes)
	}
	apply("full apply after the delta", after, false)

	kr, kerr = dp.ApplyDelta(ctx, delta)
	fr, ferr = fk.ApplyDelta(ctx, delta)
	both("the same delta again", kr, fr, kerr, ferr)
	apply("full apply after the delta twice", after, false)

	missing := overlay.Delta{Networks: []overlay.NetworkDelta{{VNI: 21, SetFDB: []overlay.FDBEntry{{MAC: r2.MAC, VTEP: r2.VTEP}}}, {VNI: 99}}}
	if _, err := dp.ApplyDelta(ctx, missing); !errors.Is(err, overlay.ErrNotProgrammed) {
		t.Errorf("kernel: delta for a network it does not hold: err %v, want ErrNotProgrammed", err)
	}
	if _, err := fk.ApplyDelta(ctx, missing); !errors.Is(err, overlay.ErrNotProgrammed) {
		t.Errorf("fake: delta for a network it does not hold: err %v, want ErrNotProgrammed", err)
	}
	apply("nothing written by a refused delta", after, false)
}
