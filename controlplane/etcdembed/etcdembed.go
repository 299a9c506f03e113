// Package etcdembed runs the single-node etcd that `vxfab server` uses when no external etcd cluster is
// given. It owns the etcd process lifecycle and its logging; it never reads or writes vxfabric keys.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/pkg/v3/featuregate"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/features"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config says where the embedded etcd keeps its data and listens.
type Config struct {
	// Dir holds the data; created if missing.
	Dir string
	// ClientURL is where clients connect (port 0 picks a free one). Empty, the default: a unix
	// socket in Dir, which Start makes private to this user (0700), so that no other local user can
	// reach the unauthenticated etcd; when Dir's path is too long for a socket, the socket goes in
	// a private temporary directory instead.
	ClientURL string
	// PeerURL is the raft peer listener (unused by a single node, but etcd needs one). Empty, the
	// default: a unix socket beside the client's, for the same reason.
	PeerURL string
	// Fast shortens raft ticks for tests (TickMs 10, ElectionMs 100).
	Fast bool
	// ReadyTimeout bounds the wait for the server to serve. Default 30 s.
	ReadyTimeout time.Duration
	// AutoCompactionRevisions keeps this many revisions of history (0: the default, 100000).
	AutoCompactionRevisions int
	Logger                  *slog.Logger
}

// Default returns the configuration `vxfab server` uses for a data directory.
func Default(dir string) Config {
	return Config{Dir: dir, ReadyTimeout: 30 * time.Second}
}

// Validate reports a configuration that cannot start.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("etcd data directory is required")
	}
	for _, u := range []string{c.ClientURL, c.PeerURL} {
		if _, err := url.Parse(u); err != nil {
			return fmt.Errorf("etcd url %q: %w", u, err)
		}
	}
	return nil
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	closing   *atomic.Bool
	closeOnce sync.Once
	sockDir   string // a private temporary directory of the sockets, removed by Close; "" when none
}

// maxSocketPath is the longest path a unix socket can have (sun_path less its terminating NUL).
const maxSocketPath = 107

// Start runs etcd and returns once it serves clients.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Absolute: a relative path would make a socket URL's first element its host.
	if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
		return nil, fmt.Errorf("etcd data directory: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create etcd data directory: %w", err)
	}
	if fi, err := os.Stat(cfg.Dir); err != nil {
		return nil, fmt.Errorf("etcd data directory: %w", err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("etcd data directory %s is open to other users (%s) and cannot be closed: %w", cfg.Dir, fi.Mode().Perm(), err)
		}
	}
	srv := &Server{closing: &atomic.Bool{}}
	if cfg.ClientURL == "" || cfg.PeerURL == "" {
		dir := cfg.Dir
		// etcd replaces a socket file before it finds the data locked by another instance: a second
		// instance must not take the first one's sockets.
		if c, err := net.DialTimeout("unix", filepath.Join(dir, "client.sock"), time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("an etcd already serves the data directory %s", cfg.Dir)
		}
		if len(filepath.Join(dir, "client.sock")) > maxSocketPath {
			if dir, err = os.MkdirTemp("", "vxfab-etcd-"); err != nil {
				return nil, fmt.Errorf("directory of the etcd sockets: %w", err)
			}
			srv.sockDir = dir
			defer func() {
				if err != nil {
					_ = os.RemoveAll(dir)
				}
			}()
		}
		if cfg.ClientURL == "" {
			cfg.ClientURL = "unix://" + filepath.Join(dir, "client.sock")
		}
		if cfg.PeerURL == "" {
			cfg.PeerURL = "unix://" + filepath.Join(dir, "peer.sock")
		}
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	curl, _ := url.Parse(cfg.ClientURL)
	purl, _ := url.Parse(cfg.PeerURL)

	ec := embed.NewConfig()
	ec.Name = "vxfabric"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	if purl.Scheme == "unix" && purl.Host == "" {
		// etcd listens for peers on a unix URL's host part: the socket's absolute path goes there
		// (it would not survive as a URL's host in text, so only the listener gets it).
		ec.ListenPeerUrls = []url.URL{{Scheme: "unix", Host: purl.Path}}
	}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// History kept for agents that resume a Sync stream after an outage.
	ec.AutoCompactionMode = "revision"
	ec.AutoCompactionRetention = "100000"
	if cfg.AutoCompactionRevisions > 0 {
		ec.AutoCompactionRetention = fmt.Sprint(cfg.AutoCompactionRevisions)
	}
	if cfg.Fast {
		ec.TickMs, ec.ElectionMs = 10, 100
	}
	// Request records ride on leases (store.ExpireRequests). Without checkpoints, every restart gives
	// each lease its whole TTL again, and a server restarted more often than the retention would keep
	// its records forever. With them, the leader persists each lease's remaining TTL every 5 minutes
	// and a restart resumes from there.
	gates, ok := ec.ServerFeatureGate.(featuregate.MutableFeatureGate)
	if !ok {
		return nil, errors.New("embedded etcd: its feature gates cannot be set")
	}
	if err := gates.SetFromMap(map[string]bool{
		string(features.LeaseCheckpoint): true, string(features.LeaseCheckpointPersist): true,
	}); err != nil {
		return nil, fmt.Errorf("embedded etcd feature gates: %w", err)
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(&slogCore{log: cfg.Logger, closing: srv.closing}))

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(cfg.ReadyTimeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after %s", cfg.Dir, cfg.ReadyTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	srv.etcd = e
	return srv, nil
}

// Endpoint is the address clients connect to (the bound port when ClientURL asked for port 0).
func (s *Server) Endpoint() string {
	a := s.etcd.Clients[0].Addr()
	if a.Network() == "unix" {
		return "unix://" + a.String()
	}
	return "http://" + a.String()
}

// Client opens a client to this server. The caller closes it.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Close stops etcd. What etcd logs while shutting down is dropped: it is noise to a user.
// Safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.etcd.Close()
		if s.sockDir != "" {
			_ = os.RemoveAll(s.sockDir)
		}
	})
}

// slogCore forwards etcd's warnings and errors to slog.
type slogCore struct {
	log     *slog.Logger
	fields  []zapcore.Field
	closing *atomic.Bool
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel && !c.closing.Load() }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(append([]zapcore.Field{}, c.fields...), fields...), closing: c.closing}
}

// expectedWarnings are what etcd warns about by design of an embedded single node on loopback: the
// client port serves both gRPC and HTTP, and the auth token is the simple kind (etcd auth is off;
// vxfabric authenticates its own callers). Users cannot act on them, so they are not shown.
var expectedWarnings = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) && !expectedWarnings[e.Message] {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(c.fields, fields...) {
		f.AddTo(enc)
	}
	attrs := make([]any, 0, 2*len(enc.Fields)+2)
	attrs = append(attrs, "component", "etcd")
	for k, v := range enc.Fields {
		attrs = append(attrs, k, v)
	}
	level := slog.LevelWarn
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.log.Log(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
