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
	cfg := membership.Default(membership.RoleServer, "srv")
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

// A newer revocation list in force starts a rotation, once for the fabric however many servers see
// it; a list that revokes nothing before any rotation for one does not, nor does the same list again.
// A newer list while a rotation runs waits for it to end, then starts its own.
func TestRotationOnRevocation(t *testing.T) {
	ctx := context.Background()
	cli := etcdtest.Client(t)
	old := bytes.Repeat([]byte{7}, 32)
	list := &crl{ca: "ca1", number: 1}
	newRotator := func() *Rotator {
		r := New(cli, member(t, old), Config{Revocations: list, RevokeStepTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)})
		t.Cleanup(r.close)
		return r
	}
	a, b := newRotator(), newRotator()
	check := func(r *Rotator, what string, wantKeys int, wantRecord string) (rev int64) {
		t.Helper()
		if err := r.rotateOnRevocation(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		kr, rev, err := a.read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(kr.GetKeys()) != wantKeys {
			t.Errorf("%s: keyring %v, want %d keys", what, kr, wantKeys)
		}
		resp, err := cli.Get(ctx, store.GossipRevocationKey)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != wantRecord {
			t.Errorf("%s: the list rotated for is %q, want %q", what, got, wantRecord)
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
	list.number, list.revoked = 2, 1
	first := check(a, "a list that revokes one", 2, "2 ca1")
	if kr, _, _ := a.read(ctx); kr.GetStep() != vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_INSTALL || kr.GetStepTimeoutMs() != 5000 {
		t.Errorf("rotation started as %v, want INSTALL with a 5 s step timeout", kr)
	}
	if rev := check(a, "the same list again", 2, "2 ca1"); rev != first {
		t.Error("the same list started another rotation")
	}
	finish()
	check(b, "the same list at another server, the rotation done", 1, "2 ca1")
	// An admin's rotation runs when a newer list comes: the list's rotation waits for it.
	if _, err := a.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	list.number, list.revoked = 3, 2
	check(b, "a newer list while a rotation runs", 2, "2 ca1")
	finish()
	ended := check(b, "the newer list once the rotation is done", 2, "3 ca1")
	if rev := check(a, "the newer list at the other server", 2, "3 ca1"); rev != ended {
		t.Error("the other server started a second rotation for the newer list")
	}

	// A new CA starts its list's numbers again: its empty list starts no rotation, its first
	// revocation does, though its number is lower than the old CA's.
	finish()
	list.ca, list.number, list.revoked = "ca2", 1, 0
	check(a, "a new CA's empty list", 1, "3 ca1")
	list.number, list.revoked = 2, 1
	check(b, "a new CA's first revocation", 2, "2 ca2")

	// A fabric whose list revoked certificates before any rotation for one (an upgrade) rotates.
	cli2 := etcdtest.Client(t)
	up := New(cli2, member(t, old), Config{Revocations: &crl{ca: "ca1", number: 7, revoked: 3}, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(up.close)
	if err := up.rotateOnRevocation(ctx); err != nil {
		t.Fatal(err)
	}
	if kr, _, err := up.read(ctx); err != nil || len(kr.GetKeys()) != 2 || kr.GetStepTimeoutMs() != DefaultStepTimeout.Milliseconds() {
		t.Errorf("a list revoking 3 before any rotation: keyring %v, %v; want a rotation with the default step timeout", kr, err)
	}
	// Unencrypted gossip has no key to rotate.
	plain := New(cli2, member(t), Config{Revocations: &crl{ca: "ca1", number: 9, revoked: 4}, Logger: slog.New(slog.DiscardHandler)})
	if err := plain.rotateOnRevocation(ctx); err != nil {
		t.Errorf("unencrypted gossip: %v", err)
	}
}
