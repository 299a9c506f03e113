package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// beforeTxnKV runs its hooks, in turn, each before one Txn.
type beforeTxnKV struct {
	clientv3.KV
	mu    sync.Mutex
	hooks []func()
}

func (k *beforeTxnKV) Txn(ctx context.Context) clientv3.Txn {
	k.mu.Lock()
	var hook func()
	if len(k.hooks) > 0 {
		hook, k.hooks = k.hooks[0], k.hooks[1:]
	}
	k.mu.Unlock()
	if hook != nil {
		hook()
	}
	return k.KV.Txn(ctx)
}

// A node is forgotten only once nothing holds it: not while gossip has it alive or suspect, not while
// a port is bound to it (also one bound between the delete's read and its write), not while it is a
// bridged network's uplink host. A refused delete writes nothing; a done one takes the node's record
// and its report sequence along and rewrites the nodes epoch.
func TestDeleteNode(t *testing.T) {
	_, cli := newTestStore(t)
	ctx := testCtx(t)
	kv := &beforeTxnKV{KV: cli}
	st := New(kv)
	node := func(name string, status vxfabricv1.NodeStatus) *vxfabricv1.Node {
		n, err := st.PutNode(ctx, &vxfabricv1.Node{Name: name, Vtep: "198.18.0.9", Status: status})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		t.Fatal(err)
	}
	web := &vxfabricv1.Network{Id: "00000000aa", Tenant: "acme", Name: "web", Vni: 100, Cidr: "10.5.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
	if _, err := st.CreateNetwork(ctx, web, "", 0); err != nil {
		t.Fatal(err)
	}
	port := func(id, name, node string) *vxfabricv1.Port {
		p, err := New(cli).CreatePort(ctx, &vxfabricv1.Port{Id: id, Tenant: "acme", Network: "web", NetworkId: web.Id,
			Name: name, Node: node, Ip: "10.5.0." + id[len(id)-1:], Mac: "0e:00:00:00:00:0" + id[len(id)-1:]}, "")
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	refused := func(what, name string, expected int64, want error, says string) {
		t.Helper()
		count, rev := prefixState(t, cli)
		err := st.DeleteNode(ctx, name, expected, false)
		if !errors.Is(err, want) || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want %v saying %q", what, err, want, says)
		}
		if c, r := prefixState(t, cli); c != count || r != rev {
			t.Errorf("%s wrote: %d keys at revision %d, then %d at %d", what, count, rev, c, r)
		}
	}

	refused("unknown node", "h9", 0, ErrNotFound, "node h9")
	node("h1", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE)
	refused("alive node", "h1", 0, ErrFailedPrecondition, "node h1 is ALIVE")
	node("h1", vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT)
	refused("suspect node", "h1", 0, ErrFailedPrecondition, "node h1 is SUSPECT")

	h1 := node("h1", vxfabricv1.NodeStatus_NODE_STATUS_DEAD)
	p1 := port("00000000c1", "vm1-eth0", "h1")
	refused("node with a port", "h1", 0, ErrFailedPrecondition, "node h1 has 1 port (acme/vm1-eth0)")
	refused("stale expected revision", "h1", h1.Revision-1, ErrStale, "not")
	if err := New(cli).DeletePort(ctx, "acme", p1.Name, 0); err != nil {
		t.Fatal(err)
	}

	// A port bound to h1 after the delete's read: the delete reads again and refuses.
	kv.hooks = []func(){nil, func() { port("00000000c2", "vm2-eth0", "h1") }}
	if err := st.DeleteNode(ctx, "h1", 0, false); !errors.Is(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), "acme/vm2-eth0") {
		t.Errorf("node given a port during the delete: %v, want it refused for acme/vm2-eth0", err)
	}
	if _, err := st.GetNode(ctx, "h1"); err != nil {
		t.Errorf("node given a port during the delete: %v", err)
	}
	if err := New(cli).DeletePort(ctx, "acme", "vm2-eth0", 0); err != nil {
		t.Fatal(err)
	}

	lan := &vxfabricv1.Network{Id: "00000000bb", Tenant: "acme", Name: "lan", Vni: 101, Cidr: "192.168.1.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth1"}}
	if _, err := st.CreateNetwork(ctx, lan, "", 0); err != nil {
		t.Fatal(err)
	}
	refused("uplink host", "h1", 0, ErrFailedPrecondition, "uplink host of bridged network acme/lan")
	if err := st.DeleteNetwork(ctx, "acme", "lan", 0); err != nil {
		t.Fatal(err)
	}

	for _, key := range []string{NodeReportsPrefix + "h1", NodeKeyringPrefix + "h1"} {
		if _, err := cli.Put(ctx, key, "00000000000000000007"); err != nil {
			t.Fatal(err)
		}
	}
	epoch, err := cli.Get(ctx, NodesEpochKey)
	if err != nil {
		t.Fatal(err)
	}
	node("h2", vxfabricv1.NodeStatus_NODE_STATUS_LEFT)
	if err := st.DeleteNode(ctx, "h1", 0, false); err != nil {
		t.Fatalf("delete of a dead node holding nothing: %v", err)
	}
	for _, key := range []string{NodeKey("h1"), NodeReportsPrefix + "h1", NodeKeyringPrefix + "h1"} {
		if resp, err := cli.Get(ctx, key, clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
			t.Errorf("%s after the delete: %d keys, %v", key, resp.Count, err)
		}
	}
	if resp, err := cli.Get(ctx, NodesEpochKey); err != nil || resp.Kvs[0].ModRevision <= epoch.Kvs[0].ModRevision {
		t.Errorf("nodes epoch not rewritten by the delete: %v", err)
	}
	if _, err := st.GetNode(ctx, "h2"); err != nil {
		t.Errorf("the other node: %v", err)
	}
	if err := st.DeleteNode(ctx, "h2", 0, false); err != nil {
		t.Errorf("delete of a node that left: %v", err)
	}
	refused("deleted twice", "h1", 0, ErrNotFound, "node h1")

	// A node registered without gossip stays ALIVE: force forgets it, but never while it holds a port.
	node("h4", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE)
	p4 := port("00000000c4", "vm4-eth0", "h4")
	if err := st.DeleteNode(ctx, "h4", 0, true); !errors.Is(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), "acme/vm4-eth0") {
		t.Errorf("forced delete of a node holding a port: %v, want it refused for the port", err)
	}
	if err := New(cli).DeletePort(ctx, "acme", p4.Name, 0); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteNode(ctx, "h4", 0, true); err != nil {
		t.Errorf("forced delete of an ALIVE node holding nothing: %v", err)
	}
}
