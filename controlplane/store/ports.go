package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

func decodePort(kv *mvccpb.KeyValue) (*vxfabricv1.Port, error) {
	p := &vxfabricv1.Port{}
	if err := proto.Unmarshal(kv.Value, p); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	p.Revision = kv.ModRevision
	return p, nil
}

// portAllocKeys returns the address and MAC allocation keys of a port.
func portAllocKeys(p *vxfabricv1.Port) (ipKey, macKey string, err error) {
	ip, err := netip.ParseAddr(p.Ip)
	if err != nil {
		return "", "", fmt.Errorf("port %s/%s address %q: %w", p.Tenant, p.Name, p.Ip, ErrInvalidArgument)
	}
	return IPKey(p.NetworkId, ip), MACKey(p.NetworkId, strings.ToLower(p.Mac)), nil
}

// CreatePort writes, in ONE transaction, the port, its name index, its address and MAC allocations and
// the request record. As with networks, allocations live and die with the resource that references
// them, so a crash between steps cannot leak one and no repair pass is needed.
//
// The transaction fails unless the network (p.NetworkId) exists and the name, address, MAC and id are
// free, and (nat and routed networks) the node takes part in no other nat or routed network with an
// overlapping CIDR (see gatewayGuard; the port's node-cidr index key is written with it). Errors:
// ErrNotFound (network), ErrAlreadyExists (name), ErrIPTaken, ErrMACTaken, ErrIDTaken,
// ErrRequestMismatch, ErrFailedPrecondition (overlap). With a request id that already made a port,
// that port is returned.
func (s *Store) CreatePort(ctx context.Context, p *vxfabricv1.Port, requestID string) (*vxfabricv1.Port, error) {
	stored := proto.Clone(p).(*vxfabricv1.Port)
	stored.Revision, stored.Plugged = 0, false
	ipKey, macKey, err := portAllocKeys(p)
	if err != nil {
		return nil, err
	}
	key, nameKey, netKey := PortKey(p.Id), PortNameKey(p.Tenant, p.Name), NetworkKey(p.NetworkId)
	for attempt := range maxCASRetries {
		guard, err := s.readGatewayGuard(ctx, p.NetworkId, p.Node)
		if err != nil {
			return nil, err
		}
		cmps := []clientv3.Cmp{exists(netKey), notExists(nameKey), notExists(ipKey), notExists(macKey), notExists(key)}
		cmps = append(cmps, guard.cmps()...)
		puts := []clientv3.Op{
			clientv3.OpPut(key, marshal(stored)),
			clientv3.OpPut(nameKey, p.Id),
			clientv3.OpPut(ipKey, p.Id),
			clientv3.OpPut(macKey, p.Id),
		}
		puts = append(puts, guard.put(p.Id)...)
		var lease clientv3.LeaseID
		if requestID != "" {
			rk := RequestKey(KindPort, p.Tenant, requestID)
			put, l, err := s.requestPut(ctx, rk, p.Id)
			if err != nil {
				return nil, fmt.Errorf("create port %s/%s: %w", p.Tenant, p.Name, err)
			}
			lease = l
			cmps = append(cmps, notExists(rk))
			puts = append(puts, put)
		}
		resp, err := s.creates.commit(ctx, cmps, puts)
		if s.leaseLost(err, lease) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create port %s/%s: %w", p.Tenant, p.Name, err)
		}
		if resp.Succeeded {
			out := proto.Clone(stored).(*vxfabricv1.Port)
			out.Revision = resp.Header.Revision
			return out, nil
		}
		// Why it failed, read after the failure as for networks (see CreateNetwork).
		reads := []clientv3.Op{
			clientv3.OpGet(netKey, clientv3.WithKeysOnly()),
			clientv3.OpGet(nameKey, clientv3.WithKeysOnly()),
			clientv3.OpGet(ipKey, clientv3.WithKeysOnly()),
			clientv3.OpGet(macKey, clientv3.WithKeysOnly()),
			clientv3.OpGet(key, clientv3.WithKeysOnly()),
		}
		if requestID != "" {
			reads = append(reads, clientv3.OpGet(RequestKey(KindPort, p.Tenant, requestID)))
		}
		if resp, err = s.kv.Txn(ctx).Then(reads...).Commit(); err != nil {
			return nil, fmt.Errorf("create port %s/%s: %w", p.Tenant, p.Name, err)
		}
		if requestID != "" {
			if id, rev := requestRecord(first(rangeKVs(resp, 5))); rev != 0 {
				prev, err := s.GetPortByID(ctx, id)
				if errors.Is(err, ErrNotFound) {
					if err := s.dropStaleRequest(ctx, RequestKey(KindPort, p.Tenant, requestID), rev); err != nil {
						return nil, err
					}
					continue
				}
				if err != nil {
					return nil, err
				}
				if !samePort(prev, p) {
					return nil, fmt.Errorf("port %s/%s: %w", p.Tenant, p.Name, ErrRequestMismatch)
				}
				return prev, nil
			}
		}
		switch {
		case len(rangeKVs(resp, 0)) == 0:
			return nil, fmt.Errorf("network %s/%s: %w", p.Tenant, p.Network, ErrNotFound)
		case len(rangeKVs(resp, 1)) > 0:
			return nil, fmt.Errorf("port %s/%s: %w", p.Tenant, p.Name, ErrAlreadyExists)
		case len(rangeKVs(resp, 4)) > 0:
			return nil, fmt.Errorf("port id %s: %w", p.Id, ErrIDTaken)
		case len(rangeKVs(resp, 2)) > 0:
			return nil, fmt.Errorf("address %s in network %s/%s: %w", p.Ip, p.Tenant, p.Network, ErrIPTaken)
		case len(rangeKVs(resp, 3)) > 0:
			return nil, fmt.Errorf("mac %s in network %s/%s: %w", p.Mac, p.Tenant, p.Network, ErrMACTaken)
		}
		// Another bind on the node since the guard's read: read again (which refuses an overlap).
		if err := contentionPause(ctx, attempt); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("create port %s/%s: %w", p.Tenant, p.Name, ErrContention)
}

// GetPortByID reads a port by id, with its plugged state.
func (s *Store) GetPortByID(ctx context.Context, id string) (*vxfabricv1.Port, error) {
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(PortKey(id)),
		clientv3.OpGet(PortStatusKey(id)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("get port %s: %w", id, err)
	}
	kv := first(rangeKVs(resp, 0))
	if kv == nil {
		return nil, fmt.Errorf("port %s: %w", id, ErrNotFound)
	}
	p, err := decodePort(kv)
	if err != nil {
		return nil, err
	}
	p.Plugged = len(rangeKVs(resp, 1)) > 0
	return p, nil
}

// GetPort reads a port by tenant and name.
func (s *Store) GetPort(ctx context.Context, tenant, name string) (*vxfabricv1.Port, error) {
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(TenantKey(tenant), clientv3.WithKeysOnly()),
		clientv3.OpGet(PortNameKey(tenant, name)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("get port %s/%s: %w", tenant, name, err)
	}
	if len(rangeKVs(resp, 0)) == 0 {
		return nil, fmt.Errorf("tenant %s: %w", tenant, ErrNotFound)
	}
	idKV := first(rangeKVs(resp, 1))
	if idKV == nil {
		return nil, fmt.Errorf("port %s/%s: %w", tenant, name, ErrNotFound)
	}
	p, err := s.GetPortByID(ctx, string(idKV.Value))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("port %s/%s: %w", tenant, name, ErrNotFound)
	}
	return p, err
}

// PortFilter selects ports; an empty field matches everything. Network is a network name.
type PortFilter struct {
	Tenant, Network, Node, VM string
}

func (f PortFilter) match(p *vxfabricv1.Port) bool {
	return (f.Tenant == "" || p.Tenant == f.Tenant) &&
		(f.Network == "" || p.Network == f.Network) &&
		(f.Node == "" || p.Node == f.Node) &&
		(f.VM == "" || p.Vm == f.VM)
}

// ListPorts reads the ports matching f, with their plugged state, sorted by tenant and name. A filter
// naming a tenant that does not exist gives ErrNotFound, and so does a network name unknown in the
// filter's tenant (in every tenant when the filter names none).
func (s *Store) ListPorts(ctx context.Context, f PortFilter) ([]*vxfabricv1.Port, error) {
	ops := []clientv3.Op{
		clientv3.OpGet(TenantKey(f.Tenant), clientv3.WithKeysOnly()),
		clientv3.OpGet(PortsPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(PortStatusPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	}
	switch {
	case f.Network != "" && f.Tenant != "":
		ops = append(ops, clientv3.OpGet(NetworkNameKey(f.Tenant, f.Network), clientv3.WithKeysOnly()))
	case f.Network != "":
		ops = append(ops, clientv3.OpGet(NetworkNamesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()))
	}
	resp, err := s.kv.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	if f.Tenant != "" && len(rangeKVs(resp, 0)) == 0 {
		return nil, fmt.Errorf("tenant %s: %w", f.Tenant, ErrNotFound)
	}
	if f.Network != "" && !hasNetworkName(rangeKVs(resp, 3), f.Network) {
		if f.Tenant != "" {
			return nil, fmt.Errorf("network %s/%s: %w", f.Tenant, f.Network, ErrNotFound)
		}
		return nil, fmt.Errorf("network %s in any tenant: %w", f.Network, ErrNotFound)
	}
	plugged := make(map[string]bool, len(rangeKVs(resp, 2)))
	for _, kv := range rangeKVs(resp, 2) {
		plugged[strings.TrimPrefix(string(kv.Key), PortStatusPrefix)] = true
	}
	var out []*vxfabricv1.Port
	for _, kv := range rangeKVs(resp, 1) {
		p, err := decodePort(kv)
		if err != nil {
			return nil, err
		}
		if f.match(p) {
			p.Plugged = plugged[p.Id]
			out = append(out, p)
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

// hasNetworkName tells whether name-index keys (names/networks/<tenant>/<name>) hold the name.
func hasNetworkName(kvs []*mvccpb.KeyValue, name string) bool {
	for _, kv := range kvs {
		if strings.HasSuffix(string(kv.Key), "/"+name) {
			return true
		}
	}
	return false
}

// UpdatePort applies mutate to a port and writes it back, as UpdateNetwork does. mutate may change
// only the node: id, network, MAC, address and interface name are fixed for the port's life. A move
// to another node is checked and indexed as CreatePort does (ErrFailedPrecondition on a gateway
// overlap there), and clears the port's plugged status, which the old node's agent reported.
func (s *Store) UpdatePort(ctx context.Context, tenant, name string, expected int64, mutate func(*vxfabricv1.Port) error) (*vxfabricv1.Port, error) {
	for attempt := range maxCASRetries {
		p, err := s.GetPort(ctx, tenant, name)
		if err != nil {
			return nil, err
		}
		if expected != 0 && p.Revision != expected {
			return nil, fmt.Errorf("port %s/%s is at revision %d, not %d: %w", tenant, name, p.Revision, expected, ErrStale)
		}
		read, plugged, before := p.Revision, p.Plugged, proto.Clone(p)
		if err := mutate(p); err != nil {
			return nil, err
		}
		if proto.Equal(before, p) {
			return p, nil // nothing to write: no new revision, no delta for the agents
		}
		p.Revision, p.Plugged = 0, false
		key := PortKey(p.Id)
		cmps := []clientv3.Cmp{atRevision(key, read)}
		ops := []clientv3.Op{clientv3.OpPut(key, marshal(p))}
		guard := &gatewayGuard{}
		if oldNode := before.(*vxfabricv1.Port).Node; p.Node != oldNode {
			// A move binds the port to another node: the same gateway check as a create. The port is
			// plugged on the new node only once that node's agent says so.
			if guard, err = s.readGatewayGuard(ctx, p.NetworkId, p.Node); err != nil {
				return nil, err
			}
			cmps = append(cmps, guard.cmps()...)
			ops = append(ops, clientv3.OpDelete(NodeCIDRKey(oldNode, p.NetworkId, p.Id)))
			ops = append(ops, guard.put(p.Id)...)
			ops = append(ops, clientv3.OpDelete(PortStatusKey(p.Id)))
			plugged = false
		}
		resp, err := s.kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("update port %s/%s: %w", tenant, name, err)
		}
		if resp.Succeeded {
			p.Revision, p.Plugged = resp.Header.Revision, plugged
			return p, nil
		}
		// The port changed, or (a move) another bind on the new node since the guard's read: read
		// again, which tells a stale expected revision from a port still as expected, and refuses an
		// overlap.
		if err := contentionPause(ctx, attempt); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("update port %s/%s: %w", tenant, name, ErrContention)
}

// DeletePort removes a port with its name index, allocations, plugged status and node-cidr index key
// in one transaction.
func (s *Store) DeletePort(ctx context.Context, tenant, name string, expected int64) error {
	for range maxCASRetries {
		p, err := s.GetPort(ctx, tenant, name)
		if err != nil {
			return err
		}
		if expected != 0 && p.Revision != expected {
			return fmt.Errorf("port %s/%s is at revision %d, not %d: %w", tenant, name, p.Revision, expected, ErrStale)
		}
		ipKey, macKey, err := portAllocKeys(p)
		if err != nil {
			return err
		}
		key := PortKey(p.Id)
		resp, err := s.kv.Txn(ctx).If(atRevision(key, p.Revision)).Then(
			clientv3.OpDelete(key),
			clientv3.OpDelete(PortNameKey(tenant, name)),
			clientv3.OpDelete(ipKey),
			clientv3.OpDelete(macKey),
			clientv3.OpDelete(PortStatusKey(p.Id)),
			clientv3.OpDelete(NodeCIDRKey(p.Node, p.NetworkId, p.Id)),
		).Commit()
		if err != nil {
			return fmt.Errorf("delete port %s/%s: %w", tenant, name, err)
		}
		if resp.Succeeded {
			return nil
		}
		// Changed or gone since the read: read again, which tells a stale expected revision
		// (ErrStale) from a port deleted meanwhile (ErrNotFound).
	}
	return fmt.Errorf("delete port %s/%s: %w", tenant, name, ErrContention)
}

// SetPortPlugged records (or clears) that a port's agent has plugged it. Recording a port that no
// longer exists is refused (ErrNotFound), so no status outlives its port.
func (s *Store) SetPortPlugged(ctx context.Context, id string, plugged bool) error {
	key := PortStatusKey(id)
	if !plugged {
		if _, err := s.kv.Delete(ctx, key); err != nil {
			return fmt.Errorf("clear plugged status of port %s: %w", id, err)
		}
		return nil
	}
	resp, err := s.kv.Txn(ctx).If(exists(PortKey(id))).Then(clientv3.OpPut(key, "1")).Commit()
	if err != nil {
		return fmt.Errorf("set plugged status of port %s: %w", id, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("port %s: %w", id, ErrNotFound)
	}
	return nil
}
