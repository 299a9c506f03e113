package server

import (
	"context"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeConvergence stands in for the fan-out hub.
type fakeConvergence map[string][2]int64

func (f fakeConvergence) NodeRevisions(node string) (int64, int64) { return f[node][0], f[node][1] }

func (f fakeConvergence) NodeErrors(node string) []string {
	if f[node][0] < f[node][1] {
		return []string{"uplink eth1 master vxbr5000: uplink interface not found"}
	}
	return nil
}

// TestAPIEndToEnd drives every service through a real gRPC client, with a plugin supplying an
// interceptor and the convergence source the way the fan-out and security plugins do.
func TestAPIEndToEnd(t *testing.T) {
	useT(t)
	var intercepted atomic.Int64
	cfg := testConfig(t)
	cfg.VNIRanges = cfg.VNIRanges[:1]
	cfg.Plugins = []Plugin{func(_ context.Context, h Host) (Extension, error) {
		if h.Etcd == nil || h.Store == nil {
			t.Error("plugin got no etcd client or store")
		}
		return Extension{
			ServerOptions: []grpc.ServerOption{grpc.ChainUnaryInterceptor(
				func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
					intercepted.Add(1)
					return h(ctx, req)
				})},
			Convergence: fakeConvergence{"h1": {7, 9}},
		}, nil
	}}
	s, conn := startServer(t, cfg)
	c := newClients(conn)
	ctx := testContext(t)

	// Tenants.
	acme := must(c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme"})).Tenant
	if acme.Revision == 0 || acme.CreateTime == nil {
		t.Fatalf("tenant %v: no revision or create time", acme)
	}
	_, err := c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme"})
	wantCode(t, "duplicate tenant", err, codes.AlreadyExists)
	must(c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "beta"}))
	if ts := must(c.tenants.ListTenants(ctx, &vxfabricv1.ListTenantsRequest{})).Tenants; len(ts) != 2 || ts[0].Name != "acme" {
		t.Fatalf("tenants %v", ts)
	}
	_, err = c.tenants.GetTenant(ctx, &vxfabricv1.GetTenantRequest{Name: "nobody"})
	wantCode(t, "unknown tenant", err, codes.NotFound)

	// Networks: defaults, modes, tenant isolation.
	_, err = c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "nobody", Name: "web", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT})
	wantCode(t, "network of unknown tenant", err, codes.NotFound)
	web := must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "web", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT})).Network
	if web.Mtu != 1450 || web.Gateway != "10.0.0.1" || web.Vni < 4096 || len(web.Id) != 10 || web.Revision == 0 {
		t.Fatalf("network defaults: %v", web)
	}
	if web.GatewayMac == "" || web.GatewayMac[:6] != "02:fb:" {
		t.Fatalf("gateway mac %q", web.GatewayMac)
	}
	betaWeb := must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "beta", Name: "web", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED})).Network
	if betaWeb.Vni == web.Vni || betaWeb.Gateway != "" {
		t.Fatalf("second tenant's network %v shares vni or has a gateway", betaWeb)
	}
	_, err = c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "web", Cidr: "10.9.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT})
	wantCode(t, "duplicate network name", err, codes.AlreadyExists)
	lan := must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "lan", Cidr: "192.168.0.0/29",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, Vni: 5000, Mtu: 1400, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth1"}})).Network
	if lan.Vni != 5000 || lan.Mtu != 1400 || lan.Uplink.GetInterface() != "eth1" {
		t.Fatalf("bridged network %v", lan)
	}
	_, err = c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "beta", Name: "other", Cidr: "10.1.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, Vni: 5000})
	wantCode(t, "requested vni taken", err, codes.AlreadyExists)
	routed := must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "beta", Name: "routed", Cidr: "10.1.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, Gateway: "10.1.0.254"})).Network
	if routed.Gateway != "10.1.0.254" {
		t.Fatalf("routed gateway %q", routed.Gateway)
	}
	if ns := must(c.networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{Tenant: "acme"})).Networks; len(ns) != 2 || ns[0].Name != "lan" || ns[1].Name != "web" {
		t.Fatalf("acme networks %v", ns)
	}
	if ns := must(c.networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})).Networks; len(ns) != 4 {
		t.Fatalf("all networks: %d", len(ns))
	}
	_, err = c.networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{Tenant: "nobody"})
	wantCode(t, "list networks of unknown tenant", err, codes.NotFound)

	// Ports: allocation, requested values, conflicts, reserved addresses.
	_, err = c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "nope", Name: "p", Node: "h1"})
	wantCode(t, "port on unknown network", err, codes.NotFound)
	p1 := must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "vm1-eth0", Node: "h1", Vm: "vm1"})).Port
	ip := netip.MustParseAddr(p1.Ip)
	if !netip.MustParsePrefix("10.0.0.0/24").Contains(ip) || p1.Ip == "10.0.0.0" || p1.Ip == "10.0.0.1" || p1.Ip == "10.0.0.255" {
		t.Fatalf("allocated address %s", p1.Ip)
	}
	if p1.Mac[:3] != "0e:" || p1.InterfaceName != "vxp"+p1.Id || len(p1.InterfaceName) > 15 || p1.NetworkId != web.Id || p1.Network != "web" {
		t.Fatalf("port %v", p1)
	}
	p2 := must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "vm2-eth0", Node: "h2", Vm: "vm2", Ip: "10.0.0.50", Mac: "0E:00:00:00:00:02"})).Port
	if p2.Ip != "10.0.0.50" || p2.Mac != "0e:00:00:00:00:02" {
		t.Fatalf("requested values not honoured: %v", p2)
	}
	_, err = c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "p3", Node: "h1", Ip: "10.0.0.50"})
	wantCode(t, "requested ip taken", err, codes.AlreadyExists)
	_, err = c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "p3", Node: "h1", Mac: "0e:00:00:00:00:02"})
	wantCode(t, "requested mac taken", err, codes.AlreadyExists)
	_, err = c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "vm1-eth0", Node: "h1"})
	wantCode(t, "duplicate port name", err, codes.AlreadyExists)
	_, err = c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "p3", Node: "h1", Ip: "10.0.0.1"})
	wantCode(t, "gateway address", err, codes.InvalidArgument)
	_, err = c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "p3", Node: "h1", Mac: web.GatewayMac})
	wantCode(t, "gateway mac", err, codes.InvalidArgument)
	// The same address in another tenant's network is fine.
	must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "beta", Network: "web", Name: "vm9", Node: "h2", Ip: "10.0.0.50", Mac: "0e:00:00:00:00:02"}))
	// A /29 bridged network: six host addresses, then ResourceExhausted.
	for i := range 6 {
		must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "lan", Name: "lan" + string(rune('a'+i)), Node: "h1"}))
	}
	_, err = c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "lan", Name: "lanz", Node: "h1"})
	wantCode(t, "full /29", err, codes.ResourceExhausted)

	// Plugged comes from status/ports/<id>.
	if err := s.Store().SetPortPlugged(ctx, p1.Id, true); err != nil {
		t.Fatal(err)
	}
	if got := must(c.ports.GetPort(ctx, &vxfabricv1.GetPortRequest{Tenant: "acme", Name: "vm1-eth0"})).Port; !got.Plugged {
		t.Fatal("port not shown plugged")
	}
	h1 := must(c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Tenant: "acme", Network: "web", Node: "h1"})).Ports
	if len(h1) != 1 || h1[0].Id != p1.Id || !h1[0].Plugged {
		t.Fatalf("filtered ports %v", h1)
	}
	if vm2 := must(c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Vm: "vm2"})).Ports; len(vm2) != 1 || vm2[0].Id != p2.Id || vm2[0].Plugged {
		t.Fatalf("ports of vm2 %v", vm2)
	}

	// Updates with expected revisions.
	moved := must(c.ports.UpdatePort(ctx, &vxfabricv1.UpdatePortRequest{Tenant: "acme", Name: "vm1-eth0", Node: "h3", ExpectedRevision: p1.Revision})).Port
	if moved.Node != "h3" || moved.Mac != p1.Mac || moved.Ip != p1.Ip || moved.InterfaceName != p1.InterfaceName || moved.Revision <= p1.Revision {
		t.Fatalf("moved port %v (was %v)", moved, p1)
	}
	_, err = c.ports.UpdatePort(ctx, &vxfabricv1.UpdatePortRequest{Tenant: "acme", Name: "vm1-eth0", Node: "h1", ExpectedRevision: p1.Revision})
	wantCode(t, "stale port update", err, codes.FailedPrecondition)
	_, err = c.ports.DeletePort(ctx, &vxfabricv1.DeletePortRequest{Tenant: "acme", Name: "vm1-eth0", ExpectedRevision: p1.Revision})
	wantCode(t, "stale port delete", err, codes.FailedPrecondition)
	web2 := must(c.networks.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "acme", Name: "web", Mtu: 1400, ExpectedRevision: web.Revision})).Network
	if web2.Mtu != 1400 || web2.Vni != web.Vni || web2.Revision <= web.Revision {
		t.Fatalf("updated network %v", web2)
	}
	if same := must(c.networks.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "acme", Name: "web", Mtu: 1400})).Network; same.Revision != web2.Revision {
		t.Fatalf("an update changing nothing wrote revision %d (was %d)", same.Revision, web2.Revision)
	}
	_, err = c.networks.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "acme", Name: "web", Mtu: 1300, ExpectedRevision: web.Revision})
	wantCode(t, "stale network update", err, codes.FailedPrecondition)
	_, err = c.networks.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: "acme", Name: "web", ExpectedRevision: web.Revision})
	wantCode(t, "stale network delete", err, codes.FailedPrecondition)
	_, err = c.tenants.DeleteTenant(ctx, &vxfabricv1.DeleteTenantRequest{Name: "acme", ExpectedRevision: acme.Revision + 1000})
	wantCode(t, "tenant with networks", err, codes.FailedPrecondition)

	// Nodes: records plus the convergence source's revisions.
	must(s.Store().PutNode(ctx, &vxfabricv1.Node{Name: "h1", Vtep: "198.18.0.1", Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, LastChange: timestamppb.Now()}))
	nodes := must(c.nodes.ListNodes(ctx, &vxfabricv1.ListNodesRequest{}))
	if len(nodes.Nodes) != 1 || nodes.Nodes[0].AppliedRevision != 7 || nodes.Nodes[0].DesiredRevision != 9 || nodes.Revision < nodes.Nodes[0].Revision {
		t.Fatalf("nodes %v", nodes)
	}
	if got := nodes.Nodes[0].GetApplyErrors(); len(got) != 1 || !strings.Contains(got[0], "uplink interface not found") {
		t.Errorf("apply errors of h1: %q, want the agent's one", got)
	}
	_, err = c.nodes.GetNode(ctx, &vxfabricv1.GetNodeRequest{Name: "h9"})
	wantCode(t, "unknown node", err, codes.NotFound)

	// Deletes: children first; a freed VNI can be taken again.
	_, err = c.networks.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: "acme", Name: "web"})
	wantCode(t, "network with ports", err, codes.FailedPrecondition)
	for _, p := range must(c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Tenant: "acme"})).Ports {
		must(c.ports.DeletePort(ctx, &vxfabricv1.DeletePortRequest{Tenant: "acme", Name: p.Name}))
	}
	_, err = c.ports.GetPort(ctx, &vxfabricv1.GetPortRequest{Tenant: "acme", Name: "vm1-eth0"})
	wantCode(t, "deleted port", err, codes.NotFound)
	must(c.networks.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: "acme", Name: "web", ExpectedRevision: web2.Revision}))
	must(c.networks.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: "acme", Name: "lan"}))
	must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "beta", Name: "again", Cidr: "10.2.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, Vni: 5000}))
	must(c.tenants.DeleteTenant(ctx, &vxfabricv1.DeleteTenantRequest{Name: "acme"}))
	_, err = c.tenants.DeleteTenant(ctx, &vxfabricv1.DeleteTenantRequest{Name: "acme"})
	wantCode(t, "deleted tenant", err, codes.NotFound)
	resp := must(s.Etcd().Get(ctx, "/vxfabric/v1/alloc/", clientv3WithPrefix()...))
	for _, kv := range resp.Kvs {
		if v := string(kv.Value); v == web.Id || v == lan.Id || v == p1.Id || v == p2.Id {
			t.Fatalf("allocation %s of a deleted resource left behind", kv.Key)
		}
	}
	if intercepted.Load() == 0 {
		t.Fatal("the plugin's interceptor saw no call")
	}
}
