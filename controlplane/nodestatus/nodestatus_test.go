package nodestatus

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vxfabric/vxfabric/controlplane/server"
	"github.com/vxfabric/vxfabric/controlplane/store"
	"github.com/vxfabric/vxfabric/membership"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// memberlist's Shutdown does not wait for a probe in flight: it ends within a probe interval.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

const prefix = "/vxfabric/v1/"

func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t)
}

// cutOff holds the gossip addresses of hosts that are cut off: reachability dials of them get no
// answer (on loopback a stopped member's port answers with a reset, like a live host's kernel).
var cutOff sync.Map

// dials counts the reachability dials of each address.
var dials sync.Map

func dialCount(addr string) int64 {
	n, _ := dials.LoadOrStore(addr, new(atomic.Int64))
	return n.(*atomic.Int64).Load()
}

func member(t *testing.T, role membership.Role, name string, n int, seeds []string) *membership.Member {
	t.Helper()
	cfg := membership.Default(role, name)
	cfg.ReachDialer = func(ctx context.Context, addr string) bool {
		n, _ := dials.LoadOrStore(addr, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		if _, cut := cutOff.Load(addr); cut {
			<-ctx.Done()
			return false
		}
		if ap, err := netip.ParseAddrPort(addr); err != nil || !ap.Addr().IsLoopback() {
			// A recorded node's VTEP (198.18.0.n): its host answers unless cut off. No dial
			// leaves this machine.
			return true
		}
		return membership.DialHost(ctx, addr)
	}
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Join = seeds
	cfg.PushPullInterval = 2 * time.Second
	cfg.Version = "v" + strconv.Itoa(n)
	if role == membership.RoleAgent {
		cfg.VTEP = netip.MustParseAddr("198.18.0." + strconv.Itoa(n))
	} else {
		cfg.GRPCAddr = "127.0.0.1:" + strconv.Itoa(7400+n)
	}
	m, err := membership.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

type writer struct {
	w      *Writer
	cancel context.CancelFunc
	done   chan struct{}
}

func startWriter(t *testing.T, cli *clientv3.Client, m *membership.Member) *writer {
	return startWriterEvery(t, cli, m, Default().ResyncInterval)
}

// startWriterEvery is startWriter with a full reconcile every resync.
func startWriterEvery(t *testing.T, cli *clientv3.Client, m *membership.Member, resync time.Duration) *writer {
	cfg := Default()
	cfg.ResyncInterval = resync
	cfg.SessionTTL = 2
	cfg.Registerer = prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	wr := &writer{w: New(cli, m, cfg), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(wr.done)
		if err := wr.w.Run(ctx); err != nil {
			t.Errorf("writer: %v", err)
		}
	}()
	t.Cleanup(wr.stop)
	return wr
}

func (w *writer) stop() {
	w.cancel()
	<-w.done
}

func value(m prometheus.Metric) float64 {
	var d dto.Metric
	_ = m.Write(&d)
	return d.GetCounter().GetValue() + d.GetGauge().GetValue()
}

func node(t *testing.T, cli *clientv3.Client, name string) *vxfabricv1.Node {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix+"nodes/"+name)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	n := &vxfabricv1.Node{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitNode(t *testing.T, cli *clientv3.Client, name string, status vxfabricv1.NodeStatus, within time.Duration) *vxfabricv1.Node {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		n := node(t, cli, name)
		if n.GetStatus() == status {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s is %v, want %s", name, n, status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOneLeaderWritesGossipState(t *testing.T) {
	cli := startEtcd(t)
	s1 := member(t, membership.RoleServer, "srv1", 1, nil)
	seeds := []string{s1.LocalAddr().String()}
	s2 := member(t, membership.RoleServer, "srv2", 2, seeds)
	// a1 was recorded by RegisterNode before gossip: its last change is kept while it stays ALIVE.
	registered := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	b, _ := proto.Marshal(&vxfabricv1.Node{Name: "a1", Vtep: "198.18.0.11", Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, Version: "v11", LastChange: registered})
	if _, err := cli.Put(context.Background(), prefix+"nodes/a1", string(b)); err != nil {
		t.Fatal(err)
	}
	// Agents that joined before any writer ran are written by the reconcile on election.
	a1 := member(t, membership.RoleAgent, "a1", 11, seeds)
	a2 := member(t, membership.RoleAgent, "a2", 12, seeds)
	time.Sleep(300 * time.Millisecond)
	w1 := startWriter(t, cli, s1)
	w2 := startWriter(t, cli, s2)

	n1 := waitNode(t, cli, "a1", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 5*time.Second)
	if !proto.Equal(n1.LastChange, registered) {
		t.Fatalf("a1 last change rewritten: %v", n1.LastChange)
	}
	n2 := waitNode(t, cli, "a2", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 5*time.Second)
	if n2.Vtep != "198.18.0.12" || n2.Version != "v12" || n2.LastChange == nil {
		t.Fatalf("a2 recorded as %v", n2)
	}
	if node(t, cli, "srv1") != nil {
		t.Fatal("a server was recorded as a node")
	}

	var leader, standby *writer
	waitFor(t, "one leader", func() bool { return value(w1.w.leader)+value(w2.w.leader) == 1 })
	leader, standby = w1, w2
	if value(w2.w.leader) == 1 {
		leader, standby = w2, w1
	}
	if n := value(standby.w.writes); n != 0 {
		t.Fatalf("the standby server wrote %v times", n)
	}
	// a1 matched already: nothing was written for it.
	if n := value(leader.w.writes); n != 1 {
		t.Fatalf("leader wrote %v records, want 1 (a2 only)", n)
	}

	// a2 dies without leaving, a1 leaves.
	_ = a2.Shutdown()
	if err := a1.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitNode(t, cli, "a1", vxfabricv1.NodeStatus_NODE_STATUS_LEFT, 5*time.Second)
	dead := waitNode(t, cli, "a2", vxfabricv1.NodeStatus_NODE_STATUS_DEAD, 8*time.Second)
	if !dead.LastChange.AsTime().After(n2.LastChange.AsTime()) {
		t.Fatalf("last change not advanced on death: %v then %v", n2.LastChange, dead.LastChange)
	}
	// The death is a status change, not a new VTEP: the nodes epoch (store.NodesEpochKey), which a2's
	// first record moved, stays behind it.
	modRev := func(key string) int64 {
		resp, err := cli.Get(context.Background(), prefix+key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: %v %v", key, resp, err)
		}
		return resp.Kvs[0].ModRevision
	}
	if e, d := modRev("nodes-epoch"), modRev("nodes/a2"); e >= d {
		t.Fatalf("nodes epoch at %d, a2's death written at %d: a status change moved the epoch", e, d)
	}
	// a2's host still answers (its closed port resets the dials): dead, not unreachable.
	time.Sleep(time.Second)
	if n := node(t, cli, "a2"); n.GetUnreachable() {
		t.Fatalf("a2 stopped on a host that answers is recorded unreachable: %v", n)
	}
	// The dead a2 is deleted (NodeService.DeleteNode): gossip still remembers it, yet neither the
	// leader nor, below, its successor's reconcile on election records it again.
	if err := store.New(cli).DeleteNode(context.Background(), "a2", 0, false); err != nil {
		t.Fatal(err)
	}
	// a4's host is cut off: recorded unreachable while suspect, long before memberlist's death.
	a4 := member(t, membership.RoleAgent, "a4", 14, seeds)
	waitNode(t, cli, "a4", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 5*time.Second)
	cutOff.Store(a4.LocalAddr().String(), true)
	t.Cleanup(func() { cutOff.Delete(a4.LocalAddr().String()) })
	cut := time.Now()
	_ = a4.Shutdown()
	waitFor(t, "a4 recorded unreachable", func() bool { return node(t, cli, "a4").GetUnreachable() })
	t.Logf("a cut-off host recorded unreachable %s after the cut (status %s)", time.Since(cut).Round(time.Millisecond), node(t, cli, "a4").GetStatus())

	// The leader's server stops: the other takes over and records a new agent.
	leader.stop()
	waitFor(t, "standby elected", func() bool { return value(standby.w.leader) == 1 })
	member(t, membership.RoleAgent, "a3", 13, seeds)
	waitNode(t, cli, "a3", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 5*time.Second)
	if n := node(t, cli, "a2"); n != nil {
		t.Fatalf("the deleted dead node a2 was recorded again: %v", n)
	}
	if !slices.ContainsFunc(standby.w.m.Members(), func(p membership.Peer) bool { return p.Meta.Node == "a2" }) {
		t.Log("gossip had forgotten a2 already: the check above proved less")
	}

	// Writes happen only on change: once the cluster settles (on a loaded machine a member may be
	// suspected and cleared first, which is a change), a whole second passes without a write. A
	// writer that rewrote on every resync or event would never go quiet.
	quiet := false
	for range 10 {
		before := value(standby.w.writes)
		time.Sleep(time.Second)
		if value(standby.w.writes) == before {
			quiet = true
			break
		}
	}
	if !quiet {
		t.Fatal("node status still written every second after 10 s of a quiet cluster")
	}
}

func TestPluginJoinsAsServerAndWrites(t *testing.T) {
	cli := startEtcd(t)
	seed := member(t, membership.RoleAgent, "a9", 19, nil)
	mcfg := membership.Default(membership.RoleServer, "srv")
	mcfg.BindAddr = "127.0.0.1:0"
	mcfg.GRPCAddr = "127.0.0.1:7499"
	mcfg.Join = []string{seed.LocalAddr().String()}
	ext, err := Plugin(mcfg, 0)(context.Background(), server.Host{Etcd: cli, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// Agents find the server through gossip, and the server records them.
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(seed.Servers(), []string{"127.0.0.1:7499"}) {
		if time.Now().After(deadline) {
			t.Fatalf("agent sees servers %v", seed.Servers())
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitNode(t, cli, "a9", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 5*time.Second)
	// Shutdown leaves the cluster: the agent sees the server LEFT, not DEAD, and no server remains.
	ext.Close()
	for len(seed.Servers()) != 0 {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("agent still sees servers %v", seed.Servers())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range seed.Members() {
		if p.Name == "srv" && p.State != membership.StateLeft {
			t.Fatalf("stopped server is %s, want left", p.State)
		}
	}
}

// TestUnseenNodesChecked: a server started after a host died never hears of it through gossip, and
// the host's record still says ALIVE. The writer dials the host of every node its gossip does not
// know: one that answers keeps its record, and so does one silent for a moment only; one silent in
// two passes becomes SUSPECT and Unreachable (agents that do not know it from their own gossip
// withhold it), and ALIVE and reachable again once it answers; its agent back in gossip is gossip's.
func TestUnseenNodesChecked(t *testing.T) {
	cli := startEtcd(t)
	put := func(n *vxfabricv1.Node) {
		t.Helper()
		b, _ := proto.Marshal(n)
		if _, err := cli.Put(context.Background(), prefix+"nodes/"+n.Name, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	registered := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	for name, vtep := range map[string]string{"gone": "198.18.0.50", "up": "198.18.0.51", "blip": "198.18.0.52"} {
		put(&vxfabricv1.Node{Name: name, Vtep: vtep, Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, LastChange: registered})
	}
	const gone, blip = "198.18.0.50:7946", "198.18.0.52:7946"
	cutOff.Store(gone, true)
	cutOff.Store(blip, true)
	defer cutOff.Delete(gone)
	defer cutOff.Delete(blip)

	srv := member(t, membership.RoleServer, "srv", 1, nil)
	startWriterEvery(t, cli, srv, 500*time.Millisecond)
	// blip's host is silent in the first pass only.
	waitFor(t, "the first pass dials blip's host", func() bool { return dialCount(blip) > 0 })
	cutOff.Delete(blip)
	n := waitNode(t, cli, "gone", vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT, 5*time.Second)
	if !n.GetUnreachable() || proto.Equal(n.GetLastChange(), registered) {
		t.Errorf("a recorded host silent in two passes: %v, want SUSPECT, unreachable, changed now", n)
	}
	for _, name := range []string{"up", "blip"} {
		if n := node(t, cli, name); n.GetStatus() != vxfabricv1.NodeStatus_NODE_STATUS_ALIVE || n.GetUnreachable() || !proto.Equal(n.GetLastChange(), registered) {
			t.Errorf("a recorded host that answers (%s): %v, want its record as it was", name, n)
		}
	}

	cutOff.Delete(gone)
	n = waitNode(t, cli, "gone", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 15*time.Second)
	if n.GetUnreachable() {
		t.Errorf("the host that answers again: %v, want reachable", n)
	}
	member(t, membership.RoleAgent, "gone", 50, []string{srv.LocalAddr().String()})
	waitFor(t, "gone's agent in gossip is written from gossip", func() bool { return node(t, cli, "gone").GetVersion() == "v50" })
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out", what)
		}
	}
}
