package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

func TestMain(m *testing.M) {
	// The batcher's drain goroutine ends with its queue; etcd's client and embedded server leave
	// these behind for a moment after Close.
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
	)
}

// createConcurrently runs one CreateNetwork per network, all at once, and returns their errors.
func createConcurrently(t *testing.T, st *Store, nets []*vxfabricv1.Network, requestIDs []string) []error {
	t.Helper()
	ctx := testCtx(t)
	errs := make([]error, len(nets))
	var wg sync.WaitGroup
	for i, n := range nets {
		wg.Go(func() {
			rid := ""
			if requestIDs != nil {
				rid = requestIDs[i]
			}
			_, errs[i] = st.CreateNetwork(ctx, n, rid, 0)
		})
	}
	wg.Wait()
	return errs
}

// tally counts the creates that succeeded per group (create i is in groups[i%len(groups)]) and
// reports every failure but its group's expected error.
func tally(t *testing.T, errs []error, groups []string, expected map[string]error, name func(i int) string) map[string]int {
	t.Helper()
	won := map[string]int{}
	for i, err := range errs {
		group := groups[i%len(groups)]
		switch {
		case err == nil:
			won[group]++
		case expected[group] == nil || !errors.Is(err, expected[group]):
			t.Errorf("%s create %s: %v", group, name(i), err)
		}
	}
	return won
}

// someNetworks returns n networks of tenant t with distinct names, ids and VNIs.
func someNetworks(n int) []*vxfabricv1.Network {
	var nets []*vxfabricv1.Network
	for i := range n {
		nets = append(nets, &vxfabricv1.Network{Id: fmt.Sprintf("%010x", i), Tenant: "t", Name: fmt.Sprintf("n%d", i), Vni: uint32(100 + i)})
	}
	return nets
}

// Concurrent creates share etcd transactions, and every one of them is written, once, with its own
// VNI: what 640 separate transactions would have left.
func TestConcurrentCreatesAreCommittedTogether(t *testing.T) {
	st, cli := newTestStore(t)
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "t"}, ""); err != nil {
		t.Fatal(err)
	}
	var nets []*vxfabricv1.Network
	var rids []string
	for i := range 640 {
		nets = append(nets, &vxfabricv1.Network{Id: fmt.Sprintf("%010x", i), Tenant: "t", Name: fmt.Sprintf("n%d", i), Vni: uint32(1000 + i)})
		rids = append(rids, fmt.Sprintf("req-%d", i))
	}
	for i, err := range createConcurrently(t, st, nets, rids) {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	st.creates.mu.Lock()
	commits, carried := st.creates.commits, st.creates.carried
	st.creates.mu.Unlock()
	if carried != 640 || commits >= carried {
		t.Errorf("%d transactions carried %d creates: want 640 creates in fewer transactions", commits, carried)
	}
	t.Logf("%d creates in %d transactions", carried, commits)
	reg := prometheus.NewRegistry()
	reg.MustRegister(st.Metrics()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, mf := range mfs {
		got[mf.GetName()] = uint64(mf.GetMetric()[0].GetCounter().GetValue())
	}
	if want := map[string]uint64{"vxfabric_store_create_transactions_total": commits, "vxfabric_store_creates_committed_total": carried}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("metrics %v, want %v", got, want)
	}
	for _, prefix := range []string{NetworkKey(""), TenantNetworkNamesPrefix("t"), VNIPrefix, TenantRequestsPrefix(KindNetwork, "t")} {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 640 {
			t.Errorf("%s*: %d keys (%v), want 640", prefix, resp.Count, err)
		}
	}
	vnis, err := st.TakenVNIs(ctx, 1000, 1639)
	if err != nil || len(vnis) != 640 {
		t.Errorf("taken VNIs 1000-1639: %d (%v), want 640", len(vnis), err)
	}
}

// Creates that collide on a name, a VNI or a request id never share a batch, and a batch that fails
// gives each of its creates the answer it would have had alone: exactly one create of each group
// wins, the others get their own error.
func TestCollidingCreatesGetTheirOwnAnswers(t *testing.T) {
	st, cli := newTestStore(t)
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "t"}, ""); err != nil {
		t.Fatal(err)
	}
	id := 0
	next := func(name string, vni uint32) *vxfabricv1.Network {
		id++
		return &vxfabricv1.Network{Id: fmt.Sprintf("%010x", id), Tenant: "t", Name: name, Vni: vni}
	}
	for round := range 5 {
		// 8 creates of one name, 8 of one VNI, 8 of one request id, and 8 that collide with nothing.
		var nets []*vxfabricv1.Network
		var rids []string
		for i := range 8 {
			nets = append(nets, next(fmt.Sprintf("same-name-%d", round), uint32(10000+round*100+i)))
			rids = append(rids, "")
			nets = append(nets, next(fmt.Sprintf("same-vni-%d-%d", round, i), uint32(20000+round)))
			rids = append(rids, "")
			nets = append(nets, next(fmt.Sprintf("same-request-%d-%d", round, i), uint32(30000+round*100+i)))
			rids = append(rids, fmt.Sprintf("same-request-%d", round))
			nets = append(nets, next(fmt.Sprintf("free-%d-%d", round, i), uint32(40000+round*100+i)))
			rids = append(rids, "")
		}
		won := tally(t, createConcurrently(t, st, nets, rids), []string{"same-name", "same-vni", "same-request", "free"},
			map[string]error{"same-name": ErrAlreadyExists, "same-vni": ErrVNITaken, "same-request": ErrRequestMismatch},
			func(i int) string { return fmt.Sprintf("round %d, %s", round, nets[i].Name) })
		if won["same-name"] != 1 || won["same-vni"] != 1 || won["same-request"] != 1 || won["free"] != 8 {
			t.Errorf("round %d: creates that succeeded per group %v, want one of each colliding group and all 8 free ones", round, won)
		}
	}
	resp, err := cli.Get(ctx, NetworkKey(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 5*11 {
		t.Errorf("%d networks stored (%v), want %d", resp.Count, err, 5*11)
	}
}

// take never puts two transactions that write the same key, or one that writes what the other
// compares, in one batch, and keeps the queue's order.
func TestTakeKeepsCollidingTransactionsApart(t *testing.T) {
	txn := func(cmps []string, puts ...string) *batchedTxn {
		t := &batchedTxn{}
		for _, k := range cmps {
			t.cmps = append(t.cmps, notExists(k))
		}
		for _, k := range puts {
			t.puts = append(t.puts, clientv3.OpPut(k, "v"))
		}
		return t
	}
	a := txn([]string{"tenant", "a"}, "a")
	b := txn([]string{"tenant", "b"}, "b")
	sameKey := txn([]string{"tenant", "a2"}, "a")     // writes a, as a does
	comparesB := txn([]string{"tenant", "b"}, "b2")   // compares b, which b writes
	writesTenant := txn([]string{"c"}, "c", "tenant") // writes what all the others compare
	prefix := txn([]string{"tenant"}, "d")
	prefix.cmps = append(prefix.cmps, prefixEmpty("a"))
	bt := newTxnBatcher(nil)
	bt.queue = []*batchedTxn{a, b, sameKey, comparesB, writesTenant, prefix}

	names := map[*batchedTxn]string{a: "a", b: "b", sameKey: "sameKey", comparesB: "comparesB", writesTenant: "writesTenant", prefix: "prefix"}
	var batches []string
	for len(bt.queue) > 0 {
		var got []string
		for _, x := range bt.take() {
			got = append(got, names[x])
		}
		batches = append(batches, fmt.Sprint(got))
	}
	want := "[[a b] [sameKey comparesB] [writesTenant] [prefix]]"
	if fmt.Sprint(batches) != want {
		t.Errorf("batches %v, want %s", batches, want)
	}

	// The limits: at most maxBatch creates, and the outer transaction's operations (one per create)
	// plus the widest create's within maxOps.
	fill := func() {
		bt.queue = nil
		for i := range 100 {
			k := fmt.Sprint(i)
			bt.queue = append(bt.queue, txn([]string{"c1" + k, "c2" + k, "c3" + k, "c4" + k, "c5" + k}, "p1"+k, "p2"+k, "p3"+k))
		}
	}
	for _, tc := range []struct {
		maxOps int
		sizes  string
	}{{maxTxnOps, "[64 36]"}, {32, "[27 27 27 19]"}} {
		bt.maxOps = tc.maxOps
		fill()
		var sizes []int
		for len(bt.queue) > 0 {
			sizes = append(sizes, len(bt.take()))
		}
		if fmt.Sprint(sizes) != tc.sizes {
			t.Errorf("maxOps %d: batches of %v creates, want %s", tc.maxOps, sizes, tc.sizes)
		}
	}
}

// Port creates share the batches too: of ports colliding on a name, an address or a MAC exactly one
// is written, and each of the others gets its own error.
func TestCollidingPortCreatesGetTheirOwnAnswers(t *testing.T) {
	st, cli := newTestStore(t)
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "t"}, ""); err != nil {
		t.Fatal(err)
	}
	netw := &vxfabricv1.Network{Id: "00000000aa", Tenant: "t", Name: "n", Vni: 100, Cidr: "10.0.0.0/16",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
	if _, err := st.CreateNetwork(ctx, netw, "", 0); err != nil {
		t.Fatal(err)
	}
	var ports []*vxfabricv1.Port
	for i := range 8 {
		port := func(group, name, ip, mac string) {
			ports = append(ports, &vxfabricv1.Port{Id: fmt.Sprintf("%s%07d", group[:3], i), Tenant: "t", Network: "n",
				NetworkId: netw.Id, Name: name, Node: "h1", Ip: ip, Mac: mac})
		}
		port("name", "same-name", fmt.Sprintf("10.0.1.%d", i+1), fmt.Sprintf("0e:00:00:00:01:%02x", i))
		port("ipa", fmt.Sprintf("same-ip-%d", i), "10.0.2.1", fmt.Sprintf("0e:00:00:00:02:%02x", i))
		port("mac", fmt.Sprintf("same-mac-%d", i), fmt.Sprintf("10.0.3.%d", i+1), "0e:00:00:00:03:00")
		port("fre", fmt.Sprintf("free-%d", i), fmt.Sprintf("10.0.4.%d", i+1), fmt.Sprintf("0e:00:00:00:04:%02x", i))
	}
	errs := make([]error, len(ports))
	var wg sync.WaitGroup
	for i, p := range ports {
		wg.Go(func() { _, errs[i] = st.CreatePort(ctx, p, "") })
	}
	wg.Wait()
	won := tally(t, errs, []string{"same-name", "same-ip", "same-mac", "free"},
		map[string]error{"same-name": ErrAlreadyExists, "same-ip": ErrIPTaken, "same-mac": ErrMACTaken},
		func(i int) string { return ports[i].Name })
	if won["same-name"] != 1 || won["same-ip"] != 1 || won["same-mac"] != 1 || won["free"] != 8 {
		t.Errorf("creates that succeeded per group %v, want one of each colliding group and all 8 free ones", won)
	}
	resp, err := cli.Get(ctx, PortKey(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 11 {
		t.Errorf("%d ports stored (%v), want 11", resp.Count, err)
	}
}

// batchFaultKV passes transactions to etcd, except that a batch (a transaction of nested ones) meets
// fault: before etcd sees it (refuse), or after etcd committed it (the answer is lost).
type batchFaultKV struct {
	clientv3.KV
	refuse, lose error
}

func (k batchFaultKV) Txn(ctx context.Context) clientv3.Txn {
	return &seenTxn{Txn: k.KV.Txn(ctx), commit: func(txn clientv3.Txn, then []clientv3.Op) (*clientv3.TxnResponse, error) {
		batch := slices.ContainsFunc(then, clientv3.Op.IsTxn)
		if batch && k.refuse != nil {
			return nil, k.refuse
		}
		resp, err := txn.Commit()
		if batch && err == nil && k.lose != nil {
			return nil, k.lose
		}
		return resp, err
	}}
}

// seenTxn passes a transaction on to etcd, and its commit to commit, which sees its Then operations:
// test KVs that act on some transactions.
type seenTxn struct {
	clientv3.Txn
	then   []clientv3.Op
	commit func(txn clientv3.Txn, then []clientv3.Op) (*clientv3.TxnResponse, error)
}

func (t *seenTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *seenTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}
func (t *seenTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *seenTxn) Commit() (*clientv3.TxnResponse, error) { return t.commit(t.Txn, t.then) }

// A batch whose answer is lost after etcd committed it gives every create of it that error, as one
// transaction would: none is run again, which would report "already exists" for its own network.
func TestBatchWithUnknownOutcomeReturnsTheError(t *testing.T) {
	_, cli := newTestStore(t)
	lost := status.Error(codes.Unavailable, "connection lost after the commit")
	st := New(batchFaultKV{KV: cli, lose: lost})
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "t"}, ""); err != nil {
		t.Fatal(err)
	}
	nets := someNetworks(64)
	lostCount := 0
	for i, err := range createConcurrently(t, st, nets, nil) {
		switch {
		case errors.Is(err, lost):
			lostCount++
		case err != nil:
			t.Errorf("create %d: %v, want success (committed alone) or the lost answer", i, err)
		}
	}
	if lostCount == 0 {
		t.Error("no create went through a batch: the test proves nothing")
	}
	resp, err := cli.Get(ctx, NetworkKey(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 64 {
		t.Errorf("%d networks stored (%v), want all 64", resp.Count, err)
	}
}

// A batch that etcd refuses as a whole was not applied: each create runs again alone and succeeds,
// and a refusal for too many operations makes later batches smaller.
func TestRefusedBatchRunsEachCreateAlone(t *testing.T) {
	_, cli := newTestStore(t)
	st := New(batchFaultKV{KV: cli, refuse: rpctypes.ErrTooManyOps})
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "t"}, ""); err != nil {
		t.Fatal(err)
	}
	nets := someNetworks(64)
	for i, err := range createConcurrently(t, st, nets, nil) {
		if err != nil {
			t.Errorf("create %d: %v", i, err)
		}
	}
	st.creates.mu.Lock()
	maxOps, commits, carried := st.creates.maxOps, st.creates.commits, st.creates.carried
	st.creates.mu.Unlock()
	if commits == carried {
		t.Fatal("no create went through a batch: the test proves nothing")
	}
	if maxOps >= maxTxnOps {
		t.Errorf("batch limit %d after a refusal for too many operations, want it lowered", maxOps)
	}
	resp, err := cli.Get(ctx, NetworkKey(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 64 {
		t.Errorf("%d networks stored (%v), want all 64", resp.Count, err)
	}
}

// A caller whose context has ended is not queued, and one that gives up while queued is withdrawn:
// neither create is ever sent.
func TestEndedCallersAreNotSent(t *testing.T) {
	_, cli := newTestStore(t)
	st := New(cli)
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "t"}, ""); err != nil {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.CreateNetwork(ended, &vxfabricv1.Network{Id: "000000000a", Tenant: "t", Name: "late", Vni: 7}, "", 0); !errors.Is(err, context.Canceled) {
		t.Errorf("create with an ended context: %v, want context.Canceled", err)
	}
	// A queued transaction that is withdrawn leaves the queue.
	b := newTxnBatcher(cli)
	queued := &batchedTxn{ctx: ctx, done: make(chan struct{})}
	b.queue = []*batchedTxn{queued}
	b.withdraw(queued)
	if len(b.queue) != 0 {
		t.Errorf("queue after withdraw: %d transactions", len(b.queue))
	}
	resp, err := cli.Get(ctx, NetworkKey(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("%d networks stored (%v), want none", resp.Count, err)
	}
}
