//go:build linux

package tests

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// TestPrivilegedGatewayOverTheUnderlayRefused: a nat or routed network whose gateway would take a
// host's own traffic (to the API server, to the underlay's router) into its bridge is refused at
// create, from the routes the lab hosts' agents reported, and nothing is written. Such a network
// used to be created, and one port of it cut its host off the control plane for good.
func TestPrivilegedGatewayOverTheUnderlayRefused(t *testing.T) {
	f := newFixture(t, "under")
	for _, tc := range []struct {
		name, cidr string
		mode       vxfabricv1.NetworkMode
	}{
		{"server", "198.18.0.0/29", vxfabricv1.NetworkMode_NETWORK_MODE_NAT},      // holds 198.18.0.2, the server
		{"router", "198.18.0.248/29", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED}, // holds 198.18.0.254, the outside
	} {
		_, err := f.c.Networks.CreateNetwork(f.ctx, &vxfabricv1.CreateNetworkRequest{
			Tenant: f.tenant, Name: tc.name, Cidr: tc.cidr, Mode: tc.mode})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s network %s over the lab's underlay: %v, want FailedPrecondition", tc.mode, tc.cidr, err)
		}
	}
	nets, err := f.c.Networks.ListNetworks(f.ctx, &vxfabricv1.ListNetworksRequest{Tenant: f.tenant})
	if err != nil {
		t.Fatal(err)
	}
	if len(nets.GetNetworks()) != 0 {
		t.Errorf("networks after the refusals: %v, want none", nets.GetNetworks())
	}
	// An isolated network there puts nothing on the hosts: it is made.
	f.network("iso", "198.18.0.0/29", vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED)
}
