//go:build linux

package linux_test

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
	"github.com/vxfabric/vxfabric/overlay/linux/linuxbench"
)

func benchEnv(b *testing.B) *linuxbench.Env {
	b.Helper()
	nstest.SkipUnlessPrivileged(b)
	e, err := linuxbench.NewEnv(linuxbench.Default())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := e.Close(); err != nil {
			b.Error(err)
		}
	})
	return e
}

// BenchmarkPrivilegedProgram10k: 10,000 remote ports written into an existing network, one Apply.
func BenchmarkPrivilegedProgram10k(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		if _, _, err := e.Apply(ctx, e.Empty); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, n, err := e.Apply(ctx, e.Full); err != nil || n == 0 {
			b.Fatalf("apply: %d changes, err %v", n, err)
		}
	}
}

// BenchmarkPrivilegedNoop10k: an Apply over 10,000 remote ports that are all in place.
func BenchmarkPrivilegedNoop10k(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	if _, _, err := e.Apply(ctx, e.Full); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, n, err := e.Apply(ctx, e.Full); err != nil || n != 0 {
			b.Fatalf("no-op apply: %d changes, err %v", n, err)
		}
	}
}

// BenchmarkPrivilegedRepair10k: an Apply that restores one FDB entry deleted by hand among 10,000.
func BenchmarkPrivilegedRepair10k(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	if _, _, err := e.Apply(ctx, e.Full); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		b.StopTimer()
		if err := e.DeleteOneFDB(i); err != nil {
			b.Fatal(err)
		}
		i++
		b.StartTimer()
		if _, n, err := e.Apply(ctx, e.Full); err != nil || n != 1 {
			b.Fatalf("repair apply: %d changes, err %v", n, err)
		}
	}
}

// BenchmarkPrivilegedDeltaOneRemote10k: one remote port added (FDB and neighbour entry) and the
// previous one removed through ApplyDelta, in a network of 10,000: what the agent writes per change.
func BenchmarkPrivilegedDeltaOneRemote10k(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	if _, _, err := e.Apply(ctx, e.Full); err != nil {
		b.Fatal(err)
	}
	vtep := e.Full.Networks[0].Flood[0]
	port := func(i int) (overlay.FDBEntry, overlay.NeighEntry) {
		mac := net.HardwareAddr{0x0e, 0x43, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		return overlay.FDBEntry{MAC: mac, VTEP: vtep}, overlay.NeighEntry{IP: netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), MAC: mac}
	}
	for i := 0; b.Loop(); i++ {
		f, n := port(i)
		d := overlay.NetworkDelta{VNI: linuxbench.VNI, SetFDB: []overlay.FDBEntry{f}, SetNeigh: []overlay.NeighEntry{n}}
		if i > 0 {
			pf, pn := port(i - 1)
			d.DelFDB, d.DelNeigh = []overlay.FDBEntry{pf}, []overlay.NeighEntry{pn}
		}
		res, err := e.DP.ApplyDelta(ctx, overlay.Delta{Networks: []overlay.NetworkDelta{d}})
		if want := 2 + len(d.DelFDB) + len(d.DelNeigh); err != nil || len(res.Changes) != want {
			b.Fatalf("delta: %d changes (want %d), err %v", len(res.Changes), want, err)
		}
	}
}

// TestPrivilegedBenchmarkHarness runs the harness entry point once at a small size, so that
// `make bench` cannot rot unnoticed.
func TestPrivilegedBenchmarkHarness(t *testing.T) {
	nstest.SkipUnlessPrivileged(t)
	res, err := linuxbench.Run(context.Background(), linuxbench.Options{Remotes: 500, VTEPs: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.Program <= 0 || res.Noop <= 0 || res.Repair <= 0 {
		t.Errorf("durations not measured: %+v", res)
	}
}
