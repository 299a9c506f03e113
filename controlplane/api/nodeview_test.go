package api

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"
	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// hookKV runs beforeTxn when a transaction is started through it: after the API has checked a new
// network against its node view and before the create's transaction reaches etcd. onGet, when set,
// runs before every Get; an error it returns is the Get's.
type hookKV struct {
	clientv3.KV
	beforeTxn atomic.Pointer[func()]
	onGet     atomic.Pointer[func(ctx context.Context, key string) error]
}

func (h *hookKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if f := h.onGet.Load(); f != nil {
		if err := (*f)(ctx, key); err != nil {
			return nil, err
		}
	}
	return h.KV.Get(ctx, key, opts...)
}

func (h *hookKV) Txn(ctx context.Context) clientv3.Txn {
	if f := h.beforeTxn.Swap(nil); f != nil {
		(*f)()
	}
	return h.KV.Txn(ctx)
}

type apiFixture struct {
	cli  *clientv3.Client
	kv   *hookKV
	svcs *Services
	logs *logBuffer // what the services logged
}

// logBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newFixture starts etcd and the services (as one server replica) with tenant "acme".
func newFixture(t *testing.T) *apiFixture {
	t.Helper()
	cli := etcdtest.Client(t)
	kv := &hookKV{KV: cli}
	st := store.New(kv)
	pool, err := alloc.NewVNIPool(alloc.DefaultRanges())
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	svcs, err := New(Config{Store: st, Alloc: alloc.New(st, pool), VNIs: pool, UnderlayMTU: 1500, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Tenants.CreateTenant(testCtx(t), &vxfabricv1.CreateTenantRequest{Name: "acme"}); err != nil {
		t.Fatal(err)
	}
	return &apiFixture{cli: cli, kv: kv, svcs: svcs, logs: logs}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// registerNode writes a node record the way RegisterNode does (read, then a transaction on the
// key's revision that rewrites the nodes epoch when the node is new or its VTEP changed) and returns
// the revision of the write.
func (f *apiFixture) registerNode(ctx context.Context, name, vtep string) (int64, error) {
	key := store.NodeKey(name)
	for {
		resp, err := f.cli.Get(ctx, key)
		if err != nil {
			return 0, err
		}
		var modRev int64
		prev := &vxfabricv1.Node{}
		if len(resp.Kvs) == 1 {
			modRev = resp.Kvs[0].ModRevision
			if err := proto.Unmarshal(resp.Kvs[0].Value, prev); err != nil {
				return 0, err
			}
		}
		val, err := proto.Marshal(&vxfabricv1.Node{Name: name, Vtep: vtep, Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE})
		if err != nil {
			return 0, err
		}
		puts := []clientv3.Op{clientv3.OpPut(key, string(val))}
		if modRev == 0 || prev.GetVtep() != vtep {
			puts = append(puts, clientv3.OpPut(store.NodesEpochKey, ""))
		}
		tx, err := f.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).Then(puts...).Commit()
		if err != nil {
			return 0, err
		}
		if tx.Succeeded {
			return tx.Header.Revision, nil
		}
	}
}

func (f *apiFixture) createNetwork(ctx context.Context, name, cidr, requestID string) (*vxfabricv1.Network, error) {
	resp, err := f.svcs.Networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
		Tenant: "acme", Name: name, Cidr: cidr, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, RequestId: requestID,
	})
	return resp.GetNetwork(), err
}

// networkCount is how many networks etcd holds.
func (f *apiFixture) networkCount(ctx context.Context, t *testing.T) int64 {
	t.Helper()
	resp, err := f.cli.Get(ctx, store.NetworksPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// A node registered with a VTEP in the CIDR after the API checked a new network against its view, but
// before the create's transaction, refuses the create (the view is stale, the transaction says so, the
// check runs again on a fresh read). Reading the nodes and then writing without the guard would have
// created the network.
func TestCreateNetworkRefusedByNodeRegisteredDuringCheck(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	if _, err := f.createNetwork(ctx, "first", "10.0.0.0/24", ""); err != nil { // fills the view: no nodes
		t.Fatal(err)
	}
	var regErr error
	register := func() { _, regErr = f.registerNode(ctx, "h1", "198.18.5.1") }
	f.kv.beforeTxn.Store(&register)
	_, err := f.createNetwork(ctx, "over-h1", "198.18.5.0/24", "req-1")
	if regErr != nil {
		t.Fatal(regErr)
	}
	if f.kv.beforeTxn.Load() != nil {
		t.Fatal("the create ran no transaction after its check")
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("create over a VTEP registered during the check: %v, want FailedPrecondition", err)
	}
	if n := f.networkCount(ctx, t); n != 1 {
		t.Fatalf("%d networks in etcd, want 1", n)
	}
	// Beside the VTEP the create goes through.
	if _, err := f.createNetwork(ctx, "beside-h1", "198.18.6.0/24", ""); err != nil {
		t.Fatalf("create beside the VTEP: %v", err)
	}
}

// A view that still holds a VTEP the node has since moved away from does not refuse: a refusal is
// always checked on a fresh read.
func TestCreateNetworkNotRefusedByStaleView(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	if _, err := f.registerNode(ctx, "h1", "198.18.5.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.createNetwork(ctx, "over-h1", "198.18.5.0/24", ""); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("create over h1's VTEP: %v, want FailedPrecondition", err)
	}
	if _, err := f.registerNode(ctx, "h1", "198.18.7.1"); err != nil { // the view still holds 198.18.5.1
		t.Fatal(err)
	}
	if _, err := f.createNetwork(ctx, "over-h1", "198.18.5.0/24", ""); err != nil {
		t.Fatalf("create over h1's old VTEP: %v", err)
	}
	if _, err := f.createNetwork(ctx, "over-h1-again", "198.18.7.0/24", ""); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("create over h1's new VTEP: %v, want FailedPrecondition", err)
	}
}

// A retry of a create that succeeded returns its network even after a node registered inside its CIDR.
func TestCreateNetworkRetryAfterNodeRegistered(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	first, err := f.createNetwork(ctx, "web", "198.18.5.0/24", "req-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.registerNode(ctx, "h1", "198.18.5.1"); err != nil {
		t.Fatal(err)
	}
	again, err := f.createNetwork(ctx, "web", "198.18.5.0/24", "req-1")
	if err != nil || again.GetId() != first.Id {
		t.Fatalf("retry: %v, %v; want network %s", again, err, first.Id)
	}
	if _, err := f.createNetwork(ctx, "web2", "198.18.5.0/24", "req-2"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("new create over h1's VTEP: %v, want FailedPrecondition", err)
	}
}

// RegisterNode and CreateNetwork racing, a VTEP inside the CIDR: either the network committed first
// (RegisterNode does not check networks) or the create is refused; never a network committed after
// the node it contains.
func TestCreateNetworkRacesRegisterNode(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	outcomes := map[string]int{}
	for i := range 60 {
		cidr := fmt.Sprintf("10.%d.0.0/24", i)
		var nodeRev int64
		var regErr, createErr error
		var created *vxfabricv1.Network
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			nodeRev, regErr = f.registerNode(ctx, fmt.Sprintf("h%d", i), fmt.Sprintf("10.%d.0.9", i))
		}()
		go func() {
			defer wg.Done()
			created, createErr = f.createNetwork(ctx, fmt.Sprintf("n%d", i), cidr, "")
		}()
		wg.Wait()
		if regErr != nil {
			t.Fatal(regErr)
		}
		switch {
		case createErr == nil:
			if created.Revision >= nodeRev {
				t.Fatalf("round %d: network %s committed at %d, after node h%d (vtep in it) at %d", i, cidr, created.Revision, i, nodeRev)
			}
			outcomes["network first"]++
		case status.Code(createErr) == codes.FailedPrecondition:
			outcomes["node first, refused"]++
		default:
			t.Fatalf("round %d: create: %v", i, createErr)
		}
	}
	if n := f.networkCount(ctx, t); n != int64(outcomes["network first"]) {
		t.Fatalf("%d networks in etcd, %d created", n, outcomes["network first"])
	}
	t.Logf("outcomes %v", outcomes)
}

// A create waiting for the node records that another create is reading leaves at its own deadline,
// with DeadlineExceeded, and the read goes on for the others: one read serves every create waiting
// at once. The view used to hold its mutex across the read, made with the first create's context,
// so every other create waited for that read, past its own deadline.
func TestCreateNetworkWaitsForNodeReadOnlyUntilItsDeadline(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	reading := make(chan struct{}, 16)
	var reads atomic.Int32
	hold := func(ctx context.Context, key string) error {
		if key != store.NodesPrefix {
			return nil
		}
		reads.Add(1)
		reading <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.kv.onGet.Store(&hold)

	type result struct {
		err  error
		took time.Duration
	}
	create := func(ctx context.Context, name, cidr string) chan result {
		done := make(chan result, 1)
		go func() {
			begin := time.Now()
			_, err := f.createNetwork(ctx, name, cidr, "")
			done <- result{err, time.Since(begin)}
		}()
		return done
	}
	first := create(ctx, "first", "10.0.0.0/24")
	select {
	case <-reading:
	case <-time.After(10 * time.Second):
		t.Fatal("the first create did not read the node records")
	}
	third := create(ctx, "third", "10.2.0.0/24") // waits for the same read

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	select {
	case r := <-create(short, "second", "10.1.0.0/24"):
		if status.Code(r.err) != codes.DeadlineExceeded {
			t.Errorf("create with a 200ms deadline while the node read hangs: %v, want DeadlineExceeded", r.err)
		}
		if r.took > 2*time.Second {
			t.Errorf("create with a 200ms deadline returned after %s", r.took)
		}
	case <-time.After(5 * time.Second):
		t.Error("create with a 200ms deadline still waits after 5s for another create's node read")
	}

	unblock()
	for name, done := range map[string]chan result{"first": first, "third": third} {
		select {
		case r := <-done:
			if r.err != nil {
				t.Errorf("create %s: %v", name, r.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("create %s did not finish after the node read did", name)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads of the node records for three creates waiting at once, want 1", n)
	}
	if n := f.networkCount(ctx, t); n != 2 {
		t.Errorf("%d networks in etcd, want 2 (first and third)", n)
	}
}

// A tenant is not told which node's underlay address is inside its CIDR (NodeService, which would
// tell, is admin-only); an admin is.
func TestVTEPRefusalNamesTheNodeOnlyToAdmins(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	if _, err := f.registerNode(ctx, "h1", "198.18.5.1"); err != nil {
		t.Fatal(err)
	}
	_, err := f.createNetwork(ctx, "over-h1", "198.18.5.0/24", "")
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("tenant's create over h1's VTEP: %v, want FailedPrecondition", err)
	}
	msg := status.Convert(err).Message()
	if strings.Contains(msg, "h1") || strings.Contains(msg, "198.18.5.1") || !strings.Contains(msg, "contains the underlay address of a host of this fabric") {
		t.Errorf("tenant's refusal %q: want it to say a host's underlay address is inside, without naming node h1 or 198.18.5.1", msg)
	}
	_, err = f.createNetwork(WithAdmin(ctx), "over-h1", "198.18.5.0/24", "")
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("admin's create over h1's VTEP: %v, want FailedPrecondition", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "node h1") || !strings.Contains(msg, "198.18.5.1") {
		t.Errorf("admin's refusal %q does not name node h1 and its VTEP", msg)
	}
	if n := f.networkCount(ctx, t); n != 0 {
		t.Errorf("%d networks in etcd, want 0", n)
	}
}
