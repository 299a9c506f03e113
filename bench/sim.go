package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vxfabric/vxfabric/nodeagent"
	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/fake"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// SimConfig is a simulated fabric: one API server (embedded etcd, the fan-out hub as a plugin) and
// Hosts simulated hosts, each running the real node agent over the fake datapath with its own gRPC
// connection and static membership (RegisterNode, no gossip).
type SimConfig struct {
	Hosts int
	// Dir holds the embedded etcd's data; it must exist.
	Dir string
	// Logger receives the agents' logs; LogLevel is the server process's.
	Logger   *slog.Logger
	LogLevel slog.Level
	// ServerProfile, when set, receives the server process's CPU profile (written when it stops).
	ServerProfile string
	// ReadyTimeout bounds the wait for every agent's first Apply.
	ReadyTimeout time.Duration
}

// Sim is a running simulated fabric.
type Sim struct {
	cfg     SimConfig
	srv     *simServer
	commits *commitWatch
	conn    *grpc.ClientConn
	hosts   []*simHost
	watch   *applyWatch
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	Tenants  vxfabricv1.TenantServiceClient
	Networks vxfabricv1.NetworkServiceClient
	Ports    vxfabricv1.PortServiceClient

	macSeq atomic.Uint64
}

// simHost is one simulated machine.
type simHost struct {
	index int
	name  string
	agent *nodeagent.Agent
}

// hookedDatapath tells the watch what each successful Apply or ApplyDelta programmed.
type hookedDatapath struct {
	overlay.Datapath
	host  int
	watch *applyWatch
}

func (h *hookedDatapath) Apply(ctx context.Context, d overlay.DesiredState) (overlay.Result, error) {
	res, err := h.Datapath.Apply(ctx, d)
	if err == nil {
		h.watch.applied(h.host, time.Now(), res)
	}
	return res, err
}

func (h *hookedDatapath) ApplyDelta(ctx context.Context, d overlay.Delta) (overlay.Result, error) {
	res, err := h.Datapath.ApplyDelta(ctx, d)
	if err == nil {
		h.watch.applied(h.host, time.Now(), res)
	}
	return res, err
}

// quietLinks is the LinkSource of a simulated host: no interfaces come or go.
type quietLinks struct{}

func (quietLinks) Run(ctx context.Context, _ func(string), _ func()) error {
	<-ctx.Done()
	return nil
}

// HostName names simulated host i (0-based).
func HostName(i int) string { return fmt.Sprintf("h%04d", i+1) }

// hostVTEP gives simulated host i an address in 198.18.0.0/15.
func hostVTEP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18 + byte(i/62500), byte(i / 250 % 250), byte(i%250 + 1)})
}

// StartSim starts the server and the agents and waits until every agent has applied its first
// snapshot.
func StartSim(ctx context.Context, cfg SimConfig) (_ *Sim, err error) {
	if cfg.Hosts < 1 || cfg.Hosts > 100000 {
		return nil, fmt.Errorf("simulated hosts %d: want 1-100000", cfg.Hosts)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 2 * time.Minute
	}
	s := &Sim{cfg: cfg, watch: newApplyWatch(cfg.Hosts)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.srv, err = startSimServer(ctx, cfg.Dir, "", cfg.LogLevel, cfg.ServerProfile); err != nil {
		return nil, err
	}
	addr := s.srv.addr
	s.commits = s.srv.commits
	if s.conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return nil, fmt.Errorf("dial server %s: %w", addr, err)
	}
	s.Tenants = vxfabricv1.NewTenantServiceClient(s.conn)
	s.Networks = vxfabricv1.NewNetworkServiceClient(s.conn)
	s.Ports = vxfabricv1.NewPortServiceClient(s.conn)

	actx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for i := range cfg.Hosts {
		acfg := nodeagent.Default()
		acfg.Node = HostName(i)
		acfg.VTEP = hostVTEP(i)
		acfg.Servers = []string{addr}
		acfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		acfg.Datapath = &hookedDatapath{Datapath: fake.New(), host: i, watch: s.watch}
		acfg.Links = quietLinks{}
		acfg.Logger = cfg.Logger
		acfg.Version = "bench"
		a, err := nodeagent.New(acfg)
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", acfg.Node, err)
		}
		s.hosts = append(s.hosts, &simHost{index: i, name: acfg.Node, agent: a})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			_ = a.Run(actx)
		}()
	}
	wctx, wcancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer wcancel()
	if err := s.watch.waitFirstApply(wctx); err != nil {
		return nil, fmt.Errorf("agents' first apply: %w", err)
	}
	return s, nil
}

// Hosts is the number of simulated hosts.
func (s *Sim) Hosts() int { return len(s.hosts) }

// ServerPID is the API server process's id.
func (s *Sim) ServerPID() int { return s.srv.pid() }

// NextMAC returns a MAC no port of this simulation has used yet.
func (s *Sim) NextMAC() net.HardwareAddr {
	return seqMAC(s.macSeq.Add(1))
}

// Expect registers the MAC of a port bound to host: every other simulated host must program it as a
// remote FDB entry. It returns a wait for the last of them. (The bound host's own Apply is not awaited:
// it plugs the port only once the port's interface exists, which a simulated host never has.)
func (s *Sim) Expect(mac net.HardwareAddr, host int) *Expectation { return s.watch.expect(mac, host) }

// WaitApplied blocks until every agent has applied rev (or newer), polling each agent's applied
// revision every millisecond.
func (s *Sim) WaitApplied(ctx context.Context, rev int64) error {
	for _, h := range s.hosts {
		for h.agent.AppliedRevision() < rev {
			select {
			case <-ctx.Done():
				return fmt.Errorf("wait for %s to apply revision %d (at %d): %w", h.name, rev, h.agent.AppliedRevision(), ctx.Err())
			case <-time.After(time.Millisecond):
			}
		}
	}
	return nil
}

// Close stops the agents, then the server, and removes nothing on disk (the caller owns Dir).
func (s *Sim) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.conn != nil {
		s.conn.Close()
	}
	if s.srv != nil {
		s.srv.stop()
	}
}

// Expectation is one MAC awaited on every host.
type Expectation struct {
	mac       [6]byte
	remaining int
	seen      []bool
	first     time.Time
	last      time.Time
	done      chan struct{}
}

// Wait blocks until every host has applied the MAC and returns when the last one did.
func (e *Expectation) Wait(ctx context.Context) (time.Time, error) {
	select {
	case <-e.done:
		return e.last, nil
	case <-ctx.Done():
		return time.Time{}, fmt.Errorf("wait for mac %s on every host: %w", net.HardwareAddr(e.mac[:]), ctx.Err())
	}
}

// First returns when the first host applied the MAC; call it after Wait.
func (e *Expectation) First(ctx context.Context) (time.Time, error) {
	select {
	case <-e.done:
		return e.first, nil
	case <-ctx.Done():
		return time.Time{}, fmt.Errorf("wait for mac %s on every host: %w", net.HardwareAddr(e.mac[:]), ctx.Err())
	}
}

// applyWatch matches what each host's Apply programmed against the awaited MACs.
type applyWatch struct {
	hosts int
	// active counts awaited MACs, so that Applies skip the work when nothing is awaited.
	active atomic.Int64

	mu       sync.Mutex
	pending  map[[6]byte]*Expectation
	first    []bool
	firstN   int
	firstAll chan struct{}
}

func newApplyWatch(hosts int) *applyWatch {
	return &applyWatch{hosts: hosts, pending: map[[6]byte]*Expectation{}, first: make([]bool, hosts), firstAll: make(chan struct{})}
}

func (w *applyWatch) expect(mac net.HardwareAddr, bound int) *Expectation {
	e := &Expectation{remaining: w.hosts - 1, seen: make([]bool, w.hosts), done: make(chan struct{})}
	e.seen[bound] = true
	copy(e.mac[:], mac)
	if e.remaining == 0 {
		close(e.done)
		return e
	}
	w.mu.Lock()
	w.pending[e.mac] = e
	w.mu.Unlock()
	w.active.Add(1)
	return e
}

func (w *applyWatch) waitFirstApply(ctx context.Context) error {
	select {
	case <-w.firstAll:
		return nil
	case <-ctx.Done():
		w.mu.Lock()
		n := w.firstN
		w.mu.Unlock()
		return fmt.Errorf("%d of %d agents applied a snapshot: %w", n, w.hosts, ctx.Err())
	}
}

// applied is called by host's datapath after every successful Apply or ApplyDelta (from the agent's reconcile
// goroutine: it must be quick).
func (w *applyWatch) applied(host int, at time.Time, res overlay.Result) {
	var macs [][6]byte
	if w.active.Load() > 0 {
		for _, c := range res.Changes {
			if c.Op == overlay.OpDelete || !strings.HasPrefix(c.Object, "fdb ") {
				continue
			}
			// "fdb vxlanN MAC dst VTEP"
			f := strings.Fields(c.Object)
			if len(f) < 3 {
				continue
			}
			if hw, err := net.ParseMAC(f[2]); err == nil && len(hw) == 6 {
				macs = append(macs, [6]byte(hw))
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.first[host] {
		w.first[host] = true
		if w.firstN++; w.firstN == w.hosts {
			close(w.firstAll)
		}
	}
	for _, m := range macs {
		e := w.pending[m]
		if e == nil || e.seen[host] {
			continue
		}
		e.seen[host] = true
		if e.first.IsZero() || at.Before(e.first) {
			e.first = at
		}
		if at.After(e.last) {
			e.last = at
		}
		if e.remaining--; e.remaining == 0 {
			delete(w.pending, m)
			w.active.Add(-1)
			close(e.done)
		}
	}
}

// errNoRevision is returned when a create response carries no revision.
var errNoRevision = errors.New("create response without a revision")

// TempDir makes a directory for one benchmark's data (removed by the returned function).
func TempDir(label string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "vxbench-"+label+"-")
	if err != nil {
		return "", nil, fmt.Errorf("temporary directory for %s: %w", label, err)
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
