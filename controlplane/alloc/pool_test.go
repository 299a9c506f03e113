package alloc

import (
	"net/netip"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Range
		ok   bool
	}{
		{"4096-16777214", Range{4096, 16777214}, true},
		{"7", Range{7, 7}, true},
		{" 10 - 20 ", Range{10, 20}, true},
		{"0-5", Range{}, false},
		{"5-16777215", Range{}, false},
		{"9-3", Range{}, false},
		{"a-b", Range{}, false},
		{"", Range{}, false},
	} {
		got, err := ParseRange(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseRange(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	if _, err := NewVNIPool([]Range{{10, 20}, {20, 30}}); err == nil {
		t.Error("overlapping ranges accepted")
	}
}

// Every pick is a free VNI of the pool, and there is none exactly when the pool is full.
func TestVNIPoolPickFreeProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var ranges []Range
		next := uint32(rapid.IntRange(1, 50).Draw(t, "start"))
		for i := range rapid.IntRange(1, 3).Draw(t, "nranges") {
			first := next + uint32(rapid.IntRange(0, 5).Draw(t, "gap"))
			last := first + uint32(rapid.IntRange(0, 20).Draw(t, "len"))
			ranges = append(ranges, Range{first, last})
			next = last + 1
			_ = i
		}
		pool, err := NewVNIPool(ranges)
		if err != nil {
			t.Fatal(err)
		}
		taken := rapid.SliceOf(rapid.Uint32Range(1, next+5)).Draw(t, "taken")
		slices.Sort(taken)
		free := 0
		for _, r := range ranges {
			for v := r.First; v <= r.Last; v++ {
				if _, hit := slices.BinarySearch(taken, v); !hit {
					free++
				}
			}
		}
		v, ok := pool.PickFree(taken)
		if ok != (free > 0) {
			t.Fatalf("PickFree ok=%v with %d free", ok, free)
		}
		if !ok {
			return
		}
		if !pool.Contains(v) {
			t.Fatalf("picked %d outside %v", v, ranges)
		}
		if _, hit := slices.BinarySearch(taken, v); hit {
			t.Fatalf("picked taken vni %d", v)
		}
		if r := pool.Random(); !pool.Contains(r) {
			t.Fatalf("random %d outside %v", r, ranges)
		}
	})
}

// Every picked address is assignable (never network, broadcast or gateway) and free.
func TestSubnetPickFreeProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		bits := rapid.IntRange(26, 29).Draw(t, "bits")
		prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, 2, 0}), bits).Masked()
		size := uint32(1) << (32 - bits)
		var gw netip.Addr
		if rapid.Bool().Draw(t, "gateway") {
			gw = addr(u32(prefix.Addr()) + uint32(rapid.Uint32Range(1, size-2).Draw(t, "gw")))
		}
		sub, err := NewSubnet(prefix, gw)
		if err != nil {
			t.Fatal(err)
		}
		var taken []netip.Addr
		for _, off := range rapid.SliceOf(rapid.Uint32Range(0, size-1)).Draw(t, "taken") {
			taken = append(taken, addr(u32(prefix.Addr())+off))
		}
		free := 0
		for off := uint32(1); off < size-1; off++ {
			a := addr(u32(prefix.Addr()) + off)
			if a != gw && !slices.Contains(taken, a) {
				free++
			}
		}
		if want := uint64(size - 2); gw.IsValid() && sub.Size() != want-1 || !gw.IsValid() && sub.Size() != want {
			t.Fatalf("size %d for %s gw %v", sub.Size(), prefix, gw)
		}
		a, ok := sub.PickFree(taken)
		if ok != (free > 0) {
			t.Fatalf("PickFree ok=%v with %d free", ok, free)
		}
		if ok && (!sub.Assignable(a) || slices.Contains(taken, a) || a == gw) {
			t.Fatalf("picked %s (gateway %v, taken %v)", a, gw, taken)
		}
		if r := sub.Random(); !sub.Assignable(r) {
			t.Fatalf("random %s not assignable", r)
		}
	})
}

func TestSubnetReserved(t *testing.T) {
	sub, err := NewSubnet(netip.MustParsePrefix("10.0.0.0/29"), netip.MustParseAddr("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{
		"10.0.0.0": false, "10.0.0.1": false, "10.0.0.2": true, "10.0.0.6": true, "10.0.0.7": false, "10.0.0.8": false,
	} {
		if got := sub.Assignable(netip.MustParseAddr(a)); got != want {
			t.Errorf("Assignable(%s) = %v, want %v", a, got, want)
		}
	}
	if _, err := NewSubnet(netip.MustParsePrefix("10.0.0.0/30"), netip.Addr{}); err == nil {
		t.Error("/30 accepted")
	}
	if _, err := NewSubnet(netip.MustParsePrefix("10.0.0.0/24"), netip.MustParseAddr("10.0.0.255")); err == nil {
		t.Error("broadcast gateway accepted")
	}
	big, _ := NewSubnet(netip.MustParsePrefix("10.0.0.0/8"), netip.Addr{})
	if big.Size() != 1<<24-2 {
		t.Errorf("/8 size %d", big.Size())
	}
}

func TestMACs(t *testing.T) {
	if got := GatewayMAC(0x123456); got != "02:fb:12:34:56:01" {
		t.Errorf("GatewayMAC = %s", got)
	}
	seen := map[string]bool{}
	for range 1000 {
		m := NewMAC()
		if m[:3] != "0e:" || len(m) != 17 || seen[m] {
			t.Fatalf("NewMAC gave %s", m)
		}
		seen[m] = true
	}
	if id := NewID(); len(id) != 10 || len(InterfaceName(id)) != 13 {
		t.Errorf("id %q, interface %q", id, InterfaceName(id))
	}
}

// An allocation pool narrows what the allocator picks, not what is a host address of the network.
func TestSubnetPool(t *testing.T) {
	sub, err := NewSubnet(netip.MustParsePrefix("10.0.0.0/24"), netip.MustParseAddr("10.0.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := sub.WithPool("10.0.0.10 - 10.0.0.13")
	if err != nil {
		t.Fatal(err)
	}
	if pool.Size() != 3 {
		t.Errorf("size of pool 10.0.0.10-10.0.0.13 less the gateway: %d, want 3", pool.Size())
	}
	for range 200 {
		if a := pool.Random(); !pool.InPool(a) || a == netip.MustParseAddr("10.0.0.11") {
			t.Fatalf("Random picked %s outside the pool or the gateway", a)
		}
	}
	got, ok := pool.PickFree([]netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.13"), netip.MustParseAddr("10.0.0.200")})
	if !ok || got != netip.MustParseAddr("10.0.0.12") {
		t.Errorf("PickFree with .10 and .13 taken: %s %t, want 10.0.0.12", got, ok)
	}
	if _, ok := pool.PickFree([]netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.12"), netip.MustParseAddr("10.0.0.13")}); ok {
		t.Error("PickFree found an address in a full pool")
	}
	if !pool.Assignable(netip.MustParseAddr("10.0.0.200")) || pool.InPool(netip.MustParseAddr("10.0.0.200")) {
		t.Error("10.0.0.200: want a host address of the network, outside the pool")
	}
	for _, bad := range []string{"10.0.0.10", "10.0.0.13-10.0.0.10", "10.0.0.0-10.0.0.5", "10.0.0.5-10.0.0.255", "10.0.0.11-10.0.0.11", "10.0.1.1-10.0.1.2", "a-b"} {
		if _, err := sub.WithPool(bad); err == nil {
			t.Errorf("pool %q accepted", bad)
		}
	}
}
