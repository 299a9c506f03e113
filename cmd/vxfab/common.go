package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/spf13/pflag"
	"github.com/vxfabric/vxfabric/membership"

	"github.com/vxfabric/vxfabric/security/pki"
)

// newLogger is the structured logger of the daemons (server, agent), on stderr.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// gossipFlags are the gossip options the server and the agent share.
type gossipFlags struct {
	join      []string
	bind      string
	advertise string
	key       string
	keyring   string
	probe     time.Duration
	suspicion int
}

func (g *gossipFlags) addTo(fs *pflag.FlagSet, bindDefault string) {
	fs.StringSliceVar(&g.join, "join", nil, "gossip seeds HOST:PORT, comma separated")
	fs.StringVar(&g.bind, "gossip-bind", "", "gossip address IP:PORT (default "+bindDefault+")")
	fs.StringVar(&g.advertise, "gossip-advertise", "", "gossip address other members use, IP:PORT (default: --gossip-bind)")
	fs.StringVar(&g.key, "gossip-key", "", "gossip encryption key, base64 of 16, 24 or 32 bytes (env VXFAB_GOSSIP_KEY)")
	fs.StringVar(&g.keyring, "gossip-keyring", "", "file of base64 gossip keys, first one primary; rewritten by vxfab gossip rotate, reloaded on SIGHUP until then")
	def := membership.Default(membership.RoleAgent, "")
	// Zero or less given explicitly is refused when parsed (config would take it for "default").
	g.probe = def.ProbeInterval
	fs.Var((*positiveDuration)(&g.probe), "gossip-probe-interval", "how often each member probes another (probe timeout: half of it)")
	g.suspicion = def.SuspicionMult
	newNumber(fs, &g.suspicion, "gossip-suspicion-mult", 1, maxInt, "a whole number of probe intervals, 1 or more",
		"a suspect member is declared dead after this many probe intervals (times log10 of the cluster size above 10; the default is 4 s at the default interval): lower detects dead processes sooner but may declare a paused one dead (a host that is cut off is withdrawn before, whatever this says)")
}

// enabled: gossip runs when the member has somewhere to bind or someone to join.
func (g *gossipFlags) enabled() bool { return len(g.join) > 0 || g.bind != "" }

// config is the membership configuration these flags describe; defaultBind applies without --gossip-bind.
func (g *gossipFlags) config(role membership.Role, node, defaultBind string, log *slog.Logger) (membership.Config, error) {
	mc := membership.Default(role, node)
	mc.Version = buildVersion()
	mc.BindAddr = firstNonEmpty(g.bind, defaultBind)
	mc.AdvertiseAddr = g.advertise
	mc.Join = trimAll(g.join)
	mc.KeyringFile = g.keyring
	// Zero is a gossipFlags made without addTo (the flags refuse it): the defaults stay.
	if g.probe > 0 {
		mc.ProbeInterval, mc.ProbeTimeout = g.probe, g.probe/2
	}
	if g.suspicion > 0 {
		mc.SuspicionMult = g.suspicion
	}
	mc.Logger = log
	if s := firstNonEmpty(g.key, os.Getenv("VXFAB_GOSSIP_KEY")); s != "" {
		key, err := pki.ParseGossipKey(s)
		if err != nil {
			return mc, fmt.Errorf("--gossip-key: %w", err)
		}
		mc.Keys = [][]byte{key}
	}
	return mc, nil
}

// checkGossipBind binds the gossip address as memberlist will (TCP and UDP) and lets it go again, so
// that an address this host does not have, or a port in use, is reported as such before anything
// starts, not from deep inside the gossip library.
func checkGossipBind(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("gossip: listen on %s: %w", addr, syscallCause(err))
	}
	l.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("gossip: listen on %s (udp): %w", addr, syscallCause(err))
	}
	pc.Close()
	return nil
}

// syscallCause is what the kernel said ("cannot assign requested address"), without the net
// package's "listen tcp 198.18.0.2:7946: bind:" in front, or err itself when there is no such cause.
func syscallCause(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}
