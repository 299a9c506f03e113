package vxfabricv1

import (
	"fmt"
	"net/netip"
	"strconv"
	"unicode/utf8"
)

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

// maxQuoted is how much of a refused input a message repeats.
const maxQuoted = 64

// Quote is s as a refusal repeats it: quoted, and cut to maxQuoted bytes (saying how long it was),
// so that a huge input does not come back as a huge message (which a client capping its headers
// would see as a transport error instead of the refusal). Every message that repeats a caller's
// input uses it.
func Quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := s[:maxQuoted]
	for !utf8.ValidString(cut) {
		cut = cut[:len(cut)-1]
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(cut), len(s))
}
