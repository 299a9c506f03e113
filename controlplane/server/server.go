// Package server assembles the vxfabric API server: etcd (embedded or external), the store, the
// allocator, the API services, gRPC health and reflection, and the plugins (Sync fan-out, security)
// that other packages hand in through Config.Plugins.
//
// It owns the process-level lifecycle (start, health tracking, graceful stop). It must never hold
// resource state itself and never implement API semantics: those live in controlplane/api.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/api"
	"github.com/vxfabric/vxfabric/controlplane/etcdembed"
	"github.com/vxfabric/vxfabric/controlplane/store"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

// healthKey is read (count only) to tell whether etcd answers linearizable requests.
const healthKey = store.Prefix + "health"

// Server is a running API server.
type Server struct {
	cfg      Config
	embedded *etcdembed.Server
	cli      *clientv3.Client
	store    *store.Store
	grpc     *grpc.Server
	health   *health.Server
	lis      []net.Listener // lis[0] is Config.Listen
	services []string
	closers  []func()

	cancel    context.CancelFunc // ends the plugins' context and the health loop
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New binds the listeners, then connects to (or starts) etcd and builds the services and plugins. It
// does not serve yet: call Serve. On error everything started is released, listeners included; a
// listener that cannot be bound fails New before anything is written.
func New(ctx context.Context, cfg Config) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("server config: %w", err)
	}
	log := cfg.Logger
	pool, _ := alloc.NewVNIPool(cfg.VNIRanges) // validated above
	lifetime, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, cancel: cancel}
	defer func() {
		if err != nil {
			s.release()
		}
	}()

	// Bind first: a start that cannot serve (an address in use, say) fails before it starts etcd or
	// the plugins, and so writes nothing (no data directory, no keys).
	for _, l := range append([]string{cfg.Listen}, cfg.AlsoListen...) {
		network, address, _ := listenAddr(l)
		if network == "unix" {
			if err := prepareSocket(address); err != nil {
				return nil, err
			}
		}
		lis, err := net.Listen(network, address)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", l, err)
		}
		s.lis = append(s.lis, lis)
	}

	if len(cfg.Etcd.Endpoints) == 0 {
		ec := etcdembed.Default(filepath.Join(cfg.DataDir, "etcd"))
		ec.Fast = cfg.EmbeddedFast
		ec.Logger = log
		if s.embedded, err = etcdembed.Start(ctx, ec); err != nil {
			return nil, err
		}
		log.Info("embedded etcd started", "dir", ec.Dir, "endpoint", s.embedded.Endpoint())
		// In the same process, the server reaches its etcd without a socket.
		s.cli = s.embedded.InProcessClient()
	} else if s.cli, err = newEtcdClient(cfg.Etcd); err != nil {
		return nil, err
	}
	s.store = store.New(s.cli)
	if cfg.RequestRetention > 0 {
		s.store.ExpireRequests(s.cli, cfg.RequestRetention)
	}

	opts := append([]grpc.ServerOption{}, cfg.ServerOptions...)
	var registers []func(*grpc.Server)
	var convergence api.ConvergenceSource
	host := Host{Etcd: s.cli, Store: s.store, Logger: log}
	for _, p := range cfg.Plugins {
		ext, err := p(lifetime, host)
		if err != nil {
			return nil, err // each plugin names itself ("server gossip: ...")
		}
		if ext.Close != nil {
			s.closers = append(s.closers, ext.Close)
		}
		opts = append(opts, ext.ServerOptions...)
		if ext.Register != nil {
			registers = append(registers, ext.Register)
		}
		s.services = append(s.services, ext.Services...)
		if convergence == nil {
			convergence = ext.Convergence
		}
		if host.Revocations == nil {
			host.Revocations = ext.Revocations
		}
	}

	svcs, err := api.New(api.Config{
		Store: s.store, Alloc: alloc.New(s.store, pool), VNIs: pool, UnderlayMTU: cfg.UnderlayMTU,
		Convergence: convergence, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	s.grpc = grpc.NewServer(opts...)
	svcs.Register(s.grpc)
	for _, r := range registers {
		r(s.grpc)
	}
	s.services = append(s.services, api.ServiceNames...)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.setServing(false)

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.trackHealth(lifetime)
	}()
	return s, nil
}

func newEtcdClient(c EtcdConfig) (*clientv3.Client, error) {
	cc := clientv3.Config{
		Endpoints: c.Endpoints,
		// No DialTimeout: the dial does not block, so the server starts (NOT_SERVING) while etcd is
		// still unreachable, and health follows etcd from then on.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	}
	if c.CertFile != "" || c.CAFile != "" {
		tlsCfg, err := transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd client TLS: %w", err)
		}
		cc.TLS = tlsCfg
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", c.Endpoints, err)
	}
	return cli, nil
}

// prepareSocket creates the socket's directory and removes a stale socket left by a crash.
func prepareSocket(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create socket directory for %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("listen on %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	return nil
}

// Addr is the bound address of Config.Listen (useful with port 0).
func (s *Server) Addr() net.Addr { return s.lis[0].Addr() }

// Etcd is the server's etcd client (owned by the server). With the embedded etcd it is in-process
// and has no endpoints: other processes reach that etcd at EtcdEndpoint.
func (s *Server) Etcd() *clientv3.Client { return s.cli }

// EtcdEndpoint is where another process reaches this server's etcd: the embedded etcd's socket, or
// the first of --etcd-endpoints.
func (s *Server) EtcdEndpoint() string {
	if s.embedded != nil {
		return s.embedded.Endpoint()
	}
	return s.cfg.Etcd.Endpoints[0]
}

// Store is the server's store.
func (s *Server) Store() *store.Store { return s.store }

// Serve serves every listener until Close; it returns nil after Close, or the first listener's
// failure.
func (s *Server) Serve() error {
	errc := make(chan error, len(s.lis))
	for _, lis := range s.lis {
		s.cfg.Logger.Info("api server serving", "addr", lis.Addr().String())
		go func() { errc <- s.grpc.Serve(lis) }()
	}
	var first error
	for range s.lis {
		if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) && first == nil {
			first = err
			s.grpc.Stop() // one listener failed: stop serving the others too
		}
	}
	return first
}

func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	for _, name := range s.services {
		s.health.SetServingStatus(name, st)
	}
}

// trackHealth keeps the health service at SERVING exactly while etcd answers a linearizable read.
func (s *Server) trackHealth(ctx context.Context) {
	t := time.NewTicker(s.cfg.HealthInterval)
	defer t.Stop()
	serving := false
	for {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Etcd.DialTimeout)
		_, err := s.cli.Get(cctx, healthKey, clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		if ok := err == nil; ok != serving {
			serving = ok
			s.setServing(ok)
			if ok {
				s.cfg.Logger.Info("etcd reachable, serving")
			} else {
				s.cfg.Logger.Warn("etcd unreachable, not serving", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close stops the server gracefully: health goes NOT_SERVING, plugins' context ends, in-flight calls
// finish (streams are cut after ShutdownTimeout), then plugins, the etcd client and the embedded etcd
// are closed. Safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.health.Shutdown()
		s.cancel()
		done := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(s.cfg.ShutdownTimeout):
			s.grpc.Stop()
			<-done
		}
		s.release()
	})
}

// release closes what New opened, in reverse order.
func (s *Server) release() {
	s.cancel()
	s.wg.Wait()
	for _, lis := range s.lis {
		lis.Close() // already closed when Serve ran; a listener never served is closed here
	}
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
	if s.cli != nil {
		s.cli.Close()
	}
	if s.embedded != nil {
		s.embedded.Close()
		s.cfg.Logger.Info("embedded etcd stopped")
	}
}

// Run starts a server and serves until ctx ends, then stops it gracefully.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve() }()
	select {
	case <-ctx.Done():
		s.Close()
		return <-errc
	case err := <-errc:
		s.Close()
		return err
	}
}
