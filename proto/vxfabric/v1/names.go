package vxfabricv1

import "net/netip"

// NameRule says which names the API takes for tenants, networks, ports, nodes and VMs, in words for
// error messages.
const NameRule = "1-63 characters of a-z, 0-9 and '-', starting with a letter"

// ValidName reports whether s follows NameRule (a DNS label in lower case, never starting with a
// digit or '-'). The control plane, the agent and the CLI share it, so that a name one accepts is
// never refused by another.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidVTEP reports whether a is usable as a node's VTEP: a unicast IPv4 address other hosts can
// reach, so not unspecified, loopback, link-local, multicast or the broadcast address.
func ValidVTEP(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
