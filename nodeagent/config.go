package nodeagent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/vxfabric/vxfabric/membership"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Config is one agent: which node it speaks for, where its servers are, and what it drives.
type Config struct {
	// Node is this host's name in the fabric (ports are bound to it).
	Node string
	// VTEP is this host's underlay address.
	VTEP netip.Addr
	// UnderlayInterface carries the VTEP (optional; NAT masquerades through it).
	UnderlayInterface string
	// Servers are API server addresses (HOST:PORT) to fail over between. Empty: the servers that
	// Membership reports (role server, alive).
	Servers []string
	// StateDir keeps the last applied revision across restarts, so that a control plane restored from
	// an older backup is refused after a restart too. Empty: kept in memory only (tests).
	StateDir string
	// DialOptions are used for every server connection (TLS credentials, per-RPC tokens).
	DialOptions []grpc.DialOption
	// Datapath is driven by the reconcile loop only; the agent never closes it.
	Datapath overlay.Datapath
	// Membership is the agent's gossip member, for server discovery and liveness. Nil: static
	// membership (the agent registers itself with RegisterNode; only the control plane's DEAD status,
	// written from a server's gossip, withholds a peer's entries).
	Membership *membership.Member
	// Links tells the agent when interfaces appear or disappear. Nil: netlink in the current
	// network namespace (Linux).
	Links LinkSource
	// Version is reported through RegisterNode (gossip carries it otherwise).
	Version string

	// FullResyncInterval is the period of the reconcile pass that catches drift. Default 30 s.
	FullResyncInterval time.Duration
	// BackoffMin and BackoffMax bound the exponential, jittered retry of a failed Sync stream or
	// Apply. Defaults 100 ms and 5 s.
	BackoffMin, BackoffMax time.Duration
	// RPCTimeout bounds a unary call (ReportApplied, RegisterNode). Default 5 s.
	RPCTimeout time.Duration

	Logger *slog.Logger
	// Registerer receives the agent's metrics. Nil: not exported.
	Registerer prometheus.Registerer
}

// Default returns the configuration `vxfab agent` starts from.
func Default() Config {
	return Config{
		FullResyncInterval: 30 * time.Second,
		BackoffMin:         100 * time.Millisecond,
		BackoffMax:         5 * time.Second,
		RPCTimeout:         5 * time.Second,
	}
}

func (c Config) withDefaults() Config {
	d := Default()
	if c.FullResyncInterval == 0 {
		c.FullResyncInterval = d.FullResyncInterval
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = d.BackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = d.BackoffMax
	}
	if c.RPCTimeout == 0 {
		c.RPCTimeout = d.RPCTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports a configuration the agent cannot run with.
func (c Config) Validate() error {
	c = c.withDefaults()
	if !vxfabricv1.ValidName(c.Node) {
		return fmt.Errorf("node name %q: want %s", c.Node, vxfabricv1.NameRule)
	}
	if !c.VTEP.IsValid() || c.VTEP.IsUnspecified() {
		return fmt.Errorf("node %q: a VTEP address is required", c.Node)
	}
	if !vxfabricv1.ValidVTEP(c.VTEP) {
		return fmt.Errorf("node %q: VTEP %s: want a unicast IPv4 address other hosts can reach (not loopback, link-local or broadcast)", c.Node, c.VTEP)
	}
	if c.Datapath == nil {
		return errors.New("agent needs a datapath")
	}
	if len(c.Servers) == 0 && c.Membership == nil {
		return errors.New("agent needs server addresses or gossip to discover them")
	}
	if c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin {
		return fmt.Errorf("backoff %s..%s: want 0 < min <= max", c.BackoffMin, c.BackoffMax)
	}
	if c.FullResyncInterval <= 0 || c.RPCTimeout <= 0 {
		return errors.New("resync interval and rpc timeout must be positive")
	}
	return nil
}
