package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

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
	for _, prefix := range []string{NetworkKey(""), TenantNetworkNamesPrefix("t"), VNIPrefix, RequestKey(KindNetwork, "")} {
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
		errs := createConcurrently(t, st, nets, rids)
		won := map[string]int{}
		for i, err := range errs {
			group := []string{"same-name", "same-vni", "same-request", "free"}[i%4]
			switch {
			case err == nil:
				won[group]++
			case group == "same-name" && errors.Is(err, ErrAlreadyExists),
				group == "same-vni" && errors.Is(err, ErrVNITaken),
				group == "same-request" && errors.Is(err, ErrRequestMismatch):
			default:
				t.Errorf("round %d, %s create %s: %v", round, group, nets[i].Name, err)
			}
		}
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
	bt := &txnBatcher{queue: []*batchedTxn{a, b, sameKey, comparesB, writesTenant, prefix}}

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

	// The op limit: 100 transactions of 5 compares and 3 puts fill batches of 25 compares' worth.
	bt.queue = nil
	for i := range 100 {
		k := fmt.Sprint(i)
		bt.queue = append(bt.queue, txn([]string{"c1" + k, "c2" + k, "c3" + k, "c4" + k, "c5" + k}, "p1"+k, "p2"+k, "p3"+k))
	}
	for _, want := range []int{25, 25, 25, 25} {
		if got := len(bt.take()); got != want {
			t.Fatalf("batch of %d transactions, want %d", got, want)
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
	won := map[string]int{}
	for i, err := range errs {
		group := []string{"same-name", "same-ip", "same-mac", "free"}[i%4]
		switch {
		case err == nil:
			won[group]++
		case group == "same-name" && errors.Is(err, ErrAlreadyExists),
			group == "same-ip" && errors.Is(err, ErrIPTaken),
			group == "same-mac" && errors.Is(err, ErrMACTaken):
		default:
			t.Errorf("%s create %s: %v", group, ports[i].Name, err)
		}
	}
	if won["same-name"] != 1 || won["same-ip"] != 1 || won["same-mac"] != 1 || won["free"] != 8 {
		t.Errorf("creates that succeeded per group %v, want one of each colliding group and all 8 free ones", won)
	}
	resp, err := cli.Get(ctx, PortKey(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 11 {
		t.Errorf("%d ports stored (%v), want 11", resp.Count, err)
	}
}
