package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Request records expire: within the retention a retry returns the created resource; after it the
// record is gone from etcd (etcd deleted it with its lease) and a retry is a new create.
func TestRequestRecordsExpire(t *testing.T) {
	s, cli := newTestStore(t)
	const retention = 2 * time.Second
	s.ExpireRequests(cli, retention)
	ctx := testCtx(t)

	if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, "req-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "other"}, "req-2"); err != nil {
		t.Fatal(err)
	}
	got, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, "req-1")
	if err != nil || got.GetName() != "acme" {
		t.Fatalf("retry within the retention: %v, %v; want the tenant", got, err)
	}
	resp, err := cli.Get(ctx, TenantRequestKey("req-1"))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("request record: %v, %v; want one key on a lease", resp.Kvs, err)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL < int64(retention/time.Second) {
		t.Fatalf("lease granted for %d s (%v), want at least the retention %s", ttl.GrantedTTL, err, retention)
	}

	deadline := time.Now().Add(time.Duration(ttl.GrantedTTL)*time.Second + 10*time.Second)
	for {
		resp, err := cli.Get(ctx, RequestsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Count == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d request records left %d s after their lease's TTL", resp.Count, 10)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := s.GetTenant(ctx, "acme"); err != nil {
		t.Fatalf("the tenant went with its request record: %v", err)
	}
	if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, "req-1"); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("retry after the retention: %v, want AlreadyExists (the record is gone, the name is taken)", err)
	}
	// A create after expiry grants a new lease for its record.
	if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "late"}, "req-3"); err != nil {
		t.Fatal(err)
	}
}

// A lease revoked under the store (an operator, or a clock jump) costs one retry, not a failed create.
func TestRequestRecordLeaseLost(t *testing.T) {
	s, cli := newTestStore(t)
	s.ExpireRequests(cli, time.Hour)
	ctx := testCtx(t)
	if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "a"}, "r-a"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, TenantRequestKey("r-a"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("request record: %v, %v", resp, err)
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"b", "c"} {
		if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: name}, "r-"+name); err != nil {
			t.Fatalf("create %s after its lease was revoked: %v", name, err)
		}
	}
	if _, err := s.CreateNetwork(ctx, &vxfabricv1.Network{Id: "n1", Tenant: "b", Name: "n", Vni: 4242, Cidr: "10.9.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}, "r-n", 0); err != nil {
		t.Fatalf("network create: %v", err)
	}
}

// Records share leases, one per slice of the retention: twenty creates in a row (which may straddle
// one slice boundary) use at most two.
func TestRequestRecordsShareLeases(t *testing.T) {
	s, cli := newTestStore(t)
	s.ExpireRequests(cli, time.Hour)
	ctx := testCtx(t)
	for i := range 20 {
		if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: fmt.Sprintf("t%d", i)}, fmt.Sprintf("r%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Get(ctx, RequestsPrefix, clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 20 {
		t.Fatalf("request records: %d, %v; want 20", len(resp.Kvs), err)
	}
	leases := map[int64]bool{}
	for _, kv := range resp.Kvs {
		leases[kv.Lease] = true
	}
	if len(leases) > 2 || leases[0] {
		t.Fatalf("20 records on %d leases %v, want one or two and none without", len(leases), leases)
	}
}

// Request ids are the tenant's own: tenant beta's create with the id alpha used makes beta's
// resource (it is neither refused nor told that alpha used the id), a retry of each returns its own
// resource, and deleting a tenant deletes its records, only its.
func TestRequestIDsAreScopedByTenant(t *testing.T) {
	s, cli := newTestStore(t)
	ctx := testCtx(t)
	nets := map[string]*vxfabricv1.Network{}
	ports := map[string]*vxfabricv1.Port{}
	for i, tenant := range []string{"alpha", "beta"} {
		if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: tenant}, ""); err != nil {
			t.Fatal(err)
		}
		n := &vxfabricv1.Network{Id: fmt.Sprintf("%010d", i), Tenant: tenant, Name: "net-" + tenant, Vni: uint32(100 + i),
			Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
		created, err := s.CreateNetwork(ctx, n, "same-id", 0)
		if err != nil {
			t.Fatalf("tenant %s: create network with request id same-id: %v", tenant, err)
		}
		nets[tenant] = created
		p := &vxfabricv1.Port{Id: fmt.Sprintf("%010d", 10+i), Tenant: tenant, Network: n.Name, NetworkId: n.Id,
			Name: "port-" + tenant, Node: "h1", Ip: "10.0.0.2", Mac: "0e:00:00:00:00:01"}
		if ports[tenant], err = s.CreatePort(ctx, p, "same-id"); err != nil {
			t.Fatalf("tenant %s: create port with request id same-id: %v", tenant, err)
		}
	}
	for _, tenant := range []string{"alpha", "beta"} {
		n, err := s.NetworkForRequest(ctx, "same-id", nets[tenant])
		if err != nil || n.GetId() != nets[tenant].Id {
			t.Errorf("tenant %s: network of request same-id: %v, %v; want %s", tenant, n, err, nets[tenant].Id)
		}
		p, err := s.PortForRequest(ctx, "same-id", ports[tenant])
		if err != nil || p.GetId() != ports[tenant].Id {
			t.Errorf("tenant %s: port of request same-id: %v, %v; want %s", tenant, p, err, ports[tenant].Id)
		}
		retry := proto.Clone(nets[tenant]).(*vxfabricv1.Network)
		retry.Id, retry.Vni = "ffffffffff", 999
		again, err := s.CreateNetwork(ctx, retry, "same-id", 0)
		if err != nil || again.Id != nets[tenant].Id {
			t.Errorf("tenant %s: retry of request same-id: %v, %v; want network %s", tenant, again, err, nets[tenant].Id)
		}
		// The same request id with another body is not a retry.
		other := proto.Clone(retry).(*vxfabricv1.Network)
		other.Cidr = "10.99.0.0/16"
		if _, err := s.CreateNetwork(ctx, other, "same-id", 0); !errors.Is(err, ErrRequestMismatch) {
			t.Errorf("tenant %s: request same-id with another CIDR: %v, want ErrRequestMismatch", tenant, err)
		}
		if _, err := s.NetworkForRequest(ctx, "same-id", other); !errors.Is(err, ErrRequestMismatch) {
			t.Errorf("tenant %s: network of request same-id with another CIDR: %v, want ErrRequestMismatch", tenant, err)
		}
		elsewhere := proto.Clone(ports[tenant]).(*vxfabricv1.Port)
		elsewhere.Id, elsewhere.Vm = "fffffffffe", "other-vm"
		if _, err := s.CreatePort(ctx, elsewhere, "same-id"); !errors.Is(err, ErrRequestMismatch) {
			t.Errorf("tenant %s: request same-id for a port of another vm: %v, want ErrRequestMismatch", tenant, err)
		}
		// A retry after the resource was updated (MTU changed, port moved) is still a retry.
		if _, err := s.UpdateNetwork(ctx, tenant, nets[tenant].Name, 0, func(n *vxfabricv1.Network) error { n.Mtu = 1400; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := s.UpdatePort(ctx, tenant, ports[tenant].Name, 0, func(p *vxfabricv1.Port) error { p.Node = "h2"; return nil }); err != nil {
			t.Fatal(err)
		}
		if again, err := s.CreateNetwork(ctx, retry, "same-id", 0); err != nil || again.Id != nets[tenant].Id {
			t.Errorf("tenant %s: retry of request same-id after an MTU update: %v, %v", tenant, again, err)
		}
		retryPort := proto.Clone(ports[tenant]).(*vxfabricv1.Port)
		retryPort.Id = "fffffffffd"
		if again, err := s.CreatePort(ctx, retryPort, "same-id"); err != nil || again.Id != ports[tenant].Id {
			t.Errorf("tenant %s: retry of request same-id after a move: %v, %v", tenant, again, err)
		}
	}

	// Delete alpha: its records go with it, beta's stay.
	if err := s.DeletePort(ctx, "alpha", "port-alpha", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNetwork(ctx, "alpha", "net-alpha", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTenant(ctx, "alpha", 0); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, RequestsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, strings.TrimPrefix(string(kv.Key), RequestsPrefix))
	}
	if want := []string{"network/beta/same-id", "port/beta/same-id"}; !slices.Equal(keys, want) {
		t.Errorf("request records after alpha's delete: %q, want %q", keys, want)
	}
}

// TestLegacyRequestRecordFound: a create committed by the version before request ids were scoped by
// tenant (record requests/<kind>/<id>) and retried after the upgrade returns what it made, not
// AlreadyExists; another tenant with the same id is not concerned.
func TestLegacyRequestRecordFound(t *testing.T) {
	s, cli := newTestStore(t)
	ctx := testCtx(t)
	for _, tenant := range []string{"alpha", "beta"} {
		if _, err := s.CreateTenant(ctx, &vxfabricv1.Tenant{Name: tenant}, ""); err != nil {
			t.Fatal(err)
		}
	}
	n := &vxfabricv1.Network{Id: "0000000001", Tenant: "alpha", Name: "web", Vni: 100,
		Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}
	if _, err := s.CreateNetwork(ctx, n, "", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, RequestsPrefix+KindNetwork+"/old-id", n.Id); err != nil { // as the old version wrote it
		t.Fatal(err)
	}
	named := func(tenant, name string) *vxfabricv1.Network {
		c := proto.Clone(n).(*vxfabricv1.Network)
		c.Tenant, c.Name = tenant, name
		return c
	}
	got, err := s.NetworkForRequest(ctx, "old-id", named("alpha", "web"))
	if err != nil || got.GetId() != n.Id {
		t.Errorf("alpha's retry of old-id: %v, %v; want network %s", got, err, n.Id)
	}
	if got, err := s.NetworkForRequest(ctx, "old-id", named("beta", "web")); err != nil || got != nil {
		t.Errorf("beta with old-id: %v, %v; want no record", got, err)
	}
	if _, err := s.NetworkForRequest(ctx, "old-id", named("alpha", "other")); !errors.Is(err, ErrRequestMismatch) {
		t.Errorf("alpha reusing old-id for another network: %v, want ErrRequestMismatch", err)
	}
}
