package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/fanout"
	"github.com/vxfabric/vxfabric/controlplane/server"
)

func init() { register(newServerCmd) }

// serverFlags are the flags of `vxfab server`.
type serverFlags struct {
	listen        []string
	metricsListen string
	dataDir       string
	etcdEndpoints []string
	etcdCert      string
	etcdKey       string
	etcdCA        string
	vniRanges     []string
	underlayMTU   uint32
	logLevel      string
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
	fs.Uint32Var(&f.underlayMTU, "underlay-mtu", def.UnderlayMTU, "MTU of the hosts' underlay; networks default to 50 less")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

// serverConfig turns the flags into the server's Config. Plugins (the Sync fan-out, the security
// interceptors and TokenService) are appended here, one line each.
func serverConfig(f serverFlags, reg prometheus.Registerer) (server.Config, error) {
	cfg := server.Default()
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return cfg, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
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
				return cfg, fmt.Errorf("--vni-range: %w", err)
			}
			cfg.VNIRanges = append(cfg.VNIRanges, r)
		}
	}
	cfg.UnderlayMTU = f.underlayMTU
	hub := fanout.Default()
	hub.Registerer = reg
	cfg.Plugins = append(cfg.Plugins, fanout.Plugin(hub))
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}
