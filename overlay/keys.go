package overlay

import (
	"net"
	"net/netip"
)

// Integer keys of MAC and IPv4 addresses, for the maps and sorts on hot paths (the agent's incremental
// pass, the fake datapath's tables): no allocation, and the order of the integers is the order of
// the addresses.

// MACKey packs the 6 bytes of m into an integer.
func MACKey(m net.HardwareAddr) uint64 {
	var k uint64
	for _, b := range m[:6] {
		k = k<<8 | uint64(b)
	}
	return k
}

// MACFromKey is the MAC address MACKey packed into k.
func MACFromKey(k uint64) net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	for i := 5; i >= 0; i-- {
		m[i] = byte(k)
		k >>= 8
	}
	return m
}

// IPv4Key packs an IPv4 (or IPv4-mapped IPv6) address into an integer.
func IPv4Key(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// IPv4FromKey is the address IPv4Key packed into v.
func IPv4FromKey(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
