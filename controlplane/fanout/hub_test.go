package fanout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"
	"github.com/vxfabric/vxfabric/controlplane/store"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const prefix = "/vxfabric/v1/"

// env is one embedded etcd, one hub on it and a gRPC server in front of the hub.
type env struct {
	t    testing.TB
	cli  *clientv3.Client
	hub  *Hub
	reg  *prometheus.Registry
	addr string
	// stopping is closed when the env's cleanup begins, before it waits for the hub's Run: a hook
	// holding Run (holdRewatch) lets go then, so that a failed test cannot hang.
	stopping chan struct{}
}

func startEtcd(t testing.TB) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t)
}

func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	return newReplica(t, startEtcd(t), cfg)
}

// newReplica is an env with a hub of its own on cli (a second server replica on the same etcd).
func newReplica(t testing.TB, cli *clientv3.Client, cfg Config) *env {
	e := &env{t: t, cli: cli, reg: prometheus.NewRegistry(), stopping: make(chan struct{})}
	cfg.Registerer = e.reg
	e.hub = New(e.cli, cfg)
	return e
}

// holdRewatch makes the hub, whenever its watch breaks, signal paused and wait for release before it
// watches again (its model stays behind the store meanwhile). Call it before start.
func (e *env) holdRewatch() (paused <-chan struct{}, release chan<- struct{}) {
	p, r := make(chan struct{}, 1), make(chan struct{})
	e.hub.beforeRewatch = func() {
		p <- struct{}{}
		select {
		case <-r:
		case <-e.stopping:
		}
	}
	return p, r
}

// plugged reports whether the store holds port id's plugged status.
func (e *env) plugged(id string) bool {
	e.t.Helper()
	resp, err := e.cli.Get(context.Background(), prefix+"status/ports/"+id)
	if err != nil {
		e.t.Fatal(err)
	}
	return len(resp.Kvs) == 1
}

// start runs the hub and serves it on a loopback listener; everything stops in t.Cleanup.
func (e *env) start(opts ...grpc.ServerOption) {
	t := e.t
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- e.hub.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	vxfabricv1.RegisterAgentServiceServer(gs, e.hub)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	e.addr = lis.Addr().String()
	t.Cleanup(func() {
		close(e.stopping)
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("hub Run: %v", err)
		}
		gs.Stop()
		<-served
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	select {
	case <-e.hub.Ready():
	case <-wctx.Done():
		t.Fatal("hub not ready")
	}
}

func (e *env) dial() vxfabricv1.AgentServiceClient {
	e.t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return vxfabricv1.NewAgentServiceClient(conn)
}

// put writes key (relative to the prefix) as the API would, and returns the revision it was written at.
func (e *env) put(key string, msg proto.Message) int64 {
	e.t.Helper()
	resp, err := e.cli.Put(context.Background(), prefix+key, string(mustMarshal(e.t, msg)))
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.Header.Revision
}

func (e *env) del(key string) int64 {
	e.t.Helper()
	resp, err := e.cli.Delete(context.Background(), prefix+key)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.Header.Revision
}

// agent is a test Sync client: a goroutine receives into msgs; view is what it would program.
type agent struct {
	t      testing.TB
	node   string
	msgs   chan *vxfabricv1.SyncResponse
	cancel context.CancelFunc
	done   chan error
	view   *view
}

// syncAll opens a stream for each node and waits for its first message.
func (e *env) syncAll(c vxfabricv1.AgentServiceClient, nodes ...string) map[string]*agent {
	e.t.Helper()
	agents := map[string]*agent{}
	for _, n := range nodes {
		agents[n] = e.sync(c, n, 0)
		agents[n].next(5 * time.Second)
	}
	return agents
}

func (e *env) sync(c vxfabricv1.AgentServiceClient, node string, resume int64) *agent {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.Sync(ctx, &vxfabricv1.SyncRequest{Node: node, ResumeRevision: resume})
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	a := &agent{t: e.t, node: node, msgs: make(chan *vxfabricv1.SyncResponse, 1024), cancel: cancel, done: make(chan error, 1), view: newView()}
	go func() {
		for {
			msg, err := recvWhole(stream.Recv)
			if err != nil {
				close(a.msgs)
				a.done <- err
				return
			}
			a.msgs <- msg
		}
	}()
	e.t.Cleanup(a.stop)
	return a
}

func (a *agent) stop() {
	a.cancel()
	for range a.msgs {
	}
}

// next returns the next message, failing the test if none arrives within d.
func (a *agent) next(d time.Duration) *vxfabricv1.SyncResponse {
	a.t.Helper()
	select {
	case msg, ok := <-a.msgs:
		if !ok {
			err := <-a.done
			a.done <- err
			a.t.Fatalf("node %s: stream ended: %v", a.node, err)
		}
		if msg.GetRevision() < a.view.rev {
			a.t.Fatalf("node %s: revision went from %d back to %d", a.node, a.view.rev, msg.GetRevision())
		}
		a.view.apply(msg)
		return msg
	case <-time.After(d):
		a.t.Fatalf("node %s: no message within %s", a.node, d)
		return nil
	}
}

// waitRev applies messages until the view reflects rev.
func (a *agent) waitRev(rev int64) {
	a.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for a.view.rev < rev {
		a.next(time.Until(deadline))
	}
}

// seed writes three nodes with VTEPs, networks n1 (ports on a and b), n2 (port on c) and returns the
// revision of the last write.
func (e *env) seed() int64 {
	e.put("nodes/a", testNode("a", "198.18.0.1"))
	e.put("nodes/b", testNode("b", "198.18.0.2"))
	e.put("nodes/c", testNode("c", "198.18.0.3"))
	e.put("networks/n1", testNetwork("n1", 100))
	e.put("networks/n2", testNetwork("n2", 200))
	e.put("ports/pa", testPort("pa", "n1", "a", 1))
	e.put("ports/pb", testPort("pb", "n1", "b", 2))
	return e.put("ports/pc", testPort("pc", "n2", "c", 3))
}

// snapshotOf opens a fresh stream and returns its first message's view, the reference for deltas.
func (e *env) snapshotOf(c vxfabricv1.AgentServiceClient, node string) string {
	e.t.Helper()
	a := e.sync(c, node, 0)
	v := viewOf(a.next(5 * time.Second)).String()
	a.stop()
	return v
}

func TestSyncSnapshotThenDeltas(t *testing.T) {
	e := newEnv(t, Default())
	rev := e.seed()
	e.start()
	c := e.dial()

	a := e.sync(c, "a", 0)
	first := a.next(5 * time.Second)
	if !first.GetSnapshot() || first.GetRevision() < rev {
		t.Fatalf("first message snapshot=%v rev=%d, want a snapshot at >= %d", first.GetSnapshot(), first.GetRevision(), rev)
	}
	want := strings.Join([]string{
		`local pa net=n1 if=vxppa 0e:00:00:00:00:01 10.0.0.3 vm=""`,
		`net n1 vni=100 vxbr100/vxlan100 mtu=1450 mode=NETWORK_MODE_ROUTED gw=10.0.0.1/02:fb:00:00:64:01 uplink="" flood=[b=198.18.0.2]`,
		`peer b@198.18.0.2 NODE_STATUS_ALIVE`,
		`remote pb net=n1 0e:00:00:00:00:02 10.0.0.4 on b@198.18.0.2`,
	}, "\n")
	if got := a.view.String(); got != want {
		t.Fatalf("snapshot of a:\n%s\nwant\n%s", got, want)
	}

	// A port on c in n2, where a has no port: nothing for a. A port on c in n1: a delta with c's port and
	// c in the flood list. The next message a gets must be the second one alone.
	e.put("ports/pc2", testPort("pc2", "n2", "c", 4))
	start := time.Now()
	rev = e.put("ports/pc1", testPort("pc1", "n1", "c", 5))
	msg := a.next(5 * time.Second)
	took := time.Since(start)
	if msg.GetSnapshot() || msg.GetRevision() != rev {
		t.Fatalf("got snapshot=%v rev=%d, want a delta at %d", msg.GetSnapshot(), msg.GetRevision(), rev)
	}
	if len(msg.GetRemotePorts()) != 1 || msg.GetRemotePorts()[0].GetId() != "pc1" || msg.GetRemotePorts()[0].GetVtep() != "198.18.0.3" {
		t.Fatalf("delta remote ports %v, want only pc1 on 198.18.0.3", msg.GetRemotePorts())
	}
	if len(msg.GetNetworks()) != 1 || len(msg.GetNetworks()[0].GetFlood()) != 2 {
		t.Fatalf("delta networks %v, want n1 with flood b and c", msg.GetNetworks())
	}
	t.Logf("port create on another node reached the agent in %s", took)
	if took > 500*time.Millisecond {
		t.Errorf("delta took %s", took)
	}
	if got, want := a.view.String(), e.snapshotOf(c, "a"); got != want {
		t.Errorf("view after delta:\n%s\nwant snapshot\n%s", got, want)
	}
}

func TestSyncPortMoveAndNetworkDelete(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	agents := e.syncAll(c, "a", "b", "c")
	// check waits for each agent's view to equal a fresh snapshot at rev. A node gets no message for
	// changes outside its view, so its view's revision may stay below rev.
	check := func(what string, rev int64) {
		t.Helper()
		if err := e.hub.WaitRevision(context.Background(), rev); err != nil {
			t.Fatal(err)
		}
		for n, a := range agents {
			want := e.snapshotOf(c, n)
			deadline := time.Now().Add(5 * time.Second)
			for a.view.String() != want && time.Now().Before(deadline) {
				a.next(time.Until(deadline))
			}
			if got := a.view.String(); got != want {
				t.Errorf("%s: view of %s:\n%s\nwant\n%s", what, n, got, want)
			}
		}
	}

	// pb moves from b to c (same MAC and IP): b leaves n1, c joins it, a sees pb at c's VTEP.
	moved := testPort("pb", "n1", "c", 2)
	rev := e.put("ports/pb", moved)
	agents["a"].waitRev(rev)
	if r := agents["a"].view.remote["pb"]; r.GetVtep() != "198.18.0.3" || r.GetNode() != "c" {
		t.Errorf("a sees pb at %s@%s, want c@198.18.0.3", r.GetNode(), r.GetVtep())
	}
	agents["b"].waitRev(rev)
	if len(agents["b"].view.networks) != 0 || len(agents["b"].view.remote) != 0 {
		t.Errorf("b still has %s", agents["b"].view)
	}
	check("after move", rev)

	// n1 deleted (ports first, as the API requires): it disappears from a and c.
	e.del("ports/pa")
	e.del("ports/pb")
	rev = e.del("networks/n1")
	check("after delete", rev)
	for _, n := range []string{"a", "c"} {
		if _, ok := agents[n].view.networks["n1"]; ok {
			t.Errorf("node %s still has n1", n)
		}
	}
	if _, ok := agents["c"].view.networks["n2"]; !ok {
		t.Errorf("c lost n2: %s", agents["c"].view)
	}
}

// TestSyncPeerStatus checks that a node's snapshot names the peers of its view with their status, and
// that a peer's status or VTEP change reaches the nodes that see it, alone, and no other node.
func TestSyncPeerStatus(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	agents := e.syncAll(c, "a", "b", "c")
	a, b, cc := agents["a"], agents["b"], agents["c"]
	peersOf := func(ag *agent) string {
		var out []string
		for _, p := range ag.view.peers {
			out = append(out, fmt.Sprintf("%s@%s %s", p.GetName(), p.GetVtep(), p.GetStatus()))
		}
		sort.Strings(out)
		return strings.Join(out, ",")
	}
	for n, want := range map[string]string{"a": "b@198.18.0.2 NODE_STATUS_ALIVE", "b": "a@198.18.0.1 NODE_STATUS_ALIVE", "c": ""} {
		if got := peersOf(agents[n]); got != want {
			t.Errorf("snapshot of %s: peers %q, want %q", n, got, want)
		}
	}
	// onlyNext fails unless the next message ag gets is at rev (nothing came in between).
	onlyNext := func(ag *agent, rev int64) *vxfabricv1.SyncResponse {
		t.Helper()
		msg := ag.next(5 * time.Second)
		if msg.GetRevision() != rev {
			t.Fatalf("node %s: next message at rev %d, want %d: %v", ag.node, msg.GetRevision(), rev, msg)
		}
		return msg
	}

	// b dies: a (which sees b) gets b's status alone; b itself and c (which does not see b) get nothing.
	dead := testNode("b", "198.18.0.2")
	dead.Status = vxfabricv1.NodeStatus_NODE_STATUS_DEAD
	rev := e.put("nodes/b", dead)
	msg := onlyNext(a, rev)
	if msg.GetSnapshot() || len(msg.GetNetworks())+len(msg.GetLocalPorts())+len(msg.GetRemotePorts())+len(msg.GetRemovedPeers()) != 0 ||
		len(msg.GetPeers()) != 1 || msg.GetPeers()[0].GetName() != "b" || msg.GetPeers()[0].GetStatus() != vxfabricv1.NodeStatus_NODE_STATUS_DEAD {
		t.Errorf("a's delta for b's death: %v, want b DEAD alone", msg)
	}
	// A change of version or last change only is no view change: a gets the next change, not that.
	dead.Version = "v9"
	e.put("nodes/b", dead)
	onlyNext(cc, e.put("ports/pc2", testPort("pc2", "n2", "c", 4)))
	rev = e.put("ports/pa2", testPort("pa2", "n1", "a", 7))
	onlyNext(a, rev)
	onlyNext(b, rev)
	if got, want := peersOf(a), "b@198.18.0.2 NODE_STATUS_DEAD"; got != want {
		t.Errorf("a's peers %q, want %q", got, want)
	}

	// b comes back on a new VTEP: a gets the new record along with b's ports at that VTEP.
	alive := testNode("b", "198.18.0.22")
	rev = e.put("nodes/b", alive)
	msg = onlyNext(a, rev)
	if len(msg.GetPeers()) != 1 || msg.GetPeers()[0].GetVtep() != "198.18.0.22" || msg.GetPeers()[0].GetStatus() != vxfabricv1.NodeStatus_NODE_STATUS_ALIVE {
		t.Errorf("a's delta for b's return: peers %v, want b@198.18.0.22 ALIVE", msg.GetPeers())
	}

	// c joins n1: a and b gain c as a peer, c gains both; when it leaves n1, they lose each other.
	rev = e.put("ports/pc1", testPort("pc1", "n1", "c", 8))
	for _, ag := range []*agent{a, b, cc} {
		ag.waitRev(rev)
	}
	for n, want := range map[string]string{
		"a": "b@198.18.0.22 NODE_STATUS_ALIVE,c@198.18.0.3 NODE_STATUS_ALIVE",
		"b": "a@198.18.0.1 NODE_STATUS_ALIVE,c@198.18.0.3 NODE_STATUS_ALIVE",
		"c": "a@198.18.0.1 NODE_STATUS_ALIVE,b@198.18.0.22 NODE_STATUS_ALIVE",
	} {
		if got := peersOf(agents[n]); got != want {
			t.Errorf("after c joined n1, %s's peers %q, want %q", n, got, want)
		}
	}
	rev = e.del("ports/pc1")
	msg = onlyNext(a, rev)
	if !slices.Equal(msg.GetRemovedPeers(), []string{"c"}) {
		t.Errorf("a's delta for c leaving n1: removed peers %v, want [c]", msg.GetRemovedPeers())
	}
	msg = onlyNext(cc, rev)
	if !slices.Equal(msg.GetRemovedPeers(), []string{"a", "b"}) {
		t.Errorf("c's delta for leaving n1: removed peers %v, want [a b]", msg.GetRemovedPeers())
	}
	b.waitRev(rev)
	for n, ag := range agents {
		if got, want := ag.view.String(), e.snapshotOf(c, n); got != want {
			t.Errorf("view of %s:\n%s\nwant snapshot\n%s", n, got, want)
		}
	}
}

func TestSyncWithheldUntilRegistered(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	a := e.sync(c, "a", 0)
	a.next(5 * time.Second)
	rev := e.put("ports/pd", testPort("pd", "n1", "d", 9))
	// d has no VTEP: a hears nothing, until d registers.
	resp, err := c.RegisterNode(context.Background(), &vxfabricv1.RegisterNodeRequest{Name: "d", Vtep: "198.18.0.4", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	msg := a.next(5 * time.Second)
	if msg.GetRevision() != resp.GetNode().GetRevision() || msg.GetRevision() <= rev {
		t.Errorf("first message after d's port: rev %d, want the registration's %d", msg.GetRevision(), resp.GetNode().GetRevision())
	}
	if r := a.view.remote["pd"]; r.GetVtep() != "198.18.0.4" {
		t.Errorf("pd not visible at d's VTEP: %s", a.view)
	}
	if got, want := a.view.String(), e.snapshotOf(c, "a"); got != want {
		t.Errorf("view:\n%s\nwant\n%s", got, want)
	}
}

func TestSyncResume(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	a := e.sync(c, "a", 0)
	r0 := a.next(5 * time.Second).GetRevision()
	a.stop()

	// Nothing changed for a: an empty delta at the current revision.
	unrelated := e.put("ports/pc2", testPort("pc2", "n2", "c", 4))
	if err := e.hub.WaitRevision(context.Background(), unrelated); err != nil {
		t.Fatal(err)
	}
	a = e.sync(c, "a", r0)
	msg := a.next(5 * time.Second)
	if msg.GetSnapshot() || msg.GetRevision() != unrelated || len(msg.GetNetworks())+len(msg.GetLocalPorts())+len(msg.GetRemotePorts()) != 0 {
		t.Errorf("resume with nothing changed: got %v, want an empty delta at %d", msg, unrelated)
	}
	a.stop()

	// Something a sees changed since r0: a snapshot.
	changed := e.put("ports/pb", testPort("pb", "n1", "b", 7))
	if err := e.hub.WaitRevision(context.Background(), changed); err != nil {
		t.Fatal(err)
	}
	a = e.sync(c, "a", r0)
	if msg := a.next(5 * time.Second); !msg.GetSnapshot() || msg.GetRevision() != changed {
		t.Errorf("resume after a change: snapshot=%v rev=%d, want a snapshot at %d", msg.GetSnapshot(), msg.GetRevision(), changed)
	}
	a.stop()

	// A revision the store never reached (restored from an older backup): a snapshot at the store's
	// older revision, which the agent must refuse.
	a = e.sync(c, "a", changed+1000)
	if msg := a.next(5 * time.Second); !msg.GetSnapshot() || msg.GetRevision() != changed {
		t.Errorf("resume from the future: snapshot=%v rev=%d, want a snapshot at %d", msg.GetSnapshot(), msg.GetRevision(), changed)
	}
	a.stop()

	// While a's agent is away (cut off), its port moves to b and its node record is deleted (node
	// delete): this replica forgets a's figures. The agent comes back resuming at what it had: a
	// snapshot, not an empty delta that would leave it holding the moved port.
	e.put("ports/pa", testPort("pa", "n1", "b", 1))
	gone := e.del("nodes/a")
	if err := e.hub.WaitRevision(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	a = e.sync(c, "a", changed)
	if msg := a.next(5 * time.Second); !msg.GetSnapshot() || len(msg.GetLocalPorts()) != 0 {
		t.Errorf("resume of a deleted node after its port moved: snapshot=%v, local ports %v; want a snapshot without them",
			msg.GetSnapshot(), msg.GetLocalPorts())
	}
}

func TestSyncCompactionResnapshots(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	paused, release := e.holdRewatch()
	e.start()
	c := e.dial()
	a := e.sync(c, "a", 0)
	a.next(5 * time.Second)

	// The hub loses its watch; while it is away, a's view changes and history is compacted.
	e.kickWatch()
	<-paused
	e.put("ports/pb", testPort("pb", "n1", "b", 8))
	e.del("ports/pa")
	rev := e.put("ports/pa2", testPort("pa2", "n1", "a", 9))
	if _, err := e.cli.Compact(context.Background(), rev); err != nil {
		t.Fatal(err)
	}
	close(release)

	msg := a.next(5 * time.Second)
	if !msg.GetSnapshot() || msg.GetRevision() < rev {
		t.Fatalf("after compaction: snapshot=%v rev=%d, want a snapshot at >= %d", msg.GetSnapshot(), msg.GetRevision(), rev)
	}
	if _, ok := a.view.local["pa2"]; !ok || a.view.local["pa"] != nil {
		t.Errorf("view after resnapshot: %s", a.view)
	}
	if n := metric(t, e.reg, "vxfabric_fanout_loads_total"); n != 2 {
		t.Errorf("loads = %v, want 2", n)
	}
	// And the hub follows the store again.
	rev = e.put("ports/pb2", testPort("pb2", "n1", "b", 10))
	a.waitRev(rev)
	if _, ok := a.view.remote["pb2"]; !ok {
		t.Errorf("pb2 missing after reload: %s", a.view)
	}
}

// kickWatch breaks the hub's watch, as a lost connection would. The first watch may not have
// started yet (a snapshot comes from the load before it): it waits for it, or kick would be nil
// (regression: a nil call here panicked while holding hookMu and hung the package until the test
// timeout).
func (e *env) kickWatch() {
	e.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		e.hub.hookMu.Lock()
		kick := e.hub.kick
		if kick != nil {
			kick()
		}
		e.hub.hookMu.Unlock()
		if kick != nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("the hub never started watching")
		}
	}
}

func TestSyncInvalid(t *testing.T) {
	e := newEnv(t, Default())
	e.start()
	c := e.dial()
	for _, req := range []*vxfabricv1.SyncRequest{{Node: ""}, {Node: "A"}, {Node: "1a"}, {Node: strings.Repeat("a", 64)}, {Node: "a", ResumeRevision: -1}} {
		stream, err := c.Sync(context.Background(), req)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Sync(%v): %v, want InvalidArgument", req, err)
		}
	}
}

func TestReportApplied(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	ctx := context.Background()
	a := e.sync(c, "a", 0)
	a.next(5 * time.Second)
	rev := e.put("ports/pa2", testPort("pa2", "n1", "a", 11))
	a.waitRev(rev)
	if applied, desired := e.hub.NodeRevisions("a"); applied != 0 || desired != rev {
		t.Errorf("NodeRevisions(a) = %d, %d, want 0, %d", applied, desired, rev)
	}

	// pa plugged; pb is b's port and must be ignored.
	if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev, PluggedPortIds: []string{"pa", "pb"}}); err != nil {
		t.Fatal(err)
	}
	statusKeys := func() []string {
		resp, err := e.cli.Get(ctx, prefix+"status/ports/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, kv := range resp.Kvs {
			keys = append(keys, strings.TrimPrefix(string(kv.Key), prefix+"status/ports/")+"="+string(kv.Value))
		}
		return keys
	}
	if got := fmt.Sprint(statusKeys()); got != "[pa=1]" {
		t.Errorf("status keys %s, want [pa=1]", got)
	}
	if applied, desired := e.hub.NodeRevisions("a"); applied != rev || desired != rev {
		t.Errorf("NodeRevisions(a) = %d, %d, want %d, %d", applied, desired, rev, rev)
	}
	if got := histCount(t, e.reg); got != 1 {
		t.Errorf("convergence observations %d, want 1", got)
	}

	// Once the hub has seen the status key, the same report writes nothing.
	wrote, err := e.cli.Get(ctx, prefix+"status/ports/pa")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.hub.WaitRevision(ctx, wrote.Kvs[0].ModRevision); err != nil {
		t.Fatal(err)
	}
	before := e.hub.Revision()
	for range 3 {
		if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev, PluggedPortIds: []string{"pa"}}); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := e.cli.Get(ctx, prefix+"nodes/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if cur.Header.Revision != before {
		t.Errorf("steady reports wrote to etcd: revision %d -> %d", before, cur.Header.Revision)
	}

	// pa unplugged, pa2 plugged.
	if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev, PluggedPortIds: []string{"pa2"}}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(statusKeys()); got != "[pa2=1]" {
		t.Errorf("status keys %s, want [pa2=1]", got)
	}

	// Reports back to back, each the opposite of the last: the store ends as the last one says,
	// also when the hub's watch has not yet seen the write of the one before.
	for i := range 50 {
		plugged := []string{"pa2"}
		if i%2 == 0 {
			plugged = nil
		}
		if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev, PluggedPortIds: plugged}); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprint(plugged)
		if plugged != nil {
			want = "[pa2=1]"
		}
		if got := fmt.Sprint(statusKeys()); got != want {
			t.Fatalf("report %d (plugged %v): status keys %s, want %s", i, plugged, got, want)
		}
	}
	if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "Bad"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad node name: %v, want InvalidArgument", err)
	}

	// Errors are kept until the next report; oversized ones are refused and change nothing.
	errs := []string{"uplink eth9 master vxbr400: uplink interface not found"}
	if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev, Errors: errs}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{make([]string, 33), {strings.Repeat("x", 513)}} {
		if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev, Errors: bad}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%d errors, the first of %d bytes: %v, want InvalidArgument", len(bad), len(bad[0]), err)
		}
	}
	if got := e.hub.NodeErrors("a"); !slices.Equal(got, errs) {
		t.Errorf("NodeErrors = %q, want %q", got, errs)
	}
	if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev}); err != nil {
		t.Fatal(err)
	}
	if got := e.hub.NodeErrors("a"); got != nil {
		t.Errorf("NodeErrors after a clean report = %q, want none", got)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.hub.WaitApplied(wctx, "a", rev); err != nil {
		t.Error(err)
	}

	// The stream ends (the agent streams from another replica now): what it reported here is no
	// longer known, rather than shown stale; errors go with it.
	if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev, Errors: errs}); err != nil {
		t.Fatal(err)
	}
	a.stop()
	deadline := time.Now().Add(2 * time.Second)
	for applied, _ := e.hub.NodeRevisions("a"); applied != 0 && time.Now().Before(deadline); applied, _ = e.hub.NodeRevisions("a") {
		time.Sleep(10 * time.Millisecond)
	}
	if applied, _ := e.hub.NodeRevisions("a"); applied != 0 || e.hub.NodeErrors("a") != nil {
		t.Errorf("after a's stream ended: applied %d, errors %q; want not known (0), none", applied, e.hub.NodeErrors("a"))
	}
}

// TestLateReportOfANodeIsIgnored: a node's report held up at one replica and committed after a newer
// one (a higher sequence) writes no status: the newer one's stands.
func TestLateReportOfANodeIsIgnored(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	ctx := context.Background()
	report := func(seq int64, plugged ...string) {
		t.Helper()
		// Token 0: the hub catches up with the store first, so each report is judged on all writes.
		if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", PluggedPortIds: plugged, Sequence: seq}); err != nil {
			t.Fatal(err)
		}
	}
	report(10, "pa")
	if !e.plugged("pa") {
		t.Fatal("pa not plugged by report 10")
	}
	report(20) // unplugged
	if e.plugged("pa") {
		t.Fatal("pa still plugged after report 20")
	}
	report(15, "pa") // late: held up before report 20
	if e.plugged("pa") {
		t.Error("the late report 15 plugged pa again over report 20")
	}
	report(21, "pa")
	if !e.plugged("pa") {
		t.Error("report 21 did not plug pa")
	}
	report(0) // an agent of an older version: unordered, as before
	if e.plugged("pa") {
		t.Error("an unordered report did not unplug pa")
	}
}

// TestResumeAtARevisionOutsideThePrefix: an agent resumes at a revision written outside the hub's
// prefix (a shared etcd): no watch event brings the hub there, a progress notification does, at
// once (not after CatchUpTimeout, with Unavailable).
func TestResumeAtARevisionOutsideThePrefix(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	a := e.sync(c, "a", 0)
	a.next(5 * time.Second)
	resp, err := e.cli.Put(context.Background(), "/another-app/key", "v")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	b := e.sync(c, "a", resp.Header.Revision)
	msg := b.next(2 * time.Second)
	if took := time.Since(began); took > time.Second || msg.GetRevision() < resp.Header.Revision {
		t.Errorf("resumed after %s at revision %d, want within a second at >= %d", took, msg.GetRevision(), resp.Header.Revision)
	}
}

// TestReportAcrossReplicas: an agent's reports go to one replica, then (failover) to another whose
// watch has not yet seen the first one's status writes. The second decides only once it has: with
// the agent's token, and with no token (0) by catching up with the whole store.
func TestReportAcrossReplicas(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	b := newReplica(t, e.cli, Config{})
	paused, release := b.holdRewatch()
	b.start()
	ca, cb := e.dial(), b.dial()
	ctx := context.Background()
	report := func(c vxfabricv1.AgentServiceClient, token int64, plugged ...string) int64 {
		t.Helper()
		resp, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", PluggedPortIds: plugged, StatusRevision: token})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetStatusRevision()
	}
	token := report(ca, 0, "pa")
	if !e.plugged("pa") {
		t.Fatal("pa not marked plugged")
	}
	if err := b.hub.WaitRevision(ctx, token); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		carry bool // the agent passes the token of its report to replica a
	}{{name: "token", carry: true}, {name: "no token"}} {
		// b's model holds pa plugged and stops following the store; a unplugs it.
		b.kickWatch()
		<-paused
		token = report(ca, token)
		if e.plugged("pa") {
			t.Fatalf("%s: pa still plugged after the report to a", tc.name)
		}
		if !tc.carry {
			token = 0
		}
		// The report to b (pa plugged again) must wait for b to see a's delete, which b would
		// otherwise take for a write it has nothing to add to.
		done := make(chan int64, 1)
		go func() { done <- report(cb, token, "pa") }()
		select {
		case <-done:
			t.Fatalf("%s: b judged the report before it saw a's write", tc.name)
		case <-time.After(200 * time.Millisecond):
		}
		release <- struct{}{}
		token = <-done
		if !e.plugged("pa") {
			t.Errorf("%s: pa not plugged after the report to b", tc.name)
		}
		if err := e.hub.WaitRevision(ctx, token); err != nil {
			t.Fatal(err)
		}
	}

	cur, err := e.cli.Get(ctx, prefix, clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int64{-1, cur.Header.Revision + 1000} {
		if _, err := cb.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", StatusRevision: bad}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("status_revision %d: %v, want InvalidArgument", bad, err)
		}
	}
}

// TestLateReportAfterMove: the node a port moved away from reports late, from a hub that has not yet
// seen the move: it must neither mark the port plugged nor unplug it on its new node.
func TestLateReportAfterMove(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	paused, release := e.holdRewatch()
	e.start()
	c := e.dial()
	ctx := context.Background()
	report := func(ids ...string) {
		t.Helper()
		// A token the hub has seen: nothing to wait for, the hub judges with what it holds.
		if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", PluggedPortIds: ids, StatusRevision: 1}); err != nil {
			t.Fatal(err)
		}
	}

	stall := func() {
		e.kickWatch()
		<-paused
	}
	resume := func() {
		t.Helper()
		release <- struct{}{}
		cur, err := e.cli.Get(ctx, prefix, clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if err := e.hub.WaitRevision(ctx, cur.Header.Revision); err != nil {
			t.Fatal(err)
		}
	}

	// pa moves from a to b while the hub is away; a's late report says plugged.
	stall()
	e.put("ports/pa", testPort("pa", "n1", "b", 1))
	report("pa")
	if e.plugged("pa") {
		t.Error("a's late report marked pa plugged after pa moved to b")
	}
	resume()

	// pa back on a and plugged there; it moves to b, which plugs it; a's late report leaves it out.
	e.put("ports/pa", testPort("pa", "n1", "a", 1))
	if _, err := e.cli.Put(ctx, prefix+"status/ports/pa", "1"); err != nil {
		t.Fatal(err)
	}
	resume0 := e.put("ports/pb", testPort("pb", "n1", "b", 8)) // any write: the hub catches up past the status
	if err := e.hub.WaitRevision(ctx, resume0); err != nil {
		t.Fatal(err)
	}
	stall()
	e.put("ports/pa", testPort("pa", "n1", "b", 1))
	report()
	if !e.plugged("pa") {
		t.Error("a's late report unplugged pa, plugged on b where it moved")
	}
	resume()
}

// metric returns the value of a counter or gauge as a scrape would show it.
func metric(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func histCount(t testing.TB, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "vxfabric_fanout_convergence_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func TestRegisterNode(t *testing.T) {
	e := newEnv(t, Default())
	e.start()
	c := e.dial()
	ctx := context.Background()
	for _, req := range []*vxfabricv1.RegisterNodeRequest{
		{Name: "", Vtep: "198.18.0.1"},
		{Name: "h_1", Vtep: "198.18.0.1"},
		{Name: "h1", Vtep: ""},
		{Name: "h1", Vtep: "fd00::1"},
		{Name: "h1", Vtep: "::ffff:198.18.0.1"},
		{Name: "h1", Vtep: "198.18.0.256"},
		{Name: "h1", Vtep: "0.0.0.0"},
		{Name: "h1", Vtep: "127.0.0.1"},
		{Name: "h1", Vtep: "255.255.255.255"},
		{Name: "h1", Vtep: "169.254.0.1"},
		{Name: "h1", Vtep: "224.0.0.1"},
	} {
		if _, err := c.RegisterNode(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("RegisterNode(%v): %v, want InvalidArgument", req, err)
		}
	}
	if n, err := e.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || n.Count != 0 {
		t.Fatalf("invalid registrations wrote %v keys (%v)", n.Count, err)
	}

	first, err := c.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.0.1", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.0.1", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if again.GetNode().GetRevision() != first.GetNode().GetRevision() {
		t.Errorf("repeated registration rewrote the node: revision %d -> %d", first.GetNode().GetRevision(), again.GetNode().GetRevision())
	}
	// The nodes epoch (store.NodesEpochKey) moves with a new node or a new VTEP, never with a status
	// or version alone: network creates checked against the VTEPs depend on it.
	epoch := func() int64 {
		resp, err := e.cli.Get(ctx, prefix+"nodes-epoch")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("nodes epoch: %v %v", resp, err)
		}
		return resp.Kvs[0].ModRevision
	}
	if got := epoch(); got != first.GetNode().GetRevision() {
		t.Errorf("a new node left the nodes epoch at %d, want its write's revision %d", got, first.GetNode().GetRevision())
	}
	upgraded, err := c.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.0.1", Version: "v1.1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := epoch(); upgraded.GetNode().GetRevision() == first.GetNode().GetRevision() || got != first.GetNode().GetRevision() {
		t.Errorf("a version change (node at %d) moved the nodes epoch to %d", upgraded.GetNode().GetRevision(), got)
	}
	moved, err := c.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.0.9", Version: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	if got := epoch(); got != moved.GetNode().GetRevision() {
		t.Errorf("a new VTEP left the nodes epoch at %d, want %d", got, moved.GetNode().GetRevision())
	}
	resp, err := e.cli.Get(ctx, prefix+"nodes/h1")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("nodes/h1: %v %v", resp, err)
	}
	var stored vxfabricv1.Node
	if err := proto.Unmarshal(resp.Kvs[0].Value, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.GetVtep() != "198.18.0.9" || stored.GetVersion() != "v2" || stored.GetStatus() != vxfabricv1.NodeStatus_NODE_STATUS_ALIVE ||
		stored.GetLastChange() == nil || resp.Kvs[0].ModRevision != moved.GetNode().GetRevision() {
		t.Errorf("stored node %v at %d, want vtep 198.18.0.9 v2 ALIVE at %d", &stored, resp.Kvs[0].ModRevision, moved.GetNode().GetRevision())
	}
}

// TestStalledAgentDoesNotDelayOthers opens a stream that never reads, next to one that does, and
// writes a burst of changes both must see: the reader keeps up, and the stalled stream's backlog stays
// within MaxPending (it is dropped for a snapshot instead of growing).
func TestStalledAgentDoesNotDelayOthers(t *testing.T) {
	cfg := Default()
	cfg.MaxPending = 200
	// One snapshot slot, which the stalled stream takes for its owed snapshot and cannot finish sending:
	// an agent connecting after that must still get its snapshot.
	cfg.MaxSnapshots, cfg.SnapshotSlotHold = 1, 200*time.Millisecond
	e := newEnv(t, cfg)
	e.put("nodes/fast", testNode("fast", "198.18.0.1"))
	e.put("nodes/slow", testNode("slow", "198.18.0.2"))
	e.put("nodes/w", testNode("w", "198.18.0.3"))
	e.put("networks/n1", testNetwork("n1", 100))
	e.put("ports/pf", testPort("pf", "n1", "fast", 0))
	e.put("ports/ps", testPort("ps", "n1", "slow", 0))
	// Enough ports that the stalled stream's snapshot alone overflows its flow-control windows.
	var ops []clientv3.Op
	for i := range 3000 {
		id := fmt.Sprintf("w%05d", i)
		ops = append(ops, clientv3.OpPut(prefix+"ports/"+id, string(mustMarshal(t, testPort(id, "n1", "w", i)))))
		if len(ops) == 100 {
			if _, err := e.cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	e.start()

	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	if _, err := vxfabricv1.NewAgentServiceClient(conn).Sync(sctx, &vxfabricv1.SyncRequest{Node: "slow"}); err != nil {
		t.Fatal(err)
	}
	fast := e.sync(e.dial(), "fast", 0)
	fast.next(5 * time.Second)

	var slow *subscriber
	deadline := time.Now().Add(5 * time.Second)
	for slow == nil && time.Now().Before(deadline) {
		e.hub.subsMu.Lock()
		for s := range e.hub.subs["slow"] {
			slow = s
		}
		e.hub.subsMu.Unlock()
		if slow == nil {
			time.Sleep(10 * time.Millisecond) // polling for registration, bounded by the deadline
		}
	}
	if slow == nil {
		t.Fatal("stalled stream never subscribed")
	}

	var worst time.Duration
	for i := range 300 {
		id := fmt.Sprintf("v%05d", i)
		start := time.Now()
		rev := e.put("ports/"+id, testPort(id, "n1", "w", 5000+i))
		fast.waitRev(rev)
		worst = max(worst, time.Since(start))
		if size, _, _ := slow.pendingSize(); size > cfg.MaxPending {
			t.Fatalf("stalled backlog %d items, bound %d", size, cfg.MaxPending)
		}
	}
	size, peak, resnap := slow.pendingSize()
	t.Logf("reader: worst put-to-delta %s over 300 changes; stalled: backlog %d (peak %d), snapshot owed %v, overflows %v",
		worst, size, peak, resnap, metric(t, e.reg, "vxfabric_fanout_backlog_overflows_total"))
	if !resnap || metric(t, e.reg, "vxfabric_fanout_backlog_overflows_total") < 1 {
		t.Errorf("stalled stream's backlog never overflowed into a snapshot (size %d)", size)
	}
	if worst > time.Second {
		t.Errorf("reader delayed: worst %s", worst)
	}
	if _, ok := fast.view.remote["v00299"]; !ok {
		t.Error("reader missed the last change")
	}
	// The stalled stream is owed a snapshot it cannot send; a newcomer still gets one.
	late := e.sync(e.dial(), "fast", 0)
	if msg := late.next(5 * time.Second); !msg.GetSnapshot() || len(msg.GetRemotePorts()) != 3301 {
		t.Errorf("newcomer's first message: snapshot %v with %d remote ports, want a snapshot of 3301", msg.GetSnapshot(), len(msg.GetRemotePorts()))
	}
}

// TestSnapshotStormBounded connects 300 streams at once to a model holding 3,000 ports (2,990 remote
// ports per view) and checks that no more than Config.MaxSnapshots snapshots are ever built and not
// yet handed to gRPC at the same time, counted from outside the hub (a hook after each build, an
// interceptor after each snapshot's Send); without the slots all 300 are built at once. The heap is
// logged, not bounded: it is dominated by what the bound cannot reach, the encoded snapshots gRPC
// queues until each client reads its own (Send returns once queued), and this process's clients
// decoding them.
func TestSnapshotStormBounded(t *testing.T) {
	const (
		nodes        = 300
		portsPerNode = 10
		slots        = 2
	)
	cfg := Default()
	cfg.MaxSnapshots = slots
	// Every client here reads, so no Send is stuck; a slow machine (-race) must not make the hold
	// timer give a slot back while its snapshot is still being built or encoded.
	cfg.SnapshotSlotHold = time.Minute
	e := newEnv(t, cfg)
	e.put("networks/n1", testNetwork("n1", 100))
	var ops []clientv3.Op
	for i := range nodes {
		name := fmt.Sprintf("h%03d", i)
		ops = append(ops, clientv3.OpPut(prefix+"nodes/"+name, string(mustMarshal(t, testNode(name, fmt.Sprintf("198.18.%d.%d", i/250, i%250+1))))))
		for j := range portsPerNode {
			id := fmt.Sprintf("p%03d-%d", i, j)
			ops = append(ops, clientv3.OpPut(prefix+"ports/"+id, string(mustMarshal(t, testPort(id, "n1", name, i*portsPerNode+j)))))
		}
		if len(ops) >= 100 {
			if _, err := e.cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}

	var inFlight, peak atomic.Int64
	e.hub.snapshotBuilt = func() {
		n := inFlight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
	}
	sent := grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &countingStream{ServerStream: ss, sent: func() { inFlight.Add(-1) }})
	})
	e.start(sent)

	var conns []vxfabricv1.AgentServiceClient
	for range 10 {
		conns = append(conns, e.dial())
	}
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	stop := make(chan struct{})
	var sampled sync.WaitGroup
	var peakHeap uint64
	sampled.Add(1)
	go func() {
		defer sampled.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peakHeap = max(peakHeap, ms.HeapAlloc)
			select {
			case <-tick.C:
			case <-stop:
				return
			}
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	results := make(chan error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		node := fmt.Sprintf("h%03d", i)
		stream, err := conns[i%len(conns)].Sync(ctx, &vxfabricv1.SyncRequest{Node: node})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, err := recvWhole(stream.Recv)
			switch {
			case err != nil:
				results <- fmt.Errorf("node %s: %w", node, err)
			case !msg.GetSnapshot() || len(msg.GetRemotePorts()) != (nodes-1)*portsPerNode || len(msg.GetPeers()) != nodes-1:
				results <- fmt.Errorf("node %s: snapshot %v with %d remote ports and %d peers, want %d and %d",
					node, msg.GetSnapshot(), len(msg.GetRemotePorts()), len(msg.GetPeers()), (nodes-1)*portsPerNode, nodes-1)
			default:
				results <- nil
			}
		}()
	}
	timeout := time.After(30 * time.Second)
	for range nodes {
		select {
		case err := <-results:
			if err != nil {
				t.Error(err)
			}
		case <-timeout:
			t.Fatal("not every stream got its snapshot within 30 s")
		}
	}
	elapsed := time.Since(start)
	close(stop)
	sampled.Wait()
	cancel()
	wg.Wait()

	growth := int64(peakHeap) - int64(base.HeapAlloc)
	t.Logf("%d snapshots of %d remote ports in %s; at most %d built and unsent at once (bound %d); heap %.1f MiB at start, peak growth %.1f MiB",
		nodes, (nodes-1)*portsPerNode, elapsed.Round(time.Millisecond), peak.Load(), slots, float64(base.HeapAlloc)/(1<<20), float64(growth)/(1<<20))
	if p := peak.Load(); p > slots || p < 1 {
		t.Errorf("%d snapshots built and not yet sent at once, want 1..%d", p, slots)
	}
}

// countingStream calls sent after the Send of each snapshot's last part returns.
type countingStream struct {
	grpc.ServerStream
	sent func()
}

func (c *countingStream) SendMsg(m any) error {
	err := c.ServerStream.SendMsg(m)
	if r, ok := m.(*vxfabricv1.SyncResponse); ok && r.GetSnapshot() && !r.GetSnapshotContinues() {
		c.sent()
	}
	return err
}

// TestSnapshotSlotCancelWhileWaiting ends a stream that waits for a snapshot slot: it takes none, gives
// none back (the slot held elsewhere stays held), and the next stream gets its snapshot once the slot
// is free.
func TestSnapshotSlotCancelWhileWaiting(t *testing.T) {
	cfg := Default()
	cfg.MaxSnapshots = 1
	e := newEnv(t, cfg)
	e.seed()
	e.start()
	release, err := e.hub.snapshotSlot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := e.dial()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.Sync(ctx, &vxfabricv1.SyncRequest{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	waitMetric(t, e.reg, "vxfabric_fanout_snapshot_waiting", 1)
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream: %v, want Canceled", err)
	}
	waitMetric(t, e.reg, "vxfabric_fanout_snapshot_waiting", 0)
	if n := len(e.hub.slots); n != 1 {
		t.Fatalf("%d slots taken after the waiting stream ended, want the 1 held here", n)
	}
	if n := metric(t, e.reg, "vxfabric_fanout_streams"); n != 0 {
		t.Fatalf("streams gauge %v after the waiting stream ended, want 0", n)
	}
	a := e.sync(c, "a", 0)
	waitMetric(t, e.reg, "vxfabric_fanout_snapshot_waiting", 1)
	release()
	release() // a second call gives back nothing more
	if msg := a.next(5 * time.Second); !msg.GetSnapshot() {
		t.Fatalf("first message after the slot freed: %v, want a snapshot", msg)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(e.hub.slots) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots still taken after the snapshot was sent", len(e.hub.slots))
		}
		time.Sleep(5 * time.Millisecond) // polling, bounded by the deadline
	}
}

// waitMetric polls a gauge until it equals want (5 s at most).
func waitMetric(t testing.TB, reg *prometheus.Registry, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := metric(t, reg, name)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", name, got, want)
		}
		time.Sleep(5 * time.Millisecond) // polling, bounded by the deadline
	}
}

// TestThousandAgents connects 1,000 streams (one node each, all in one network) and measures how long a
// port create on one node takes to reach every other.
func TestThousandAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const nodes = 1000
	e := newEnv(t, Default())
	var ops []clientv3.Op
	flush := func() {
		if _, err := e.cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	e.put("networks/n1", testNetwork("n1", 100))
	for i := range nodes {
		name := fmt.Sprintf("h%04d", i)
		ops = append(ops,
			clientv3.OpPut(prefix+"nodes/"+name, string(mustMarshal(t, testNode(name, fmt.Sprintf("198.18.%d.%d", i/250, i%250+1))))),
			clientv3.OpPut(prefix+"ports/p"+name, string(mustMarshal(t, testPort("p"+name, "n1", name, i)))))
		if len(ops) == 100 {
			flush()
		}
	}
	e.start()
	t0 := time.Now()

	var conns []vxfabricv1.AgentServiceClient
	for range 20 {
		conns = append(conns, e.dial())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type arrival struct {
		at  time.Time
		err error
	}
	var mu sync.Mutex
	target := int64(-1)
	arrivals := make(chan arrival, nodes)
	ready := make(chan error, nodes)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range nodes {
		stream, err := conns[i%len(conns)].Sync(ctx, &vxfabricv1.SyncRequest{Node: fmt.Sprintf("h%04d", i)})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			for {
				msg, err := recvWhole(stream.Recv)
				if err != nil {
					if first {
						ready <- err
					}
					if !errors.Is(err, io.EOF) && status.Code(err) != codes.Canceled {
						arrivals <- arrival{err: err}
					}
					return
				}
				if first {
					first = false
					ready <- nil
					continue
				}
				mu.Lock()
				want := target
				mu.Unlock()
				if want > 0 && msg.GetRevision() >= want {
					arrivals <- arrival{at: time.Now()}
				}
			}
		}()
	}
	for range nodes {
		if err := <-ready; err != nil {
			t.Fatal(err)
		}
	}
	if n := metric(t, e.reg, "vxfabric_fanout_streams"); n != nodes {
		t.Fatalf("streams gauge %v, want %d", n, nodes)
	}
	t.Logf("1,000 agents connected and got their snapshot (1,000 ports, 999 flood entries) in %s", time.Since(t0))

	mu.Lock()
	start := time.Now()
	resp, err := e.cli.Put(ctx, prefix+"ports/new", string(mustMarshal(t, testPort("new", "n1", "h0000", 5000))))
	if err != nil {
		mu.Unlock()
		t.Fatal(err)
	}
	target = resp.Header.Revision
	mu.Unlock()
	var lat []time.Duration
	timeout := time.After(20 * time.Second)
	for len(lat) < nodes {
		select {
		case a := <-arrivals:
			if a.err != nil {
				t.Fatal(a.err)
			}
			lat = append(lat, a.at.Sub(start))
		case <-timeout:
			t.Fatalf("%d of %d agents got the change", len(lat), nodes)
		}
	}
	sortDurations(lat)
	t.Logf("1,000 agents: put -> delta received p50 %s, p99 %s, max %s", lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	cancel()
}

func sortDurations(d []time.Duration) {
	for i := 1; i < len(d); i++ {
		for j := i; j > 0 && d[j] < d[j-1]; j-- {
			d[j], d[j-1] = d[j-1], d[j]
		}
	}
}

// The gossip keyring is in every node's view, also one without networks: a stream gets it in its
// snapshot and in a delta when it changes, and the change raises every node's desired revision. A
// report confirming a keyring records it once, and an older confirmation does not lower it.
func TestGossipKeyringInEveryView(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	rev1 := e.put("gossip/keyring", &vxfabricv1.GossipKeyring{Keys: [][]byte{k1}, Step: vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE})
	e.start()
	c := e.dial()
	ctx := context.Background()
	wantKeys := func(what string, msg *vxfabricv1.SyncResponse, rev int64, keys ...[]byte) {
		t.Helper()
		if got := msg.GetGossipKeys(); got.GetRevision() != rev || !slices.EqualFunc(got.GetKeys(), keys, bytes.Equal) {
			t.Errorf("%s: gossip keys %v, want revision %d with %d keys", what, got, rev, len(keys))
		}
	}
	a := e.sync(c, "a", 0)
	wantKeys("a's snapshot", a.next(5*time.Second), rev1, k1)
	z := e.sync(c, "z", 0) // no network, no record
	wantKeys("z's snapshot", z.next(5*time.Second), rev1, k1)

	rev2 := e.put("gossip/keyring", &vxfabricv1.GossipKeyring{Keys: [][]byte{k2, k1}, Step: vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_USE})
	wantKeys("a's delta", a.next(5*time.Second), rev2, k2, k1)
	wantKeys("z's delta", z.next(5*time.Second), rev2, k2, k1)
	if _, desired := e.hub.NodeRevisions("a"); desired != rev2 {
		t.Errorf("a's desired revision %d after the keyring changed at %d", desired, rev2)
	}

	confirmed := func() string {
		t.Helper()
		resp, err := e.cli.Get(ctx, prefix+store.NodeKeyrings+"a")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("a's confirmed keyring: %v, %v", resp, err)
		}
		return string(resp.Kvs[0].Value)
	}
	for _, kr := range []int64{rev1, rev2, rev1} {
		if _, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Revision: rev2, GossipKeyringRevision: kr}); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := confirmed(), fmt.Sprintf("%020d", rev2); got != want {
		t.Errorf("a's confirmed keyring %s, want %s", got, want)
	}
}

// A node resuming at another replica, which never heard of it (so the keyring change did not raise
// its desired revision there), still gets the keyring with the message that resumes it.
func TestResumeAtOtherReplicaCarriesKeyring(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.put("nodes/z", testNode("z", "198.18.0.9")) // a host with no ports yet
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	e.put("gossip/keyring", &vxfabricv1.GossipKeyring{Keys: [][]byte{k1}, Step: vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE})
	e.start()
	b := newReplica(t, e.cli, Config{})
	b.start()

	z := e.sync(e.dial(), "z", 0)
	from := z.next(5 * time.Second).GetRevision()
	z.stop()
	rev2 := e.put("gossip/keyring", &vxfabricv1.GossipKeyring{Keys: [][]byte{k1, k2}, Step: vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_INSTALL})
	if err := b.hub.WaitRevision(context.Background(), rev2); err != nil {
		t.Fatal(err)
	}
	msg := b.sync(b.dial(), "z", from).next(5 * time.Second)
	if msg.GetRevision() >= rev2 && msg.GetGossipKeys().GetRevision() != rev2 {
		t.Errorf("z resumed at the other replica to revision %d, past the keyring change at %d, with keys %v (snapshot %v)",
			msg.GetRevision(), rev2, msg.GetGossipKeys(), msg.GetSnapshot())
	}
}

// An agent's underlay routes are stored when they change; the same routes again write nothing; a
// report without routes leaves them; routes that cannot be a host's subnet or next hop are left
// out, and the report still counts.
func TestReportAppliedRecordsUnderlayRoutes(t *testing.T) {
	e := newEnv(t, Default())
	e.seed()
	e.start()
	c := e.dial()
	ctx := context.Background()
	a := e.sync(c, "a", 0)
	a.next(5 * time.Second)
	stored := func() (string, int64) {
		resp, err := e.cli.Get(ctx, prefix+store.NodeUnderlays+"a")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return "<none>", 0
		}
		return fmt.Sprint(store.ParseUnderlay(string(resp.Kvs[0].Value))), resp.Kvs[0].ModRevision
	}
	seq := int64(100)
	report := func(routes ...string) error {
		seq++
		_, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "a", Sequence: seq, UnderlayRoutes: routes})
		return err
	}
	if err := report(); err != nil {
		t.Fatal(err)
	}
	if v, _ := stored(); v != "<none>" {
		t.Fatalf("report without routes stored %q", v)
	}
	if err := report("198.18.0.0/24", "10.99.0.5/32", "198.18.0.254/32", "198.18.0.7/24", "0.0.0.0/1", "fe80::/64", "nonsense"); err != nil {
		t.Fatal(err)
	}
	want := "[10.99.0.5/32 198.18.0.0/24 198.18.0.254/32]"
	v, rev := stored()
	if v != want {
		t.Errorf("stored %q, want %q: masked, sorted, once each, without what no host is attached to", v, want)
	}
	if err := report("198.18.0.254/32", "198.18.0.0/24", "10.99.0.5/32"); err != nil {
		t.Fatal(err)
	}
	if err := report(); err != nil {
		t.Fatal(err)
	}
	if v, again := stored(); again != rev || v != want {
		t.Errorf("the same routes again, then none: %q at revision %d (was %d): want nothing written", v, again, rev)
	}
	if err := report(make([]string, 100)...); err != nil {
		t.Errorf("a report with 100 unreadable routes: %v, want it taken without them", err)
	}

	// A report held up at another replica and committed late does not undo a newer one: another
	// hub on the same etcd takes a report of a lower sequence after this one wrote.
	if err := report("198.18.0.0/24"); err != nil {
		t.Fatal(err)
	}
	other := New(e.cli, Config{Prefix: prefix})
	if err := other.recordUnderlay(ctx, "a", seq-5, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	if v, _ := stored(); v != "[198.18.0.0/24]" {
		t.Errorf("after a late report at another replica: %s, want the newer [198.18.0.0/24]", v)
	}

	// A value an earlier version wrote (no sequence) is replaced by the next report.
	if _, err := e.cli.Put(ctx, prefix+store.NodeUnderlays+"a", "10.1.0.0/16\n198.18.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := other.recordUnderlay(ctx, "a", seq+1, []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if v, _ := stored(); v != "[198.18.0.0/24]" {
		t.Errorf("after a report over a value of an earlier version: %s, want [198.18.0.0/24]", v)
	}
	// The same routes as stored, seen by a hub that knew nothing of them, write nothing.
	_, before := stored()
	fresh := New(e.cli, Config{Prefix: prefix})
	if err := fresh.recordUnderlay(ctx, "a", seq+2, []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if _, after := stored(); after != before {
		t.Errorf("the same routes rewritten (revision %d, was %d)", after, before)
	}
}
