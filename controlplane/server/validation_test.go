package server

import (
	"context"
	"strings"
	"testing"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc/codes"
)

// TestInvalidInputsWriteNothing sends every kind of input the validation table refuses and checks the
// code and that etcd saw no write at all (key count and revision unchanged).
func TestInvalidInputsWriteNothing(t *testing.T) {
	useT(t)
	s, conn := startServer(t, testConfig(t))
	c := newClients(conn)
	ctx := testContext(t)
	must(c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme"}))
	web := must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "web", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT})).Network
	must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "iso", Cidr: "10.5.0.0/29", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}))
	must(s.Store().PutNode(ctx, &vxfabricv1.Node{Name: "h1", Vtep: "198.18.0.1"}))

	const (
		iso     = vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED
		nat     = vxfabricv1.NetworkMode_NETWORK_MODE_NAT
		bridged = vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED
	)
	net := func(mod func(r *vxfabricv1.CreateNetworkRequest)) func(context.Context) error {
		r := &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "new", Cidr: "10.1.0.0/24", Mode: iso}
		mod(r)
		return func(ctx context.Context) error { _, err := c.networks.CreateNetwork(ctx, r); return err }
	}
	port := func(mod func(r *vxfabricv1.CreatePortRequest)) func(context.Context) error {
		r := &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "p", Node: "h1"}
		mod(r)
		return func(ctx context.Context) error { _, err := c.ports.CreatePort(ctx, r); return err }
	}
	inv := codes.InvalidArgument
	cases := []struct {
		name string
		call func(context.Context) error
		code codes.Code
	}{
		{"tenant empty", func(ctx context.Context) error {
			_, err := c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: ""})
			return err
		}, inv},
		{"tenant uppercase", func(ctx context.Context) error {
			_, err := c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "Acme"})
			return err
		}, inv},
		{"tenant starts with digit", func(ctx context.Context) error {
			_, err := c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "1acme"})
			return err
		}, inv},
		{"tenant 64 chars", func(ctx context.Context) error {
			_, err := c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "a" + strings.Repeat("b", 63)})
			return err
		}, inv},
		{"tenant underscore", func(ctx context.Context) error {
			_, err := c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "a_b"})
			return err
		}, inv},
		{"request id with slash", func(ctx context.Context) error {
			_, err := c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "ok", RequestId: "a/b"})
			return err
		}, inv},
		{"network name", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Name = "-x" }), inv},
		{"cidr garbage", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "ten" }), inv},
		{"cidr ipv6", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "fd00::/64" }), inv},
		{"cidr /7", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "10.0.0.0/7" }), inv},
		{"cidr /30", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "10.0.0.0/30" }), inv},
		{"cidr host bits", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "10.0.0.1/24" }), inv},
		{"cidr this-network", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "0.0.0.0/8" }), inv},
		{"cidr loopback", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "127.0.0.0/24" }), inv},
		{"cidr link-local", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "169.254.0.0/16" }), inv},
		{"cidr over link-local", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "169.0.0.0/8" }), inv},
		{"cidr multicast", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "239.0.0.0/24" }), inv},
		{"cidr reserved", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "240.0.0.0/24" }), inv},
		{"cidr with broadcast", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "255.255.255.0/24" }), inv},
		{"cidr contains a vtep", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mode, r.Cidr = nat, "198.18.0.0/24" }), codes.FailedPrecondition},
		{"isolated cidr contains a vtep", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Cidr = "198.18.0.0/16" }), codes.FailedPrecondition},
		{"vni too big", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Vni = 16777215 }), inv},
		{"mtu small", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mtu = 575 }), inv},
		{"mtu big", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mtu = 9001 }), inv},
		{"mode missing", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mode = 0 }), inv},
		{"mode unknown", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mode = 9 }), inv},
		{"gateway on isolated", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Gateway = "10.1.0.1" }), inv},
		{"gateway outside", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mode, r.Gateway = nat, "10.2.0.1" }), inv},
		{"gateway broadcast", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mode, r.Gateway = nat, "10.1.0.255" }), inv},
		{"gateway network address", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mode, r.Gateway = nat, "10.1.0.0" }), inv},
		{"bridged without uplink", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Mode = bridged }), inv},
		{"uplink on nat", net(func(r *vxfabricv1.CreateNetworkRequest) {
			r.Mode, r.Uplink = nat, &vxfabricv1.Uplink{Node: "h1", Interface: "eth1"}
		}), inv},
		{"uplink bad interface", net(func(r *vxfabricv1.CreateNetworkRequest) {
			r.Mode, r.Uplink = bridged, &vxfabricv1.Uplink{Node: "h1", Interface: "a-very-long-interface"}
		}), inv},
		{"uplink is our bridge", net(func(r *vxfabricv1.CreateNetworkRequest) {
			r.Mode, r.Uplink = bridged, &vxfabricv1.Uplink{Node: "h1", Interface: "vxbr4096"}
		}), inv},
		{"uplink is our vxlan device", net(func(r *vxfabricv1.CreateNetworkRequest) {
			r.Mode, r.Uplink = bridged, &vxfabricv1.Uplink{Node: "h1", Interface: "vxlan4096"}
		}), inv},
		{"uplink is a port's interface", net(func(r *vxfabricv1.CreateNetworkRequest) {
			r.Mode, r.Uplink = bridged, &vxfabricv1.Uplink{Node: "h1", Interface: "vxp0123456789"}
		}), inv},
		{"network of unknown tenant", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Tenant = "nobody" }), codes.NotFound},
		{"network name taken", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Name = "web" }), codes.AlreadyExists},
		{"vni taken", net(func(r *vxfabricv1.CreateNetworkRequest) { r.Vni = web.Vni }), codes.AlreadyExists},
		{"port name", port(func(r *vxfabricv1.CreatePortRequest) { r.Name = "P" }), inv},
		{"port node missing", port(func(r *vxfabricv1.CreatePortRequest) { r.Node = "" }), inv},
		{"port vm name", port(func(r *vxfabricv1.CreatePortRequest) { r.Vm = "VM 1" }), inv},
		{"mac multicast", port(func(r *vxfabricv1.CreatePortRequest) { r.Mac = "01:00:5e:00:00:01" }), inv},
		{"mac broadcast", port(func(r *vxfabricv1.CreatePortRequest) { r.Mac = "ff:ff:ff:ff:ff:ff" }), inv},
		{"mac zero", port(func(r *vxfabricv1.CreatePortRequest) { r.Mac = "00:00:00:00:00:00" }), inv},
		{"mac garbage", port(func(r *vxfabricv1.CreatePortRequest) { r.Mac = "0e:00:00" }), inv},
		{"mac of gateway", port(func(r *vxfabricv1.CreatePortRequest) { r.Mac = web.GatewayMac }), inv},
		{"ip garbage", port(func(r *vxfabricv1.CreatePortRequest) { r.Ip = "10.0.0" }), inv},
		{"ip outside", port(func(r *vxfabricv1.CreatePortRequest) { r.Ip = "10.0.1.5" }), inv},
		{"ip network address", port(func(r *vxfabricv1.CreatePortRequest) { r.Ip = "10.0.0.0" }), inv},
		{"ip broadcast", port(func(r *vxfabricv1.CreatePortRequest) { r.Ip = "10.0.0.255" }), inv},
		{"ip gateway", port(func(r *vxfabricv1.CreatePortRequest) { r.Ip = "10.0.0.1" }), inv},
		{"ip broadcast of /29", port(func(r *vxfabricv1.CreatePortRequest) { r.Network, r.Ip = "iso", "10.5.0.7" }), inv},
		{"port on unknown network", port(func(r *vxfabricv1.CreatePortRequest) { r.Network = "nope" }), codes.NotFound},
		{"port of unknown tenant", port(func(r *vxfabricv1.CreatePortRequest) { r.Tenant = "nobody" }), codes.NotFound},
		{"mtu update invalid", func(ctx context.Context) error {
			_, err := c.networks.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "acme", Name: "web", Mtu: 100})
			return err
		}, inv},
		{"negative expected revision", func(ctx context.Context) error {
			_, err := c.networks.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: "acme", Name: "web", ExpectedRevision: -1})
			return err
		}, inv},
		{"stale network update", func(ctx context.Context) error {
			_, err := c.networks.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "acme", Name: "web", Mtu: 1400, ExpectedRevision: 1})
			return err
		}, codes.FailedPrecondition},
		{"delete tenant with networks", func(ctx context.Context) error {
			_, err := c.tenants.DeleteTenant(ctx, &vxfabricv1.DeleteTenantRequest{Name: "acme"})
			return err
		}, codes.FailedPrecondition},
		{"network update changing nothing", func(ctx context.Context) error {
			_, err := c.networks.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "acme", Name: "web"})
			return err
		}, inv},
		{"port move without a node", func(ctx context.Context) error {
			_, err := c.ports.UpdatePort(ctx, &vxfabricv1.UpdatePortRequest{Tenant: "acme", Name: "p"})
			return err
		}, inv},
		{"move port to bad node", func(ctx context.Context) error {
			_, err := c.ports.UpdatePort(ctx, &vxfabricv1.UpdatePortRequest{Tenant: "acme", Name: "p", Node: "Bad"})
			return err
		}, inv},
		{"get node bad name", func(ctx context.Context) error {
			_, err := c.nodes.GetNode(ctx, &vxfabricv1.GetNodeRequest{Name: "x/y"})
			return err
		}, inv},
	}
	for _, tc := range cases {
		count, rev := keyState(t, ctx, s.Etcd())
		err := tc.call(ctx)
		wantCode(t, tc.name, err, tc.code)
		if c2, r2 := keyState(t, ctx, s.Etcd()); c2 != count || r2 != rev {
			t.Errorf("%s: etcd changed: %d keys at revision %d, before %d at %d", tc.name, c2, r2, count, rev)
		}
	}
}
