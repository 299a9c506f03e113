package overlay

import (
	"fmt"
	"net/netip"
	"testing"
)

// SelectUnderlay keeps what protects a host most when it must leave routes out: its uplinks'
// subnets, then its other subnets, then next hops outside every subnet kept (a next hop on a kept
// subnet is protected with it).
func TestSelectUnderlay(t *testing.T) {
	subnet := func(p string, uplink bool) UnderlayRoute {
		return UnderlayRoute{Prefix: netip.MustParsePrefix(p), Uplink: uplink}
	}
	hop := func(a string) UnderlayRoute {
		return UnderlayRoute{Prefix: netip.PrefixFrom(netip.MustParseAddr(a), 32), NextHop: true}
	}
	// A Kubernetes node of a large cluster: one next hop per peer, on the LAN, and pod subnets.
	var routes []UnderlayRoute
	for i := range 100 {
		routes = append(routes, hop(fmt.Sprintf("10.0.0.%d", 10+i)))
	}
	routes = append(routes, hop("10.0.0.1"), hop("203.0.113.1"), subnet("172.17.0.0/16", false),
		subnet("10.244.3.0/24", false), subnet("10.0.0.0/24", true))
	for _, tc := range []struct {
		limit int
		want  string
	}{
		{64, "[10.0.0.0/24 10.244.3.0/24 172.17.0.0/16 203.0.113.1/32]"},
		{2, "[10.0.0.0/24 172.17.0.0/16]"},
		{1, "[10.0.0.0/24]"},
	} {
		if got := fmt.Sprint(SelectUnderlay(routes, tc.limit)); got != tc.want {
			t.Errorf("limit %d: %s, want %s", tc.limit, got, tc.want)
		}
	}
	if got := SelectUnderlay(nil, 64); len(got) != 0 {
		t.Errorf("no routes: %v", got)
	}
}
