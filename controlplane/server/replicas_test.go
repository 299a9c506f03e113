package server

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
)

// TestTwoReplicasConcurrentCreates runs two servers on one etcd and fires hundreds of concurrent
// network and port creates at both, each create sent to BOTH replicas at once with the same
// request_id. The VNI pool is barely larger than the demand, so allocations collide constantly.
// Every VNI, address and MAC must end up unique, each retried request must return one resource, and
// etcd must hold exactly one allocation per resource.
func TestTwoReplicasConcurrentCreates(t *testing.T) {
	useT(t)
	const networks, ports = 220, 220
	e := startEtcd(t, "")
	var clis [2]clients
	for i := range clis {
		cfg := testConfig(t)
		cfg.Etcd.Endpoints = []string{e.Endpoint()}
		cfg.VNIRanges = []alloc.Range{{First: 100, Last: 100 + networks + 9}}
		_, conn := startServer(t, cfg)
		clis[i] = newClients(conn)
	}
	ctx := testContext(t)
	must(clis[0].tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme", RequestId: "t-acme"}))
	if again := must(clis[1].tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme", RequestId: "t-acme"})); again.Tenant.Name != "acme" {
		t.Fatalf("tenant retry gave %v", again)
	}

	// Networks: each request twice, once per replica, concurrently.
	type result struct {
		net  *vxfabricv1.Network
		port *vxfabricv1.Port
		err  error
	}
	netResults := make([][2]result, networks)
	var wg sync.WaitGroup
	for i := range networks {
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := retried(func() (*vxfabricv1.CreateNetworkResponse, error) {
					return clis[r].networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
						Tenant: "acme", Name: fmt.Sprintf("net-%d", i), Cidr: "10.0.0.0/24",
						Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, RequestId: fmt.Sprintf("n-%d", i)})
				})
				netResults[i][r] = result{net: resp.GetNetwork(), err: err}
			}()
		}
	}
	wg.Wait()
	vnis := map[uint32]string{}
	for i, rs := range netResults {
		for _, r := range rs {
			if r.err != nil {
				t.Fatalf("network %d: %v", i, r.err)
			}
		}
		a, b := rs[0].net, rs[1].net
		if a.Id != b.Id || a.Vni != b.Vni {
			t.Fatalf("request n-%d made two networks: %s/%d and %s/%d", i, a.Id, a.Vni, b.Id, b.Vni)
		}
		if other, dup := vnis[a.Vni]; dup {
			t.Fatalf("vni %d held by %s and %s", a.Vni, other, a.Id)
		}
		vnis[a.Vni] = a.Id
	}

	// Ports into one /24 NAT network (253 assignable), same pattern.
	must(clis[0].networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "big", Cidr: "10.9.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT}))
	portResults := make([][2]result, ports)
	for i := range ports {
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := retried(func() (*vxfabricv1.CreatePortResponse, error) {
					return clis[r].ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{
						Tenant: "acme", Network: "big", Name: fmt.Sprintf("p-%d", i), Node: fmt.Sprintf("h%d", i%7),
						RequestId: fmt.Sprintf("p-%d", i)})
				})
				portResults[i][r] = result{port: resp.GetPort(), err: err}
			}()
		}
	}
	wg.Wait()
	ips, macs := map[string]string{}, map[string]string{}
	for i, rs := range portResults {
		for _, r := range rs {
			if r.err != nil {
				t.Fatalf("port %d: %v", i, r.err)
			}
		}
		a, b := rs[0].port, rs[1].port
		if a.Id != b.Id || a.Ip != b.Ip || a.Mac != b.Mac {
			t.Fatalf("request p-%d made two ports: %v and %v", i, a, b)
		}
		if a.Ip == "10.9.0.1" || a.Ip == "10.9.0.0" || a.Ip == "10.9.0.255" {
			t.Fatalf("reserved address %s given to %s", a.Ip, a.Id)
		}
		if other, dup := ips[a.Ip]; dup {
			t.Fatalf("address %s held by %s and %s", a.Ip, other, a.Id)
		}
		if other, dup := macs[a.Mac]; dup {
			t.Fatalf("mac %s held by %s and %s", a.Mac, other, a.Id)
		}
		ips[a.Ip], macs[a.Mac] = a.Id, a.Id
	}

	// etcd holds exactly one allocation per resource, and the resources themselves.
	cli := must(e.Client())
	defer cli.Close()
	count := func(prefix string) int64 {
		return must(cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())).Count
	}
	if n := count("/vxfabric/v1/alloc/vni/"); n != networks+1 {
		t.Errorf("%d vni allocations, want %d", n, networks+1)
	}
	if n := count("/vxfabric/v1/networks/"); n != networks+1 {
		t.Errorf("%d networks, want %d", n, networks+1)
	}
	if n := count("/vxfabric/v1/alloc/ip/"); n != ports {
		t.Errorf("%d address allocations, want %d", n, ports)
	}
	if n := count("/vxfabric/v1/alloc/mac/"); n != ports {
		t.Errorf("%d mac allocations, want %d", n, ports)
	}
	if n := count("/vxfabric/v1/ports/"); n != ports {
		t.Errorf("%d ports, want %d", n, ports)
	}
	// Request records expire with their leases (RequestRetention), one per record of each request.
	records := must(cli.Get(ctx, "/vxfabric/v1/requests/", clientv3.WithPrefix())).Kvs
	if len(records) != 1+networks+ports {
		t.Errorf("%d request records, want %d", len(records), 1+networks+ports)
	}
	for _, kv := range records {
		if kv.Lease == 0 {
			t.Fatalf("request record %s holds no lease: it would never expire", kv.Key)
		}
	}
	for _, kv := range must(cli.Get(ctx, "/vxfabric/v1/alloc/vni/", clientv3.WithPrefix())).Kvs {
		vni := strings.TrimPrefix(string(kv.Key), "/vxfabric/v1/alloc/vni/")
		if len(vni) != 8 {
			t.Fatalf("vni key %s not zero-padded to 8 digits", kv.Key)
		}
	}

	// The pool has 9 VNIs left (the networks above and "big" took the others): the 10th
	// allocation is refused.
	for i := range 9 {
		must(clis[i%2].networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: fmt.Sprintf("fill-%d", i),
			Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}))
	}
	_, err := clis[1].networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "one-too-many",
		Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED})
	wantCode(t, "exhausted vni pool", err, codes.ResourceExhausted)
	// A retry of an earlier request still returns its network although the pool is full.
	again := must(clis[1].networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "net-0",
		Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, RequestId: "n-0"}))
	if again.Network.Id != netResults[0][0].net.Id {
		t.Fatalf("retry after the pool filled gave %s, want %s", again.Network.Id, netResults[0][0].net.Id)
	}
}
