//go:build linux

package tests

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/lab"
	"github.com/vxfabric/vxfabric/overlay"
)

// vxlanPacket builds the UDP payload of a VXLAN packet: the VXLAN header for vni, then an Ethernet
// frame carrying an IPv4/UDP datagram from src to dst:port.
func vxlanPacket(vni uint32, dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, port uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+14+20+8+len(payload))
	b[0] = 0x08 // I flag: the VNI is valid
	binary.BigEndian.PutUint32(b[4:], vni<<8)
	b = append(b, dstMAC...)
	b = append(b, srcMAC...)
	b = binary.BigEndian.AppendUint16(b, 0x0800)
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64 // TTL
	ip[9] = 17 // UDP
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	b = append(b, ip...)
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload))) // checksum 0: none, valid for IPv4
	b = append(b, udp...)
	return append(b, payload...)
}

// TestPrivilegedVXLANInjection sends a VXLAN packet for a VM's network to its host's VTEP: from a
// known VTEP (h2, which has a port in the network) it is delivered, which shows the packet is well
// formed; the same packet from outside, not a VTEP, is dropped.
func TestPrivilegedVXLANInjection(t *testing.T) {
	f := newFixture(t, "e2e-inject")
	n := f.network("net", "10.55.0.0/24", isolated)
	v := f.vm("inj-v", "h1", "net")
	f.vm("inj-p", "h2", "net")
	f.reach("inj-p", v.IP(0), 5*time.Second)
	ln, err := f.l.ListenUDP("inj-v", netip.AddrPortFrom(v.IP(0), 9999))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	vmMAC, _ := net.ParseMAC(v.Ports[0].GetMac())
	fake := net.HardwareAddr{0x0e, 0xee, 0, 0, 0, 0x99}
	spoofSrc := netip.MustParseAddr("10.55.0.200")
	vtep := netip.AddrPortFrom(lab.HostAddr(1), overlay.VXLANPort)

	legit := vxlanPacket(n.GetVni(), vmMAC, fake, spoofSrc, v.IP(0), 9999, []byte("from-vtep"))
	if err := f.l.SendUDP("h2", netip.AddrPortFrom(lab.HostAddr(2), 0), vtep, legit); err != nil {
		t.Fatal(err)
	}
	if _, ok := ln.Receive([]byte("from-vtep"), 2*time.Second); !ok {
		t.Fatal("control: a VXLAN packet from the known VTEP h2 did not reach the VM: the test cannot tell a drop")
	}
	injected := vxlanPacket(n.GetVni(), vmMAC, fake, spoofSrc, v.IP(0), 9999, []byte("from-outside"))
	if err := f.l.SendUDP(lab.RoleOutside, netip.AddrPort{}, vtep, injected); err != nil {
		t.Fatal(err)
	}
	if from, ok := ln.Receive([]byte("from-outside"), time.Second); ok {
		t.Fatalf("VXLAN injected from outside reached the VM (inner source %s)", from)
	}
}

// TestPrivilegedPortSecurity sends from a VM with a spoofed source IP and then a spoofed MAC: the
// receiver on another host gets neither, while the VM's own address still works before and after.
func TestPrivilegedPortSecurity(t *testing.T) {
	f := newFixture(t, "e2e-spoof")
	f.network("net", "10.56.0.0/24", isolated)
	sender := f.vm("sp-s", "h1", "net")
	r := f.vm("sp-r", "h2", "net")
	f.reach("sp-s", r.IP(0), 5*time.Second)
	ln, err := f.l.ListenUDP("sp-r", netip.AddrPortFrom(r.IP(0), 9998))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.AddrPortFrom(r.IP(0), 9998)
	send := func(src netip.Addr, payload string) bool {
		t.Helper()
		var from netip.AddrPort
		if src.IsValid() {
			from = netip.AddrPortFrom(src, 0)
		}
		if err := f.l.SendUDP("sp-s", from, dst, []byte(payload)); err != nil {
			t.Fatal(err)
		}
		_, ok := ln.Receive([]byte(payload), time.Second)
		return ok
	}
	if !send(netip.Addr{}, "legit-1") {
		t.Fatal("control: a datagram from the VM's own address did not arrive")
	}
	// Pin the receiver's MAC so that no ARP (which port security would also drop) is needed.
	mustVxfab(t, "lab", "exec", "sp-s", "--", "ip", "neigh", "replace", r.IP(0).String(),
		"lladdr", r.Ports[0].GetMac(), "dev", "eth0", "nud", "permanent")
	spoofIP := netip.MustParseAddr("10.56.0.200")
	mustVxfab(t, "lab", "exec", "sp-s", "--", "ip", "addr", "add", spoofIP.String()+"/32", "dev", "eth0")
	if send(spoofIP, "spoofed-ip") {
		t.Error("a datagram from a spoofed source IP arrived")
	}
	mustVxfab(t, "lab", "exec", "sp-s", "--", "ip", "addr", "del", spoofIP.String()+"/32", "dev", "eth0")
	mustVxfab(t, "lab", "exec", "sp-s", "--", "ip", "link", "set", "dev", "eth0", "address", "0e:ee:00:00:00:98")
	if send(netip.Addr{}, "spoofed-mac") {
		t.Error("a frame from a spoofed source MAC arrived")
	}
	mustVxfab(t, "lab", "exec", "sp-s", "--", "ip", "link", "set", "dev", "eth0", "address", sender.Ports[0].GetMac())
	if !send(netip.Addr{}, "legit-2") {
		t.Error("control: after restoring its MAC the VM's datagram did not arrive")
	}
	// h1's agent counts both drops on the sender's port, and nothing on the receiver's.
	metrics := f.scrape("h1")
	name := "vxfabric_agent_port_security_dropped_frames_total"
	if n := metricValue(metrics, name, `port="`+sender.Ports[0].GetId()+`"`); n < 2 {
		t.Errorf("h1's agent exports %v dropped frames for port %s, want at least 2:\n%s", n, sender.Ports[0].GetId(), grepLines(metrics, name))
	}
	if n := metricValue(f.scrape("h2"), name, `port="`+r.Ports[0].GetId()+`"`); n != 0 {
		t.Errorf("h2's agent exports %v dropped frames for the receiver's port, want none", n)
	}
}

// TestPrivilegedARPSuppression pings a remote VM from a VM with an empty neighbour table: the ARP
// request is answered on the local host (the reply carries the remote port's MAC), and no ARP
// crosses the underlay, while the ICMP itself does (the capture works).
func TestPrivilegedARPSuppression(t *testing.T) {
	f := newFixture(t, "e2e-arp")
	f.network("net", "10.57.0.0/24", isolated)
	f.vm("arp-a", "h1", "net")
	b := f.vm("arp-b", "h2", "net")
	arps, err := f.l.Capture("h1", lab.UnderlayIface, lab.VXLANInner(0x0806))
	if err != nil {
		t.Fatal(err)
	}
	defer arps.Close()
	ipv4, err := f.l.Capture("h1", lab.UnderlayIface, lab.VXLANInner(0x0800))
	if err != nil {
		t.Fatal(err)
	}
	defer ipv4.Close()
	mustVxfab(t, "lab", "exec", "arp-a", "--", "ip", "neigh", "flush", "all")
	f.reach("arp-a", b.IP(0), 5*time.Second)
	out := mustVxfab(t, "lab", "exec", "arp-a", "--", "ip", "neigh", "show", b.IP(0).String())
	if !strings.Contains(strings.ToLower(out), strings.ToLower(b.Ports[0].GetMac())) {
		t.Errorf("arp-a's neighbour entry for %s: %q, want %s", b.IP(0), out, b.Ports[0].GetMac())
	}
	if _, err := lab.WaitFor(f.ctx, 2*time.Second, func() (bool, error) { return ipv4.Count() > 0, nil }); err != nil {
		t.Fatal("control: no VXLAN-encapsulated IPv4 seen on h1's underlay during the ping: the capture sees nothing")
	}
	if n := arps.Count(); n > 0 {
		t.Errorf("%d VXLAN-encapsulated ARP frames crossed h1's underlay, want 0", n)
	}
}
