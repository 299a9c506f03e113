package overlay

import (
	"errors"
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
	server := func(a string) UnderlayRoute {
		return UnderlayRoute{Prefix: netip.PrefixFrom(netip.MustParseAddr(a), 32), Server: true}
	}
	routes = append(routes, hop("10.0.0.1"), hop("203.0.113.1"), subnet("172.17.0.0/16", false),
		subnet("10.244.3.0/24", false), subnet("10.0.0.0/24", true), server("10.0.0.2"), server("10.99.0.5"))
	for _, tc := range []struct {
		limit int
		want  string
	}{
		{64, "[10.0.0.0/24 10.99.0.5/32 10.244.3.0/24 172.17.0.0/16 203.0.113.1/32]"},
		{3, "[10.0.0.0/24 10.99.0.5/32 172.17.0.0/16]"},
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

// An Apply's error is "only standing refusals" when it joins object errors that all stand; an Apply
// cut short by an error of its own is not, whatever refusals it met before.
func TestOnlyStanding(t *testing.T) {
	refused := ObjectError{Object: "addr vxbr7 10.0.0.1/24", Err: fmt.Errorf("overlaps: %w", ErrGatewayRefused)}
	uplink := ObjectError{Object: "uplink lo master vxbr8", Err: fmt.Errorf("loopback: %w", ErrUplinkRefused)}
	missing := ObjectError{Object: "uplink eth9 master vxbr9", Err: ErrUplinkMissing}
	vtep := ObjectError{Object: "vtep 198.18.0.9", Err: fmt.Errorf("%w: VXLAN is neither sent nor received", ErrVTEPMissing)}
	setting := ObjectError{Object: "bridge vxbr7", Err: fmt.Errorf("set arp_ignore to 1: %w: %w", ErrSettingRefused, errors.New("read-only file system"))}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.Join(refused), true},
		{errors.Join(refused, uplink), true},
		{errors.Join(refused, missing), false},
		{errors.Join(vtep, setting), true},
		{errors.Join(vtep, missing), false},
		{errors.New("list links: interrupted"), false},
		{fmt.Errorf("apply: %w", errors.New("netlink: ENOBUFS")), false},
	} {
		if got := OnlyStanding(tc.err); got != tc.want {
			t.Errorf("OnlyStanding(%v) = %t, want %t", tc.err, got, tc.want)
		}
	}
}
