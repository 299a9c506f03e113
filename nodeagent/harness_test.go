package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/fanout"
	"github.com/vxfabric/vxfabric/membership"
	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/fake"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// memberlist's Shutdown does not wait for a probe in flight: it ends within a probe interval.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

const prefix = "/vxfabric/v1/"

func testLogger() *slog.Logger {
	if os.Getenv("VXFAB_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t)
}

// server is a fan-out hub served over gRPC on a fixed loopback address, so it can stop and come back.
type server struct {
	t      *testing.T
	cli    *clientv3.Client
	hub    *fanout.Hub
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
}

func startServer(t *testing.T, cli *clientv3.Client, addr string) *server {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	hub := fanout.New(cli, fanout.Config{Logger: testLogger(), RetryInterval: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{t: t, cli: cli, hub: hub, addr: lis.Addr().String(), cancel: cancel, done: make(chan struct{})}
	gs := grpc.NewServer()
	vxfabricv1.RegisterAgentServiceServer(gs, hub)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = hub.Run(ctx) }()
	go func() { defer wg.Done(); _ = gs.Serve(lis) }()
	go func() {
		<-ctx.Done()
		gs.Stop()
		wg.Wait()
		close(s.done)
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *server) stop() {
	s.cancel()
	<-s.done
}

// links is a LinkSource driven by the test, beside the fake's SetLink.
type links struct {
	mu      sync.Mutex
	changed func(string)
}

func (l *links) Run(ctx context.Context, changed func(string), resync func()) error {
	l.mu.Lock()
	l.changed = changed
	l.mu.Unlock()
	<-ctx.Done()
	return nil
}

// set makes an interface appear or go on the fake host and tells the agent, as netlink would.
func (l *links) set(dp *fake.Datapath, name string, present bool) {
	dp.SetLink(name, present)
	l.mu.Lock()
	changed := l.changed
	l.mu.Unlock()
	if changed != nil {
		changed(name)
	}
}

// recorder wraps a datapath and records every Apply and ApplyDelta; the first failN Applies fail
// without touching it.
type recorder struct {
	overlay.Datapath
	mu      sync.Mutex
	applies []overlay.Result
	failN   int
	// dropsErr, when set, is PortDrops' answer.
	dropsErr error
}

var errInjected = errors.New("injected apply failure")

func (r *recorder) Apply(ctx context.Context, d overlay.DesiredState) (overlay.Result, error) {
	r.mu.Lock()
	if r.failN > 0 {
		r.failN--
		r.mu.Unlock()
		return overlay.Result{}, errInjected
	}
	r.mu.Unlock()
	res, err := r.Datapath.Apply(ctx, d)
	r.mu.Lock()
	r.applies = append(r.applies, res)
	r.mu.Unlock()
	return res, err
}

// ApplyDelta records incremental passes among the results too (injected failures hit Apply only).
func (r *recorder) ApplyDelta(ctx context.Context, d overlay.Delta) (overlay.Result, error) {
	res, err := r.Datapath.ApplyDelta(ctx, d)
	r.mu.Lock()
	r.applies = append(r.applies, res)
	r.mu.Unlock()
	return res, err
}

// PortDrops passes the kernel's drop counts through, or fails with dropsErr.
func (r *recorder) PortDrops(ctx context.Context) (map[string]uint64, error) {
	r.mu.Lock()
	err := r.dropsErr
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return r.Datapath.(overlay.DropCounter).PortDrops(ctx)
}

func (r *recorder) results() []overlay.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applies)
}

// host is one simulated machine: a fake kernel and an agent on it.
type host struct {
	t        *testing.T
	name     string
	vtep     netip.Addr
	dp       *fake.Datapath
	rec      *recorder
	links    *links
	stateDir string
	reg      *prometheus.Registry
	agent    *Agent
	cancel   context.CancelFunc
	done     chan struct{}
}

type hostOpts struct {
	servers []string
	member  *membership.Member
	dp      *fake.Datapath // a previous host's kernel (restart); nil: a fresh one
	state   string         // state dir; "" : a new one
	resync  time.Duration  // full pass period; 0: the default
	failN   int            // the first failN Applies fail
	// wrap, if set, wraps the host's kernel before the recorder (to observe each Apply).
	wrap func(overlay.Datapath) overlay.Datapath
	// backoff, if set, is the least wait before the agent dials a server again (and the most).
	backoff time.Duration
}

func startHost(t *testing.T, name, vtep string, o hostOpts) *host {
	t.Helper()
	h := &host{t: t, name: name, vtep: netip.MustParseAddr(vtep), dp: o.dp, links: &links{}, stateDir: o.state, reg: prometheus.NewRegistry()}
	if h.dp == nil {
		h.dp = fake.New()
	}
	if h.stateDir == "" {
		h.stateDir = t.TempDir()
	}
	var dp overlay.Datapath = h.dp
	if o.wrap != nil {
		dp = o.wrap(dp)
	}
	h.rec = &recorder{Datapath: dp, failN: o.failN}
	cfg := Default()
	cfg.Node = name
	cfg.VTEP = h.vtep
	cfg.Servers = o.servers
	cfg.Membership = o.member
	cfg.StateDir = h.stateDir
	cfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	cfg.Datapath = h.rec
	cfg.Links = h.links
	cfg.Version = "test"
	cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 500*time.Millisecond
	if o.backoff > 0 {
		cfg.BackoffMin, cfg.BackoffMax = o.backoff, o.backoff
	}
	cfg.Logger = testLogger().With("host", name)
	cfg.Registerer = h.reg
	if o.resync > 0 {
		cfg.FullResyncInterval = o.resync
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan struct{})
	go func() {
		defer close(h.done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent %s: %v", name, err)
		}
	}()
	t.Cleanup(h.stop)
	return h
}

func (h *host) stop() {
	h.cancel()
	<-h.done
}

func (h *host) counter(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		h.t.Fatal(err)
	}
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}

// kernel returns the host's FDB, flood and port lines.
func (h *host) kernel() []string {
	var out []string
	for _, l := range strings.Split(h.dp.Dump(), "\n") {
		if strings.HasPrefix(l, "fdb ") || strings.HasPrefix(l, "flood ") || strings.HasPrefix(l, "port ") {
			out = append(out, l)
		}
	}
	return out
}

// world is what the test wrote to etcd, from which it derives what every kernel must show.
type world struct {
	t        *testing.T
	cli      *clientv3.Client
	mu       sync.Mutex
	networks map[string]uint32 // id -> vni
	ports    map[string]tport
	vteps    map[string]string // node -> vtep
	links    map[string]bool   // "node/iface" present
}

type tport struct {
	id, network, node, mac, ip, iface string
}

func newWorld(t *testing.T, cli *clientv3.Client) *world {
	return &world{t: t, cli: cli, networks: map[string]uint32{}, ports: map[string]tport{}, vteps: map[string]string{}, links: map[string]bool{}}
}

func (w *world) put(key string, msg proto.Message) int64 {
	w.t.Helper()
	b, err := proto.Marshal(msg)
	if err != nil {
		w.t.Fatal(err)
	}
	resp, err := w.cli.Put(context.Background(), prefix+key, string(b))
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.Header.Revision
}

func (w *world) del(key string) int64 {
	w.t.Helper()
	resp, err := w.cli.Delete(context.Background(), prefix+key)
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.Header.Revision
}

// hostVTEP tells the world a host's VTEP, which the host's agent records itself (RegisterNode) or
// gossip does, for expect.
func (w *world) hostVTEP(name, vtep string) {
	w.mu.Lock()
	w.vteps[name] = vtep
	w.mu.Unlock()
}

// node records a host as gossip (nodestatus) or RegisterNode would.
func (w *world) node(name, vtep string) int64 {
	w.hostVTEP(name, vtep)
	return w.put("nodes/"+name, &vxfabricv1.Node{Name: name, Vtep: vtep, Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE})
}

func (w *world) network(id string, vni uint32) int64 {
	w.mu.Lock()
	w.networks[id] = vni
	w.mu.Unlock()
	return w.put("networks/"+id, &vxfabricv1.Network{Id: id, Tenant: "t", Name: id, Cidr: "10.0.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, Vni: vni, Mtu: 1450})
}

// port binds a port to node; its interface is "tap"+id (the overlay refuses our own "vx" prefix).
func (w *world) port(id, network, node string, n int) int64 {
	p := tport{id: id, network: network, node: node, mac: fmt.Sprintf("0e:00:00:00:00:%02x", n), ip: fmt.Sprintf("10.0.0.%d", n), iface: "tap" + id}
	w.mu.Lock()
	w.ports[id] = p
	w.mu.Unlock()
	return w.put("ports/"+id, &vxfabricv1.Port{Id: id, Tenant: "t", Network: network, NetworkId: network, Name: id,
		Node: node, Mac: p.mac, Ip: p.ip, InterfaceName: p.iface})
}

func (w *world) delPort(id string) int64 {
	w.mu.Lock()
	delete(w.ports, id)
	w.mu.Unlock()
	return w.del("ports/" + id)
}

// plug makes a port's interface appear on its host.
func (w *world) plug(h *host, id string) {
	w.mu.Lock()
	p := w.ports[id]
	w.links[h.name+"/"+p.iface] = true
	w.mu.Unlock()
	h.links.set(h.dp, p.iface, true)
}

func (w *world) unplug(h *host, id string) {
	w.mu.Lock()
	p := w.ports[id]
	delete(w.links, h.name+"/"+p.iface)
	w.mu.Unlock()
	h.links.set(h.dp, p.iface, false)
}

// expect is what node's kernel must show, with the nodes in down withheld.
func (w *world) expect(node string, down ...string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	onNode := map[string]bool{}
	for _, p := range w.ports {
		if p.node == node {
			onNode[p.network] = true
		}
	}
	var out []string
	flood := map[string]bool{}
	for _, p := range w.ports {
		if !onNode[p.network] {
			continue
		}
		vni := w.networks[p.network]
		if p.node == node {
			if w.links[node+"/"+p.iface] {
				out = append(out, overlay.PortObject(vni, p.iface))
			}
			continue
		}
		if slices.Contains(down, p.node) || w.vteps[p.node] == "" {
			continue
		}
		mac, _ := net.ParseMAC(p.mac)
		vtep := netip.MustParseAddr(w.vteps[p.node])
		out = append(out, overlay.FDBObject(vni, mac, vtep))
		flood[overlay.FloodObject(vni, vtep)] = true
	}
	for f := range flood {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

// portLines turns PortObject names into the fake's dump lines (which add the MTU).
func normalize(lines []string) []string {
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		if strings.HasPrefix(l, "port ") {
			l = strings.TrimSuffix(l, " mtu 1450")
		}
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

func waitKernel(t *testing.T, h *host, want func() []string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got := normalize(h.kernel())
		exp := want()
		if slices.Equal(got, exp) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("host %s did not converge within %s:\n got %q\nwant %q", h.name, within, got, exp)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *world) converge(within time.Duration, hosts ...*host) {
	w.t.Helper()
	for _, h := range hosts {
		waitKernel(w.t, h, func() []string { return w.expect(h.name) }, within)
	}
}

// waitApplied waits until h's agent applied rev or newer.
func waitApplied(t *testing.T, h *host, rev int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for h.agent.AppliedRevision() < rev {
		if time.Now().After(deadline) {
			t.Fatalf("host %s applied %d, want %d", h.name, h.agent.AppliedRevision(), rev)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pluggedInStore reports the port ids whose status/ports key says plugged.
func pluggedInStore(t *testing.T, cli *clientv3.Client) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix+"status/ports/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, kv := range resp.Kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), prefix+"status/ports/"))
	}
	sort.Strings(ids)
	return ids
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
