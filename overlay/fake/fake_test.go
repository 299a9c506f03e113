package fake

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/vxfabric/vxfabric/overlay"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// sample has one network of every mode, ports (one missing), remotes and flood lists.
func sample() overlay.DesiredState {
	return overlay.DesiredState{
		Underlay: overlay.Underlay{VTEP: ip("198.18.0.1"), Interface: "eth0"},
		Networks: []overlay.Network{
			{VNI: 100, Mode: overlay.ModeIsolated, MTU: 1450,
				Ports: []overlay.LocalPort{{Interface: "tap-a", MAC: mac("0e:00:00:00:01:01"), IP: ip("10.1.0.2")}},
				Remotes: []overlay.RemotePort{
					{MAC: mac("0e:00:00:00:01:03"), IP: ip("10.1.0.3"), VTEP: ip("198.18.0.3")},
					{MAC: mac("0e:00:00:00:01:02"), IP: ip("10.1.0.4"), VTEP: ip("198.18.0.2")},
				},
				Flood: []netip.Addr{ip("198.18.0.3"), ip("198.18.0.2")}},
			{VNI: 200, Mode: overlay.ModeNAT, MTU: 1400, CIDR: netip.MustParsePrefix("10.2.0.0/24"),
				Gateway: ip("10.2.0.1"), GatewayMAC: mac("02:00:00:00:02:01"),
				Ports: []overlay.LocalPort{
					{Interface: "tap-b", MAC: mac("0e:00:00:00:02:02"), IP: ip("10.2.0.2")},
					{Interface: "tap-missing", MAC: mac("0e:00:00:00:02:09"), IP: ip("10.2.0.9")},
				},
				Remotes: []overlay.RemotePort{{MAC: mac("0e:00:00:00:02:03"), IP: ip("10.2.0.3"), VTEP: ip("198.18.0.2")}},
				Flood:   []netip.Addr{ip("198.18.0.2")}},
			{VNI: 300, Mode: overlay.ModeRouted, MTU: 1450, CIDR: netip.MustParsePrefix("10.3.0.0/24"),
				Gateway: ip("10.3.0.1"), GatewayMAC: mac("02:00:00:00:03:01")},
			{VNI: 400, Mode: overlay.ModeBridged, MTU: 1450, Uplink: "eth1",
				Remotes: []overlay.RemotePort{{MAC: mac("0e:00:00:00:04:03"), IP: ip("192.168.1.3"), VTEP: ip("198.18.0.3")}},
				Flood:   []netip.Addr{ip("198.18.0.3")}},
		},
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func changes(r overlay.Result) string {
	var b strings.Builder
	for _, c := range r.Changes {
		b.WriteString(c.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func TestGoldenFullState(t *testing.T) {
	d := New()
	for _, l := range []string{"tap-a", "tap-b", "eth1"} {
		d.SetLink(l, true)
	}
	res, err := d.Apply(context.Background(), sample())
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "full-state", d.Dump())
	golden(t, "full-changes", changes(res))
	wantPlugged := map[string]bool{"tap-a": true, "tap-b": true}
	if fmt.Sprint(res.Plugged) != fmt.Sprint(wantPlugged) {
		t.Errorf("plugged = %v, want %v (a missing interface is not an error)", res.Plugged, wantPlugged)
	}

	res, err = d.Apply(context.Background(), sample())
	if err != nil || len(res.Changes) != 0 {
		t.Fatalf("second Apply: %d changes (%s), err %v; want none", len(res.Changes), changes(res), err)
	}
}

func TestMissingUplinkIsReportedAndRestConverges(t *testing.T) {
	d := New()
	res, err := d.Apply(context.Background(), sample())
	if !errors.Is(err, overlay.ErrUplinkMissing) {
		t.Fatalf("err = %v, want ErrUplinkMissing", err)
	}
	if len(res.Errors) != 1 || res.Errors[0].Object != overlay.UplinkObject(400, "eth1") {
		t.Fatalf("errors = %v, want one for the uplink", res.Errors)
	}
	if !strings.Contains(d.Dump(), "fdb vxlan200 0e:00:00:00:02:03 dst 198.18.0.2") {
		t.Error("other networks did not converge")
	}
	// With the uplink the host holds the LAN: its bridge is filtered as the uplink host's, no
	// longer as another host's (overlay.DesiredState.WithoutUplinks).
	d.SetLink("eth1", true)
	res, err = d.Apply(context.Background(), sample())
	want := strings.Join([]string{
		"add nft rule inet vxfabric input iifname 'vxbr400' ip daddr @infra4 counter drop",
		"add nft rule inet vxfabric forward iifname 'vxbr400' oifname 'eth0' counter drop",
		"add nft rule inet vxfabric forward iifname 'eth0' oifname 'vxbr400' counter drop",
		"update bridge vxbr400",
		"add " + overlay.UplinkObject(400, "eth1"),
		"delete nft rule inet vxfabric forward iifname 'vxbr400' oifname != 'vxbr400' counter drop",
		"delete nft rule inet vxfabric forward oifname 'vxbr400' iifname != 'vxbr400' counter drop",
		"delete nft rule inet vxfabric input iifname 'vxbr400' counter drop",
	}, "\n") + "\n"
	if err != nil || changes(res) != want {
		t.Fatalf("after the uplink appeared: changes %q, err %v; want %q", changes(res), err, want)
	}
}

// TestUplinkRefused mirrors the Linux datapath's rule (overlay.UplinkRefusal): no loopback, no
// underlay, and one network per uplink, the one holding it keeping it.
func TestUplinkRefused(t *testing.T) {
	d := New()
	for _, l := range []string{"lo", "ul0", "lan0"} {
		d.SetLink(l, true)
	}
	bridged := func(vni uint32, uplink string) overlay.Network {
		return overlay.Network{VNI: vni, Mode: overlay.ModeBridged, MTU: 1450, Uplink: uplink}
	}
	state := func(nets ...overlay.Network) overlay.DesiredState {
		return overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1"), Interface: "ul0"}, Networks: nets}
	}
	res, err := d.Apply(context.Background(), state(bridged(10, "ul0"), bridged(11, "lo"), bridged(13, "lan0"), bridged(12, "lan0")))
	if !errors.Is(err, overlay.ErrUplinkRefused) {
		t.Fatalf("err = %v, want ErrUplinkRefused", err)
	}
	var got []string
	for _, e := range res.Errors {
		got = append(got, e.Error())
	}
	want := `uplink ul0 master vxbr10: "ul0" carries the underlay: uplink refused
uplink lo master vxbr11: "lo" is a loopback interface: uplink refused
uplink lan0 master vxbr13: "lan0" is the uplink of network vni 12: uplink refused`
	if strings.Join(got, "\n") != want {
		t.Errorf("errors:\n%s\nwant\n%s", strings.Join(got, "\n"), want)
	}
	if dump := d.Dump(); !strings.Contains(dump, overlay.UplinkObject(12, "lan0")) || strings.Contains(dump, overlay.UplinkObject(13, "lan0")) {
		t.Errorf("lan0 must be 12's only:\n%s", dump)
	}
	// 13 was created first now, yet 12 holds lan0 and keeps it.
	if _, err := d.Apply(context.Background(), state(bridged(13, "lan0"), bridged(12, "lan0"))); !errors.Is(err, overlay.ErrUplinkRefused) {
		t.Fatalf("err = %v, want ErrUplinkRefused", err)
	}
	res, err = d.Apply(context.Background(), state(bridged(13, "lan0")))
	if err != nil || !strings.Contains(changes(res), "add "+overlay.UplinkObject(13, "lan0")) {
		t.Errorf("12 gone: 13 must take lan0; changes %q, err %v", changes(res), err)
	}
}

func TestPortPluggedWhenItAppears(t *testing.T) {
	d := New()
	d.SetLink("eth1", true)
	if _, err := d.Apply(context.Background(), sample()); err != nil {
		t.Fatal(err)
	}
	d.SetLink("tap-missing", true)
	res, err := d.Apply(context.Background(), sample())
	if err != nil {
		t.Fatal(err)
	}
	// Its port security first, then the port.
	got := changes(res)
	if !strings.HasPrefix(got, "add "+overlay.ChainObject("netdev", overlay.PortChain("tap-missing"))+"\n") ||
		!strings.HasSuffix(got, "\nadd port tap-missing master vxbr200\n") ||
		!strings.Contains(got, "add "+overlay.RuleObject("netdev", overlay.PortChain("tap-missing"), "ether type ip ip saddr != 10.2.0.9 counter jump port_drop")+"\n") {
		t.Fatalf("changes = %q", got)
	}
	if !res.Plugged["tap-missing"] {
		t.Error("tap-missing not reported plugged")
	}
	d.SetLink("tap-missing", false)
	if strings.Contains(d.Dump(), "port tap-missing") {
		t.Error("a vanished interface is still on the bridge")
	}
}

func TestAdoptionChangesNothing(t *testing.T) {
	d := New()
	for _, l := range []string{"tap-a", "tap-b", "eth1"} {
		d.SetLink(l, true)
	}
	if _, err := d.Apply(context.Background(), sample()); err != nil {
		t.Fatal(err)
	}
	before := d.Dump()
	d2 := d.Reopen()
	res, err := d2.Apply(context.Background(), sample())
	if err != nil || len(res.Changes) != 0 {
		t.Fatalf("restart Apply: changes %q, err %v", changes(res), err)
	}
	if d2.Dump() != before {
		t.Error("state differs after adoption")
	}
}

func TestDriftRepaired(t *testing.T) {
	d := New()
	d.SetLink("eth1", true)
	if _, err := d.Apply(context.Background(), sample()); err != nil {
		t.Fatal(err)
	}
	before := d.Dump()
	d.DeleteFDB(100, mac("0e:00:00:00:01:02"))
	res, err := d.Apply(context.Background(), sample())
	if err != nil || changes(res) != "add fdb vxlan100 0e:00:00:00:01:02 dst 198.18.0.2\n" {
		t.Fatalf("repair: changes %q, err %v", changes(res), err)
	}
	d.DeleteDevice("vxlan200")
	res, err = d.Apply(context.Background(), sample())
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "repair-vxlan-changes", changes(res))
	if d.Dump() != before {
		t.Errorf("after repair:\n%s\nwant\n%s", d.Dump(), before)
	}
}

// TestTransitionsEqualFreshApply checks that converging from any earlier state ends in the state a
// fresh host reaches directly: networks removed with everything of theirs, rules in plan order.
func TestTransitionsEqualFreshApply(t *testing.T) {
	full := sample()
	variants := map[string]overlay.DesiredState{
		"empty":    {Underlay: full.Underlay},
		"no-nat":   withNetworks(full, 100, 300, 400),
		"only-nat": withNetworks(full, 200),
		"reversed": withNetworks(full, 400, 300, 200, 100),
		"no-portsecurity": func() overlay.DesiredState {
			s := full
			s.DisablePortSecurity = true
			return s
		}(),
	}
	for name, v := range variants {
		t.Run(name, func(t *testing.T) {
			d := New()
			d.SetLink("eth1", true)
			if _, err := d.Apply(context.Background(), full); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Apply(context.Background(), v); err != nil {
				t.Fatal(err)
			}
			fresh := New()
			fresh.SetLink("eth1", true)
			if _, err := fresh.Apply(context.Background(), v); err != nil {
				t.Fatal(err)
			}
			if d.Dump() != fresh.Dump() {
				t.Errorf("after transition:\n%s\nfresh:\n%s", d.Dump(), fresh.Dump())
			}
		})
	}
	d := New()
	d.SetLink("eth1", true)
	if _, err := d.Apply(context.Background(), full); err != nil {
		t.Fatal(err)
	}
	res, err := d.Apply(context.Background(), withNetworks(full, 100, 300, 400))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "remove-nat-changes", changes(res))
}

func withNetworks(s overlay.DesiredState, vnis ...uint32) overlay.DesiredState {
	out := s
	out.Networks = nil
	for _, v := range vnis {
		for _, n := range s.Networks {
			if n.VNI == v {
				out.Networks = append(out.Networks, n)
			}
		}
	}
	return out
}

func TestForwardingNotOursStaysOn(t *testing.T) {
	d := New()
	d.forwarding = true // someone else turned it on
	if _, err := d.Apply(context.Background(), withNetworks(sample(), 200)); err != nil {
		t.Fatal(err)
	}
	res, err := d.Apply(context.Background(), overlay.DesiredState{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(changes(res), overlay.ForwardingObject) || !strings.Contains(d.Dump(), "set by someone else") {
		t.Errorf("forwarding turned off though it was not ours: %s\n%s", changes(res), d.Dump())
	}
}

func TestInvalidRejectedWhole(t *testing.T) {
	d := New()
	bad := sample()
	bad.Networks[1].Gateway = ip("10.9.0.1")
	if _, err := d.Apply(context.Background(), bad); !errors.Is(err, overlay.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	if d.Dump() != "\n" {
		t.Errorf("invalid state changed the fake:\n%s", d.Dump())
	}
}

func TestDumpDuringApply(t *testing.T) {
	d := New()
	big := remotes(2000)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20; i++ {
			_ = d.Dump()
		}
	}()
	for i := 0; i < 5; i++ {
		s := big
		s.Networks = []overlay.Network{big.Networks[0]}
		s.Networks[0].Remotes = s.Networks[0].Remotes[:len(s.Networks[0].Remotes)-i*100]
		if _, err := d.Apply(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func remotes(n int) overlay.DesiredState {
	s := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: ip("198.18.0.1")}}
	nw := overlay.Network{VNI: 7, Mode: overlay.ModeIsolated, MTU: 1450}
	for i := 0; i < n; i++ {
		h := i % 1000 // a thousand hosts, as in the scale simulation
		vtep := netip.AddrFrom4([4]byte{198, 18, byte(h >> 8), byte(h)})
		nw.Remotes = append(nw.Remotes, overlay.RemotePort{
			MAC:  net.HardwareAddr{0x0e, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)},
			IP:   netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
			VTEP: vtep,
		})
	}
	s.Networks = []overlay.Network{nw}
	return s
}

// TestMemoryPerFake bounds what one fake with 10,000 remote ports keeps: the scale simulator runs a
// thousand of them in one process.
func TestMemoryPerFake(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	s := remotes(10000)
	const n = 10
	fakes := make([]*Datapath, n)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range fakes {
		fakes[i] = New()
		if _, err := fakes[i].Apply(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("heap per fake with 10,000 remote ports: %d KiB", per/1024)
	if per > 600<<10 {
		t.Errorf("heap per fake = %d KiB, want < 600 KiB (1,000 fakes must fit one process)", per/1024)
	}
	runtime.KeepAlive(fakes)
}

func BenchmarkApply10kNoop(b *testing.B) {
	s := remotes(10000)
	d := New()
	if _, err := d.Apply(context.Background(), s); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := d.Apply(context.Background(), s); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFirstListingWins pins which of two remote ports with one MAC (FDB) or one IP (neighbour) is
// programmed, in an order the fake has to sort: the first listed, as the Linux datapath does.
func TestFirstListingWins(t *testing.T) {
	d := New()
	desired := overlay.DesiredState{Underlay: overlay.Underlay{VTEP: ip("198.18.0.1")}, Networks: []overlay.Network{{
		VNI: 100, Mode: overlay.ModeIsolated, MTU: 1450,
		Remotes: []overlay.RemotePort{
			{MAC: mac("0e:00:00:00:00:09"), IP: ip("10.0.0.9"), VTEP: ip("198.18.0.9")},
			{MAC: mac("0e:00:00:00:00:05"), IP: ip("10.0.0.5"), VTEP: ip("198.18.0.5")},
			{MAC: mac("0e:00:00:00:00:05"), IP: ip("10.0.0.6"), VTEP: ip("198.18.0.6")}, // MAC of the one above
			{MAC: mac("0e:00:00:00:00:07"), IP: ip("10.0.0.9"), VTEP: ip("198.18.0.7")}, // IP of the first
			{MAC: mac("0e:00:00:00:00:01"), IP: ip("10.0.0.1"), VTEP: ip("198.18.0.1")},
		},
	}}}
	// Enough entries out of order that the sort is not a (stable) insertion sort.
	for i := 64; i > 16; i-- {
		desired.Networks[0].Remotes = append(desired.Networks[0].Remotes, overlay.RemotePort{
			MAC: mac(fmt.Sprintf("0e:00:00:00:01:%02x", i)), IP: ip(fmt.Sprintf("10.0.1.%d", i)), VTEP: ip("198.18.0.2")})
	}
	if _, err := d.Apply(context.Background(), desired); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(d.Dump(), "\n") {
		if (strings.HasPrefix(l, "fdb ") || strings.HasPrefix(l, "neigh ")) && !strings.Contains(l, "0e:00:00:00:01:") {
			got = append(got, l)
		}
	}
	want := []string{
		"fdb vxlan100 0e:00:00:00:00:01 dst 198.18.0.1",
		"fdb vxlan100 0e:00:00:00:00:05 dst 198.18.0.5",
		"fdb vxlan100 0e:00:00:00:00:07 dst 198.18.0.7",
		"fdb vxlan100 0e:00:00:00:00:09 dst 198.18.0.9",
		"neigh vxlan100 10.0.0.1 lladdr 0e:00:00:00:00:01",
		"neigh vxlan100 10.0.0.5 lladdr 0e:00:00:00:00:05",
		"neigh vxlan100 10.0.0.6 lladdr 0e:00:00:00:00:05",
		"neigh vxlan100 10.0.0.9 lladdr 0e:00:00:00:00:09",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("kernel:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestApplyDelta writes a delta over an applied state: the tables then equal those of a fresh fake
// given the resulting state in one Apply, and a delta for a network never applied, or after its vxlan
// device went, is refused without writing anything.
func TestApplyDelta(t *testing.T) {
	ctx := context.Background()
	ip := netip.MustParseAddr
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	nw := func(remotes []overlay.RemotePort, flood ...netip.Addr) overlay.DesiredState {
		return overlay.DesiredState{Underlay: overlay.Underlay{VTEP: ip("198.18.0.1")},
			Networks: []overlay.Network{{VNI: 7, Mode: overlay.ModeIsolated, MTU: 1450, Remotes: remotes, Flood: flood}}}
	}
	a := overlay.RemotePort{MAC: mac("0e:00:00:00:00:0a"), IP: ip("10.0.0.10"), VTEP: ip("198.18.0.2")}
	b := overlay.RemotePort{MAC: mac("0e:00:00:00:00:0b"), IP: ip("10.0.0.11"), VTEP: ip("198.18.0.3")}
	bMoved := b
	bMoved.VTEP = ip("198.18.0.2")
	before := nw([]overlay.RemotePort{a, b}, ip("198.18.0.2"), ip("198.18.0.3"))
	after := nw([]overlay.RemotePort{bMoved}, ip("198.18.0.2"))

	d := New()
	if _, err := d.Apply(ctx, before); err != nil {
		t.Fatal(err)
	}
	delta := overlay.Delta{Networks: []overlay.NetworkDelta{{VNI: 7,
		SetFDB:   []overlay.FDBEntry{{MAC: bMoved.MAC, VTEP: bMoved.VTEP}},
		DelFDB:   []overlay.FDBEntry{{MAC: a.MAC, VTEP: a.VTEP}},
		DelNeigh: []overlay.NeighEntry{{IP: a.IP, MAC: a.MAC}},
		DelFlood: []netip.Addr{ip("198.18.0.3")}}}}
	res, err := d.ApplyDelta(ctx, delta)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"update fdb vxlan7 0e:00:00:00:00:0b dst 198.18.0.2",
		"delete fdb vxlan7 0e:00:00:00:00:0a dst 198.18.0.2",
		"delete flood vxlan7 dst 198.18.0.3",
		"delete neigh vxlan7 10.0.0.10 lladdr 0e:00:00:00:00:0a",
	}
	var got []string
	for _, c := range res.Changes {
		got = append(got, c.String())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("delta changes:\n got %q\nwant %q", got, want)
	}
	// The VTEP set still holds 198.18.0.3 (ApplyDelta never touches nftables): compare entries only.
	entries := func(dump string) string {
		var out []string
		for _, l := range strings.Split(dump, "\n") {
			if strings.HasPrefix(l, "fdb ") || strings.HasPrefix(l, "flood ") || strings.HasPrefix(l, "neigh ") {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	fresh := New()
	if _, err := fresh.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	if g, w := entries(d.Dump()), entries(fresh.Dump()); g != w {
		t.Errorf("entries after the delta:\n%s\nwant, as one Apply of the state gives:\n%s", g, w)
	}

	if _, err := New().ApplyDelta(ctx, delta); !errors.Is(err, overlay.ErrNotProgrammed) {
		t.Errorf("delta on an empty fake: err %v, want ErrNotProgrammed", err)
	}
	d.DeleteDevice(overlay.VxlanName(7))
	dumped := d.Dump()
	if _, err := d.ApplyDelta(ctx, delta); !errors.Is(err, overlay.ErrNotProgrammed) {
		t.Errorf("delta after the vxlan device went: err %v, want ErrNotProgrammed", err)
	}
	if d.Dump() != dumped {
		t.Errorf("a refused delta changed the fake")
	}
}
