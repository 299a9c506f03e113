package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/api"
	"github.com/vxfabric/vxfabric/controlplane/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// DefaultListen is the API address when none is given.
const DefaultListen = "127.0.0.1:7400"

// EtcdConfig says how to reach an external etcd cluster. With no endpoints the server runs an
// embedded single-node etcd under Config.DataDir instead.
type EtcdConfig struct {
	Endpoints []string
	// CertFile and KeyFile: client certificate (both or neither). CAFile: the CA that signed the
	// cluster's certificates. Any of them set means TLS.
	CertFile, KeyFile, CAFile string
	// DialTimeout bounds each etcd request made to check health. Default 2 s.
	DialTimeout time.Duration
}

// Host is what the server hands a Plugin: the shared etcd client and store. Plugins must not close
// them.
type Host struct {
	Etcd   *clientv3.Client
	Store  *store.Store
	Logger *slog.Logger
	// Revocations is the client certificate revocation list the server enforces, as an earlier
	// plugin gave it (Extension.Revocations); nil without one.
	Revocations RevocationList
}

// RevocationList is a client certificate revocation list in force (pki.Revocations).
type RevocationList interface {
	// InForce returns the list's issuer (an identifier of the CA that signed it), its CRL number
	// (nil before there is a list; numbering starts again with a new CA) and how many certificates
	// it revokes.
	InForce() (issuer string, number *big.Int, revoked int)
}

// Extension is what a Plugin adds to the server.
type Extension struct {
	// ServerOptions are passed to grpc.NewServer after Config.ServerOptions. Interceptors must use
	// grpc.ChainUnaryInterceptor / grpc.ChainStreamInterceptor, so that several plugins compose.
	ServerOptions []grpc.ServerOption
	// Register adds the plugin's services to the gRPC server (before it serves).
	Register func(*grpc.Server)
	// Services are the full names of the services Register adds; health reports them with the rest.
	Services []string
	// Convergence, when set, gives NodeService the nodes' applied and desired revisions (the first
	// plugin that sets it wins).
	Convergence api.ConvergenceSource
	// Revocations, when set, is the revocation list the plugin enforces, handed to the plugins after
	// it as Host.Revocations (the first plugin that sets it wins).
	Revocations RevocationList
	// Close releases what the plugin holds; called once at shutdown after the gRPC server stopped,
	// before the etcd client is closed.
	Close func()
}

// Plugin extends the server without editing this package: the Sync fan-out hub, the security
// interceptors and the TokenService are plugins. It is called once, in Config.Plugins order, after
// etcd is connected and before the gRPC server is built; ctx is cancelled when the server begins to
// stop, so goroutines started by the plugin (watches) can end on it.
type Plugin func(ctx context.Context, host Host) (Extension, error)

// Config is the configuration of `vxfab server`.
type Config struct {
	// Listen is "host:port" (TCP) or "unix:///path". Default 127.0.0.1:7400; port 0 picks a free one.
	Listen string
	// AlsoListen are further addresses served alongside Listen, in the same forms (the lab serves its
	// agents on the underlay and its CLI on a unix socket).
	AlsoListen []string
	// DataDir holds the embedded etcd's data (DataDir/etcd). Default DefaultDataDir().
	DataDir string
	Etcd    EtcdConfig
	// EmbeddedFast shortens the embedded etcd's raft ticks (tests).
	EmbeddedFast bool
	// VNIRanges is the pool VNIs are allocated from. Default 4096-16777214.
	VNIRanges []alloc.Range
	// UnderlayMTU of the hosts; networks default to UnderlayMTU - 50. Default 1500.
	UnderlayMTU uint32
	// HealthInterval is how often etcd is checked for the health service. Default 1 s.
	HealthInterval time.Duration
	// ShutdownTimeout bounds the graceful stop (open streams are cut after it). Default 5 s.
	ShutdownTimeout time.Duration
	// RequestRetention is how long a create's request_id is remembered (etcd deletes the record with
	// its lease after that; see store.ExpireRequests). Default 24 h; 0 keeps records forever.
	RequestRetention time.Duration
	Logger           *slog.Logger
	// ServerOptions are extra gRPC server options (credentials, interceptors; see Extension).
	ServerOptions []grpc.ServerOption
	// Plugins add services, options and a convergence source; see Plugin.
	Plugins []Plugin
}

// DefaultDataDir is /var/lib/vxfabric for root, else $XDG_STATE_HOME/vxfabric
// (~/.local/state/vxfabric).
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/vxfabric"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "vxfabric")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "vxfabric")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("vxfabric-%d", os.Getuid()))
}

// Default returns the configuration of a plain `vxfab server`.
func Default() Config {
	return Config{
		Listen:           DefaultListen,
		DataDir:          DefaultDataDir(),
		Etcd:             EtcdConfig{DialTimeout: 2 * time.Second},
		VNIRanges:        alloc.DefaultRanges(),
		UnderlayMTU:      1500,
		HealthInterval:   time.Second,
		ShutdownTimeout:  5 * time.Second,
		RequestRetention: store.DefaultRequestRetention,
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
}

// listenAddr splits Listen into a network and an address.
func listenAddr(s string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(s, "unix://"); ok {
		if !strings.HasPrefix(path, "/") {
			return "", "", fmt.Errorf("listen %q: want unix:///absolute/path", s)
		}
		return "unix", path, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", "", fmt.Errorf("listen %q: want host:port or unix:///path: %w", s, err)
	}
	return "tcp", s, nil
}

// Validate reports a configuration the server cannot start with.
func (c Config) Validate() error {
	for _, l := range append([]string{c.Listen}, c.AlsoListen...) {
		if _, _, err := listenAddr(l); err != nil {
			return err
		}
	}
	if len(c.Etcd.Endpoints) == 0 && c.DataDir == "" {
		return errors.New("a data directory is required for the embedded etcd")
	}
	for _, e := range c.Etcd.Endpoints {
		if strings.TrimSpace(e) == "" {
			return errors.New("etcd endpoints: empty endpoint")
		}
	}
	if (c.Etcd.CertFile == "") != (c.Etcd.KeyFile == "") {
		return errors.New("etcd client certificate and key go together")
	}
	if len(c.Etcd.Endpoints) == 0 && (c.Etcd.CertFile != "" || c.Etcd.CAFile != "") {
		return errors.New("etcd TLS files need --etcd-endpoints (the embedded etcd is plaintext on loopback)")
	}
	if _, err := alloc.NewVNIPool(c.VNIRanges); err != nil {
		return err
	}
	if c.UnderlayMTU < 626 || c.UnderlayMTU > 65535 {
		return fmt.Errorf("underlay mtu %d: must be 626-65535 (networks get 50 bytes less)", c.UnderlayMTU)
	}
	if c.RequestRetention < 0 || c.RequestRetention > 0 && c.RequestRetention < time.Minute {
		return fmt.Errorf("request retention %s: must be at least a minute (0 keeps request ids forever)", c.RequestRetention)
	}
	if c.HealthInterval <= 0 || c.ShutdownTimeout <= 0 || c.Etcd.DialTimeout <= 0 {
		return errors.New("health interval, shutdown timeout and etcd dial timeout must be positive")
	}
	if c.Logger == nil {
		return errors.New("a logger is required")
	}
	for i, p := range c.Plugins {
		if p == nil {
			return fmt.Errorf("plugin %d is nil", i)
		}
	}
	return nil
}
