//go:build linux

package tests

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// TestPrivilegedGatewayOverTheUnderlayRefused: a port of a nat or routed network whose gateway would
// take its host's own traffic (to the API server, to the underlay's router) into the bridge is not
// bound to that host, from the routes the lab hosts' agents reported, and nothing is written. Such a
// port used to be made, and cut its host off the control plane for good.
func TestPrivilegedGatewayOverTheUnderlayRefused(t *testing.T) {
	f := newFixture(t, "under")
	for _, tc := range []struct {
		name, cidr string
		mode       vxfabricv1.NetworkMode
	}{
		{"server", "198.18.0.0/29", vxfabricv1.NetworkMode_NETWORK_MODE_NAT},      // holds 198.18.0.2, the server
		{"router", "198.18.0.248/29", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED}, // holds 198.18.0.254, the outside
	} {
		f.network(tc.name, tc.cidr, tc.mode)
		for _, host := range []string{"h1", "h2"} {
			_, err := f.c.Ports.CreatePort(f.ctx, &vxfabricv1.CreatePortRequest{
				Tenant: f.tenant, Network: tc.name, Name: tc.name + "-" + host, Node: host})
			if status.Code(err) != codes.FailedPrecondition {
				t.Errorf("port of %s network %s on %s: %v, want FailedPrecondition", tc.mode, tc.cidr, host, err)
			}
		}
	}
	ports, err := f.c.Ports.ListPorts(f.ctx, &vxfabricv1.ListPortsRequest{Tenant: f.tenant})
	if err != nil {
		t.Fatal(err)
	}
	if len(ports.GetPorts()) != 0 {
		t.Errorf("ports after the refusals: %v, want none", ports.GetPorts())
	}
	// An isolated network there puts nothing on the hosts: its VM is made and plugged.
	f.network("iso", "198.18.0.0/29", vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED)
	f.vm("under-iso", "h1", "iso")
}
