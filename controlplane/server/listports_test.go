package server

import (
	"testing"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc/codes"
)

// TestListPortsNetworkFilter: a network filter naming a network unknown in the filter's tenant (in
// every tenant, without a tenant filter) is NotFound; a known network without ports is an empty list.
func TestListPortsNetworkFilter(t *testing.T) {
	useT(t)
	_, conn := startServer(t, testConfig(t))
	c := newClients(conn)
	ctx := testContext(t)
	for _, tn := range []string{"acme", "other"} {
		must(c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: tn}))
	}
	iso := vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED
	must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "web", Cidr: "10.0.0.0/24", Mode: iso}))
	must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "other", Name: "empty", Cidr: "10.0.0.0/24", Mode: iso}))
	p := must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web", Name: "p", Node: "h1"})).Port

	list := func(req *vxfabricv1.ListPortsRequest) ([]*vxfabricv1.Port, error) {
		resp, err := c.ports.ListPorts(ctx, req)
		return resp.GetPorts(), err
	}
	for name, req := range map[string]*vxfabricv1.ListPortsRequest{
		"unknown network, no tenant":      {Network: "nope"},
		"suffix of a network, no tenant":  {Network: "eb"},
		"unknown network, with node":      {Network: "nope", Node: "h1"},
		"network of another tenant":       {Tenant: "other", Network: "web"},
		"unknown network in known tenant": {Tenant: "acme", Network: "nope"},
		"unknown tenant":                  {Tenant: "nobody"},
		"known network in unknown tenant": {Tenant: "nobody", Network: "web"},
	} {
		_, err := list(req)
		wantCode(t, name, err, codes.NotFound)
	}
	for name, req := range map[string]*vxfabricv1.ListPortsRequest{
		"network in any tenant": {Network: "web"},
		"network in its tenant": {Tenant: "acme", Network: "web"},
	} {
		if ps := must(list(req)); len(ps) != 1 || ps[0].Id != p.Id {
			t.Errorf("%s: got %v, want port %s", name, ps, p.Id)
		}
	}
	if ps := must(list(&vxfabricv1.ListPortsRequest{Network: "empty"})); len(ps) != 0 {
		t.Errorf("network without ports: got %v", ps)
	}
}
