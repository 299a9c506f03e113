// Package gossipkeys rotates the key that encrypts gossip, through etcd rather than files on hosts.
//
// The keyring lives in one etcd key (store.GossipKeyringKey) from the first rotation on. A rotation
// moves it through three steps: INSTALL (the new key is added, the old one still encrypts), USE (the
// new key encrypts, the old one is still accepted) and DONE (the new key alone). Agents receive the
// keyring in their Sync streams (controlplane/fanout) and confirm it in ReportApplied
// (store.NodeKeyringPrefix); every server's Rotator installs it in its own gossip member, confirms it
// on a lease (store.ServerKeyringPrefix) and moves a step on once every ALIVE node and every running
// server has confirmed it, or once the step's timeout has passed. Every server may try to move a
// step on: a compare on the keyring's revision lets one of them do it.
//
// A node whose agent can no longer open a Sync stream (a revoked certificate) never receives the new
// key, so a rotation after a revocation shuts it out of gossip. A server given the revocation list it
// enforces starts that rotation itself when a newer list comes in force (RotateOnRevocation).
package gossipkeys

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vxfabric/vxfabric/controlplane/store"
	"github.com/vxfabric/vxfabric/membership"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Defaults and bounds of a rotation.
const (
	DefaultStepTimeout = 30 * time.Second
	MaxStepTimeout     = 10 * time.Minute
	keySize            = 32 // AES-256
)

// Config configures a Rotator. Zero fields take the defaults.
type Config struct {
	// Prefix is the fabric's etcd prefix. Default store.Prefix.
	Prefix string
	// Poll is how often the keyring is read: a change reaches this server's member, and a running
	// step is checked, within it. Default 250 ms.
	Poll time.Duration
	// MinStep is the least time a step lasts, so that every server has installed it before the next
	// one starts (servers do not confirm). Default 1 s.
	MinStep time.Duration
	// Revocations, when set, is the client certificate revocation list this server enforces. The
	// server records it on its lease (store.ServerRevocationsPrefix), and with RevokeStepTimeout
	// set, starts a rotation when every running server enforces a list that revokes more than the
	// one the fabric last rotated for (see rotateOnRevocation).
	Revocations RevocationList
	// RevokeStepTimeout is the step timeout of the rotations a revocation starts; 0: a revocation
	// starts none.
	RevokeStepTimeout time.Duration
	Logger            *slog.Logger
}

// RevocationList is a revocation list in force (pki.Revocations).
type RevocationList interface {
	// InForce returns the list's issuer (an identifier of the CA that signed it), its CRL number
	// (nil before there is a list; numbering starts again with a new CA) and how many certificates
	// it revokes.
	InForce() (issuer string, number *big.Int, revoked int)
}

// Rotator installs the fabric's keyring in one server's gossip member, moves rotations on, and
// serves vxfabric.v1.GossipService.
type Rotator struct {
	vxfabricv1.UnimplementedGossipServiceServer
	cli *clientv3.Client
	m   *membership.Member
	cfg Config
	log *slog.Logger
	now func() time.Time

	// Used by Run's goroutine only.
	sess       *concurrency.Session // the lease of this server's confirmation key
	confirmed  int64                // the keyring revision this server's confirmation key holds
	seenRev    int64                // the running step's revision, and when this server first saw it:
	seenAt     time.Time            // a step's age is measured on this server's own clock
	enforced   listID               // the revocation list this server's lease key records
	rotatedFor listID               // the revocation list known to need no rotation from this server
	waiting    string               // why a rotation for a newer list waits, as last logged
}

// ServerConfirmationTTL bounds how long a server that stopped holds a rotation up: its confirmation
// key lives on a lease of this many seconds.
const ServerConfirmationTTL = 10

// New returns a rotator for member m (the server's own) on cli.
func New(cli *clientv3.Client, m *membership.Member, cfg Config) *Rotator {
	if cfg.Prefix == "" {
		cfg.Prefix = store.Prefix
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.MinStep <= 0 {
		cfg.MinStep = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Rotator{cli: cli, m: m, cfg: cfg, log: cfg.Logger, now: time.Now}
}

func (r *Rotator) key() string { return r.cfg.Prefix + store.GossipKeyring }

// read returns the stored keyring and its revision (nil, 0 before the first rotation).
func (r *Rotator) read(ctx context.Context) (*vxfabricv1.GossipKeyring, int64, error) {
	resp, err := r.cli.Get(ctx, r.key())
	if err != nil {
		return nil, 0, fmt.Errorf("read the gossip keyring: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	kr := &vxfabricv1.GossipKeyring{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, kr); err != nil {
		return nil, 0, fmt.Errorf("decode the gossip keyring: %w", err)
	}
	return kr, resp.Kvs[0].ModRevision, nil
}

// Run keeps this server's member on the stored keyring and moves running rotations on until ctx
// ends. Errors (etcd unreachable) are retried at the next poll, and logged when they change.
func (r *Rotator) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	defer r.close()
	var installed int64
	var failing string // the last error logged: a lasting one is logged once, not at every poll
	if r.cfg.Revocations != nil && r.cfg.RevokeStepTimeout > 0 && !r.m.Encrypted() {
		r.log.Info("a revocation starts no gossip key rotation: gossip is not encrypted")
	}
	for {
		err := errors.Join(r.tick(ctx, &installed), r.rotateOnRevocation(ctx))
		switch {
		case err != nil && ctx.Err() == nil && err.Error() != failing:
			failing = err.Error()
			r.log.Warn("gossip keyring", "err", err)
		case err == nil && failing != "":
			failing = ""
			r.log.Info("gossip keyring recovered")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Rotator) tick(ctx context.Context, installed *int64) error {
	kr, rev, err := r.read(ctx)
	if err != nil || kr == nil {
		return err
	}
	if rev != *installed {
		err := r.m.InstallKeys(kr.GetKeys())
		if errors.Is(err, membership.ErrKeyringNotRecorded) {
			// In use all the same: the rotation goes on; a restart reads the keyring from etcd.
			r.log.Warn("gossip keyring file not rewritten", "revision", rev, "err", err)
		} else if err != nil {
			return fmt.Errorf("install keyring of revision %d: %w", rev, err)
		}
		*installed = rev
		r.log.Info("gossip keyring installed", "revision", rev, "step", stepName(kr.GetStep()), "keys", strings.Join(KeyIDs(kr.GetKeys()), ","))
	}
	if err := r.confirm(ctx, rev); err != nil {
		return err
	}
	if kr.GetStep() == vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE {
		return nil
	}
	return r.advance(ctx, kr, rev)
}

// confirm records, on a lease, that this server's member holds the keyring of revision rev, so that
// no step starts before every running server has installed the one before.
func (r *Rotator) confirm(ctx context.Context, rev int64) error {
	lease, err := r.lease(ctx)
	if err != nil || rev == r.confirmed {
		return err
	}
	key := r.cfg.Prefix + store.ServerKeyrings + r.m.Name()
	if _, err := r.cli.Put(ctx, key, store.OrderedValue(rev), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("confirm keyring of revision %d: %w", rev, err)
	}
	r.confirmed = rev
	return nil
}

// lease returns the lease of this server's keys, made anew when the last one expired (etcd was
// unreachable for longer than its TTL): the keys went with it, and are written again.
func (r *Rotator) lease(ctx context.Context) (clientv3.LeaseID, error) {
	if r.sess != nil {
		select {
		case <-r.sess.Done():
			r.sess, r.confirmed, r.enforced = nil, 0, listID{}
		default:
		}
	}
	if r.sess == nil {
		sess, err := concurrency.NewSession(r.cli, concurrency.WithTTL(ServerConfirmationTTL), concurrency.WithContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("lease for this server's keyring records: %w", err)
		}
		r.sess = sess
	}
	return r.sess.Lease(), nil
}

// close gives the confirmation key's lease back (the key goes at once).
func (r *Rotator) close() {
	if r.sess != nil {
		_ = r.sess.Close()
		r.sess = nil
	}
}

// advance moves a running rotation to its next step once every ALIVE or SUSPECT node and every
// running server has confirmed revision rev (or the step timed out, naming the nodes that had not). A step's age is
// measured from when this server first saw it, on its own clock: servers' clocks need not agree.
func (r *Rotator) advance(ctx context.Context, kr *vxfabricv1.GossipKeyring, rev int64) error {
	if rev != r.seenRev {
		r.seenRev, r.seenAt = rev, r.now()
	}
	age := r.now().Sub(r.seenAt)
	if age < r.cfg.MinStep {
		return nil
	}
	nodes, servers, err := r.progress(ctx)
	if err != nil {
		return err
	}
	var lagging []string
	for _, n := range nodes {
		// A SUSPECT node may be back in a moment (a paused or restarting agent): waited for too.
		up := n.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_ALIVE || n.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT
		if up && n.GetKeyringRevision() < rev {
			lagging = append(lagging, n.GetNode())
		}
	}
	for name, confirmed := range servers {
		if confirmed < rev {
			lagging = append(lagging, "server "+name)
		}
	}
	timeout := time.Duration(kr.GetStepTimeoutMs()) * time.Millisecond
	if len(lagging) > 0 && age < timeout {
		return nil
	}
	next := proto.CloneOf(kr)
	next.StepTime = timestamppb.New(r.now())
	if len(lagging) > 0 {
		next.LaggingNodes = slices.Compact(slices.Sorted(slices.Values(append(next.LaggingNodes, lagging...))))
	}
	keys := kr.GetKeys()
	switch kr.GetStep() {
	case vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_INSTALL:
		// The new key, added last, now encrypts.
		newKey := keys[len(keys)-1]
		next.Step, next.Keys = vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_USE, append([][]byte{newKey}, keys[:len(keys)-1]...)
	case vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_USE:
		next.Step, next.Keys = vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE, keys[:1]
	default:
		return fmt.Errorf("keyring of revision %d in unknown step %v", rev, kr.GetStep())
	}
	val, err := proto.Marshal(next)
	if err != nil {
		return err
	}
	resp, err := r.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(r.key()), "=", rev)).
		Then(clientv3.OpPut(r.key(), string(val))).Commit()
	if err != nil {
		return fmt.Errorf("move the gossip keyring to step %s: %w", stepName(next.Step), err)
	}
	if resp.Succeeded {
		r.log.Info("gossip key rotation moved on", "step", stepName(next.Step), "after", age.Round(time.Millisecond),
			"lagging", strings.Join(lagging, ","))
	}
	return nil
}

// progress lists every recorded node with its status and the keyring revision it confirmed, and
// the revision each running server confirmed.
func (r *Rotator) progress(ctx context.Context) ([]*vxfabricv1.GossipNodeKeyring, map[string]int64, error) {
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.cfg.Prefix+"nodes/", clientv3.WithPrefix()),
		clientv3.OpGet(r.cfg.Prefix+store.NodeKeyrings, clientv3.WithPrefix()),
		clientv3.OpGet(r.cfg.Prefix+store.ServerKeyrings, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("read the keyrings confirmed: %w", err)
	}
	confirmations := func(i int, prefix string) map[string]int64 {
		out := map[string]int64{}
		for _, kv := range resp.Responses[i].GetResponseRange().GetKvs() {
			if v, err := strconv.ParseInt(string(kv.Value), 10, 64); err == nil {
				out[strings.TrimPrefix(string(kv.Key), r.cfg.Prefix+prefix)] = v
			}
		}
		return out
	}
	confirmed := confirmations(1, store.NodeKeyrings)
	var out []*vxfabricv1.GossipNodeKeyring
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		n := &vxfabricv1.Node{}
		if err := proto.Unmarshal(kv.Value, n); err != nil {
			return nil, nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		name := strings.TrimPrefix(string(kv.Key), r.cfg.Prefix+"nodes/")
		out = append(out, &vxfabricv1.GossipNodeKeyring{Node: name, Status: n.GetStatus(), KeyringRevision: confirmed[name]})
	}
	return out, confirmations(2, store.ServerKeyrings), nil
}

// RotateGossipKey starts a rotation (see the proto).
func (r *Rotator) RotateGossipKey(ctx context.Context, req *vxfabricv1.RotateGossipKeyRequest) (*vxfabricv1.RotateGossipKeyResponse, error) {
	timeout := time.Duration(req.GetStepTimeoutMs()) * time.Millisecond
	switch {
	case timeout == 0:
		timeout = DefaultStepTimeout
	case timeout < 0 || timeout > MaxStepTimeout:
		return nil, status.Errorf(codes.InvalidArgument, "step_timeout_ms %d: want 0 (30 s) up to %d", req.GetStepTimeoutMs(), MaxStepTimeout.Milliseconds())
	}
	if err := r.start(ctx, timeout, nil, nil); err != nil {
		return nil, err
	}
	st, err := r.describe(ctx)
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	return &vxfabricv1.RotateGossipKeyResponse{Keyring: st}, nil
}

// start begins a rotation with a new random key, in one transaction with ops, if also cmps hold.
// It fails with FailedPrecondition while a rotation runs or on unencrypted gossip, and with Aborted
// when the keyring or cmps changed meanwhile.
func (r *Rotator) start(ctx context.Context, timeout time.Duration, cmps []clientv3.Cmp, ops []clientv3.Op) error {
	if !r.m.Encrypted() {
		return status.Error(codes.FailedPrecondition, "gossip is not encrypted: start every server and agent with a gossip key (vxfab certs init writes one) before rotating it")
	}
	kr, rev, err := r.read(ctx)
	if err != nil {
		return unavailable(ctx, err)
	}
	current := r.m.Keys()
	if kr != nil {
		if kr.GetStep() != vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE {
			return status.Errorf(codes.FailedPrecondition, "a rotation is running: step %s since %s", stepName(kr.GetStep()),
				kr.GetStepTime().AsTime().Format(time.RFC3339))
		}
		current = kr.GetKeys()
	}
	newKey := make([]byte, keySize)
	if _, err := rand.Read(newKey); err != nil {
		return status.Errorf(codes.Internal, "make a gossip key: %v", err)
	}
	next := &vxfabricv1.GossipKeyring{
		Keys:          append(slices.Clone(current), newKey),
		Step:          vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_INSTALL,
		StepTime:      timestamppb.New(r.now()),
		StepTimeoutMs: timeout.Milliseconds(),
	}
	val, err := proto.Marshal(next)
	if err != nil {
		return status.Errorf(codes.Internal, "encode the gossip keyring: %v", err)
	}
	resp, err := r.cli.Txn(ctx).If(append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(r.key()), "=", rev)}, cmps...)...).
		Then(append([]clientv3.Op{clientv3.OpPut(r.key(), string(val))}, ops...)...).Commit()
	if err != nil {
		return unavailable(ctx, err)
	}
	if !resp.Succeeded {
		return status.Error(codes.Aborted, "the gossip keyring changed meanwhile (another rotation started): look at it again")
	}
	r.log.Info("gossip key rotation started", "new_key", KeyIDs([][]byte{newKey})[0], "step_timeout", timeout)
	return nil
}

// rotateOnRevocation records the revocation list this server enforces (on its lease, under
// store.ServerRevocationsPrefix) and starts a rotation when the list revokes more than the one the
// fabric last rotated for (store.GossipRevocationKey): a revoked host's agent holds the gossip key
// until it is replaced. It waits until every running server enforces that list, since a server
// still on an older one would serve the revoked host's Sync stream and hand it the new key; and
// while a rotation runs, since the revoked host may have received the running one's key. A list of
// another CA (whose numbering starts again), or one before any rotation for a list, needs a
// rotation if it revokes anything. Of the servers that see the list, a compare on the record lets
// one start it.
func (r *Rotator) rotateOnRevocation(ctx context.Context) error {
	if r.cfg.Revocations == nil {
		return nil
	}
	issuer, number, revoked := r.cfg.Revocations.InForce()
	if number == nil {
		return nil
	}
	list := listID{issuer: issuer, number: number, revoked: revoked}
	if err := r.report(ctx, list); err != nil {
		return err
	}
	if r.cfg.RevokeStepTimeout <= 0 || !r.m.Encrypted() || !list.newer(r.rotatedFor) {
		return nil
	}
	recs, err := r.readRevocations(ctx)
	if err != nil {
		return err
	}
	if recs.rotatedForErr != nil {
		return recs.rotatedForErr
	}
	if !list.newer(recs.rotatedFor) || revoked == 0 {
		r.rotatedFor = list
		return nil
	}
	if behind := recs.behind(list); len(behind) > 0 {
		r.wait(number, "servers still enforce an older revocation list (copy the new one to them): "+strings.Join(behind, ", "))
		return nil
	}
	// The rotation starts only if the record and the servers' lists are as read: a server that
	// came up meanwhile, on an older list, is waited for too.
	err = r.start(ctx, r.cfg.RevokeStepTimeout, []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(r.revocationKey()), "=", recs.rotatedForRev),
		clientv3.Compare(clientv3.ModRevision(r.serverRevocations()).WithPrefix(), "<", recs.revision+1),
	}, []clientv3.Op{clientv3.OpPut(r.revocationKey(), list.String())})
	switch status.Code(err) {
	case codes.OK:
		r.log.Info("gossip key rotation started for a new revocation list, to shut revoked hosts out of gossip",
			"crl_number", number, "ca", issuer, "revoked", revoked)
		r.rotatedFor, r.waiting = list, ""
		return nil
	case codes.FailedPrecondition:
		r.wait(number, status.Convert(err).Message())
		return nil
	case codes.Aborted:
		return nil // another server started it, or the keyring moved: look again at the next poll
	}
	return err
}

// wait logs, once for each reason, why the rotation for the list of CRL number n waits.
func (r *Rotator) wait(n *big.Int, why string) {
	if why != r.waiting {
		r.waiting = why
		r.log.Info("gossip key rotation for a new revocation list waits", "crl_number", n, "why", why)
	}
}

// report records list as the one this server enforces, on its lease.
func (r *Rotator) report(ctx context.Context, list listID) error {
	lease, err := r.lease(ctx)
	if err != nil || list.same(r.enforced) {
		return err
	}
	key := r.serverRevocations() + r.m.Name()
	if _, err := r.cli.Put(ctx, key, list.String(), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("record the revocation list in force: %w", err)
	}
	r.enforced = list
	return nil
}

// revocationRecords are the list the last rotation started by a revocation was for and the list
// each running server records that it enforces, as etcd held them at revision.
type revocationRecords struct {
	rotatedFor    listID // zero before such a rotation
	rotatedForRev int64  // its record's mod revision; 0 before one
	rotatedForErr error  // the record does not parse
	servers       []serverList
	revision      int64
}

// serverList is a running server's record of its list; ok is false when the record does not parse.
type serverList struct {
	name string
	list listID
	ok   bool
}

// readRevocations reads the revocation records in one transaction.
func (r *Rotator) readRevocations(ctx context.Context) (revocationRecords, error) {
	prefix := r.serverRevocations()
	resp, err := r.cli.Txn(ctx).Then(clientv3.OpGet(r.revocationKey()), clientv3.OpGet(prefix, clientv3.WithPrefix())).Commit()
	if err != nil {
		return revocationRecords{}, fmt.Errorf("read the revocation lists: %w", err)
	}
	recs := revocationRecords{revision: resp.Header.Revision}
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		recs.rotatedForRev = kv.ModRevision
		if recs.rotatedFor, err = parseListID(string(kv.Value)); err != nil {
			recs.rotatedForErr = fmt.Errorf("the revocation list last rotated for: %w", err)
		}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		l, err := parseListID(string(kv.Value))
		recs.servers = append(recs.servers, serverList{name: strings.TrimPrefix(string(kv.Key), prefix), list: l, ok: err == nil})
	}
	return recs, nil
}

// behind names the servers whose recorded list is not list or a later one of its CA.
func (rr revocationRecords) behind(list listID) []string {
	var names []string
	for _, s := range rr.servers {
		if !s.ok || s.list.issuer != list.issuer || s.list.number.Cmp(list.number) < 0 {
			names = append(names, s.name)
		}
	}
	return names
}

// listID names a revocation list: the CA that signed it, its CRL number (nil: none) and how many
// certificates it revokes.
type listID struct {
	issuer  string
	number  *big.Int
	revoked int
}

// newer tells whether l revokes more than than: a higher number from the same CA with more
// certificates on it (a list written anew without one more, by a revoke of the revoked, does not),
// or any list of another CA (whose numbering starts again) or after none.
func (l listID) newer(than listID) bool {
	return than.number == nil || l.issuer != than.issuer || (l.number.Cmp(than.number) > 0 && l.revoked > than.revoked)
}

func (l listID) same(o listID) bool {
	return l.number != nil && o.number != nil && l.issuer == o.issuer && l.number.Cmp(o.number) == 0
}

func (l listID) proto() *vxfabricv1.RevocationList {
	return &vxfabricv1.RevocationList{Ca: l.issuer, CrlNumber: l.number.String(), Revoked: int32(l.revoked)}
}

// String is the records' form: "NUMBER ISSUER REVOKED".
func (l listID) String() string { return fmt.Sprintf("%s %s %d", l.number, l.issuer, l.revoked) }

func parseListID(v string) (listID, error) {
	f := strings.Fields(v)
	if len(f) == 3 {
		n, ok := new(big.Int).SetString(f[0], 10)
		k, err := strconv.Atoi(f[2])
		if ok && err == nil {
			return listID{issuer: f[1], number: n, revoked: k}, nil
		}
	}
	return listID{}, fmt.Errorf("%q: want a CRL number, its CA's key identifier and its count of revoked certificates", v)
}

func (r *Rotator) revocationKey() string { return r.cfg.Prefix + store.GossipRevocation }

func (r *Rotator) serverRevocations() string { return r.cfg.Prefix + store.ServerRevocations }

// GetGossipKeyring describes the keyring (see the proto).
func (r *Rotator) GetGossipKeyring(ctx context.Context, _ *vxfabricv1.GetGossipKeyringRequest) (*vxfabricv1.GetGossipKeyringResponse, error) {
	st, err := r.describe(ctx)
	if err != nil {
		return nil, unavailable(ctx, err)
	}
	return &vxfabricv1.GetGossipKeyringResponse{Keyring: st}, nil
}

func (r *Rotator) describe(ctx context.Context) (*vxfabricv1.GossipKeyringStatus, error) {
	kr, rev, err := r.read(ctx)
	if err != nil {
		return nil, err
	}
	nodes, _, err := r.progress(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := r.readRevocations(ctx)
	if err != nil {
		return nil, err
	}
	st := &vxfabricv1.GossipKeyringStatus{KeyIds: KeyIDs(r.m.Keys()), Nodes: nodes}
	if recs.rotatedForRev != 0 && recs.rotatedForErr == nil {
		st.RevocationRotatedFor = recs.rotatedFor.proto()
	}
	for _, s := range recs.servers {
		if s.ok { // records that do not parse are left out
			st.ServerRevocationLists = append(st.ServerRevocationLists, &vxfabricv1.ServerRevocationList{Server: s.name, List: s.list.proto()})
		}
	}
	if kr == nil {
		return st, nil // before the first rotation: the keys this server was started with
	}
	st.Managed, st.Step, st.KeyIds, st.Revision = true, kr.GetStep(), KeyIDs(kr.GetKeys()), rev
	st.StepTime, st.LaggingNodes = kr.GetStepTime(), kr.GetLaggingNodes()
	return st, nil
}

// KeyIDs names keys without revealing them: the first 8 bytes of their SHA-256, in hex.
func KeyIDs(keys [][]byte) []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		sum := sha256.Sum256(k)
		out = append(out, hex.EncodeToString(sum[:8]))
	}
	return out
}

func stepName(s vxfabricv1.GossipRotationStep) string {
	return strings.TrimPrefix(s.String(), "GOSSIP_ROTATION_STEP_")
}

// unavailable is the status of a failed etcd read or write.
func unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return status.Errorf(codes.Unavailable, "%v", err)
}
