package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/auth"
	"github.com/vxfabric/vxfabric/controlplane/fanout"
	"github.com/vxfabric/vxfabric/controlplane/gossipkeys"
	"github.com/vxfabric/vxfabric/controlplane/nodestatus"
	"github.com/vxfabric/vxfabric/controlplane/server"
	"github.com/vxfabric/vxfabric/membership"
)

func init() { register(newServerCmd) }

// serverFlags are the flags of `vxfab server`.
type serverFlags struct {
	listen           []string
	metricsListen    string
	name             string
	advertise        string
	gossip           gossipFlags
	revokeRotation   time.Duration
	auth             *auth.Config
	dataDir          string
	etcdEndpoints    []string
	etcdCert         string
	etcdKey          string
	etcdCA           string
	vniRanges        []string
	underlayMTU      uint32
	requestRetention time.Duration
	logLevel         string
}

func newServerCmd() *cobra.Command {
	def := server.Default()
	f := serverFlags{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "run the API server (embedded etcd unless --etcd-endpoints is given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg := prometheus.NewRegistry()
			cfg, err := serverConfig(f, reg)
			if err != nil {
				return err
			}
			stopMetrics, err := serveMetrics(cmd.Context(), f.metricsListen, reg, cfg.Logger)
			if err != nil {
				return err
			}
			defer stopMetrics()
			return server.Run(cmd.Context(), cfg)
		},
	}
	fs := cmd.Flags()
	fs.StringArrayVar(&f.listen, "listen", []string{def.Listen}, "API address: host:port or unix:///path; repeat to serve several")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (default: off)")
	fs.StringVar(&f.dataDir, "data-dir", def.DataDir, "directory of the embedded etcd's data")
	fs.StringSliceVar(&f.etcdEndpoints, "etcd-endpoints", nil, "external etcd cluster endpoints, comma separated (default: embedded etcd)")
	fs.StringVar(&f.etcdCert, "etcd-cert", "", "etcd client certificate")
	fs.StringVar(&f.etcdKey, "etcd-key", "", "etcd client key")
	fs.StringVar(&f.etcdCA, "etcd-ca", "", "CA of the etcd cluster")
	fs.StringArrayVar(&f.vniRanges, "vni-range", nil, "VNI pool range FIRST-LAST, repeatable (default 4096-16777214)")
	f.underlayMTU = def.UnderlayMTU
	newNumber(fs, &f.underlayMTU, "underlay-mtu", 1, math.MaxUint32, "the MTU of the hosts' underlay in bytes, such as 1500 or 9000",
		"MTU of the hosts' underlay; networks default to 50 less")
	fs.DurationVar(&f.requestRetention, "request-retention", def.RequestRetention, "how long a create's request_id is remembered (0: forever)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.name, "name", "", "this server's gossip member name (default server-HOSTNAME)")
	fs.StringVar(&f.advertise, "advertise", "", "API address HOST:PORT agents dial, announced through gossip (default: the first TCP --listen, with the gossip address's IP when that listen address is unspecified)")
	f.auth = auth.AddFlags(fs)
	fs.DurationVar(&f.revokeRotation, "gossip-revoke-rotation", gossipkeys.DefaultStepTimeout, "when a newer client certificate revocation list comes in force, start a gossip key rotation with this step timeout, so that revoked hosts are shut out of gossip too (0: leave it to vxfab gossip rotate)")
	f.gossip.addTo(fs, "0.0.0.0:"+strconv.Itoa(membership.DefaultPort)+" when --join is given; without both, no gossip")
	return cmd
}

// serverConfig turns the flags into the server's Config. Plugins (the Sync fan-out, the security
// interceptors and TokenService) are appended here, one line each.
func serverConfig(f serverFlags, reg prometheus.Registerer) (server.Config, error) {
	cfg := server.Default()
	log, err := newLogger(f.logLevel)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = log
	if len(f.listen) == 0 {
		return cfg, fmt.Errorf("--listen: at least one address is required")
	}
	cfg.Listen, cfg.AlsoListen = f.listen[0], f.listen[1:]
	cfg.DataDir = f.dataDir
	for _, e := range f.etcdEndpoints {
		if e = strings.TrimSpace(e); e != "" {
			cfg.Etcd.Endpoints = append(cfg.Etcd.Endpoints, e)
		}
	}
	cfg.Etcd.CertFile, cfg.Etcd.KeyFile, cfg.Etcd.CAFile = f.etcdCert, f.etcdKey, f.etcdCA
	if len(f.vniRanges) > 0 {
		cfg.VNIRanges = nil
		for _, s := range f.vniRanges {
			r, err := alloc.ParseRange(s)
			if err != nil {
				// alloc's own text names strconv ("vni range "abc": strconv.ParseUint: ...").
				return cfg, fmt.Errorf("--vni-range %s: want FIRST-LAST, VNIs of 1-%d with FIRST <= LAST (or one VNI)", flagValue(s), alloc.MaxVNI)
			}
			cfg.VNIRanges = append(cfg.VNIRanges, r)
		}
	}
	cfg.UnderlayMTU = f.underlayMTU
	cfg.RequestRetention = f.requestRetention
	// Authentication comes first: nothing may run for a caller before it is authenticated.
	ac := auth.Default(cfg.DataDir)
	if f.auth != nil {
		ac = *f.auth
		ac.DataDir = cfg.DataDir
	}
	cfg.Plugins = append([]server.Plugin{auth.Plugin(ac)}, cfg.Plugins...)
	if f.revokeRotation < 0 || f.revokeRotation > gossipkeys.MaxStepTimeout {
		return cfg, fmt.Errorf("--gossip-revoke-rotation %s: want 0 (off) up to %s", f.revokeRotation, gossipkeys.MaxStepTimeout)
	}
	if f.gossip.enabled() {
		mc, err := serverGossip(f, cfg)
		if err != nil {
			return cfg, err
		}
		cfg.Plugins = append(cfg.Plugins, nodestatus.Plugin(mc, f.revokeRotation))
	}
	hub := fanout.Default()
	hub.Registerer = reg
	cfg.Plugins = append(cfg.Plugins, fanout.Plugin(hub), storeMetrics(reg))
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// storeMetrics exports the store's group-commit counters.
func storeMetrics(reg prometheus.Registerer) server.Plugin {
	return func(_ context.Context, h server.Host) (server.Extension, error) {
		for _, c := range h.Store.Metrics() {
			if err := reg.Register(c); err != nil {
				return server.Extension{}, fmt.Errorf("register store metrics: %w", err)
			}
		}
		return server.Extension{}, nil
	}
}

// serverGossip is the server's membership: agents find the API at --advertise through it, and the
// leading server writes node status from it.
func serverGossip(f serverFlags, cfg server.Config) (membership.Config, error) {
	name := f.name
	if name == "" {
		host, _ := os.Hostname()
		name = "server-" + dnsLabel(host)
	}
	mc, err := f.gossip.config(membership.RoleServer, name, "0.0.0.0:"+strconv.Itoa(membership.DefaultPort), cfg.Logger)
	if err != nil {
		return mc, err
	}
	if err := checkGossipBind(mc.BindAddr); err != nil {
		return mc, err
	}
	mc.GRPCAddr = f.advertise
	if mc.GRPCAddr == "" {
		for _, l := range append([]string{cfg.Listen}, cfg.AlsoListen...) {
			host, port, err := net.SplitHostPort(l)
			if err != nil || strings.HasPrefix(l, "unix:") {
				continue
			}
			if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
				gossipHost, _, _ := net.SplitHostPort(firstNonEmpty(mc.AdvertiseAddr, mc.BindAddr))
				host = gossipHost
			}
			mc.GRPCAddr = net.JoinHostPort(host, port)
			break
		}
	}
	if mc.GRPCAddr == "" {
		return mc, fmt.Errorf("--advertise: no TCP --listen address to announce to agents")
	}
	if loopbackOnly(mc.GRPCAddr) && !loopbackOnly(firstNonEmpty(mc.AdvertiseAddr, mc.BindAddr)) {
		cfg.Logger.Warn("the API address announced to agents through gossip is a loopback address: agents on other hosts cannot reach it; give --listen <underlay address>:7400 (or --advertise)",
			"advertise", mc.GRPCAddr, "gossip", firstNonEmpty(mc.AdvertiseAddr, mc.BindAddr))
	}
	return mc, nil
}

// loopbackOnly tells whether HOST:PORT names a loopback address (a wildcard is not).
func loopbackOnly(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// dnsLabel turns a host name into a valid member name: lower case [a-z0-9-], at most 48 characters.
func dnsLabel(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0:
			b.WriteByte('-')
		}
		if b.Len() == 48 {
			break
		}
	}
	out := strings.Trim(b.String(), "-")
	if out == "" {
		return "local"
	}
	return out
}
