package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
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
// network against its node view and before the create's transaction reaches etcd.
type hookKV struct {
	clientv3.KV
	beforeTxn atomic.Pointer[func()]
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
	svcs, err := New(Config{Store: st, Alloc: alloc.New(st, pool), UnderlayMTU: 1500, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Tenants.CreateTenant(testCtx(t), &vxfabricv1.CreateTenantRequest{Name: "acme"}); err != nil {
		t.Fatal(err)
	}
	return &apiFixture{cli: cli, kv: kv, svcs: svcs}
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
