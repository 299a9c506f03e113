package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/overlay"
)

// Capture counts the frames on one interface inside a lab namespace that match a filter: how the
// tests see what crosses the underlay.
type Capture struct {
	file  *os.File
	match func(frame []byte) bool
	done  chan struct{}

	mu    sync.Mutex // guards count
	count int
}

// Capture starts counting frames of iface in target's namespace, both directions, for which match
// returns true. Close it when done.
func (l *Lab) Capture(target, iface string, match func(frame []byte) bool) (*Capture, error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return nil, err
	}
	h, err := handleAt(ns)
	if err != nil {
		return nil, err
	}
	link, err := h.LinkByName(iface)
	h.Close()
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w", iface, target, err)
	}
	proto := htons(unix.ETH_P_ALL)
	var fd int
	err = inNamespace(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: packet socket: %w", iface, target, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: link.Attrs().Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture on %s in %s: bind: %w", iface, target, err)
	}
	c := &Capture{file: os.NewFile(uintptr(fd), "capture-"+iface), match: match, done: make(chan struct{})}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		n, err := c.file.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		if c.match(buf[:n]) {
			c.mu.Lock()
			c.count++
			c.mu.Unlock()
		}
	}
}

// Count is the number of matching frames so far.
func (c *Capture) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}

// Close stops the capture.
func (c *Capture) Close() error {
	err := c.file.Close()
	<-c.done
	return err
}

// VXLANInner matches IPv4 VXLAN frames (UDP port 4789) whose inner Ethernet frame has the given
// EtherType (0x0806 for ARP).
func VXLANInner(etherType uint16) func([]byte) bool {
	return func(f []byte) bool {
		if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
			return false
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8+8+14 {
			return false
		}
		udp := ip[ihl:]
		if binary.BigEndian.Uint16(udp[2:4]) != overlay.VXLANPort {
			return false
		}
		inner := udp[8+8:]
		return binary.BigEndian.Uint16(inner[12:14]) == etherType
	}
}

// FDBEntry is one entry of a vxlan device's forwarding table: frames to MAC go to the VTEP Dst.
// The all-zero MAC is a flood entry.
type FDBEntry struct {
	MAC net.HardwareAddr
	Dst netip.Addr
}

// FDB reads the forwarding table of the network vni's vxlan device on host, from the kernel. A
// host without the device has no entries.
func (l *Lab) FDB(host string, vni uint32) ([]FDBEntry, error) {
	h, err := l.Handle(host)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	link, err := h.LinkByName(overlay.VxlanName(vni))
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", host, overlay.VxlanName(vni), err)
	}
	var neighs []netlink.Neigh
	for attempt := 0; ; attempt++ {
		neighs, err = h.NeighList(link.Attrs().Index, unix.AF_BRIDGE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: fdb of %s: %w", host, overlay.VxlanName(vni), err)
	}
	var entries []FDBEntry
	for _, n := range neighs {
		if n.IP == nil {
			continue
		}
		dst, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		entries = append(entries, FDBEntry{MAC: n.HardwareAddr, Dst: dst.Unmap()})
	}
	return entries, nil
}

// WaitFor polls cond every 20 ms until it holds or timeout passes, and returns how long that took.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) (time.Duration, error) {
	began := time.Now()
	err := poll(ctx, timeout, cond)
	return time.Since(began), err
}

// ipv4L4 returns the transport header and payload of an IPv4 frame of the given protocol, or nil.
func ipv4L4(f []byte, proto uint8) (dst netip.Addr, l4 []byte) {
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
		return netip.Addr{}, nil
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != proto || ihl < 20 || len(ip) < ihl+8 {
		return netip.Addr{}, nil
	}
	return netip.AddrFrom4([4]byte(ip[16:20])), ip[ihl:]
}

// IPv4To matches IPv4 frames of a transport protocol (unix.IPPROTO_TCP, unix.IPPROTO_UDP) sent to
// dst: with a capture on a VM's NIC, it tells that a connection attempt did leave the VM.
func IPv4To(proto uint8, dst netip.AddrPort) func([]byte) bool {
	return func(f []byte) bool {
		addr, l4 := ipv4L4(f, proto)
		return l4 != nil && addr == dst.Addr() && binary.BigEndian.Uint16(l4[2:4]) == dst.Port()
	}
}

// UDPPayload matches IPv4 UDP datagrams to port whose payload starts with prefix, whatever their
// addresses (NAT may have rewritten them on the way).
func UDPPayload(port uint16, prefix []byte) func([]byte) bool {
	return func(f []byte) bool {
		_, l4 := ipv4L4(f, unix.IPPROTO_UDP)
		return l4 != nil && binary.BigEndian.Uint16(l4[2:4]) == port && bytes.HasPrefix(l4[8:], prefix)
	}
}
