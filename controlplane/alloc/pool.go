// Package alloc picks VNIs, IPv4 addresses, MACs and ids for new networks and ports, and creates
// those resources through controlplane/store, retrying with another candidate when a concurrent
// create (in this or another server replica) won the same value.
//
// It never decides a conflict itself: the etcd transaction of the store is the only arbiter, so any
// number of replicas may allocate at once. It never scans the whole 16M VNI space (or a /8) per
// request: it probes random candidates first and reads the taken set only when the pool is small or
// probing keeps failing. It never holds state between requests.
package alloc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// MaxVNI is the largest usable VNI (16777215 is reserved).
const MaxVNI = 1<<24 - 2

// Range is an inclusive range of VNIs.
type Range struct {
	First, Last uint32
}

func (r Range) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

func (r Range) size() uint64 { return uint64(r.Last) - uint64(r.First) + 1 }

// ParseRange parses "FIRST-LAST" or a single VNI.
func ParseRange(s string) (Range, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	a, err := strconv.ParseUint(strings.TrimSpace(lo), 10, 32)
	if err != nil {
		return Range{}, fmt.Errorf("vni range %s: %w", vxfabricv1.Quote(s), err)
	}
	b, err := strconv.ParseUint(strings.TrimSpace(hi), 10, 32)
	if err != nil {
		return Range{}, fmt.Errorf("vni range %s: %w", vxfabricv1.Quote(s), err)
	}
	r := Range{First: uint32(a), Last: uint32(b)}
	return r, r.validate()
}

func (r Range) validate() error {
	if r.First < 1 || r.Last > MaxVNI || r.First > r.Last {
		return fmt.Errorf("vni range %s: must lie within 1-%d with first <= last", r, MaxVNI)
	}
	return nil
}

// DefaultRanges is the default VNI pool.
func DefaultRanges() []Range { return []Range{{First: 4096, Last: MaxVNI}} }

// VNIPool is a set of disjoint VNI ranges.
type VNIPool struct {
	ranges []Range // sorted, disjoint
	size   uint64
}

// NewVNIPool validates and sorts ranges; they must not overlap.
func NewVNIPool(ranges []Range) (*VNIPool, error) {
	if len(ranges) == 0 {
		return nil, errors.New("vni pool: at least one range is required")
	}
	rs := slices.Clone(ranges)
	slices.SortFunc(rs, func(a, b Range) int { return int(int64(a.First) - int64(b.First)) })
	p := &VNIPool{ranges: rs}
	for i, r := range rs {
		if err := r.validate(); err != nil {
			return nil, err
		}
		if i > 0 && r.First <= rs[i-1].Last {
			return nil, fmt.Errorf("vni ranges %s and %s overlap", rs[i-1], r)
		}
		p.size += r.size()
	}
	return p, nil
}

// Ranges returns the pool's ranges, sorted.
func (p *VNIPool) Ranges() []Range { return slices.Clone(p.ranges) }

// Size is the number of VNIs in the pool.
func (p *VNIPool) Size() uint64 { return p.size }

// String lists the pool's ranges: "4096-8191, 10000-10099".
func (p *VNIPool) String() string {
	rs := make([]string, len(p.ranges))
	for i, r := range p.ranges {
		rs[i] = r.String()
	}
	return strings.Join(rs, ", ")
}

// nth returns the pool's n-th VNI (0-based, n < Size).
func (p *VNIPool) nth(n uint64) uint32 {
	for _, r := range p.ranges {
		if n < r.size() {
			return r.First + uint32(n)
		}
		n -= r.size()
	}
	panic("vni pool: index out of range")
}

// Random returns a uniformly random VNI of the pool.
func (p *VNIPool) Random() uint32 { return p.nth(rand.Uint64N(p.size)) }

// Contains reports whether vni belongs to the pool.
func (p *VNIPool) Contains(vni uint32) bool {
	for _, r := range p.ranges {
		if vni >= r.First && vni <= r.Last {
			return true
		}
	}
	return false
}

// PickFree returns a uniformly random VNI of the pool that is not in taken (ascending, may hold
// VNIs outside the pool), or false when every VNI of the pool is taken.
func (p *VNIPool) PickFree(taken []uint32) (uint32, bool) {
	inPool := make([]uint32, 0, len(taken))
	for _, v := range taken {
		if p.Contains(v) && (len(inPool) == 0 || inPool[len(inPool)-1] != v) {
			inPool = append(inPool, v)
		}
	}
	free := p.size - uint64(len(inPool))
	if free == 0 {
		return 0, false
	}
	// The k-th free VNI: walk the taken ones in order, each one before the candidate shifts it by one.
	k := rand.Uint64N(free)
	for _, r := range p.ranges {
		lo, hi := r.First, r.Last
		i, _ := slices.BinarySearch(inPool, lo)
		j, _ := slices.BinarySearch(inPool, hi+1)
		freeHere := r.size() - uint64(j-i)
		if k >= freeHere {
			k -= freeHere
			continue
		}
		cand := uint64(lo) + k
		for _, t := range inPool[i:j] {
			if uint64(t) <= cand {
				cand++
			} else {
				break
			}
		}
		return uint32(cand), true
	}
	panic("vni pool: free count mismatch")
}

// Subnet is the assignable address space of one IPv4 network: every host address but the network
// address, the broadcast address and the gateway. The allocator picks in its pool (WithPool), all
// of it by default.
type Subnet struct {
	prefix  netip.Prefix
	first   uint32    // the pool's first address (network address + 1 without a pool)
	last    uint32    // the pool's last address (broadcast - 1 without a pool)
	hosts   [2]uint32 // network address + 1, broadcast - 1
	gateway uint32    // 0 when none
}

// NewSubnet returns the assignable space of prefix (IPv4, /8 to /29), without gateway (may be invalid).
func NewSubnet(prefix netip.Prefix, gateway netip.Addr) (*Subnet, error) {
	if !prefix.Addr().Is4() || prefix.Bits() < 8 || prefix.Bits() > 29 || prefix.Masked() != prefix {
		return nil, fmt.Errorf("subnet %s: want an IPv4 network address with prefix /8 to /29", prefix)
	}
	base := u32(prefix.Addr())
	s := &Subnet{prefix: prefix, first: base + 1, last: base + (1<<(32-prefix.Bits()) - 1) - 1}
	s.hosts = [2]uint32{s.first, s.last}
	if gateway.IsValid() {
		if !s.Assignable(gateway) {
			return nil, fmt.Errorf("gateway %s is not a host address of %s", gateway, prefix)
		}
		s.gateway = u32(gateway)
	}
	return s, nil
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// FirstHost is the first host address (the default gateway).
func (s *Subnet) FirstHost() netip.Addr { return addr(s.hosts[0]) }

// Assignable reports whether a can be given to a port: inside the prefix, neither the network nor the
// broadcast address nor the gateway (inside the pool or not).
func (s *Subnet) Assignable(a netip.Addr) bool {
	if !a.Is4() || !s.prefix.Contains(a) {
		return false
	}
	v := u32(a)
	return v >= s.hosts[0] && v <= s.hosts[1] && v != s.gateway
}

// InPool reports whether a is assignable and inside the pool.
func (s *Subnet) InPool(a netip.Addr) bool {
	if !s.Assignable(a) {
		return false
	}
	v := u32(a)
	return v >= s.first && v <= s.last
}

// ParsePool reads an allocation pool, "FIRST-LAST": two host addresses of s, FIRST not after LAST,
// and not the gateway alone. It returns the pool in canonical form.
func (s *Subnet) ParsePool(pool string) (first, last netip.Addr, err error) {
	a, b, ok := strings.Cut(pool, "-")
	if ok {
		first, err = netip.ParseAddr(strings.TrimSpace(a))
	}
	if ok && err == nil {
		last, err = netip.ParseAddr(strings.TrimSpace(b))
	}
	switch {
	case !ok || err != nil:
		return first, last, fmt.Errorf("allocation pool %s: want FIRST-LAST, two IPv4 addresses", vxfabricv1.Quote(pool))
	case !s.Assignable(first) && first != addr(s.gateway) || !s.Assignable(last) && last != addr(s.gateway):
		return first, last, fmt.Errorf("allocation pool %s-%s: want two host addresses of %s", first, last, s.prefix)
	case u32(first) > u32(last):
		return first, last, fmt.Errorf("allocation pool %s-%s: the first address is after the last", first, last)
	case first == last && u32(first) == s.gateway:
		return first, last, fmt.Errorf("allocation pool %s-%s: holds only the gateway", first, last)
	}
	return first, last, nil
}

// WithPool narrows the addresses the allocator picks (Random, PickFree, Size) to pool (ParsePool's
// form; "" leaves every host address).
func (s *Subnet) WithPool(pool string) (*Subnet, error) {
	if pool == "" {
		return s, nil
	}
	first, last, err := s.ParsePool(pool)
	if err != nil {
		return nil, err
	}
	narrowed := *s
	narrowed.first, narrowed.last = u32(first), u32(last)
	return &narrowed, nil
}

// Size is the number of assignable addresses of the pool.
func (s *Subnet) Size() uint64 {
	n := uint64(s.last-s.first) + 1
	if s.gateway >= s.first && s.gateway <= s.last {
		n--
	}
	return n
}

// Random returns a uniformly random assignable address of the pool.
func (s *Subnet) Random() netip.Addr {
	for {
		v := s.first + uint32(rand.Uint64N(uint64(s.last-s.first)+1))
		if v != s.gateway {
			return addr(v)
		}
	}
}

// PickFree returns a uniformly random assignable address of the pool not in taken, or false when
// none is left.
func (s *Subnet) PickFree(taken []netip.Addr) (netip.Addr, bool) {
	blocked := make([]uint32, 0, len(taken)+1)
	for _, a := range taken {
		if s.InPool(a) {
			blocked = append(blocked, u32(a))
		}
	}
	if s.gateway >= s.first && s.gateway <= s.last {
		blocked = append(blocked, s.gateway)
	}
	slices.Sort(blocked)
	blocked = slices.Compact(blocked)
	total := uint64(s.last-s.first) + 1
	free := total - uint64(len(blocked))
	if free == 0 {
		return netip.Addr{}, false
	}
	cand := uint64(s.first) + rand.Uint64N(free)
	for _, b := range blocked {
		if uint64(b) <= cand {
			cand++
		} else {
			break
		}
	}
	return addr(uint32(cand)), true
}
