package membership

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vxfabric/vxfabric/security/pki"
)

// Role says what a member runs.
type Role string

const (
	RoleAgent  Role = "agent"
	RoleServer Role = "server"
)

// DefaultPort is the gossip port (TCP and UDP) when --gossip-bind names none.
const DefaultPort = 7946

// Config is one member's identity, address, keys and failure-detector timing.
//
// The timing defaults are chosen for a LAN so that a host that is cut off is Down at every peer in
// about a second and DEAD in under 5 s (clusters of up to 10 members; see the package comment),
// while a member paused for 3 s (SIGSTOP, a long GC, a saturated CPU) refutes its suspicion before
// anyone declares it dead.
type Config struct {
	// Name is the member's unique gossip name. Default: Node.
	Name string
	Role Role
	// Node is the host name the member speaks for (agents: the --node name).
	Node string
	// VTEP is the host's underlay address (agents).
	VTEP netip.Addr
	// GRPCAddr is where a server serves its API and AgentService (servers).
	GRPCAddr string
	Version  string

	// BindAddr is IP:PORT for gossip (TCP and UDP). Default 0.0.0.0:7946; port 0 picks a free one.
	BindAddr string
	// AdvertiseAddr is IP:PORT other members reach this one at. Default: BindAddr (or the address
	// memberlist picks when BindAddr is a wildcard).
	AdvertiseAddr string
	// Join lists seed members (HOST:PORT). New tries them once; while the member is alone it tries
	// again every RejoinInterval.
	Join []string
	// Seeds, optional, gives more seeds to try while the member is alone (a server asks its store
	// for the hosts it knew, so that a restarted server finds the fabric again without --join).
	// Called from the member's own goroutine, every RejoinInterval while alone; it may block for a
	// moment (bound it), and must not call back into the member.
	Seeds func() []string

	// Keys is the keyring: AES keys of 16, 24 or 32 bytes; the first one encrypts, all of them decrypt.
	// Empty (and no KeyringFile): gossip is neither encrypted nor authenticated.
	Keys [][]byte
	// KeyringFile holds base64 keys, one per line, the first one primary. It is read at start (after
	// Keys) and again on every SIGHUP and ReloadKeyring, so a key can be rotated: add it everywhere,
	// make it first everywhere, then remove the old one everywhere.
	KeyringFile string

	// ProbeInterval is how often each member probes one other. Default 100 ms: each member
	// probes the others in turn, so with n members each one is probed about every 100 ms (by one
	// member or another) and by each member every (n-1) * 100 ms. Each member sends 10 probes a
	// second, whatever the fabric's size.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for its ack before asking others. Default: half
	// of ProbeInterval (50 ms). memberlist does not stretch it on a slow member (its awareness
	// stretches only the interval), and a direct probe that times out is not yet a suspicion: the
	// indirect probes through other members have the rest of the interval.
	ProbeTimeout time.Duration
	// SuspicionMult: a suspect member is declared dead after SuspicionMult * max(1, log10(n)) *
	// ProbeInterval unless it refutes. Default 40 (4 s with 10 members or fewer): a paused process has
	// 4 s to refute, and withdrawal does not wait for it (see Peer.Down).
	SuspicionMult int
	// SuspicionMaxTimeoutMult bounds how much longer the suspicion may last while too few peers
	// confirm it. Default 1: the timeout is fixed, so the time to dead does not grow with the number
	// of confirmations that arrive.
	SuspicionMaxTimeoutMult int
	// GossipInterval is how often state changes are gossiped. Default 100 ms.
	GossipInterval time.Duration
	// PushPullInterval is how often a full state exchange with one random member happens. Default 15 s.
	PushPullInterval time.Duration
	// RejoinInterval is how often a member that knows no other member re-joins its seeds. Default 2 s.
	RejoinInterval time.Duration
	// ReconnectInterval is how often a member joins one DEAD member whose host answers its dials, so
	// that the halves of a partition that outlasted memberlist's GossipToTheDeadTime (30 s) merge
	// again once it heals (see reconnect.go). It also tries at once when a DEAD member's host answers
	// again. Default 10 s.
	ReconnectInterval time.Duration
	// ForgetAfter drops a DEAD or LEFT member from Members() after this long. Default 24 h.
	ForgetAfter time.Duration
	// ReachTimeout is how long a dial of a suspect's gossip address waits for its host's kernel to
	// answer, and ReachAttempts how many unanswered dials in a row make it Unreachable (see reach.go:
	// a round counts only if this member heard from others before its last dial).
	// Defaults 200 ms and 2: a suspect host that is gone is Down 0.4 s after the suspicion reaches
	// this member, a paused process on a live host never is (a kernel answers a handshake in well
	// under a millisecond on a LAN).
	ReachTimeout  time.Duration
	ReachAttempts int
	// ReachDialer dials a member's gossip address and reports whether its host answered (a completed
	// handshake or a reset). Nil: a TCP dial. Tests give one that simulates hosts cut off.
	ReachDialer ReachDialer

	Logger *slog.Logger

	// Test hooks.
	//
	// gossipToTheDead, when set, replaces memberlist's GossipToTheDeadTime (30 s), so that a test's
	// partition outlasts it in seconds.
	gossipToTheDead time.Duration
	// wrapTransport, when set, wraps the member's transport (a test drops traffic in it to cut the
	// fabric in two).
	wrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

// Default returns the documented defaults for a member of the given role.
func Default(role Role, node string) Config {
	return Config{
		Role:                    role,
		Node:                    node,
		BindAddr:                net.JoinHostPort("0.0.0.0", strconv.Itoa(DefaultPort)),
		ProbeInterval:           100 * time.Millisecond,
		ProbeTimeout:            50 * time.Millisecond,
		SuspicionMult:           40,
		SuspicionMaxTimeoutMult: 1,
		GossipInterval:          100 * time.Millisecond,
		PushPullInterval:        15 * time.Second,
		RejoinInterval:          2 * time.Second,
		ReconnectInterval:       10 * time.Second,
		ForgetAfter:             24 * time.Hour,
		ReachTimeout:            200 * time.Millisecond,
		ReachAttempts:           2,
	}
}

// withDefaults fills zero fields from Default.
func (c Config) withDefaults() Config {
	d := Default(c.Role, c.Node)
	if c.Name == "" {
		c.Name = c.Node
	}
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = d.ProbeInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = c.ProbeInterval / 2
	}
	if c.SuspicionMult == 0 {
		c.SuspicionMult = d.SuspicionMult
	}
	if c.SuspicionMaxTimeoutMult == 0 {
		c.SuspicionMaxTimeoutMult = d.SuspicionMaxTimeoutMult
	}
	if c.GossipInterval == 0 {
		c.GossipInterval = d.GossipInterval
	}
	if c.PushPullInterval == 0 {
		c.PushPullInterval = d.PushPullInterval
	}
	if c.RejoinInterval == 0 {
		c.RejoinInterval = d.RejoinInterval
	}
	if c.ReconnectInterval == 0 {
		c.ReconnectInterval = d.ReconnectInterval
	}
	if c.ForgetAfter == 0 {
		c.ForgetAfter = d.ForgetAfter
	}
	if c.ReachTimeout == 0 {
		c.ReachTimeout = d.ReachTimeout
	}
	if c.ReachAttempts == 0 {
		c.ReachAttempts = d.ReachAttempts
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Role != RoleAgent && c.Role != RoleServer {
		return fmt.Errorf("gossip role %q: must be %q or %q", c.Role, RoleAgent, RoleServer)
	}
	if c.Name == "" {
		return errors.New("gossip member name is required")
	}
	if c.Role == RoleAgent && !c.VTEP.IsValid() {
		return fmt.Errorf("gossip member %q: an agent needs its VTEP address", c.Name)
	}
	if c.Role == RoleServer && c.GRPCAddr == "" {
		return fmt.Errorf("gossip member %q: a server needs its gRPC address", c.Name)
	}
	if _, err := parseAddrPort(c.BindAddr); err != nil {
		return fmt.Errorf("gossip bind address: %w", err)
	}
	if c.AdvertiseAddr != "" {
		if _, err := parseAddrPort(c.AdvertiseAddr); err != nil {
			return fmt.Errorf("gossip advertise address: %w", err)
		}
	}
	for i, k := range c.Keys {
		if err := pki.ValidGossipKey(k); err != nil {
			return fmt.Errorf("gossip key %d: %w", i+1, err)
		}
	}
	if c.ProbeTimeout >= c.ProbeInterval {
		return fmt.Errorf("gossip probe timeout %s must be shorter than the probe interval %s", c.ProbeTimeout, c.ProbeInterval)
	}
	if c.RejoinInterval < 0 || c.ReconnectInterval < 0 {
		return errors.New("gossip rejoin and reconnect intervals must not be negative")
	}
	if c.ReachTimeout < 0 || c.ReachAttempts < 0 {
		return errors.New("gossip reachability timeout and attempts must not be negative")
	}
	if c.SuspicionMult < 1 || c.SuspicionMaxTimeoutMult < 1 {
		return errors.New("gossip suspicion multipliers must be at least 1")
	}
	if _, err := encodeMeta(metaOf(c, false)); err != nil {
		return err
	}
	return nil
}

// parseAddrPort accepts IP:PORT (the IP may be a wildcard).
func parseAddrPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: want IP:PORT: %w", s, err)
	}
	return ap, nil
}
