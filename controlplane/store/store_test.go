package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newTestStore(t testing.TB) (*Store, *clientv3.Client) {
	t.Helper()
	cli := etcdtest.Client(t)
	return New(cli), cli
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A tenant delete racing a network create never leaves a network without its tenant.
func TestTenantDeleteRacesNetworkCreate(t *testing.T) {
	st, cli := newTestStore(t)
	ctx := testCtx(t)
	outcomes := map[string]int{}
	for i := range 40 {
		tenant := fmt.Sprintf("t%d", i)
		if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: tenant}, ""); err != nil {
			t.Fatal(err)
		}
		var createErr, deleteErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, createErr = st.CreateNetwork(ctx, &vxfabricv1.Network{Id: fmt.Sprintf("%010x", i), Tenant: tenant, Name: "web", Vni: uint32(100 + i)}, "", 0)
		}()
		go func() {
			defer wg.Done()
			deleteErr = st.DeleteTenant(ctx, tenant, 0)
		}()
		wg.Wait()
		switch {
		case createErr == nil && errors.Is(deleteErr, ErrFailedPrecondition):
			outcomes["network first"]++
			if _, err := st.GetTenant(ctx, tenant); err != nil {
				t.Fatalf("network created but tenant gone: %v", err)
			}
		case errors.Is(createErr, ErrNotFound) && deleteErr == nil:
			outcomes["delete first"]++
			resp, err := cli.Get(ctx, TenantNetworkNamesPrefix(tenant), clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil || resp.Count != 0 {
				t.Fatalf("tenant deleted but %d network names left (%v)", resp.Count, err)
			}
			if vnis, _ := st.TakenVNIs(ctx, uint32(100+i), uint32(100+i)); len(vnis) != 0 {
				t.Fatalf("tenant deleted but vni %d allocated", 100+i)
			}
		default:
			t.Fatalf("round %d: create %v, delete %v", i, createErr, deleteErr)
		}
	}
	t.Logf("outcomes %v", outcomes)
}

// Revisions are the keys' ModRevisions; a request record whose resource was deleted does not block a
// new create with the same request id.
func TestRevisionsAndStaleRequests(t *testing.T) {
	st, cli := newTestStore(t)
	ctx := testCtx(t)
	tn, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, "req-1")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, TenantKey("acme"))
	if err != nil || resp.Kvs[0].ModRevision != tn.Revision {
		t.Fatalf("revision %d, key at %v (%v)", tn.Revision, resp.Kvs, err)
	}
	again, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, "req-1")
	if err != nil || again.Revision != tn.Revision {
		t.Fatalf("retry: %v, %v", again, err)
	}
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "other"}, "req-1"); !errors.Is(err, ErrRequestMismatch) {
		t.Fatalf("request id reused for another tenant: %v", err)
	}
	if err := st.DeleteTenant(ctx, "acme", tn.Revision+1); !errors.Is(err, ErrStale) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := st.DeleteTenant(ctx, "acme", tn.Revision); err != nil {
		t.Fatal(err)
	}
	fresh, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, "req-1")
	if err != nil || fresh.Revision <= tn.Revision {
		t.Fatalf("create after delete with the same request id: %v, %v", fresh, err)
	}
	// The record of a deleted tenant does not hold its request id against another name.
	if err := st.DeleteTenant(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	if renamed, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme2"}, "req-1"); err != nil || renamed.Name != "acme2" {
		t.Fatalf("request id of a deleted tenant reused for another name: %v, %v", renamed, err)
	}
	if err := st.SetPortPlugged(ctx, "0000000000", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("plugged status of a missing port: %v", err)
	}
}

// A network create checked against the nodes at some revision fails with ErrNodesChanged, writing
// nothing, once a node was created or written after it; a deleted node does not count; a retry of a
// create that succeeded returns its network whatever the nodes did since.
func TestCreateNetworkNodeGuard(t *testing.T) {
	st, cli := newTestStore(t)
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		t.Fatal(err)
	}
	_, emptyRev, err := st.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutNode(ctx, &vxfabricv1.Node{Name: "h1", Vtep: "198.18.0.1"}); err != nil {
		t.Fatal(err)
	}
	net := func(id, name string, vni uint32) *vxfabricv1.Network {
		return &vxfabricv1.Network{Id: id, Tenant: "acme", Name: name, Vni: vni, Cidr: "10.0.0.0/24"}
	}
	if _, err := st.CreateNetwork(ctx, net("000000000a", "a", 100), "req-a", emptyRev); !errors.Is(err, ErrNodesChanged) {
		t.Fatalf("create checked before a node was added: %v, want ErrNodesChanged", err)
	}
	if resp, err := cli.Get(ctx, Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 3 {
		t.Fatalf("the failed create wrote keys: %d keys (tenant, node and nodes epoch expected), %v", resp.Count, err)
	}
	_, rev, err := st.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := st.CreateNetwork(ctx, net("000000000a", "a", 100), "req-a", rev)
	if err != nil {
		t.Fatalf("create checked at the current revision: %v", err)
	}

	// A node written again (same VTEP, another status) changes the nodes too.
	if _, err := st.PutNode(ctx, &vxfabricv1.Node{Name: "h1", Vtep: "198.18.0.1", Status: vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateNetwork(ctx, net("000000000b", "b", 101), "", rev); !errors.Is(err, ErrNodesChanged) {
		t.Fatalf("create checked before a node was written: %v, want ErrNodesChanged", err)
	}
	// The retry of a create that succeeded is answered before the guard.
	again, err := st.CreateNetwork(ctx, net("000000000c", "a", 102), "req-a", rev)
	if err != nil || again.Id != a.Id {
		t.Fatalf("retry of request req-a: %v, %v; want network %s", again, err, a.Id)
	}
	// The name conflict is the answer, not the guard.
	if _, err := st.CreateNetwork(ctx, net("000000000d", "a", 103), "", rev); !errors.Is(err, ErrAlreadyExists) || errors.Is(err, ErrNodesChanged) {
		t.Fatalf("create of a taken name with a stale guard: %v, want ErrAlreadyExists", err)
	}

	_, rev, err = st.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, NodeKey("h1")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateNetwork(ctx, net("000000000b", "b", 101), "", rev); err != nil {
		t.Fatalf("create checked before a node was deleted: %v", err)
	}
}

// BenchmarkCreateNetworkNodeGuard is the cost of a network create's transaction without the node
// guard, with it over no nodes and over 1,000 (etcd compares every node key), and, for comparison,
// of reading every node as a separate request before the create.
func BenchmarkCreateNetworkNodeGuard(b *testing.B) {
	st, _ := newTestStore(b)
	ctx := context.Background()
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		b.Fatal(err)
	}
	seq := 0
	create := func(b *testing.B, nodesRev int64) {
		seq++
		n := &vxfabricv1.Network{Id: fmt.Sprintf("%010x", seq), Tenant: "acme", Name: fmt.Sprintf("n%d", seq), Vni: uint32(seq), Cidr: "10.0.0.0/24"}
		if _, err := st.CreateNetwork(ctx, n, "", nodesRev); err != nil {
			b.Fatal(err)
		}
	}
	for _, nodes := range []int{0, 1000} {
		for i := range nodes {
			if _, err := st.PutNode(ctx, &vxfabricv1.Node{Name: fmt.Sprintf("h%d", i), Vtep: fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)}); err != nil {
				b.Fatal(err)
			}
		}
		_, rev, err := st.ListNodes(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("nodes=%d/unguarded", nodes), func(b *testing.B) {
			for b.Loop() {
				create(b, 0)
			}
		})
		b.Run(fmt.Sprintf("nodes=%d/guarded", nodes), func(b *testing.B) {
			for b.Loop() {
				create(b, rev)
			}
		})
		b.Run(fmt.Sprintf("nodes=%d/read-nodes-then-create", nodes), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := st.ListNodes(ctx); err != nil {
					b.Fatal(err)
				}
				create(b, 0)
			}
		})
	}
}

// afterReadKV runs hook right after each transaction that reads key has returned: another
// replica's write landing between a read and the transaction built on it.
type afterReadKV struct {
	clientv3.KV
	key  string
	hook func()
}

func (k *afterReadKV) Txn(ctx context.Context) clientv3.Txn {
	return &seenTxn{Txn: k.KV.Txn(ctx), commit: func(txn clientv3.Txn, then []clientv3.Op) (*clientv3.TxnResponse, error) {
		resp, err := txn.Commit()
		if slices.ContainsFunc(then, func(op clientv3.Op) bool { return op.IsGet() && string(op.KeyBytes()) == k.key }) {
			k.hook()
		}
		return resp, err
	}}
}

// afterGetKV runs hook right after each Get of key has returned: another replica's write landing
// between a read and the transaction built on it.
type afterGetKV struct {
	clientv3.KV
	key  string
	hook func()
}

func (k *afterGetKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := k.KV.Get(ctx, key, opts...)
	if key == k.key {
		k.hook()
	}
	return resp, err
}

// A move with the port's current expected_revision succeeds although another port (of any tenant)
// was bound to the new node between the move's gateway read and its transaction; the moved port is
// not plugged (the old node's status is gone from etcd) until the new node reports it.
func TestMovePortRetriesAndClearsPlugged(t *testing.T) {
	_, cli := newTestStore(t)
	ctx := testCtx(t)
	other := New(cli) // another replica
	late := &vxfabricv1.Network{Id: "00000000bb", Tenant: "beta", Name: "late", Vni: 101, Cidr: "10.9.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT, Gateway: "10.9.0.1"}
	kv := &afterReadKV{KV: cli, key: nodeCIDRPrefixOf("h2"), hook: sync.OnceFunc(func() {
		if _, err := other.CreatePort(ctx, &vxfabricv1.Port{Id: "00000000dd", Tenant: "beta", Network: "late", NetworkId: late.Id,
			Name: "q1", Node: "h2", Ip: "10.9.0.2", Mac: "0e:00:00:00:00:02"}, ""); err != nil {
			t.Errorf("concurrent port create: %v", err)
		}
	})}
	st := New(kv)
	for _, tenant := range []string{"acme", "beta"} {
		if _, err := other.CreateTenant(ctx, &vxfabricv1.Tenant{Name: tenant}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := other.CreateNetwork(ctx, late, "", 0); err != nil {
		t.Fatal(err)
	}
	web := &vxfabricv1.Network{Id: "00000000aa", Tenant: "acme", Name: "web", Vni: 100, Cidr: "10.5.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT, Gateway: "10.5.0.1"}
	if _, err := other.CreateNetwork(ctx, web, "", 0); err != nil {
		t.Fatal(err)
	}
	p, err := other.CreatePort(ctx, &vxfabricv1.Port{Id: "00000000cc", Tenant: "acme", Network: "web", NetworkId: web.Id,
		Name: "p1", Node: "h1", Ip: "10.5.0.2", Mac: "0e:00:00:00:00:01"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.SetPortPlugged(ctx, p.Id, true); err != nil {
		t.Fatal(err)
	}

	moved, err := st.UpdatePort(ctx, "acme", "p1", p.Revision, func(p *vxfabricv1.Port) error {
		p.Node = "h2"
		return nil
	})
	if err != nil {
		t.Fatalf("move with the current expected revision while a network was created: %v", err)
	}
	if resp, err := cli.Get(ctx, NodeCIDRKey("h2", late.Id, "00000000dd"), clientv3.WithCountOnly()); err != nil || resp.Count != 1 {
		t.Fatalf("the concurrent port create on h2 did not happen: %d, %v", resp.Count, err)
	}
	if moved.Node != "h2" || moved.Plugged {
		t.Errorf("moved port: node %s plugged %v, want node h2 not plugged", moved.Node, moved.Plugged)
	}
	got, err := st.GetPort(ctx, "acme", "p1")
	if err != nil || got.Node != "h2" || got.Plugged || got.Revision != moved.Revision {
		t.Errorf("port after the move: %v, %v; want on h2, not plugged, at revision %d", got, err, moved.Revision)
	}
	if resp, err := cli.Get(ctx, PortStatusKey(p.Id), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Errorf("status key of the moved port: %d keys, %v; want none", resp.Count, err)
	}
	if resp, err := cli.Get(ctx, NodeCIDRKey("h2", web.Id, p.Id), clientv3.WithCountOnly()); err != nil || resp.Count != 1 {
		t.Errorf("node-cidr index key on h2: %d keys, %v; want one", resp.Count, err)
	}

	// A port that did change is still stale.
	if _, err := st.UpdatePort(ctx, "acme", "p1", p.Revision, func(p *vxfabricv1.Port) error {
		p.Node = "h3"
		return nil
	}); !errors.Is(err, ErrStale) {
		t.Errorf("move with an old expected revision: %v, want ErrStale", err)
	}
}

// A gateway overlap with a network of the same tenant names that network; one with another tenant's
// network says only that there is one: no tenant, name or CIDR of another tenant in the message.
func TestGatewayConflictKeepsOtherTenantsPrivate(t *testing.T) {
	st, _ := newTestStore(t)
	ctx := testCtx(t)
	nat := vxfabricv1.NetworkMode_NETWORK_MODE_NAT
	nets := map[string]*vxfabricv1.Network{}
	for i, n := range []*vxfabricv1.Network{
		{Tenant: "alpha", Name: "secret-net", Cidr: "10.0.0.0/24", Gateway: "10.0.0.1"},
		{Tenant: "alpha", Name: "other-net", Cidr: "10.0.0.0/16", Gateway: "10.0.9.1"},
		{Tenant: "beta", Name: "web", Cidr: "10.0.0.0/25", Gateway: "10.0.0.1"},
	} {
		if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: n.Tenant}, ""); err != nil && !errors.Is(err, ErrAlreadyExists) {
			t.Fatal(err)
		}
		n.Id, n.Vni, n.Mode = fmt.Sprintf("%010d", i), uint32(100+i), nat
		if _, err := st.CreateNetwork(ctx, n, "", 0); err != nil {
			t.Fatal(err)
		}
		nets[n.Tenant+"/"+n.Name] = n
	}
	ports := 0
	port := func(network, name, node, ip string) error {
		n := nets[network]
		ports++
		_, err := st.CreatePort(ctx, &vxfabricv1.Port{Id: fmt.Sprintf("%010d", 100+ports), Tenant: n.Tenant, Network: n.Name, NetworkId: n.Id,
			Name: name, Node: node, Ip: ip, Mac: "0e:00:00:00:00:01"}, "")
		return err
	}
	if err := port("alpha/secret-net", "a1", "h1", "10.0.0.2"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what, network, ip string
		want              string
		forbidden         []string
	}{
		{"another tenant's network", "beta/web", "10.0.0.2",
			"node h1 already hosts a network of another tenant that overlaps nat network beta/web 10.0.0.0/25",
			[]string{"alpha", "secret-net", "10.0.0.0/24"}},
		{"the tenant's own network", "alpha/other-net", "10.0.9.2",
			"node h1 already hosts nat network alpha/secret-net 10.0.0.0/24, which overlaps nat network alpha/other-net 10.0.0.0/16", nil},
	} {
		err := port(c.network, "p-"+c.network[:4], "h1", c.ip)
		if !errors.Is(err, ErrFailedPrecondition) {
			t.Errorf("%s: %v, want ErrFailedPrecondition", c.what, err)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q does not say %q", c.what, err, c.want)
		}
		for _, f := range c.forbidden {
			if strings.Contains(err.Error(), f) {
				t.Errorf("%s: %q names %q", c.what, err, f)
			}
		}
	}
}

// putLegacyNetwork writes a network as a server without the uplink index did: no UplinkKey.
func putLegacyNetwork(t *testing.T, cli *clientv3.Client, n *vxfabricv1.Network) {
	t.Helper()
	_, err := cli.Txn(testCtx(t)).Then(
		clientv3.OpPut(NetworkKey(n.Id), marshal(n)),
		clientv3.OpPut(NetworkNameKey(n.Tenant, n.Name), n.Id),
		clientv3.OpPut(VNIKey(n.Vni), n.Id),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
}

// An interface is the uplink of one bridged network at most, across tenants: a second network
// naming it is refused and writes nothing, also when the first was created before the uplink index
// existed or while the second's create was running; the message names the holder only to its own
// tenant; a deleted network frees its uplink, and only its own.
func TestBridgedUplinkIsUnique(t *testing.T) {
	_, cli := newTestStore(t)
	ctx := testCtx(t)
	noop := func() {}
	hook := noop
	kv := &afterGetKV{KV: cli, key: NetworksPrefix, hook: func() { hook() }}
	st := New(kv)
	for _, tenant := range []string{"red", "blue"} {
		if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: tenant}, ""); err != nil {
			t.Fatal(err)
		}
	}
	seq := 0
	bridged := func(tenant, name, node, iface string) *vxfabricv1.Network {
		seq++
		return &vxfabricv1.Network{Id: fmt.Sprintf("%010d", seq), Tenant: tenant, Name: name, Vni: uint32(100 + seq),
			Cidr: "192.168.1.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED,
			Uplink: &vxfabricv1.Uplink{Node: node, Interface: iface}}
	}
	create := func(n *vxfabricv1.Network) error {
		_, err := st.CreateNetwork(ctx, n, "", 0)
		return err
	}
	if err := create(bridged("red", "lan", "h1", "lan0")); err != nil {
		t.Fatal(err)
	}
	putLegacyNetwork(t, cli, bridged("red", "old", "h3", "eth1"))

	refused := func(what string, n *vxfabricv1.Network, want string, forbidden ...string) {
		t.Helper()
		count, rev := prefixState(t, cli)
		err := create(n)
		if !errors.Is(err, ErrFailedPrecondition) {
			t.Errorf("%s: %v, want ErrFailedPrecondition", what, err)
			return
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q does not say %q", what, err, want)
		}
		for _, f := range forbidden {
			if strings.Contains(err.Error(), f) {
				t.Errorf("%s: %q names %q", what, err, f)
			}
		}
		if c, r := prefixState(t, cli); c != count || r != rev {
			t.Errorf("%s: etcd changed: %d keys at revision %d, before %d at %d", what, c, r, count, rev)
		}
	}
	refused("the tenant's own uplink", bridged("red", "lan3", "h1", "lan0"),
		"uplink h1:lan0 of network red/lan3 is already the uplink of network red/lan")
	refused("another tenant's uplink", bridged("blue", "lan3", "h1", "lan0"),
		"uplink h1:lan0 of network blue/lan3 is already the uplink of a network of another tenant", "red")
	refused("a network created before the index", bridged("blue", "y", "h3", "eth1"),
		"uplink h3:eth1 of network blue/y is already the uplink of a network of another tenant", "red", "old")
	racer := bridged("red", "racer", "h6", "eth0")
	hook = func() { hook = noop; putLegacyNetwork(t, cli, racer) }
	err := create(bridged("red", "z", "h6", "eth0"))
	if want := "uplink h6:eth0 of network red/z is already the uplink of network red/racer"; !errors.Is(err, ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), want) {
		t.Errorf("create while a network without index took its uplink: %v, want ErrFailedPrecondition saying %q", err, want)
	}
	if resp, err := cli.Get(ctx, NetworkNameKey("red", "z"), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Errorf("red/z was written: %d, %v", resp.Count, err)
	}
	for _, ok := range []*vxfabricv1.Network{bridged("blue", "other-if", "h1", "lan1"), bridged("blue", "other-node", "h2", "lan0")} {
		if err := create(ok); err != nil {
			t.Errorf("network %s on uplink %s:%s: %v", ok.Name, ok.Uplink.Node, ok.Uplink.Interface, err)
		}
	}

	// Concurrent creates of one uplink: one wins.
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		net := bridged([]string{"red", "blue"}[i%2], fmt.Sprintf("c%d", i), "h4", "eth0")
		wg.Go(func() { errs[i] = create(net) })
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrFailedPrecondition):
			t.Errorf("concurrent create c%d: %v", i, err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent creates on uplink h4:eth0 succeeded, want 1", won)
	}

	// A delete frees the uplink; a legacy network's delete takes no other network's index key.
	if err := st.DeleteNetwork(ctx, "red", "lan", 0); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, UplinkKey("h1", "lan0"), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Errorf("index key of the deleted network's uplink: %d, %v", resp.Count, err)
	}
	if err := create(bridged("blue", "lan3", "h1", "lan0")); err != nil {
		t.Errorf("create on the freed uplink: %v", err)
	}
	putLegacyNetwork(t, cli, bridged("red", "dup", "h1", "lan0")) // an old server's duplicate
	if err := st.DeleteNetwork(ctx, "red", "dup", 0); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, UplinkKey("h1", "lan0")); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("blue/lan3's index key after the delete of a legacy duplicate: %v, %v", resp.Kvs, err)
	}

	// A replica of the version before the index deletes a network with its three keys only: the
	// index key stays behind, naming a network that is gone. The next create on that uplink
	// releases it (regression: every later create failed with contention).
	gone := bridged("red", "gone", "h5", "eth0")
	if err := create(gone); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, NetworkKey(gone.Id)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, NetworkNameKey("red", "gone")); err != nil {
		t.Fatal(err)
	}
	if err := create(bridged("blue", "after", "h5", "eth0")); err != nil {
		t.Errorf("create on an uplink whose index key outlived its network: %v", err)
	}
}

// prefixState is the number of vxfabric keys and the store revision.
func prefixState(t *testing.T, cli *clientv3.Client) (int64, int64) {
	t.Helper()
	resp, err := cli.Get(testCtx(t), Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count, resp.Header.Revision
}

// putToken writes an API token record as controlplane/auth does (tokens.go).
func putToken(t *testing.T, cli *clientv3.Client, id, tenant string, tenantCreateRev int64) {
	t.Helper()
	rec := fmt.Sprintf(`{"id":%q,"tenant":%q,"create_time":"2026-01-02T03:04:05Z","sha256":"00","tenant_create_revision":%d}`,
		id, tenant, tenantCreateRev)
	if _, err := cli.Put(testCtx(t), TokensPrefix+id, rec); err != nil {
		t.Fatal(err)
	}
}

// A tenant's delete deletes its API tokens, also one created while the delete runs, those left by an
// earlier tenant of the same name, and more than fit one transaction; other tenants' tokens stay.
func TestDeleteTenantDeletesItsTokens(t *testing.T) {
	_, cli := newTestStore(t)
	ctx := testCtx(t)
	noop := func() {}
	hook := noop
	st := New(&afterGetKV{KV: cli, key: TokensPrefix, hook: func() { hook() }})
	created := map[string]int64{}
	for _, tenant := range []string{"acme", "other", "big"} {
		tn, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: tenant}, "")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cli.Get(ctx, TenantKey(tenant))
		if err != nil || resp.Kvs[0].ModRevision != tn.Revision {
			t.Fatal(err)
		}
		created[tenant] = resp.Kvs[0].CreateRevision
	}
	putToken(t, cli, "000000000000000a", "acme", created["acme"])
	putToken(t, cli, "000000000000000b", "acme", created["acme"])
	putToken(t, cli, "000000000000000c", "acme", 1) // of an earlier tenant acme
	putToken(t, cli, "000000000000000d", "other", created["other"])
	for i := range maxTokenDeletes + 30 {
		putToken(t, cli, fmt.Sprintf("1%015x", i), "big", created["big"])
	}
	tokens := func() []string {
		t.Helper()
		resp, err := cli.Get(ctx, TokensPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, kv := range resp.Kvs {
			ids = append(ids, strings.TrimPrefix(string(kv.Key), TokensPrefix))
		}
		return ids
	}

	// A token made between the delete's read of the tokens and its transaction.
	hook = func() { hook = noop; putToken(t, cli, "000000000000000e", "acme", created["acme"]) }
	if err := st.DeleteTenant(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteTenant(ctx, "big", 0); err != nil {
		t.Fatal(err)
	}
	if got, want := tokens(), []string{"000000000000000d"}; !slices.Equal(got, want) {
		t.Errorf("tokens after the deletes of acme and big: %q, want only other's %q", got, want)
	}
}

// Messages name tenants, networks and ports as tenant/name, never by internal id.
func TestMessagesNameResourcesByName(t *testing.T) {
	st, _ := newTestStore(t)
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		t.Fatal(err)
	}
	web := &vxfabricv1.Network{Id: "00000000aa", Tenant: "acme", Name: "web", Vni: 100, Cidr: "10.0.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
	if _, err := st.CreateNetwork(ctx, web, "", 0); err != nil {
		t.Fatal(err)
	}
	port := func(id, network, networkID, name, ip string) *vxfabricv1.Port {
		return &vxfabricv1.Port{Id: id, Tenant: "acme", Network: network, NetworkId: networkID, Name: name, Node: "h1",
			Ip: ip, Mac: "0e:00:00:00:00:" + id[8:]}
	}
	p1, err := st.CreatePort(ctx, port("00000000b1", "web", web.Id, "p1", "10.0.0.2"), "")
	if err != nil {
		t.Fatal(err)
	}
	_, noTenant := st.GetNetwork(ctx, "nosuch", "web")
	_, noNetwork := st.CreatePort(ctx, port("00000000b2", "ghost", "00000000ff", "p2", "10.0.0.3"), "")
	_, ipTaken := st.CreatePort(ctx, port("00000000b3", "web", web.Id, "p3", "10.0.0.2"), "")
	_, stale := st.UpdatePort(ctx, "acme", "p1", p1.Revision-1, func(*vxfabricv1.Port) error { return nil })
	for _, c := range []struct {
		err      error
		sentinel error
		want     string
	}{
		{noTenant, ErrNotFound, "tenant nosuch: not found"},
		{noNetwork, ErrNotFound, "network acme/ghost: not found"},
		{ipTaken, ErrIPTaken, "address 10.0.0.2 in network acme/web: already exists: ip address taken"},
		{stale, ErrStale, fmt.Sprintf("port acme/p1 is at revision %d, not %d: failed precondition: revision changed", p1.Revision, p1.Revision-1)},
	} {
		if !errors.Is(c.err, c.sentinel) || c.err.Error() != c.want {
			t.Errorf("got %v, want %q", c.err, c.want)
		}
	}
}

// TestGatewayGuardDoesNotGrowWithTheFabric: with more overlapping nat networks than etcd allows
// operations in one transaction (--max-txn-ops 128), a port still binds to a node that hosts none of
// them, and is refused with ErrFailedPrecondition on a node that hosts one. The guard reads what the
// node hosts and compares one key range, whatever the number of networks.
func TestGatewayGuardDoesNotGrowWithTheFabric(t *testing.T) {
	st, _ := newTestStore(t)
	ctx := testCtx(t)
	const count = 150
	nets := make([]*vxfabricv1.Network, count)
	for i := range nets {
		tenant := fmt.Sprintf("t%d", i)
		if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: tenant}, ""); err != nil {
			t.Fatal(err)
		}
		nets[i] = &vxfabricv1.Network{Id: fmt.Sprintf("%010d", i), Tenant: tenant, Name: "web", Cidr: "10.0.0.0/24",
			Gateway: "10.0.0.1", Vni: uint32(100 + i), Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT}
		if _, err := st.CreateNetwork(ctx, nets[i], "", 0); err != nil {
			t.Fatal(err)
		}
	}
	port := func(i int, node string) error {
		_, err := st.CreatePort(ctx, &vxfabricv1.Port{Id: fmt.Sprintf("p%09d", i), Tenant: nets[i].Tenant, Network: "web",
			NetworkId: nets[i].Id, Name: "vm", Node: node, Ip: "10.0.0.2", Mac: "0e:00:00:00:00:01"}, "")
		return err
	}
	for i := range count {
		if err := port(i, fmt.Sprintf("h%d", i)); err != nil {
			t.Fatalf("port of %s/web on h%d, a node of its own: %v", nets[i].Tenant, i, err)
		}
	}
	if _, err := st.CreatePort(ctx, &vxfabricv1.Port{Id: "q000000001", Tenant: nets[0].Tenant, Network: "web",
		NetworkId: nets[0].Id, Name: "vm2", Node: "h1", Ip: "10.0.0.3", Mac: "0e:00:00:00:00:02"}, ""); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("port of %s/web on h1, which hosts %s/web: %v, want ErrFailedPrecondition", nets[0].Tenant, nets[1].Tenant, err)
	}
	if _, err := st.UpdatePort(ctx, nets[2].Tenant, "vm", 0, func(p *vxfabricv1.Port) error {
		p.Node = "h3"
		return nil
	}); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("move of %s/vm to h3, which hosts %s/web: %v, want ErrFailedPrecondition", nets[2].Tenant, nets[3].Tenant, err)
	}
}

// TestPortsOfOneNetworkBindToOneNodeAtOnce: the gateway guard leaves a port's own network out of
// its compare, so a burst of ports of one nat network onto one node (a lab starting its VMs) all
// succeed; before, each port's index key failed the others' compares and most ended Aborted.
func TestPortsOfOneNetworkBindToOneNodeAtOnce(t *testing.T) {
	st, _ := newTestStore(t)
	ctx := testCtx(t)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		t.Fatal(err)
	}
	n := &vxfabricv1.Network{Id: "00000000aa", Tenant: "acme", Name: "web", Cidr: "10.0.0.0/16", Gateway: "10.0.0.1",
		Vni: 100, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT}
	if _, err := st.CreateNetwork(ctx, n, "", 0); err != nil {
		t.Fatal(err)
	}
	const count = 400
	errs := make(chan error, count)
	for i := range count {
		go func() {
			_, err := st.CreatePort(ctx, &vxfabricv1.Port{Id: fmt.Sprintf("p%09d", i), Tenant: "acme", Network: "web",
				NetworkId: n.Id, Name: fmt.Sprintf("vm%d", i), Node: "h1", Ip: fmt.Sprintf("10.0.%d.%d", 1+i/250, 2+i%250),
				Mac: fmt.Sprintf("0e:00:00:00:%02x:%02x", i>>8, i&0xff)}, "")
			errs <- err
		}()
	}
	failed := 0
	for range count {
		if err := <-errs; err != nil {
			if failed++; failed == 1 {
				t.Errorf("a port create of the burst: %v", err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d concurrent port creates into one network on one node failed", failed, count)
	}
	// The guard still refuses another network that overlaps.
	other := &vxfabricv1.Network{Id: "00000000bb", Tenant: "acme", Name: "db", Cidr: "10.0.5.0/24", Gateway: "10.0.5.1",
		Vni: 101, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED}
	if _, err := st.CreateNetwork(ctx, other, "", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreatePort(ctx, &vxfabricv1.Port{Id: "q000000001", Tenant: "acme", Network: "db", NetworkId: other.Id,
		Name: "db1", Node: "h1", Ip: "10.0.5.2", Mac: "0e:00:00:01:00:01"}, ""); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("port of acme/db on h1, which hosts acme/web: %v, want ErrFailedPrecondition", err)
	}
}

// TestGatewayGuardReadsTheNodesUnderlay: a nat network's port is not bound to a node whose reported
// underlay the network overlaps, also when the report lands between the guard's read and its
// transaction (the transaction compares the report's key, fails, and the read again refuses).
func TestGatewayGuardReadsTheNodesUnderlay(t *testing.T) {
	_, cli := newTestStore(t)
	ctx := testCtx(t)
	report := func(node, routes string) {
		t.Helper()
		if _, err := cli.Put(ctx, NodeUnderlayPrefix+node, OrderedValue(1)+"\n"+routes); err != nil {
			t.Fatal(err)
		}
	}
	st := New(&afterReadKV{KV: cli, key: NodeUnderlayPrefix + "h2", hook: sync.OnceFunc(func() { report("h2", "10.7.0.0/16") })})
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		t.Fatal(err)
	}
	n := &vxfabricv1.Network{Id: "00000000aa", Tenant: "acme", Name: "web", Cidr: "10.7.1.0/24", Gateway: "10.7.1.1",
		Vni: 100, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT}
	if _, err := st.CreateNetwork(ctx, n, "", 0); err != nil {
		t.Fatal(err)
	}
	port := func(i int, node string) error {
		_, err := st.CreatePort(ctx, &vxfabricv1.Port{Id: fmt.Sprintf("p%09d", i), Tenant: "acme", Network: "web", NetworkId: n.Id,
			Name: fmt.Sprintf("vm%d", i), Node: node, Ip: fmt.Sprintf("10.7.1.%d", 10+i), Mac: fmt.Sprintf("0e:00:00:00:00:%02x", i+1)}, "")
		return err
	}
	report("h1", "192.168.1.0/24\n10.7.0.0/16")
	if err := port(1, "h1"); !errors.Is(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), "underlay of node h1") {
		t.Errorf("port on h1, whose subnet holds the network: %v, want ErrFailedPrecondition naming h1's underlay", err)
	}
	if err := port(2, "h2"); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("port on h2, whose report landed between the guard's read and its transaction: %v, want ErrFailedPrecondition", err)
	}
	if err := port(3, "h3"); err != nil {
		t.Errorf("port on h3, which reported nothing: %v", err)
	}
}

// TestDeleteRacingADeleteIsNotFound: a delete with the expected revision that loses to another
// replica's delete of the same port or network answers ErrNotFound (it is gone), not ErrStale.
func TestDeleteRacingADeleteIsNotFound(t *testing.T) {
	_, cli := newTestStore(t)
	ctx := testCtx(t)
	other := New(cli) // another replica
	if _, err := other.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		t.Fatal(err)
	}
	n := &vxfabricv1.Network{Id: "00000000aa", Tenant: "acme", Name: "web", Vni: 100, Cidr: "10.5.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
	n, err := other.CreateNetwork(ctx, n, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := other.CreatePort(ctx, &vxfabricv1.Port{Id: "00000000cc", Tenant: "acme", Network: "web", NetworkId: n.Id,
		Name: "p1", Node: "h1", Ip: "10.5.0.2", Mac: "0e:00:00:00:00:01"}, "")
	if err != nil {
		t.Fatal(err)
	}
	st := New(&afterReadKV{KV: cli, key: PortKey(p.Id), hook: sync.OnceFunc(func() {
		if err := other.DeletePort(ctx, "acme", "p1", 0); err != nil {
			t.Errorf("the other replica's delete: %v", err)
		}
	})})
	if err := st.DeletePort(ctx, "acme", "p1", p.Revision); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of a port deleted meanwhile: %v, want ErrNotFound", err)
	}
	st = New(&afterGetKV{KV: cli, key: NetworkKey(n.Id), hook: sync.OnceFunc(func() {
		if err := other.DeleteNetwork(ctx, "acme", "web", 0); err != nil {
			t.Errorf("the other replica's delete: %v", err)
		}
	})})
	if err := st.DeleteNetwork(ctx, "acme", "web", n.Revision); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of a network deleted meanwhile: %v, want ErrNotFound", err)
	}
}
