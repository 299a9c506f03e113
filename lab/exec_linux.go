package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrCommandNotFound: a command given to Exec is not on this process's PATH (the lab's namespaces
// share its file system), wrapped in an ExitError of status 127, as a shell reports it.
var ErrCommandNotFound = errors.New("command not found")

// ExitError carries the exit status of a command run inside the lab.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Stdio are the streams of a command run inside the lab; nil ones are discarded or empty.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// execGrace is how long a cancelled command has to end after its SIGINT.
const execGrace = 3 * time.Second

// Exec runs argv inside the namespace of target (a host, a VM, or a role: outside, lan, ctl, ul).
// A command that runs and fails returns an *ExitError with its status (128+N when signal N ended
// it); one stopped because ctx ended returns an *ExitError with status 130 that wraps ctx.Err().
func (l *Lab) Exec(ctx context.Context, target string, argv []string, stdio Stdio) error {
	if len(argv) == 0 {
		return errors.New("exec: no command given")
	}
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return err
	}
	if !namespaceExists(ns) {
		return fmt.Errorf("exec in %s: namespace %s does not exist (is the lab up?)", target, ns)
	}
	// The namespaces share this process's file system: a command not found here is not found there
	// (ip would say so in its own words and exit 1; a shell says this and exits 127).
	if _, err := exec.LookPath(argv[0]); err != nil && !errors.Is(err, exec.ErrDot) {
		return &ExitError{Code: 127, Err: fmt.Errorf("%s in %s: %w", argv[0], target, ErrCommandNotFound)}
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	// Cancelled (^C at the terminal, a caller's deadline), the command gets SIGINT, as at a terminal,
	// so that it ends its own way (ping prints its summary, tcpdump flushes its file), and SIGKILL
	// only if it is still running execGrace later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = execGrace
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	err = cmd.Run()
	if ctx.Err() != nil && cmd.ProcessState != nil {
		// Stopped by the cancellation, whatever status it then chose: 130, as a shell reports ^C.
		return &ExitError{Code: 130, Err: fmt.Errorf("%s in %s: stopped (%w)", argv[0], target, ctx.Err())}
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal()) // as a shell reports it; ExitCode says -1
		}
		return &ExitError{Code: code, Err: fmt.Errorf("%s in %s: %w", argv[0], target, err)}
	}
	if err != nil {
		return fmt.Errorf("%s in %s: %w", argv[0], target, err)
	}
	return nil
}

// Output runs argv in target and returns its standard output; on failure the error includes stderr.
func (l *Lab) Output(ctx context.Context, target string, argv ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	err := l.Exec(ctx, target, argv, Stdio{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// PingResult is what ping(8) reported.
type PingResult struct {
	Sent, Received int
	// From is the source address of the first reply.
	From string
	// Output is ping's output, for messages.
	Output string
}

var (
	pingSummaryRE = lazyRegexp(`(\d+) packets transmitted, (\d+) received`)
	pingFromRE    = lazyRegexp(`bytes from ([0-9.]+)`)
)

// PingOptions shape one ping run.
type PingOptions struct {
	Count    int           // default 1
	Interval time.Duration // default ping's own (1 s); 10 ms and up as root
	Wait     time.Duration // how long to wait for the last reply, default 1 s
}

// Ping sends ICMP echo requests from target to dst with ping(8) and counts the replies. An
// unreachable destination is a result (Received 0), not an error.
func (l *Lab) Ping(ctx context.Context, target string, dst netip.Addr, o PingOptions) (PingResult, error) {
	if o.Count <= 0 {
		o.Count = 1
	}
	if o.Wait <= 0 {
		o.Wait = time.Second
	}
	argv := []string{"ping", "-n", "-c", strconv.Itoa(o.Count), "-W", fmtSeconds(o.Wait)}
	if o.Interval > 0 {
		argv = append(argv, "-i", fmtSeconds(o.Interval))
	}
	argv = append(argv, dst.String())
	var out bytes.Buffer
	err := l.Exec(ctx, target, argv, Stdio{Stdout: &out, Stderr: &out})
	var exitErr *ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return PingResult{}, err
	}
	res := PingResult{Output: strings.TrimSpace(out.String())}
	m := pingSummaryRE().FindStringSubmatch(res.Output)
	if m == nil {
		if exitErr != nil {
			// "Network is unreachable" and the like: nothing sent, nothing received.
			return res, nil
		}
		return res, fmt.Errorf("ping %s from %s: unexpected output %q", dst, target, res.Output)
	}
	res.Sent, _ = strconv.Atoi(m[1])
	res.Received, _ = strconv.Atoi(m[2])
	if f := pingFromRE().FindStringSubmatch(res.Output); f != nil {
		res.From = f[1]
	}
	return res, nil
}

func fmtSeconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// Reach reports whether target gets an echo reply from dst within timeout: one ping a time, each
// waiting up to 500 ms, until a reply comes or the time is up.
func (l *Lab) Reach(ctx context.Context, target string, dst netip.Addr, timeout time.Duration) (PingResult, bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		res, err := l.Ping(ctx, target, dst, PingOptions{Count: 1, Wait: 500 * time.Millisecond})
		if err != nil {
			return res, false, err
		}
		if res.Received > 0 {
			return res, true, nil
		}
		if time.Now().After(deadline) {
			return res, false, nil
		}
		select {
		case <-ctx.Done():
			return res, false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TCPListener listens inside a lab namespace and reports the peer address of every connection:
// what the listening side sees as the source, after any NAT on the way.
type TCPListener struct {
	ln    net.Listener
	peers chan netip.AddrPort
	done  chan struct{}
}

// ListenTCP listens on addr inside target's namespace (port 0 picks one). Close it when done.
func (l *Lab) ListenTCP(target string, addr netip.AddrPort) (*TCPListener, error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	err = inNamespace(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, target, err)
	}
	t := &TCPListener{ln: ln, peers: make(chan netip.AddrPort, 64), done: make(chan struct{})}
	go t.serve()
	return t, nil
}

func (t *TCPListener) serve() {
	defer close(t.done)
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			return
		}
		peer, err := netip.ParseAddrPort(conn.RemoteAddr().String())
		if err == nil {
			select {
			case t.peers <- peer:
			default:
			}
		}
		_, _ = io.WriteString(conn, peer.Addr().String()+"\n")
		conn.Close()
	}
}

// Addr is the address the listener is bound to.
func (t *TCPListener) Addr() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(t.ln.Addr().String())
	return ap
}

// Close stops the listener and waits for its goroutine.
func (t *TCPListener) Close() error {
	err := t.ln.Close()
	<-t.done
	return err
}

// DialTCP connects from target's namespace to dst and returns the source address the listener saw
// (the listener writes it back, see TCPListener). A refused or timed-out connection is an error.
func (l *Lab) DialTCP(target string, dst netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return netip.Addr{}, err
	}
	var conn net.Conn
	err = inNamespace(ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", dst.String(), timeout)
		return err
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("connect from %s to %s: %w", target, dst, err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := io.ReadAll(io.LimitReader(conn, 64))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read from %s: %w", dst, err)
	}
	seen, err := netip.ParseAddr(strings.TrimSpace(string(line)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("answer from %s: %q: %w", dst, line, err)
	}
	return seen, nil
}

// UDPListener receives datagrams inside a lab namespace.
type UDPListener struct {
	conn *net.UDPConn
}

// ListenUDP listens on addr inside target's namespace (port 0 picks one). Close it when done.
func (l *Lab) ListenUDP(target string, addr netip.AddrPort) (*UDPListener, error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return nil, err
	}
	var conn *net.UDPConn
	err = inNamespace(ns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s in %s: %w", addr, target, err)
	}
	return &UDPListener{conn: conn}, nil
}

// Addr is the address the listener is bound to.
func (u *UDPListener) Addr() netip.AddrPort { return u.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Receive waits up to timeout for a datagram whose payload is want; ok is false if none came.
// Other datagrams are skipped.
func (u *UDPListener) Receive(want []byte, timeout time.Duration) (from netip.AddrPort, ok bool) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	for {
		_ = u.conn.SetReadDeadline(deadline)
		n, src, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return netip.AddrPort{}, false
		}
		if bytes.Equal(buf[:n], want) {
			return src, true
		}
	}
}

// Close closes the listener.
func (u *UDPListener) Close() error { return u.conn.Close() }

// SendUDP sends one datagram from target's namespace to dst, from src when it is valid (an address
// of that namespace, for example a second address added for a spoofing test).
func (l *Lab) SendUDP(target string, src, dst netip.AddrPort, payload []byte) error {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return err
	}
	var local *net.UDPAddr
	if src.IsValid() {
		local = net.UDPAddrFromAddrPort(src)
	}
	return inNamespace(ns, func() error {
		conn, err := net.DialUDP("udp4", local, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return fmt.Errorf("udp from %s to %s: %w", target, dst, err)
		}
		defer conn.Close()
		if _, err := conn.Write(payload); err != nil {
			return fmt.Errorf("udp from %s to %s: %w", target, dst, err)
		}
		return nil
	})
}

// DialerIn returns a dial function whose TCP connections start in target's namespace (for
// grpc.WithContextDialer: a gRPC client in this process that talks as a host or VM would).
func (l *Lab) DialerIn(target string) (func(ctx context.Context, addr string) (net.Conn, error), error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNamespace(ns, func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, "tcp4", addr)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial %s from %s: %w", addr, target, err)
		}
		return conn, nil
	}, nil
}
