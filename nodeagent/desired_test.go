package nodeagent

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/fake"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

func netState(id string, vni uint32, flood ...string) *vxfabricv1.NetworkState {
	n := &vxfabricv1.NetworkState{Id: id, Vni: vni, Mtu: 1450, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
	for _, f := range flood {
		node, vtep, _ := strings.Cut(f, "=")
		n.Flood = append(n.Flood, &vxfabricv1.FloodEntry{Node: node, Vtep: vtep})
	}
	return n
}

func remote(id, network, node, mac, vtep string) *vxfabricv1.RemotePort {
	return &vxfabricv1.RemotePort{Id: id, NetworkId: network, Node: node, Mac: mac, Vtep: vtep, Ip: "10.0.0.9"}
}

func local(id, network, iface, mac string) *vxfabricv1.LocalPort {
	return &vxfabricv1.LocalPort{Id: id, NetworkId: network, InterfaceName: iface, Mac: mac, Ip: "10.0.0.1"}
}

// dumpOf applies the built state to a fresh fake kernel and returns its FDB, flood and port lines.
func dumpOf(t *testing.T, b built) []string {
	t.Helper()
	dp := fake.New()
	dp.SetLink("tap-a", true)
	if _, err := dp.Apply(context.Background(), b.state); err != nil {
		t.Fatalf("apply built state: %v", err)
	}
	var out []string
	for _, l := range strings.Split(dp.Dump(), "\n") {
		if strings.HasPrefix(l, "fdb ") || strings.HasPrefix(l, "flood ") || strings.HasPrefix(l, "port ") {
			out = append(out, l)
		}
	}
	return out
}

func TestModelMergeAndBuild(t *testing.T) {
	self := netip.MustParseAddr("198.18.0.1")
	under := overlay.Underlay{VTEP: self}
	snapshot := &vxfabricv1.SyncResponse{Revision: 10, Snapshot: true,
		Networks: []*vxfabricv1.NetworkState{
			netState("n1", 100, "h1=198.18.0.1", "h2=198.18.0.2", "h3=198.18.0.3", "h2=198.18.0.2"),
			netState("bad", 0), // vni 0: refused by the datapath, skipped alone
		},
		LocalPorts: []*vxfabricv1.LocalPort{
			local("pa", "n1", "tap-a", "0e:00:00:00:00:01"),
			local("pb", "n1", "vxbr1234", "0e:00:00:00:00:02"), // one of our device names: refused, skipped alone
			local("pc", "nope", "tap-c", "0e:00:00:00:00:03"),  // network not in the view
		},
		RemotePorts: []*vxfabricv1.RemotePort{
			remote("r2", "n1", "h2", "0e:00:00:00:00:12", "198.18.0.2"),
			remote("r3", "n1", "h3", "0e:00:00:00:00:13", "198.18.0.3"),
			remote("rx", "n1", "h3", "not-a-mac", "198.18.0.3"),
		},
	}
	m := newDesiredModel()
	if m.ready {
		t.Fatal("empty model is ready")
	}
	m.merge(snapshot)
	none := func(string) bool { return false }
	b := m.build(under, none)
	want := []string{
		"fdb vxlan100 0e:00:00:00:00:12 dst 198.18.0.2",
		"fdb vxlan100 0e:00:00:00:00:13 dst 198.18.0.3",
		"flood vxlan100 dst 198.18.0.2",
		"flood vxlan100 dst 198.18.0.3",
		"port tap-a master vxbr100 mtu 1450",
	}
	if got := dumpOf(t, b); !slices.Equal(got, want) {
		t.Fatalf("built state:\n got %q\nwant %q", got, want)
	}
	if len(b.invalid) != 3 || b.revision != 10 || b.remotes != 2 {
		t.Fatalf("invalid %v, revision %d, remotes %d", b.invalid, b.revision, b.remotes)
	}
	if !slices.Equal(sortedKeys(b.portByIface), []string{"tap-a"}) {
		t.Fatalf("ports by interface: %v", b.portByIface)
	}

	// h3 dead: its port and flood entry are withheld (see TestLivenessRule for who is dead).
	b = m.build(under, func(n string) bool { return n == "h3" })
	want = []string{
		"fdb vxlan100 0e:00:00:00:00:12 dst 198.18.0.2",
		"flood vxlan100 dst 198.18.0.2",
		"port tap-a master vxbr100 mtu 1450",
	}
	if got := dumpOf(t, b); !slices.Equal(got, want) || b.withheld != 1 {
		t.Fatalf("with h3 down:\n got %q (withheld %d)\nwant %q", got, b.withheld, want)
	}

	// A delta: r2 moves away, a new remote arrives, the flood list changes.
	m.merge(&vxfabricv1.SyncResponse{Revision: 12,
		Networks:             []*vxfabricv1.NetworkState{netState("n1", 100, "h3=198.18.0.3")},
		RemovedRemotePortIds: []string{"r2", "rx"},
		RemotePorts:          []*vxfabricv1.RemotePort{remote("r4", "n1", "h3", "0e:00:00:00:00:14", "198.18.0.3")},
		RemovedNetworkIds:    []string{"bad"},
	})
	want = []string{
		"fdb vxlan100 0e:00:00:00:00:13 dst 198.18.0.3",
		"fdb vxlan100 0e:00:00:00:00:14 dst 198.18.0.3",
		"flood vxlan100 dst 198.18.0.3",
		"port tap-a master vxbr100 mtu 1450",
	}
	if got := dumpOf(t, m.build(under, none)); !slices.Equal(got, want) || m.revision != 12 {
		t.Fatalf("after delta (rev %d):\n got %q\nwant %q", m.revision, got, want)
	}

	// A snapshot replaces everything: what it does not list is gone.
	m.merge(&vxfabricv1.SyncResponse{Revision: 13, Snapshot: true})
	if b := m.build(under, none); len(b.state.Networks) != 0 {
		t.Fatalf("empty snapshot left %d networks", len(b.state.Networks))
	}
}

// TestLivenessRule checks which peers' entries are withheld: gossip decides for the nodes it knows, the
// control plane's status (merged from snapshots and deltas) for the others, and only a SUSPECT, DEAD
// or LEFT node whose host is unreachable withholds.
func TestLivenessRule(t *testing.T) {
	peer := func(name string, st vxfabricv1.NodeStatus) *vxfabricv1.Peer {
		// The status writer finds a dead or suspect host unreachable unless the name says "-up".
		cut := st != vxfabricv1.NodeStatus_NODE_STATUS_ALIVE && !strings.HasSuffix(name, "-up")
		return &vxfabricv1.Peer{Name: name, Vtep: "198.18.0.9", Status: st, Unreachable: cut}
	}
	m := newDesiredModel()
	m.merge(&vxfabricv1.SyncResponse{Revision: 5, Snapshot: true, Peers: []*vxfabricv1.Peer{
		peer("srv-dead", vxfabricv1.NodeStatus_NODE_STATUS_DEAD),
		peer("srv-left", vxfabricv1.NodeStatus_NODE_STATUS_LEFT),
		peer("srv-left-up", vxfabricv1.NodeStatus_NODE_STATUS_LEFT),
		peer("srv-suspect", vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT),
		peer("srv-suspect-up", vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT),
		peer("srv-dead-up", vxfabricv1.NodeStatus_NODE_STATUS_DEAD),
		peer("stale-dead", vxfabricv1.NodeStatus_NODE_STATUS_DEAD),
		peer("gossip-dead", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE),
		peer("gone", vxfabricv1.NodeStatus_NODE_STATUS_DEAD),
		peer("revived", vxfabricv1.NodeStatus_NODE_STATUS_DEAD),
	}})
	m.merge(&vxfabricv1.SyncResponse{Revision: 6, RemovedPeers: []string{"gone"},
		Peers: []*vxfabricv1.Peer{peer("revived", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE)}})
	// gossip: node -> dead, for the nodes gossip knows (as gossipDead returns it).
	gossip := map[string]bool{"stale-dead": false, "gossip-dead": true, "gossip-left": false}
	dead := m.dead(gossip)
	for node, want := range map[string]bool{
		"srv-dead":       true,  // unknown to gossip (died before this agent started): the server decides
		"srv-left":       true,  // its agent stopped, then its host went: nothing forwards
		"srv-left-up":    false, // a graceful stop keeps forwarding
		"srv-suspect":    true,  // suspect and its host does not answer
		"srv-suspect-up": false, // a paused agent: its host answers
		"srv-dead-up":    false, // a crashed agent on a host that still forwards
		"stale-dead":     false, // gossip knows it alive: a stale DEAD from the server is overridden
		"gossip-dead":    true,  // gossip saw it die before the server's status caught up
		"gossip-left":    false,
		"gone":           false, // removed from the view: no status, nothing withheld
		"revived":        false, // a delta brought it back
		"unknown":        false,
	} {
		if got := dead(node); got != want {
			t.Errorf("dead(%s) = %v, want %v", node, got, want)
		}
	}
	if got := m.dead(nil)("stale-dead"); !got {
		t.Error("without gossip, a DEAD status must withhold")
	}
	// A snapshot replaces the peers too.
	m.merge(&vxfabricv1.SyncResponse{Revision: 7, Snapshot: true})
	if m.dead(nil)("srv-dead") {
		t.Error("a snapshot without peers kept an old DEAD status")
	}
}

func TestAppliedRevisionFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if rev, err := loadAppliedRevision(dir); err != nil || rev != 0 {
		t.Fatalf("missing file: %d %v", rev, err)
	}
	if err := saveAppliedRevision(dir, 42); err != nil {
		t.Fatal(err)
	}
	if rev, err := loadAppliedRevision(dir); err != nil || rev != 42 {
		t.Fatalf("after save: %d %v", rev, err)
	}
	if err := os.WriteFile(filepath.Join(dir, appliedRevisionFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadAppliedRevision(dir); err == nil {
		t.Fatal("a corrupt revision file was accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Default()
	ok.Node, ok.VTEP, ok.Datapath, ok.Servers = "h1", netip.MustParseAddr("198.18.0.1"), fake.New(), []string{"127.0.0.1:1"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"node":     func(c *Config) { c.Node = "H 1" },
		"vtep":     func(c *Config) { c.VTEP = netip.Addr{} },
		"datapath": func(c *Config) { c.Datapath = nil },
		"servers":  func(c *Config) { c.Servers = nil },
		"backoff":  func(c *Config) { c.BackoffMax = time.Millisecond },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted a bad config", name)
		}
	}
}

// TestDeltasBuildAsSnapshot checks that a model kept up to date by deltas (parsed once, remote ports
// re-sorted only where touched) builds exactly what a fresh snapshot of the same view builds.
func TestDeltasBuildAsSnapshot(t *testing.T) {
	self := netip.MustParseAddr("198.18.0.1")
	under := overlay.Underlay{VTEP: self}
	rng := rand.New(rand.NewPCG(1, 2))
	view := map[string]*vxfabricv1.RemotePort{}
	nets := []*vxfabricv1.NetworkState{netState("n1", 100, "h2=198.18.0.2", "h3=198.18.0.3", "h9=bad"), netState("n2", 200, "h3=198.18.0.3")}
	peers := []*vxfabricv1.Peer{{Name: "h3", Vtep: "198.18.0.3", Status: vxfabricv1.NodeStatus_NODE_STATUS_DEAD, Unreachable: true}}
	m := newDesiredModel()
	m.merge(&vxfabricv1.SyncResponse{Revision: 1, Snapshot: true, Networks: nets, Peers: peers})
	for rev := int64(2); rev < 200; rev++ {
		d := &vxfabricv1.SyncResponse{Revision: rev}
		k := rng.IntN(5)
		if rev%25 == 0 {
			k = 40 // a burst: merged into the order rather than edited in place
		}
		for range k {
			id := fmt.Sprintf("r%02d", rng.IntN(60))
			// One delta names an id once: as removed or as upserted (removals are merged first).
			d.RemotePorts = slices.DeleteFunc(d.RemotePorts, func(p *vxfabricv1.RemotePort) bool { return p.GetId() == id })
			d.RemovedRemotePortIds = slices.DeleteFunc(d.RemovedRemotePortIds, func(r string) bool { return r == id })
			if rng.IntN(3) == 0 {
				delete(view, id)
				d.RemovedRemotePortIds = append(d.RemovedRemotePortIds, id)
				continue
			}
			mac := fmt.Sprintf("0e:00:00:00:00:%02x", rng.IntN(40)) // duplicates: the first id wins
			if rng.IntN(20) == 0 {
				mac = "not-a-mac"
			}
			p := remote(id, []string{"n1", "n2", "n3"}[rng.IntN(3)], fmt.Sprintf("h%d", 2+rng.IntN(3)), mac, fmt.Sprintf("198.18.0.%d", 2+rng.IntN(3)))
			view[id] = p
			d.RemotePorts = append(d.RemotePorts, p)
		}
		m.merge(d)
		snap := newDesiredModel()
		snap.merge(&vxfabricv1.SyncResponse{Revision: rev, Snapshot: true, Networks: nets, Peers: peers,
			RemotePorts: slices.Collect(maps.Values(view))})
		dead := func(n string) bool { return n == "h4" }
		got, want := m.build(under, m.dead(nil)), snap.build(under, snap.dead(nil))
		if rev%2 == 0 {
			got, want = m.build(under, dead), snap.build(under, dead)
		}
		if !reflect.DeepEqual(got.state, want.state) || got.remotes != want.remotes || got.withheld != want.withheld ||
			fmt.Sprint(got.invalid) != fmt.Sprint(want.invalid) {
			t.Fatalf("rev %d: deltas built\n%+v\n(remotes %d withheld %d invalid %v)\nsnapshot built\n%+v\n(remotes %d withheld %d invalid %v)",
				rev, got.state, got.remotes, got.withheld, got.invalid, want.state, want.remotes, want.withheld, want.invalid)
		}
		if got.remotes+got.withheld == 0 && len(view) > 0 && rev > 20 {
			t.Fatalf("rev %d: nothing built from %d remote ports", rev, len(view))
		}
	}
}
