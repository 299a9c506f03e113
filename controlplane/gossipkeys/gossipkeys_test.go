package gossipkeys

import (
	"bytes"
	"context"
	"log/slog"
	"math/big"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"
	"github.com/vxfabric/vxfabric/controlplane/store"
	"github.com/vxfabric/vxfabric/membership"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

func member(t *testing.T, keys ...[]byte) *membership.Member {
	t.Helper()
	return namedMember(t, "srv", keys...)
}

func namedMember(t *testing.T, name string, keys ...[]byte) *membership.Member {
	t.Helper()
	cfg := membership.Default(membership.RoleServer, name)
	cfg.BindAddr = "127.0.0.1:0"
	cfg.GRPCAddr = "127.0.0.1:7400"
	cfg.Keys = keys
	cfg.Logger = slog.New(slog.DiscardHandler)
	m, err := membership.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

func putNode(t *testing.T, cli *clientv3.Client, name string, st vxfabricv1.NodeStatus, confirmed int64) {
	t.Helper()
	b, _ := proto.Marshal(&vxfabricv1.Node{Name: name, Vtep: "198.18.0.9", Status: st})
	ops := []clientv3.Op{clientv3.OpPut(store.NodeKey(name), string(b))}
	if confirmed > 0 {
		ops = append(ops, clientv3.OpPut(store.NodeKeyringPrefix+name, store.OrderedValue(confirmed)))
	}
	if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
}

// A rotation moves INSTALL -> USE -> DONE: each step once every ALIVE node confirmed the one before
// (DEAD, LEFT and unrecorded confirmations aside), or once its timeout passed, naming the nodes left
// behind. Each tick installs the stored keyring in the server's own member. A rotation is refused
// while one runs, with a step timeout out of bounds, and on unencrypted gossip.
func TestRotation(t *testing.T) {
	ctx := context.Background()
	cli := etcdtest.Client(t)
	old := bytes.Repeat([]byte{7}, 32)
	m := member(t, old)
	r := New(cli, m, Config{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(r.close)
	now := time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return now }
	var installed int64
	tick := func() {
		t.Helper()
		if err := r.tick(ctx, &installed); err != nil {
			t.Fatal(err)
		}
	}
	stored := func() (*vxfabricv1.GossipKeyring, int64) {
		t.Helper()
		kr, rev, err := r.read(ctx)
		if err != nil || kr == nil {
			t.Fatalf("stored keyring: %v, %v", kr, err)
		}
		return kr, rev
	}

	for _, ms := range []int64{-1, MaxStepTimeout.Milliseconds() + 1} {
		if _, err := r.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{StepTimeoutMs: ms}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("step timeout %d ms: %v, want InvalidArgument", ms, err)
		}
	}
	st, err := r.GetGossipKeyring(ctx, &vxfabricv1.GetGossipKeyringRequest{})
	if err != nil || st.GetKeyring().GetManaged() || !slices.Equal(st.GetKeyring().GetKeyIds(), KeyIDs([][]byte{old})) {
		t.Fatalf("keyring before any rotation: %v, %v", st, err)
	}

	putNode(t, cli, "h1", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 0)
	putNode(t, cli, "h2", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 0)
	putNode(t, cli, "h3", vxfabricv1.NodeStatus_NODE_STATUS_DEAD, 0)
	resp, err := r.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{StepTimeoutMs: 10000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("rotation while one runs: %v, want FailedPrecondition", err)
	}
	kr, rev := stored()
	if kr.GetStep() != vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_INSTALL || len(kr.GetKeys()) != 2 || !bytes.Equal(kr.GetKeys()[0], old) ||
		resp.GetKeyring().GetRevision() != rev {
		t.Fatalf("rotation started as %v (answered %v)", kr, resp)
	}
	newKey := kr.GetKeys()[1]
	tick()
	if got := m.Keys(); !slices.EqualFunc(got, [][]byte{old, newKey}, bytes.Equal) {
		t.Errorf("server member after INSTALL: %x", got)
	}

	// h1 confirms, h2 does not: no move before the timeout, even past the least step time.
	putNode(t, cli, "h1", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, rev)
	now = now.Add(5 * time.Second)
	tick()
	if kr2, rev2 := stored(); rev2 != rev {
		t.Fatalf("moved on to %v while h2 had not confirmed", kr2)
	}
	// h2 confirms, but h5, SUSPECT (a paused agent, say), has not: still no move.
	putNode(t, cli, "h2", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, rev)
	putNode(t, cli, "h5", vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT, 0)
	tick()
	if kr2, rev2 := stored(); rev2 != rev {
		t.Fatalf("moved on to %v while the suspect h5 had not confirmed", kr2)
	}
	// h5 is declared dead: the next tick moves on (h3 and h5 are dead and do not count).
	putNode(t, cli, "h5", vxfabricv1.NodeStatus_NODE_STATUS_DEAD, 0)
	tick()
	kr, rev = stored()
	if kr.GetStep() != vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_USE || !slices.EqualFunc(kr.GetKeys(), [][]byte{newKey, old}, bytes.Equal) || len(kr.GetLaggingNodes()) != 0 {
		t.Fatalf("after INSTALL was confirmed: %v", kr)
	}
	tick()
	if got := m.Keys(); !slices.EqualFunc(got, [][]byte{newKey, old}, bytes.Equal) {
		t.Errorf("server member after USE: %x", got)
	}

	// This server confirmed USE on its lease.
	if resp, err := cli.Get(ctx, store.ServerKeyringPrefix+m.Name()); err != nil || len(resp.Kvs) != 1 ||
		string(resp.Kvs[0].Value) != store.OrderedValue(rev) || resp.Kvs[0].Lease == 0 {
		t.Errorf("this server's confirmation: %v, %v; want revision %d on a lease", resp.Kvs, err, rev)
	}
	// Only h1 confirms USE, and another server is still at INSTALL: it moves on at the timeout
	// (measured from when this server saw the step), naming both.
	putNode(t, cli, "h1", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, rev)
	if _, err := cli.Put(ctx, store.ServerKeyringPrefix+"other", store.OrderedValue(rev-1)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(9 * time.Second)
	tick()
	if _, rev2 := stored(); rev2 != rev {
		t.Fatal("moved on before the step timed out")
	}
	now = now.Add(2 * time.Second)
	tick()
	kr, _ = stored()
	if kr.GetStep() != vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE || !slices.EqualFunc(kr.GetKeys(), [][]byte{newKey}, bytes.Equal) ||
		!slices.Equal(kr.GetLaggingNodes(), []string{"h2", "server other"}) {
		t.Fatalf("after USE timed out: %v", kr)
	}
	tick()
	if got := m.Keys(); !slices.EqualFunc(got, [][]byte{newKey}, bytes.Equal) {
		t.Errorf("server member after DONE: %x", got)
	}
	st, err = r.GetGossipKeyring(ctx, &vxfabricv1.GetGossipKeyringRequest{})
	if err != nil || !st.GetKeyring().GetManaged() || len(st.GetKeyring().GetNodes()) != 4 || !slices.Equal(st.GetKeyring().GetKeyIds(), KeyIDs([][]byte{newKey})) {
		t.Errorf("keyring when done: %v, %v", st, err)
	}

	// The next rotation starts from the stored keyring.
	if _, err := r.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	if kr, _ = stored(); !bytes.Equal(kr.GetKeys()[0], newKey) || len(kr.GetKeys()) != 2 || len(kr.GetLaggingNodes()) != 0 ||
		kr.GetStepTimeoutMs() != DefaultStepTimeout.Milliseconds() {
		t.Errorf("second rotation started as %v", kr)
	}

	plain := New(cli, member(t), Config{})
	if _, err := plain.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("rotation of unencrypted gossip: %v, want FailedPrecondition", err)
	}
}

// crl is a revocation list in force, as a test sets it.
type crl struct {
	ca      string
	number  int64 // 0: no list
	revoked int
}

func (c *crl) InForce() (string, *big.Int, int) {
	if c.number == 0 {
		return "", nil, 0
	}
	return c.ca, big.NewInt(c.number), c.revoked
}

// A list that revokes more starts a rotation, once for the fabric, when every running server
// enforces it; a list that revokes nothing before any rotation for one does not, nor does the same
// list again, nor one written anew without a new revocation. A list that comes while a rotation
// runs waits for it to end, then starts its own. A new CA's first revocation rotates though its
// list's number is lower.
func TestRotationOnRevocation(t *testing.T) {
	ctx := context.Background()
	cli := etcdtest.Client(t)
	old := bytes.Repeat([]byte{7}, 32)
	newRotator := func(cli *clientv3.Client, list *crl, name string, stepTimeout time.Duration, keys ...[]byte) *Rotator {
		r := New(cli, namedMember(t, name, keys...), Config{Revocations: list, RevokeStepTimeout: stepTimeout, Logger: slog.New(slog.DiscardHandler)})
		t.Cleanup(r.close)
		return r
	}
	listA, listB := &crl{ca: "ca1", number: 1}, &crl{ca: "ca1", number: 1}
	a, b := newRotator(cli, listA, "a", 5*time.Second, old), newRotator(cli, listB, "b", 5*time.Second, old)
	both := func(ca string, number int64, revoked int) {
		*listA = crl{ca: ca, number: number, revoked: revoked}
		*listB = *listA
	}
	value := func(cli *clientv3.Client, key string) string {
		t.Helper()
		resp, err := cli.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}
	check := func(r *Rotator, what string, wantKeys int, wantRecord string) (rev int64) {
		t.Helper()
		if err := r.rotateOnRevocation(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		kr, rev, err := r.read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(kr.GetKeys()) != wantKeys {
			t.Errorf("%s: keyring %v, want %d keys", what, kr, wantKeys)
		}
		if got := value(r.cli, store.GossipRevocationKey); got != wantRecord {
			t.Errorf("%s: the list rotated for is %q, want %q", what, got, wantRecord)
		}
		issuer, number, revoked := r.cfg.Revocations.InForce()
		if got, want := value(r.cli, store.ServerRevocationsPrefix+r.m.Name()), (listID{issuer, number, revoked}).String(); got != want {
			t.Errorf("%s: this server's list recorded as %q, want %q", what, got, want)
		}
		return rev
	}
	finish := func() {
		t.Helper()
		kr, _, err := a.read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		kr.Step = vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE
		kr.Keys = kr.Keys[len(kr.Keys)-1:]
		v, _ := proto.Marshal(kr)
		if _, err := cli.Put(ctx, store.GossipKeyringKey, string(v)); err != nil {
			t.Fatal(err)
		}
	}

	check(a, "an empty list", 0, "")
	check(b, "an empty list at the other server", 0, "")
	*listA = crl{ca: "ca1", number: 2, revoked: 1}
	check(a, "a list that revokes one, the other server still on the empty list", 0, "")
	*listB = *listA
	first := check(b, "a list that revokes one at both servers", 2, "2 ca1 1")
	if kr, _, _ := a.read(ctx); kr.GetStep() != vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_INSTALL || kr.GetStepTimeoutMs() != 5000 {
		t.Errorf("rotation started as %v, want INSTALL with a 5 s step timeout", kr)
	}
	// GetGossipKeyring shows the list rotated for and each server's.
	st, err := a.GetGossipKeyring(ctx, &vxfabricv1.GetGossipKeyringRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &vxfabricv1.RevocationList{Ca: "ca1", CrlNumber: "2", Revoked: 1}
	servers := st.GetKeyring().GetServerRevocationLists()
	if !proto.Equal(st.GetKeyring().GetRevocationRotatedFor(), want) || len(servers) != 2 || servers[0].GetServer() != "a" ||
		servers[1].GetServer() != "b" || !proto.Equal(servers[0].GetList(), want) || !proto.Equal(servers[1].GetList(), want) {
		t.Errorf("keyring status: rotated for %v, servers %v; want %v everywhere", st.GetKeyring().GetRevocationRotatedFor(), servers, want)
	}
	if rev := check(a, "the same list at the other server", 2, "2 ca1 1"); rev != first {
		t.Error("another server started a second rotation for the same list")
	}
	finish()
	both("ca1", 3, 1)
	check(a, "a list written anew without a new revocation", 1, "2 ca1 1")
	check(b, "a list written anew without a new revocation, at the other server", 1, "2 ca1 1")

	// An admin's rotation runs when a list that revokes more comes: the list's rotation waits.
	if _, err := a.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	both("ca1", 4, 2)
	check(a, "a newer list while a rotation runs", 2, "2 ca1 1")
	check(b, "a newer list while a rotation runs, at the other server", 2, "2 ca1 1")
	finish()
	ended := check(b, "the newer list once the rotation is done", 2, "4 ca1 2")
	if rev := check(a, "the newer list at the other server", 2, "4 ca1 2"); rev != ended {
		t.Error("the other server started a second rotation for the newer list")
	}

	// A new CA starts its list's numbers again: its empty list starts no rotation, its first
	// revocation does, though its number is lower than the old CA's.
	finish()
	both("ca2", 1, 0)
	check(a, "a new CA's empty list", 1, "4 ca1 2")
	check(b, "a new CA's empty list, at the other server", 1, "4 ca1 2")
	both("ca2", 2, 1)
	check(a, "a new CA's first revocation, the other server not yet known to enforce it", 1, "4 ca1 2")
	check(b, "a new CA's first revocation", 2, "2 ca2 1")

	// A fabric whose list revoked certificates before any rotation for one (an upgrade) rotates.
	cli2 := etcdtest.Client(t)
	up := newRotator(cli2, &crl{ca: "ca1", number: 7, revoked: 3}, "up", DefaultStepTimeout, old)
	check(up, "a list revoking 3 before any rotation", 2, "7 ca1 3")
	// Without a step timeout, or on unencrypted gossip, a server records its list and rotates nothing.
	cli3 := etcdtest.Client(t)
	check(newRotator(cli3, &crl{ca: "ca1", number: 9, revoked: 4}, "off", 0, old), "rotation on revocation off", 0, "")
	check(newRotator(cli3, &crl{ca: "ca1", number: 9, revoked: 4}, "plain", DefaultStepTimeout), "unencrypted gossip", 0, "")
}
