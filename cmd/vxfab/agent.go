package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vxfabric/vxfabric/controlplane/auth"
	"github.com/vxfabric/vxfabric/membership"
	"github.com/vxfabric/vxfabric/nodeagent"
	"github.com/vxfabric/vxfabric/nodeagent/binpages"
	"github.com/vxfabric/vxfabric/overlay/linux"
)

func init() { register(newAgentCmd) }

// agentFlags are the flags of `vxfab agent`.
type agentFlags struct {
	node          string
	vtep          string
	underlayIface string
	gossip        gossipFlags
	servers       []string
	stateDir      string
	metricsListen string
	logLevel      string
	tlsCRL        string
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

--gossip-keyring names a file of base64 keys, one per line, the first one used to encrypt. Rotate
the key with vxfab gossip rotate: the agent receives the new keyring through Sync and rewrites this
file with it, so a restart starts with the current keys. Before the first such rotation the file is
read again on SIGHUP (add a key as a second line everywhere, SIGHUP; move it first, SIGHUP; remove
the old one, SIGHUP).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(cmd.Context(), f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.node, "node", "", "this host's node name (required)")
	fs.StringVar(&f.vtep, "vtep", "", "this host's underlay (VTEP) address (required)")
	mustRequire(cmd, "node", "vtep")
	fs.StringVar(&f.underlayIface, "underlay-iface", "", "interface carrying the VTEP address (NAT masquerades through it)")
	f.gossip.addTo(fs, "VTEP:"+strconv.Itoa(membership.DefaultPort))
	fs.StringSliceVar(&f.servers, "server", nil, "API servers HOST:PORT to fail over between, comma separated (default: found through gossip)")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/vxfabric/agent", "directory keeping the last applied revision")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "address serving Prometheus metrics on /metrics (default: none)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.tlsCRL, "tls-crl", "", "the CA's revocation list, as \"vxfab certs revoke\" writes it: a server whose certificate is on it is refused; read again within a second of a change (env VXFAB_TLS_CRL)")
	return cmd
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}

func runAgent(ctx context.Context, f agentFlags) error {
	log, err := newLogger(f.logLevel)
	if err != nil {
		return err
	}
	vtep, err := netip.ParseAddr(f.vtep)
	if err != nil {
		return fmt.Errorf("--vtep %s: want this host's underlay IP address, such as 198.18.0.11", flagValue(f.vtep))
	}
	version := buildVersion()
	reg := prometheus.NewRegistry()

	cfg := nodeagent.Default()
	cfg.Node = f.node
	cfg.VTEP = vtep
	cfg.UnderlayInterface = f.underlayIface
	cfg.Servers = trimAll(f.servers)
	cfg.StateDir = f.stateDir
	cfg.Version = version
	cfg.Logger = log
	cfg.Registerer = reg
	if cfg.DialOptions, err = agentDialOptions(f.tlsCRL, log); err != nil {
		return err
	}

	var member *membership.Member
	if f.gossip.enabled() {
		mc, err := f.gossip.config(membership.RoleAgent, f.node, netip.AddrPortFrom(vtep, membership.DefaultPort).String(), log)
		if err != nil {
			return err
		}
		mc.VTEP = vtep
		if err := checkGossipBind(mc.BindAddr); err != nil {
			return err
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
	stopMetrics, err := serveMetrics(ctx, f.metricsListen, reg, log)
	if err != nil {
		leave()
		return err
	}
	go func() {
		select {
		case <-agent.Converged():
			// Most of the binary's pages mapped so far only served start-up (binpages).
			before, after, err := binpages.Release()
			if err != nil {
				log.Warn("cannot release the start-up pages of the binary", "err", err)
				return
			}
			log.Info("start-up over: binary pages released", "resident_before_kib", before>>10, "resident_after_kib", after>>10)
		case <-ctx.Done():
		}
	}()
	runErr := agent.Run(ctx)
	// Graceful stop: peers see LEFT (not DEAD); the kernel keeps every object.
	leave()
	stopMetrics()
	return runErr
}

// agentDialOptions secures the connections to the servers with --tls-ca (and the node's client
// certificate --tls-cert/--tls-key, the revocation list --tls-crl, or VXFAB_TLS_*), or runs them in
// plaintext without a CA.
func agentDialOptions(crl string, log *slog.Logger) ([]grpc.DialOption, error) {
	cc := auth.ClientConfig{
		CAFile:   firstNonEmpty(cliOpts.tlsCA, os.Getenv("VXFAB_TLS_CA")),
		CertFile: firstNonEmpty(cliOpts.tlsCert, os.Getenv("VXFAB_TLS_CERT")),
		KeyFile:  firstNonEmpty(cliOpts.tlsKey, os.Getenv("VXFAB_TLS_KEY")),
		CRLFile:  firstNonEmpty(crl, os.Getenv("VXFAB_TLS_CRL")),
		Logger:   log,
	}
	if err := certKeyPair(
		firstSource(source{cliOpts.tlsCert, "--tls-cert"}, source{os.Getenv("VXFAB_TLS_CERT"), "VXFAB_TLS_CERT"}),
		firstSource(source{cliOpts.tlsKey, "--tls-key"}, source{os.Getenv("VXFAB_TLS_KEY"), "VXFAB_TLS_KEY"}),
	); err != nil {
		return nil, err
	}
	if cc.CAFile == "" || cliOpts.insecure {
		if cc.CRLFile != "" {
			return nil, errors.New("--tls-crl needs --tls-ca: without it the agent does not check the server")
		}
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	return cc.DialOptions()
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
