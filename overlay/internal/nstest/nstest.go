//go:build linux

// Package nstest builds throwaway network namespaces, veth pairs and probes for the privileged
// datapath tests and benchmarks. Every namespace it creates is named "vxt-..." and removed by the
// cleanup it registers; it never changes the namespace the test process runs in: commands run
// through `ip netns exec`, and sockets inside a namespace are opened on a dedicated OS thread that
// dies afterwards.
package nstest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// SkipUnlessPrivileged skips a test unless it runs as root and VXFAB_SKIP_PRIVILEGED is empty.
func SkipUnlessPrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if os.Getenv("VXFAB_SKIP_PRIVILEGED") != "" {
		t.Skip("VXFAB_SKIP_PRIVILEGED is set")
	}
}

// NS is a named network namespace under /var/run/netns.
type NS struct {
	Name string
}

// Path is the namespace's bind mount, what linux.Config.NetNS takes.
func (n *NS) Path() string { return "/var/run/netns/" + n.Name }

// Create makes a namespace "vxt-<label>-<random>" with loopback up.
func Create(label string) (*NS, error) {
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "vxt-" + label + "-" + hex.EncodeToString(b[:])
	if len(name) > 40 {
		return nil, fmt.Errorf("namespace name %q too long", name)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	n := &NS{Name: name}
	if _, err := n.Run("ip", "link", "set", "lo", "up"); err != nil {
		_ = n.Delete()
		return nil, err
	}
	return n, nil
}

// New is Create for tests: it fails the test on error and deletes the namespace in t.Cleanup.
func New(t testing.TB, label string) *NS {
	t.Helper()
	n, err := Create(label)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return n
}

// Delete removes the namespace; its devices go with it.
func (n *NS) Delete() error {
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// Run executes a command inside the namespace and returns its combined output.
func (n *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("in %s: %s: %w: %s", n.Name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Veth joins two namespaces with a veth pair and brings both ends up. An address (CIDR) is
// assigned to an end when given; a MAC when given.
type End struct {
	NS   *NS
	Name string
	Addr string // e.g. "198.18.0.1/24"; empty for none
	MAC  string // empty lets the kernel choose
}

// Veth creates the pair a <-> b.
func Veth(a, b End) error {
	if out, err := exec.Command("ip", "link", "add", "vxt-tmp-a", "netns", a.NS.Name, "type", "veth",
		"peer", "name", "vxt-tmp-b", "netns", b.NS.Name).CombinedOutput(); err != nil {
		// A leftover temporary pair cannot exist: names are created inside the target namespaces.
		return fmt.Errorf("veth %s/%s <-> %s/%s: %w: %s", a.NS.Name, a.Name, b.NS.Name, b.Name, err, out)
	}
	for _, e := range []struct {
		End
		tmp string
	}{{a, "vxt-tmp-a"}, {b, "vxt-tmp-b"}} {
		args := []string{"ip", "link", "set", e.tmp, "name", e.Name}
		if e.MAC != "" {
			args = append(args, "address", e.MAC)
		}
		if _, err := e.NS.Run(args...); err != nil {
			return err
		}
		if e.Addr != "" {
			if _, err := e.NS.Run("ip", "addr", "add", e.Addr, "dev", e.Name); err != nil {
				return err
			}
		}
		if _, err := e.NS.Run("ip", "link", "set", e.Name, "up"); err != nil {
			return err
		}
	}
	return nil
}

// MustVeth is Veth that fails the test on error.
func MustVeth(t testing.TB, a, b End) {
	t.Helper()
	if err := Veth(a, b); err != nil {
		t.Fatal(err)
	}
}

// DisableIPv6 turns IPv6 off in a namespace (VM namespaces: no router solicitations or DAD noise
// in the packet counters).
func (n *NS) DisableIPv6() error {
	_, err := n.Run("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	return err
}

// RxPackets reads an interface's received-packets counter inside the namespace.
func (n *NS) RxPackets(iface string) (uint64, error) {
	out, err := n.Run("cat", "/sys/class/net/"+iface+"/statistics/rx_packets")
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(out), 10, 64)
}

// Ping sends count echo requests (interval seconds apart, each waiting up to 1 s) and returns how
// many replies came back.
func (n *NS) Ping(dst string, count int, interval string, extra ...string) int {
	args := append([]string{"ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", interval, "-W", "1"}, extra...)
	out, _ := n.Run(append(args, dst)...)
	// "3 packets transmitted, 3 received, 0% packet loss"
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, " received"); i > 0 {
			fields := strings.Fields(line[:i])
			if v, err := strconv.Atoi(fields[len(fields)-1]); err == nil {
				return v
			}
		}
	}
	return 0
}

// inNS runs f on a fresh OS thread inside the namespace; the thread is discarded afterwards.
func (n *NS) inNS(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- fmt.Errorf("open %s: %w", n.Path(), err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		done <- f()
	}()
	return <-done
}

// Listen opens a TCP listener inside the namespace.
func (n *NS) Listen(addr string) (net.Listener, error) {
	var l net.Listener
	err := n.inNS(func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	return l, err
}

// Dial opens a TCP connection from inside the namespace, giving up after timeout.
func (n *NS) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.inNS(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

// Accepted reports the remote address of the first connection accepted within timeout, or "".
func Accepted(l net.Listener, timeout time.Duration) string {
	_ = l.(*net.TCPListener).SetDeadline(time.Now().Add(timeout))
	c, err := l.Accept()
	if err != nil {
		return ""
	}
	defer c.Close()
	return c.RemoteAddr().(*net.TCPAddr).IP.String()
}

// Capture counts the frames seen on an interface inside a namespace that match a predicate, from
// an AF_PACKET socket, until Stop.
type Capture struct {
	fd      int
	count   atomic.Int64
	total   atomic.Int64
	stop    atomic.Bool
	wg      sync.WaitGroup
	closeMu sync.Once
	// inboundOnly skips the frames the interface sends.
	inboundOnly bool
	mu          sync.Mutex
	samples     []string // the first matching frames, described
}

// Samples describes the first few matching frames (for failure messages).
func (c *Capture) Samples() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.samples...)
}

// Describe summarises an Ethernet frame: addresses, ethertype, and IPv4 or ARP addresses.
func Describe(f []byte) string {
	if len(f) < 14 {
		return fmt.Sprintf("short frame %x", f)
	}
	s := fmt.Sprintf("%s > %s type %02x%02x", net.HardwareAddr(f[6:12]), net.HardwareAddr(f[0:6]), f[12], f[13])
	switch {
	case f[12] == 0x08 && f[13] == 0x00 && len(f) >= 34:
		s += fmt.Sprintf(" ip %s > %s proto %d", net.IP(f[26:30]), net.IP(f[30:34]), f[23])
	case f[12] == 0x08 && f[13] == 0x06 && len(f) >= 42:
		s += fmt.Sprintf(" arp op %d %s asks %s", int(f[20])<<8|int(f[21]), net.IP(f[28:32]), net.IP(f[38:42]))
	}
	return s
}

// StartCapture opens the raw socket on iface inside n and counts frames, sent or received, for
// which match is true.
func (n *NS) StartCapture(iface string, match func(frame []byte) bool) (*Capture, error) {
	return n.startCapture(iface, match, false)
}

// StartInboundCapture is StartCapture for received frames only.
func (n *NS) StartInboundCapture(iface string, match func(frame []byte) bool) (*Capture, error) {
	return n.startCapture(iface, match, true)
}

func (n *NS) startCapture(iface string, match func(frame []byte) bool, inboundOnly bool) (*Capture, error) {
	c := &Capture{fd: -1, inboundOnly: inboundOnly}
	err := n.inNS(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("interface %s: %w", iface, err)
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", iface, err)
		}
		tv := unix.Timeval{Usec: 50000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		buf := make([]byte, 65536)
		for !c.stop.Load() {
			k, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING && c.inboundOnly {
				continue
			}
			c.total.Add(1)
			if match(buf[:k]) {
				if c.count.Add(1) <= 5 {
					c.mu.Lock()
					c.samples = append(c.samples, Describe(buf[:k]))
					c.mu.Unlock()
				}
			}
		}
	}()
	return c, nil
}

// Stop ends the capture and returns the matching and total frame counts.
func (c *Capture) Stop() (matched, total int64) {
	c.stop.Store(true)
	c.wg.Wait()
	c.closeMu.Do(func() { unix.Close(c.fd) })
	return c.count.Load(), c.total.Load()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// VXLANInner returns the inner Ethernet frame of a VXLAN-in-IPv4 frame, or nil.
func VXLANInner(frame []byte) []byte {
	if len(frame) < 14+20+8+8+14 || frame[12] != 0x08 || frame[13] != 0x00 {
		return nil
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+16+14 {
		return nil
	}
	udp := ip[ihl:]
	if int(udp[2])<<8|int(udp[3]) != 4789 {
		return nil
	}
	return udp[16:]
}

// IsVXLANARP matches VXLAN frames that carry ARP.
func IsVXLANARP(frame []byte) bool {
	in := VXLANInner(frame)
	return in != nil && in[12] == 0x08 && in[13] == 0x06
}

// IsIPv4OrARP matches untagged IPv4 and ARP frames.
func IsIPv4OrARP(frame []byte) bool {
	return len(frame) >= 14 && frame[12] == 0x08 && (frame[13] == 0x00 || frame[13] == 0x06)
}

// IsVXLAN matches any VXLAN frame.
func IsVXLAN(frame []byte) bool { return VXLANInner(frame) != nil }

// SendFrame writes one raw Ethernet frame out of iface inside n.
func (n *NS) SendFrame(iface string, frame []byte) error {
	return n.inNS(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("interface %s: %w", iface, err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		copy(to.Addr[:], frame[:6])
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			return fmt.Errorf("send a frame out of %s: %w", iface, err)
		}
		return nil
	})
}

// ARPFrame is an Ethernet broadcast carrying an IPv4 ARP message of op (1 request, 2 reply) from
// the Ethernet source ethSrc, with sender sha/spa and target address tpa (target MAC zero).
func ARPFrame(op uint16, ethSrc, sha net.HardwareAddr, spa, tpa netip.Addr) []byte {
	f := make([]byte, 0, 60)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, ethSrc...)
	f = append(f, 0x08, 0x06)             // ARP
	f = append(f, 0, 1, 0x08, 0x00, 6, 4) // Ethernet, IPv4, address lengths
	f = append(f, byte(op>>8), byte(op))
	f = append(f, sha...)
	f = append(f, spa.AsSlice()...)
	f = append(f, make([]byte, 6)...)
	f = append(f, tpa.AsSlice()...)
	return append(f, make([]byte, 60-len(f))...) // padded to the Ethernet minimum
}

// ARPFrom matches ARP frames whose sender is sha and spa.
func ARPFrom(sha net.HardwareAddr, spa netip.Addr) func(frame []byte) bool {
	return func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 &&
			string(f[22:28]) == string(sha) && netip.AddrFrom4([4]byte(f[28:32])) == spa
	}
}

// ARPReplyFrom matches ARP replies whose sender address is spa.
func ARPReplyFrom(spa netip.Addr) func(frame []byte) bool {
	return func(f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[20] == 0 && f[21] == 2 &&
			netip.AddrFrom4([4]byte(f[28:32])) == spa
	}
}
