package lab

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// TCPListeners returns the IPv4 addresses on which something listens for TCP inside target's
// namespace (a host, VM or role), as the kernel lists them: how a test finds ports it cannot
// know in advance, such as those of the server's embedded etcd (127.0.0.1, port chosen at start).
func (l *Lab) TCPListeners(target string) ([]netip.AddrPort, error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return nil, err
	}
	var table []byte
	err = inNamespace(ns, func() error {
		// thread-self: the table of the namespace this locked thread is in, not the process's.
		var err error
		table, err = os.ReadFile("/proc/thread-self/net/tcp")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tcp listeners in %s: %w", target, err)
	}
	return parseTCPListeners(string(table))
}

// tcpListen is the LISTEN state in /proc/net/tcp.
const tcpListen = 0x0A

// parseTCPListeners reads the listening sockets of a /proc/net/tcp table, whose lines are
// "sl local_address rem_address st ...", addresses as hexadecimal ADDR:PORT with the IPv4 address
// as the kernel's native-endian integer.
func parseTCPListeners(table string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	sc := bufio.NewScanner(strings.NewReader(table))
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 4 {
			continue
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("tcp table: state %q: %w", f[3], err)
		}
		if st != tcpListen {
			continue
		}
		addr, port, ok := strings.Cut(f[1], ":")
		raw, err := hex.DecodeString(addr)
		if !ok || err != nil || len(raw) != 4 {
			return nil, fmt.Errorf("tcp table: local address %q", f[1])
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("tcp table: port %q: %w", port, err)
		}
		var a4 [4]byte
		binary.NativeEndian.PutUint32(a4[:], binary.BigEndian.Uint32(raw))
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4(a4), uint16(p)))
	}
	return out, sc.Err()
}
