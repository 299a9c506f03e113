package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// maxCASRetries bounds the read-modify-write loops of updates and deletes without an expected revision.
const maxCASRetries = 16

// Store reads and writes the vxfabric keys. It is safe for concurrent use, and all of its state is in
// etcd (it only queues the creates it is about to commit, see txnBatcher): any number of Stores (in
// any number of server replicas) may share one etcd.
type Store struct {
	kv       clientv3.KV
	requests *requestLeases // nil: request records never expire (see ExpireRequests)
	creates  *txnBatcher    // network and port creates, committed in groups under load
}

// New returns a Store over an etcd client (or any clientv3.KV).
func New(kv clientv3.KV) *Store { return &Store{kv: kv, creates: newTxnBatcher(kv)} }

// KV is the underlying etcd key-value API.
func (s *Store) KV() clientv3.KV { return s.kv }

func marshal(m proto.Message) string {
	b, err := proto.Marshal(m)
	if err != nil {
		// Marshalling our own generated messages cannot fail.
		panic(fmt.Sprintf("marshal %T: %v", m, err))
	}
	return string(b)
}

// notExists and exists compare a key's presence in a transaction.
func notExists(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
}
func exists(key string) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(key), ">", 0) }

// prefixEmpty holds when no key starts with prefix: etcd compares every key of the range, and an empty
// range compares as a key with create revision 0.
func prefixEmpty(prefix string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(prefix), "=", 0).WithPrefix()
}

// atRevision holds while key is at modRev.
func atRevision(key string, modRev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
}

// rangeKVs returns the key-values of the i-th response of a transaction (a Get).
func rangeKVs(resp *clientv3.TxnResponse, i int) []*mvccpb.KeyValue {
	return resp.Responses[i].GetResponseRange().GetKvs()
}

func first(kvs []*mvccpb.KeyValue) *mvccpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}

// requestRecord reads the idempotency record of a create that failed its transaction. It returns the
// recorded resource id and the record's revision, or "" when there is none.
func requestRecord(kv *mvccpb.KeyValue) (string, int64) {
	if kv == nil {
		return "", 0
	}
	return string(kv.Value), kv.ModRevision
}

// dropStaleRequest deletes a request record whose resource has since been deleted, so that a create
// repeating that request_id makes the resource again.
func (s *Store) dropStaleRequest(ctx context.Context, key string, modRev int64) error {
	_, err := s.kv.Txn(ctx).If(atRevision(key, modRev)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("drop stale request %s: %w", key, err)
	}
	return nil
}

// ---- tenants ----

func decodeTenant(kv *mvccpb.KeyValue) (*vxfabricv1.Tenant, error) {
	t := &vxfabricv1.Tenant{}
	if err := proto.Unmarshal(kv.Value, t); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	t.Revision = kv.ModRevision
	return t, nil
}

// CreateTenant writes a tenant (and, with a request id, its request record) in one transaction.
// Repeating a request id returns the tenant it created.
func (s *Store) CreateTenant(ctx context.Context, t *vxfabricv1.Tenant, requestID string) (*vxfabricv1.Tenant, error) {
	key := TenantKey(t.Name)
	for range maxCASRetries {
		cmps := []clientv3.Cmp{notExists(key)}
		puts := []clientv3.Op{clientv3.OpPut(key, marshal(t))}
		elses := []clientv3.Op{clientv3.OpGet(key)}
		var lease clientv3.LeaseID
		if requestID != "" {
			rk := TenantRequestKey(requestID)
			put, l, err := s.requestPut(ctx, rk, t.Name)
			if err != nil {
				return nil, fmt.Errorf("create tenant %s: %w", t.Name, err)
			}
			lease = l
			cmps = append(cmps, notExists(rk))
			puts = append(puts, put)
			elses = append(elses, clientv3.OpGet(rk))
		}
		resp, err := s.kv.Txn(ctx).If(cmps...).Then(puts...).Else(elses...).Commit()
		if s.leaseLost(err, lease) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create tenant %s: %w", t.Name, err)
		}
		if resp.Succeeded {
			out := proto.Clone(t).(*vxfabricv1.Tenant)
			out.Revision = resp.Header.Revision
			return out, nil
		}
		cur := first(rangeKVs(resp, 0))
		if requestID != "" {
			if id, rev := requestRecord(first(rangeKVs(resp, 1))); rev != 0 {
				if id != t.Name {
					// The record made another tenant: a mismatch while that tenant exists, a stale
					// record (it goes, and the create goes ahead) once it was deleted.
					other, err := s.kv.Get(ctx, TenantKey(id), clientv3.WithCountOnly())
					if err != nil {
						return nil, fmt.Errorf("create tenant %s: %w", t.Name, err)
					}
					if other.Count > 0 {
						return nil, fmt.Errorf("tenant %s: %w", t.Name, ErrRequestMismatch)
					}
					if err := s.dropStaleRequest(ctx, TenantRequestKey(requestID), rev); err != nil {
						return nil, err
					}
					continue
				}
				if cur != nil {
					return decodeTenant(cur)
				}
				if err := s.dropStaleRequest(ctx, TenantRequestKey(requestID), rev); err != nil {
					return nil, err
				}
				continue
			}
		}
		if cur != nil {
			return nil, fmt.Errorf("tenant %s: %w", t.Name, ErrAlreadyExists)
		}
	}
	return nil, fmt.Errorf("create tenant %s: %w", t.Name, ErrContention)
}

// GetTenant reads a tenant.
func (s *Store) GetTenant(ctx context.Context, name string) (*vxfabricv1.Tenant, error) {
	resp, err := s.kv.Get(ctx, TenantKey(name))
	if err != nil {
		return nil, fmt.Errorf("get tenant %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("tenant %s: %w", name, ErrNotFound)
	}
	return decodeTenant(resp.Kvs[0])
}

// ListTenants reads every tenant, sorted by name.
func (s *Store) ListTenants(ctx context.Context) ([]*vxfabricv1.Tenant, error) {
	resp, err := s.kv.Get(ctx, TenantsPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	out := make([]*vxfabricv1.Tenant, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		t, err := decodeTenant(kv)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// DeleteTenant removes a tenant that has no networks, with its API tokens and the request records of
// its networks and ports. expected, when non-zero, must be the tenant's revision. A token created
// during the delete makes it read the tokens again (see tenantTokens).
func (s *Store) DeleteTenant(ctx context.Context, name string, expected int64) error {
	key := TenantKey(name)
	netPrefix := TenantNetworkNamesPrefix(name)
	for range maxCASRetries {
		tokens, err := s.readTenantTokens(ctx, name)
		if err != nil {
			return err
		}
		cmps := []clientv3.Cmp{exists(key), prefixEmpty(netPrefix)}
		cmps = append(cmps, tokens.cmps()...)
		if expected != 0 {
			cmps = append(cmps, atRevision(key, expected))
		}
		ops := []clientv3.Op{
			clientv3.OpDelete(key),
			// Records of the tenant's deleted networks and ports: none points at a live resource.
			clientv3.OpDelete(TenantRequestsPrefix(KindNetwork, name), clientv3.WithPrefix()),
			clientv3.OpDelete(TenantRequestsPrefix(KindPort, name), clientv3.WithPrefix()),
		}
		resp, err := s.kv.Txn(ctx).If(cmps...).
			Then(append(ops, tokens.deletes()...)...).
			Else(clientv3.OpGet(key), clientv3.OpGet(netPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())).
			Commit()
		if err != nil {
			return fmt.Errorf("delete tenant %s: %w", name, err)
		}
		if resp.Succeeded {
			// The tenant is gone: that is the answer. Tokens beyond the first batch that could not
			// be deleted now authenticate nothing (their tenant's create revision is gone with it)
			// and are not listed; they are left, not reported as a failed delete.
			_ = s.deleteRest(ctx, tokens)
			return nil
		}
		cur := first(rangeKVs(resp, 0))
		switch {
		case cur == nil:
			return fmt.Errorf("tenant %s: %w", name, ErrNotFound)
		case resp.Responses[1].GetResponseRange().Count > 0:
			return fmt.Errorf("tenant %s has %s: %w", name, counted(resp.Responses[1].GetResponseRange().Count, "network"), ErrFailedPrecondition)
		case expected != 0 && cur.ModRevision != expected:
			return fmt.Errorf("tenant %s is at revision %d, not %d: %w", name, cur.ModRevision, expected, ErrStale)
		}
	}
	return fmt.Errorf("delete tenant %s: %w", name, ErrContention)
}

// ---- networks ----

func decodeNetwork(kv *mvccpb.KeyValue) (*vxfabricv1.Network, error) {
	n := &vxfabricv1.Network{}
	if err := proto.Unmarshal(kv.Value, n); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	n.Revision = kv.ModRevision
	return n, nil
}

// CreateNetwork writes, in ONE transaction, the network, its name index, its VNI allocation, its
// uplink index key (bridged) and the request record. Because the allocation and the resource that
// references it are written (and later deleted) together, a crash never leaves a VNI allocated
// without a network: no repair pass is needed.
//
// The transaction fails unless the tenant exists and the name, the VNI, the id and (bridged) the
// uplink are free (see uplinkGuard). Errors: ErrNotFound (tenant), ErrAlreadyExists (name),
// ErrVNITaken, ErrIDTaken, ErrRequestMismatch, ErrFailedPrecondition (uplink). With a request id that
// already made a network, that network is returned and nothing is written.
//
// nodesRev, when non-zero, is the revision at which the caller read the node records to check the
// network against them (ListNodes): the transaction then also requires that no node record was
// written after it (NodesUnchangedSince), and fails with ErrNodesChanged otherwise, so that a check
// against node records and the create are one atomic step without reading the nodes per create.
func (s *Store) CreateNetwork(ctx context.Context, n *vxfabricv1.Network, requestID string, nodesRev int64) (*vxfabricv1.Network, error) {
	stored := n
	if n.Revision != 0 { // the revision is not stored
		stored = proto.Clone(n).(*vxfabricv1.Network)
		stored.Revision = 0
	}
	value := marshal(stored)
	key, nameKey, vniKey := NetworkKey(n.Id), NetworkNameKey(n.Tenant, n.Name), VNIKey(n.Vni)
	var rk string
	if requestID != "" {
		rk = RequestKey(KindNetwork, n.Tenant, requestID)
	}
	for range maxCASRetries {
		cmps := make([]clientv3.Cmp, 0, 8)
		cmps = append(cmps, exists(TenantKey(n.Tenant)), notExists(nameKey), notExists(vniKey), notExists(key))
		puts := make([]clientv3.Op, 0, 5)
		puts = append(puts, clientv3.OpPut(key, value), clientv3.OpPut(nameKey, n.Id), clientv3.OpPut(vniKey, n.Id))
		var uplink *uplinkGuard
		if n.Uplink != nil {
			var err error
			if uplink, err = s.readUplinkGuard(ctx, n); err != nil {
				return nil, err
			}
			cmps = append(cmps, uplink.cmps()...)
			puts = append(puts, clientv3.OpPut(uplink.key, n.Id))
		}
		var lease clientv3.LeaseID
		if rk != "" {
			put, l, err := s.requestPut(ctx, rk, n.Id)
			if err != nil {
				return nil, fmt.Errorf("create network %s/%s: %w", n.Tenant, n.Name, err)
			}
			lease = l
			cmps = append(cmps, notExists(rk))
			puts = append(puts, put)
		}
		if nodesRev != 0 {
			cmps = append(cmps, NodesUnchangedSince(nodesRev))
		}
		resp, err := s.creates.commit(ctx, cmps, puts)
		if s.leaseLost(err, lease) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create network %s/%s: %w", n.Tenant, n.Name, err)
		}
		if resp.Succeeded {
			out := proto.Clone(stored).(*vxfabricv1.Network)
			out.Revision = resp.Header.Revision
			return out, nil
		}
		// Why it failed: these reads run after the failure, not as an else branch, which would ride in
		// the raft entry (and be encoded and decoded along the way) of every successful create. A
		// state that changed back in between finds nothing and tries again below.
		reads := []clientv3.Op{
			clientv3.OpGet(TenantKey(n.Tenant), clientv3.WithKeysOnly()),
			clientv3.OpGet(nameKey), clientv3.OpGet(vniKey), clientv3.OpGet(key, clientv3.WithKeysOnly()),
		}
		if rk != "" {
			reads = append(reads, clientv3.OpGet(rk))
		}
		uplinkRead := len(reads)
		if uplink != nil {
			reads = append(reads, clientv3.OpGet(uplink.key))
		}
		if nodesRev != 0 {
			reads = append(reads, nodesWrittenAfter(nodesRev))
		}
		if resp, err = s.kv.Txn(ctx).Then(reads...).Commit(); err != nil {
			return nil, fmt.Errorf("create network %s/%s: %w", n.Tenant, n.Name, err)
		}
		if requestID != "" {
			if id, rev := requestRecord(first(rangeKVs(resp, 4))); rev != 0 {
				prev, err := s.GetNetworkByID(ctx, id)
				if errors.Is(err, ErrNotFound) {
					if err := s.dropStaleRequest(ctx, rk, rev); err != nil {
						return nil, err
					}
					continue
				}
				if err != nil {
					return nil, err
				}
				if !sameNetwork(prev, n) {
					return nil, fmt.Errorf("network %s/%s: %w", n.Tenant, n.Name, ErrRequestMismatch)
				}
				return prev, nil
			}
		}
		switch {
		case len(rangeKVs(resp, 0)) == 0:
			return nil, fmt.Errorf("tenant %s: %w", n.Tenant, ErrNotFound)
		case len(rangeKVs(resp, 1)) > 0:
			return nil, fmt.Errorf("network %s/%s: %w", n.Tenant, n.Name, ErrAlreadyExists)
		case len(rangeKVs(resp, 3)) > 0:
			return nil, fmt.Errorf("network id %s: %w", n.Id, ErrIDTaken)
		case len(rangeKVs(resp, 2)) > 0:
			return nil, fmt.Errorf("vni %d: %w", n.Vni, ErrVNITaken)
		case uplink != nil && len(rangeKVs(resp, uplinkRead)) > 0:
			if err := s.uplinkConflict(ctx, n, rangeKVs(resp, uplinkRead)[0].Value); err != nil {
				return nil, err
			}
		case nodesRev != 0 && len(rangeKVs(resp, len(resp.Responses)-1)) > 0:
			return nil, fmt.Errorf("network %s/%s: checked against the nodes at revision %d: %w", n.Tenant, n.Name, nodesRev, ErrNodesChanged)
		}
		// Everything compared has changed back in between: try again.
	}
	return nil, fmt.Errorf("create network %s/%s: %w", n.Tenant, n.Name, ErrContention)
}

// GetNetworkByID reads a network by id.
func (s *Store) GetNetworkByID(ctx context.Context, id string) (*vxfabricv1.Network, error) {
	resp, err := s.kv.Get(ctx, NetworkKey(id))
	if err != nil {
		return nil, fmt.Errorf("get network %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("network %s: %w", id, ErrNotFound)
	}
	return decodeNetwork(resp.Kvs[0])
}

// GetNetwork reads a network by tenant and name. ErrNotFound names the tenant when it is the tenant
// that is missing.
func (s *Store) GetNetwork(ctx context.Context, tenant, name string) (*vxfabricv1.Network, error) {
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(TenantKey(tenant), clientv3.WithKeysOnly()),
		clientv3.OpGet(NetworkNameKey(tenant, name)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("get network %s/%s: %w", tenant, name, err)
	}
	if len(rangeKVs(resp, 0)) == 0 {
		return nil, fmt.Errorf("tenant %s: %w", tenant, ErrNotFound)
	}
	idKV := first(rangeKVs(resp, 1))
	if idKV == nil {
		return nil, fmt.Errorf("network %s/%s: %w", tenant, name, ErrNotFound)
	}
	n, err := s.GetNetworkByID(ctx, string(idKV.Value))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("network %s/%s: %w", tenant, name, ErrNotFound)
	}
	return n, err
}

// ListNetworks reads the networks of one tenant (every tenant's when tenant is empty), sorted by
// tenant and name.
func (s *Store) ListNetworks(ctx context.Context, tenant string) ([]*vxfabricv1.Network, error) {
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(TenantKey(tenant), clientv3.WithKeysOnly()),
		clientv3.OpGet(NetworksPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	if tenant != "" && len(rangeKVs(resp, 0)) == 0 {
		return nil, fmt.Errorf("tenant %s: %w", tenant, ErrNotFound)
	}
	var out []*vxfabricv1.Network
	for _, kv := range rangeKVs(resp, 1) {
		n, err := decodeNetwork(kv)
		if err != nil {
			return nil, err
		}
		if tenant == "" || n.Tenant == tenant {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tenant != out[j].Tenant {
			return out[i].Tenant < out[j].Tenant
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// UpdateNetwork applies mutate to a network and writes it back unless it changed in between. With
// expected non-zero, the network must be at that revision (ErrStale otherwise); with expected zero the
// read-modify-write is retried on a concurrent change. mutate must not change id, tenant, name, VNI
// or uplink (their index keys are written only by create and delete).
func (s *Store) UpdateNetwork(ctx context.Context, tenant, name string, expected int64, mutate func(*vxfabricv1.Network) error) (*vxfabricv1.Network, error) {
	for attempt := range maxCASRetries {
		n, err := s.GetNetwork(ctx, tenant, name)
		if err != nil {
			return nil, err
		}
		if expected != 0 && n.Revision != expected {
			return nil, fmt.Errorf("network %s/%s is at revision %d, not %d: %w", tenant, name, n.Revision, expected, ErrStale)
		}
		read, before := n.Revision, proto.Clone(n)
		if err := mutate(n); err != nil {
			return nil, err
		}
		if proto.Equal(before, n) {
			return n, nil // nothing to write: no new revision, no delta for the agents
		}
		n.Revision = 0
		key := NetworkKey(n.Id)
		resp, err := s.kv.Txn(ctx).If(atRevision(key, read)).Then(clientv3.OpPut(key, marshal(n))).Commit()
		if err != nil {
			return nil, fmt.Errorf("update network %s/%s: %w", tenant, name, err)
		}
		if resp.Succeeded {
			n.Revision = resp.Header.Revision
			return n, nil
		}
		// Changed or gone since the read: the next read tells a stale expected revision from a
		// network deleted meanwhile.
		if err := contentionPause(ctx, attempt); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("update network %s/%s: %w", tenant, name, ErrContention)
}

// DeleteNetwork removes a network without ports, its name index, its VNI allocation and its uplink
// index key in one transaction. A network has ports exactly while it has address allocations (every port holds one).
func (s *Store) DeleteNetwork(ctx context.Context, tenant, name string, expected int64) error {
	for range maxCASRetries {
		n, err := s.GetNetwork(ctx, tenant, name)
		if err != nil {
			return err
		}
		if expected != 0 && n.Revision != expected {
			return fmt.Errorf("network %s/%s is at revision %d, not %d: %w", tenant, name, n.Revision, expected, ErrStale)
		}
		key := NetworkKey(n.Id)
		ipPrefix := NetworkIPPrefix(n.Id)
		resp, err := s.kv.Txn(ctx).
			If(atRevision(key, n.Revision), prefixEmpty(ipPrefix), prefixEmpty(NetworkMACPrefix(n.Id))).
			Then(append([]clientv3.Op{
				clientv3.OpDelete(key),
				clientv3.OpDelete(NetworkNameKey(tenant, name)),
				clientv3.OpDelete(VNIKey(n.Vni)),
			}, uplinkRelease(n)...)...).
			Else(clientv3.OpGet(ipPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())).
			Commit()
		if err != nil {
			return fmt.Errorf("delete network %s/%s: %w", tenant, name, err)
		}
		if resp.Succeeded {
			return nil
		}
		if c := resp.Responses[0].GetResponseRange().Count; c > 0 {
			return fmt.Errorf("network %s/%s has %s: %w", tenant, name, counted(c, "port"), ErrFailedPrecondition)
		}
		// Changed or gone since the read: read again, which tells a stale expected revision
		// (ErrStale) from a network deleted meanwhile (ErrNotFound).
	}
	return fmt.Errorf("delete network %s/%s: %w", tenant, name, ErrContention)
}

// TakenVNIs lists the allocated VNIs in [first, last], ascending.
func (s *Store) TakenVNIs(ctx context.Context, first, last uint32) ([]uint32, error) {
	resp, err := s.kv.Get(ctx, VNIKey(first), clientv3.WithRange(VNIKey(last+1)), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list vnis %d-%d: %w", first, last, err)
	}
	out := make([]uint32, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), VNIPrefix), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("decode vni key %s: %w", kv.Key, err)
		}
		out = append(out, uint32(v))
	}
	return out, nil
}

// TakenIPs lists the allocated addresses of a network, in no particular order.
func (s *Store) TakenIPs(ctx context.Context, networkID string) ([]netip.Addr, error) {
	p := NetworkIPPrefix(networkID)
	resp, err := s.kv.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list addresses of network %s: %w", networkID, err)
	}
	out := make([]netip.Addr, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		a, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), p))
		if err != nil {
			return nil, fmt.Errorf("decode address key %s: %w", kv.Key, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// requestTarget returns the resource id a request record of tenant points at, or "" when there is
// no record. A record of the version before request ids were scoped by tenant (<kind>/<id>) is
// read too, so that a retry across the upgrade still finds what its first attempt made; legacy
// tells the caller to take it only for a resource of the same tenant.
func (s *Store) requestTarget(ctx context.Context, kind, tenant, requestID string) (id string, legacy bool, err error) {
	if requestID == "" {
		return "", false, nil
	}
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(RequestKey(kind, tenant, requestID)),
		clientv3.OpGet(RequestsPrefix+kind+"/"+requestID),
	).Commit()
	if err != nil {
		return "", false, fmt.Errorf("read %s request %q of tenant %s: %w", kind, requestID, tenant, err)
	}
	if kvs := rangeKVs(resp, 0); len(kvs) > 0 {
		return string(kvs[0].Value), false, nil
	}
	if kvs := rangeKVs(resp, 1); len(kvs) > 0 {
		return string(kvs[0].Value), true, nil
	}
	return "", false, nil
}

// NetworkForRequest returns the live network an earlier create with this request id made (nil when
// none), so that a retry returns it before anything is allocated. A request id used for another
// tenant or name gives ErrRequestMismatch.
func (s *Store) NetworkForRequest(ctx context.Context, requestID string, n *vxfabricv1.Network) (*vxfabricv1.Network, error) {
	tenant := n.Tenant
	id, legacy, err := s.requestTarget(ctx, KindNetwork, tenant, requestID)
	if id == "" || err != nil {
		return nil, err
	}
	prev, err := s.GetNetworkByID(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, nil // deleted since: the create goes ahead and replaces the stale record
	case err != nil:
		return nil, err
	case legacy && prev.Tenant != tenant:
		return nil, nil // another tenant's, from before ids were scoped: not this one's business
	case !sameNetwork(prev, n):
		return nil, fmt.Errorf("network %s: %w", networkName(n), ErrRequestMismatch)
	}
	return prev, nil
}

// sameNetwork reports whether a create of n with the request id that made prev can be its retry:
// the same tenant, name, CIDR, mode, gateway, uplink and allocation pool, which no update changes. The MTU is left
// out (UpdateNetwork changes it, and its default depends on the replica's --underlay-mtu), and so
// are the VNI and id the allocator may have picked.
func sameNetwork(prev, n *vxfabricv1.Network) bool {
	return prev.Tenant == n.Tenant && prev.Name == n.Name && prev.Cidr == n.Cidr && prev.Mode == n.Mode &&
		prev.Gateway == n.Gateway && proto.Equal(prev.Uplink, n.Uplink) && prev.AllocationPool == n.AllocationPool
}

// samePort is sameNetwork for ports: the same tenant, name, network and vm. The node is left out (a
// move changes it), and so are the address and MAC the allocator may have picked.
func samePort(prev, p *vxfabricv1.Port) bool {
	return prev.Tenant == p.Tenant && prev.Name == p.Name && prev.Network == p.Network && prev.Vm == p.Vm
}

// PortForRequest is NetworkForRequest for ports.
func (s *Store) PortForRequest(ctx context.Context, requestID string, port *vxfabricv1.Port) (*vxfabricv1.Port, error) {
	tenant := port.Tenant
	id, legacy, err := s.requestTarget(ctx, KindPort, tenant, requestID)
	if id == "" || err != nil {
		return nil, err
	}
	p, err := s.GetPortByID(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	case legacy && p.Tenant != tenant:
		return nil, nil
	case !samePort(p, port):
		return nil, fmt.Errorf("port %s/%s: %w", tenant, port.Name, ErrRequestMismatch)
	}
	return p, nil
}

// contentionPause waits a little before the next attempt of a transaction that lost to concurrent
// writes (5 ms, doubling, at most 200 ms, with jitter), so that a steady stream of them, such as
// port creates while a node is deleted, does not exhaust the attempts at once.
func contentionPause(ctx context.Context, attempt int) error {
	d := min(5*time.Millisecond<<attempt, 200*time.Millisecond)
	d = d/2 + rand.N(d/2+1)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// counted is "1 port", "2 ports": n things, for a message.
func counted[N int | int64](n N, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
