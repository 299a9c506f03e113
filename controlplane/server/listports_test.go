package server

import (
	"fmt"
	"slices"
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

// TestListPages: a list read page by page holds every port once, in the one-answer list's order;
// ports created between pages after the cursor are on a later page; a token is refused with other
// filters, and a negative page size is refused.
func TestListPages(t *testing.T) {
	useT(t)
	_, conn := startServer(t, testConfig(t))
	c := newClients(conn)
	ctx := testContext(t)
	iso := vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED
	for _, tn := range []string{"a", "ab", "b"} {
		must(c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: tn}))
		must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: tn, Name: "web", Cidr: "10.0.0.0/24", Mode: iso}))
		for i := range 7 {
			must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: tn, Network: "web", Name: fmt.Sprintf("p%d", i), Node: "h1"}))
		}
	}
	names := func(ps []*vxfabricv1.Port) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Tenant+"/"+p.Name)
		}
		return out
	}
	all := names(must(c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{})).Ports)
	var paged []string
	token, pages := "", 0
	for {
		resp := must(c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{PageSize: 5, PageToken: token}))
		if len(resp.Ports) > 5 {
			t.Fatalf("page of %d ports, asked for 5", len(resp.Ports))
		}
		paged = append(paged, names(resp.Ports)...)
		pages++
		if pages == 2 {
			// Created between pages: z sorts after the cursor (a later page has it), 0 before it.
			must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "b", Network: "web", Name: "z", Node: "h1"}))
			must(c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "a", Network: "web", Name: "p0a", Node: "h1"}))
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if want := append(slices.Clone(all), "b/z"); !slices.Equal(paged, want) {
		t.Errorf("paged list:\n%v\nwant the one-answer list and b/z:\n%v", paged, want)
	}
	if pages != 5 {
		t.Errorf("%d pages of 5 for 22 ports, want 5", pages)
	}
	first := must(c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{PageSize: 5}))
	_, err := c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Tenant: "a", PageSize: 5, PageToken: first.NextPageToken})
	wantCode(t, "a token with another filter", err, codes.InvalidArgument)
	_, err = c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{PageToken: "garbage"})
	wantCode(t, "a made-up token", err, codes.InvalidArgument)
	_, err = c.networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{PageSize: -1})
	wantCode(t, "a negative page size", err, codes.InvalidArgument)
	nets := must(c.networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{PageSize: 2}))
	rest := must(c.networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{PageSize: 2, PageToken: nets.NextPageToken}))
	if len(nets.Networks) != 2 || len(rest.Networks) != 1 || rest.NextPageToken != "" || rest.Networks[0].Tenant != "b" {
		t.Errorf("networks in pages of 2: %v then %v (next %q)", nets.Networks, rest.Networks, rest.NextPageToken)
	}
}
