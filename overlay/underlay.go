package overlay

import (
	"net/netip"
	"slices"
)

// UnderlayRoute is one thing a host reaches outside the fabric, as its datapath reads it from the
// kernel: a subnet it is attached to, or the next hop of one of its routes.
type UnderlayRoute struct {
	Prefix netip.Prefix
	// NextHop: a router's address (/32), not a subnet.
	NextHop bool
	// Server: the address of one of the fabric's API servers (/32), not a subnet.
	Server bool
	// Uplink: a subnet of the host's underlay interface or of a bridged network's uplink.
	Uplink bool
}

// Clash tells whether a nat or routed gateway prefix would take traffic the host sends to r into
// the network's bridge: the prefix overlaps the subnet, or holds the next hop.
func (r UnderlayRoute) Clash(gateway netip.Prefix) bool { return r.Prefix.Overlaps(gateway) }

// SelectUnderlay picks at most limit of a host's underlay routes for the control plane, most
// important first (the subnets of its uplinks, the fabric's servers, its other subnets, the widest
// first, then its next hops; a server or next hop that a subnet picked holds is left out: the
// subnet covers it), and returns them sorted by address, without duplicates.
func SelectUnderlay(routes []UnderlayRoute, limit int) []netip.Prefix {
	rank := func(r UnderlayRoute) int {
		switch {
		case r.Server:
			return 1
		case r.NextHop:
			return 3
		case r.Uplink:
			return 0
		}
		return 2
	}
	ranked := slices.Clone(routes)
	slices.SortStableFunc(ranked, func(a, b UnderlayRoute) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	var out []netip.Prefix
	for _, r := range ranked {
		if len(out) == limit {
			break
		}
		held := slices.ContainsFunc(out, func(p netip.Prefix) bool {
			return p == r.Prefix || (r.NextHop || r.Server) && p.Bits() < 32 && p.Contains(r.Prefix.Addr())
		})
		if !held {
			out = append(out, r.Prefix)
		}
	}
	slices.SortFunc(out, ComparePrefixes)
	return out
}

// ComparePrefixes orders prefixes by address, then by length.
func ComparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
