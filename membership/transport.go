package membership

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// transport is memberlist's NetTransport with streams that Shutdown ends: a dial in flight, and every
// stream this member opened, end when life is cancelled. memberlist's Join (a re-join of the seeds, a
// state exchange, a reconnect to a dead member) blocks for TCPTimeout (10 s) on a peer whose kernel
// completes the handshake and whose process never answers (a paused process, a full accept queue);
// without this, Shutdown would wait that long for the goroutine that called it. Packets (UDP) are
// memberlist's own: they never block.
type transport struct {
	*memberlist.NetTransport
	life context.Context
}

// newTransport binds the gossip port (TCP and UDP) on bind. A free port (port 0) is picked for TCP
// first and may be taken for UDP meanwhile: like memberlist, it tries again then.
func newTransport(life context.Context, bind netip.AddrPort, logger *log.Logger) (*transport, error) {
	nc := &memberlist.NetTransportConfig{BindAddrs: []string{bind.Addr().String()}, BindPort: int(bind.Port()), Logger: logger}
	attempts := 1
	if bind.Port() == 0 {
		attempts = 10
	}
	var err error
	for range attempts {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(nc); err == nil {
			return &transport{NetTransport: nt, life: life}, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("bind gossip port %s: %w", bind, err)
}

// DialTimeout implements memberlist.Transport.
func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport: a dial that Shutdown ends, of a stream
// that Shutdown closes.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(t.life, "tcp", a.Addr)
	if err != nil {
		return nil, err
	}
	return &stream{Conn: c, stop: context.AfterFunc(t.life, func() { _ = c.Close() })}, nil
}

// stream is a connection this member opened; stop unregisters its close on Shutdown.
type stream struct {
	net.Conn
	stop func() bool
}

func (s *stream) Close() error {
	s.stop()
	return s.Conn.Close()
}
