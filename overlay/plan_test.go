package overlay

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

// The control plane names port interfaces "vxp<id>": they must pass, while our own device names
// must not be taken by a port or an uplink (regression: every real port was refused).
func TestValidatePortAndUplinkNames(t *testing.T) {
	mac := net.HardwareAddr{0x0e, 0, 0, 0, 0, 1}
	state := func(port, uplink string) DesiredState {
		mode := ModeIsolated
		if uplink != "" {
			mode = ModeBridged
		}
		return DesiredState{
			Underlay: Underlay{VTEP: netip.MustParseAddr("198.18.0.11")},
			Networks: []Network{{
				VNI: 4096, Mode: mode, MTU: 1450, Uplink: uplink,
				Ports: []LocalPort{{Interface: port, MAC: mac, IP: netip.MustParseAddr("10.0.0.2")}},
			}},
		}
	}
	for _, tc := range []struct {
		port, uplink string
		ok           bool
	}{
		{"vxp0123456789", "", true},
		{"tap0", "", true},
		{"vxbr4096", "", false},
		{"vxlan4096", "", false},
		{"tap0", "eth1", true},
		{"tap0", "vxbr7", false},
		{"tap0", "vxlan7", false},
	} {
		err := state(tc.port, tc.uplink).Validate()
		if tc.ok && err != nil {
			t.Errorf("port %q uplink %q: %v, want valid", tc.port, tc.uplink, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalid) {
			t.Errorf("port %q uplink %q: err %v, want ErrInvalid", tc.port, tc.uplink, err)
		}
	}
}
