package lab

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// frame builds an Ethernet frame carrying IPv4 with the given protocol to dst and a transport
// header (ports only) followed by payload.
func frame(proto uint8, dst netip.AddrPort, payload string) []byte {
	f := make([]byte, 14, 14+20+8+len(payload))
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := make([]byte, 20)
	ip[0], ip[9] = 0x45, proto
	d := dst.Addr().As4()
	copy(ip[16:], d[:])
	f = append(f, ip...)
	l4 := make([]byte, 8)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	f = append(f, l4...)
	return append(f, payload...)
}

func TestMatchers(t *testing.T) {
	gossip := netip.MustParseAddrPort("198.18.0.2:7946")
	tcp := frame(unix.IPPROTO_TCP, gossip, "")
	udp := frame(unix.IPPROTO_UDP, gossip, "vxt-probe-a")
	other := frame(unix.IPPROTO_UDP, netip.MustParseAddrPort("198.18.0.2:7947"), "vxt-probe-a")
	tests := []struct {
		name  string
		match func([]byte) bool
		f     []byte
		want  bool
	}{
		{"tcp to target", IPv4To(unix.IPPROTO_TCP, gossip), tcp, true},
		{"udp is not tcp", IPv4To(unix.IPPROTO_TCP, gossip), udp, false},
		{"other address", IPv4To(unix.IPPROTO_TCP, netip.MustParseAddrPort("198.18.0.11:7946")), tcp, false},
		{"truncated", IPv4To(unix.IPPROTO_TCP, gossip), tcp[:30], false},
		{"payload prefix", UDPPayload(7946, []byte("vxt-probe-")), udp, true},
		{"other payload", UDPPayload(7946, []byte("vxt-control-")), udp, false},
		{"other port", UDPPayload(7946, []byte("vxt-probe-")), other, false},
		{"tcp is not udp", UDPPayload(7946, nil), tcp, false},
	}
	for _, tt := range tests {
		if got := tt.match(tt.f); got != tt.want {
			t.Errorf("%s: match = %t, want %t", tt.name, got, tt.want)
		}
	}
}
