package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vxfabric/vxfabric/membership"
	"github.com/vxfabric/vxfabric/nodeagent"
	"github.com/vxfabric/vxfabric/overlay/linux"
)

func init() { register(newAgentCmd) }

// agentFlags are the flags of `vxfab agent`.
type agentFlags struct {
	node            string
	vtep            string
	underlayIface   string
	join            []string
	gossipBind      string
	gossipAdvertise string
	gossipKey       string
	gossipKeyring   string
	servers         []string
	stateDir        string
	metricsListen   string
	logLevel        string
}

func newAgentCmd() *cobra.Command {
	f := agentFlags{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "run the node agent: converge this host's kernel to its desired state",
		Long: `Runs the node agent of one host. It joins the gossip cluster through --join (and finds the
servers there, unless --server names them), streams this node's desired state from a server and
applies it to the kernel of the current network namespace. On SIGTERM it leaves the gossip cluster
and exits; the kernel state stays as it is, and a restarted agent adopts it.

Without --join and --gossip-bind the agent runs without gossip (static membership): it needs
--server, registers itself, and withholds nothing when other hosts die.

--gossip-keyring names a file of base64 keys, one per line, the first one used to encrypt; it is
read again on SIGHUP. To rotate: add the new key as a second line on every host and SIGHUP them,
move it first everywhere and SIGHUP, then remove the old key everywhere and SIGHUP.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(cmd.Context(), f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.node, "node", "", "this host's node name (required)")
	fs.StringVar(&f.vtep, "vtep", "", "this host's underlay (VTEP) address (required)")
	fs.StringVar(&f.underlayIface, "underlay-iface", "", "interface carrying the VTEP address (NAT masquerades through it)")
	fs.StringSliceVar(&f.join, "join", nil, "gossip seeds HOST:PORT, comma separated")
	fs.StringVar(&f.gossipBind, "gossip-bind", "", "gossip address IP:PORT (default VTEP:"+strconv.Itoa(membership.DefaultPort)+")")
	fs.StringVar(&f.gossipAdvertise, "gossip-advertise", "", "gossip address other members use, IP:PORT (default: --gossip-bind)")
	fs.StringVar(&f.gossipKey, "gossip-key", "", "gossip encryption key, base64 of 16, 24 or 32 bytes (env VXFAB_GOSSIP_KEY)")
	fs.StringVar(&f.gossipKeyring, "gossip-keyring", "", "file of base64 gossip keys, first one primary, reloaded on SIGHUP")
	fs.StringSliceVar(&f.servers, "server", nil, "API servers HOST:PORT to fail over between, comma separated (default: found through gossip)")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/vxfabric/agent", "directory keeping the last applied revision")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "address serving Prometheus metrics on /metrics (default: none)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}

func runAgent(ctx context.Context, f agentFlags) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	vtep, err := netip.ParseAddr(f.vtep)
	if err != nil {
		return fmt.Errorf("--vtep %q: %w", f.vtep, err)
	}
	version := buildVersion()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	cfg := nodeagent.Default()
	cfg.Node = f.node
	cfg.VTEP = vtep
	cfg.UnderlayInterface = f.underlayIface
	cfg.Servers = trimAll(f.servers)
	cfg.StateDir = f.stateDir
	cfg.Version = version
	cfg.Logger = log
	cfg.Registerer = reg
	if cfg.DialOptions, err = agentDialOptions(); err != nil {
		return err
	}

	var member *membership.Member
	if len(f.join) > 0 || f.gossipBind != "" {
		mc := membership.Default(membership.RoleAgent, f.node)
		mc.VTEP = vtep
		mc.Version = version
		mc.BindAddr = firstNonEmpty(f.gossipBind, netip.AddrPortFrom(vtep, membership.DefaultPort).String())
		mc.AdvertiseAddr = f.gossipAdvertise
		mc.Join = trimAll(f.join)
		mc.KeyringFile = f.gossipKeyring
		mc.Logger = log
		if s := firstNonEmpty(f.gossipKey, os.Getenv("VXFAB_GOSSIP_KEY")); s != "" {
			key, err := membership.ParseKey(s)
			if err != nil {
				return fmt.Errorf("--gossip-key: %w", err)
			}
			mc.Keys = [][]byte{key}
		}
		if member, err = membership.New(mc); err != nil {
			return err
		}
		reg.MustRegister(member.Collector())
		cfg.Membership = member
	}
	leave := func() {
		if member == nil {
			return
		}
		if err := member.Leave(2 * time.Second); err != nil {
			log.Warn("gossip leave incomplete", "err", err)
		}
		if err := member.Shutdown(); err != nil {
			log.Warn("gossip shutdown", "err", err)
		}
	}

	dp, err := linux.New(linux.Config{Logger: log})
	if err != nil {
		leave()
		return fmt.Errorf("open the kernel datapath: %w", err)
	}
	defer dp.Close()
	cfg.Datapath = dp

	agent, err := nodeagent.New(cfg)
	if err != nil {
		leave()
		return err
	}
	var metricsSrv *http.Server
	if f.metricsListen != "" {
		lis, err := net.Listen("tcp", f.metricsListen)
		if err != nil {
			leave()
			return fmt.Errorf("--metrics-listen %s: %w", f.metricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := metricsSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server failed", "err", err)
			}
		}()
	}
	runErr := agent.Run(ctx)
	// Graceful stop: peers see LEFT (not DEAD); the kernel keeps every object.
	leave()
	if metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = metricsSrv.Shutdown(sctx)
		cancel()
	}
	return runErr
}

// agentDialOptions secures the connections to the servers with --tls-ca (and the node's client
// certificate --tls-cert/--tls-key, or VXFAB_TLS_*), or runs them in plaintext without a CA.
func agentDialOptions() ([]grpc.DialOption, error) {
	ca := firstNonEmpty(cliOpts.tlsCA, os.Getenv("VXFAB_TLS_CA"))
	certFile := firstNonEmpty(cliOpts.tlsCert, os.Getenv("VXFAB_TLS_CERT"))
	keyFile := firstNonEmpty(cliOpts.tlsKey, os.Getenv("VXFAB_TLS_KEY"))
	if ca == "" || cliOpts.insecure {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", ca, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no certificate", ca)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load node certificate %s: %w", certFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, nil
}

func trimAll(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
