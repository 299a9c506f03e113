package server

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestOverlappingGatewaysOnOneNode: two nat/routed networks with overlapping CIDRs never both have a
// port on one node (create and move refused with FailedPrecondition naming the other network, nothing
// written), while isolated networks with identical CIDRs and bridged uplinks are not concerned.
func TestOverlappingGatewaysOnOneNode(t *testing.T) {
	useT(t)
	s, conn := startServer(t, testConfig(t))
	c := newClients(conn)
	ctx := testContext(t)
	const (
		iso     = vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED
		nat     = vxfabricv1.NetworkMode_NETWORK_MODE_NAT
		routed  = vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED
		bridged = vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED
	)
	for _, tn := range []string{"red", "blue"} {
		must(c.tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: tn}))
	}
	for _, n := range []*vxfabricv1.CreateNetworkRequest{
		{Tenant: "red", Name: "ext", Cidr: "10.1.0.0/24", Mode: nat},
		{Tenant: "blue", Name: "pub", Cidr: "10.1.0.0/16", Mode: routed},
		{Tenant: "red", Name: "lan", Cidr: "10.1.0.0/24", Mode: iso},
		{Tenant: "blue", Name: "lan", Cidr: "10.1.0.0/24", Mode: iso},
		{Tenant: "blue", Name: "br", Cidr: "10.1.0.0/24", Mode: bridged, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth1"}},
		{Tenant: "blue", Name: "far", Cidr: "10.2.0.0/24", Mode: nat},
	} {
		must(c.networks.CreateNetwork(ctx, n))
	}
	port := func(tenant, network, name, node string) error {
		_, err := c.ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: tenant, Network: network, Name: name, Node: node})
		return err
	}
	move := func(tenant, name, node string) error {
		_, err := c.ports.UpdatePort(ctx, &vxfabricv1.UpdatePortRequest{Tenant: tenant, Name: name, Node: node})
		return err
	}
	del := func(tenant, name string) {
		must(c.ports.DeletePort(ctx, &vxfabricv1.DeletePortRequest{Tenant: tenant, Name: name}))
	}
	refused := func(what string, call func() error, mention string) {
		t.Helper()
		count, rev := keyState(t, ctx, s.Etcd())
		err := call()
		wantCode(t, what, err, codes.FailedPrecondition)
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, mention) {
			t.Errorf("%s: message %q does not say %q", what, msg, mention)
		}
		// The tenants are red and blue: neither learns the other's networks.
		other := "red/"
		if strings.Contains(mention, "red/") {
			other = "blue/"
		}
		if strings.Contains(msg, other) {
			t.Errorf("%s: message %q names a network of the other tenant", what, msg)
		}
		if c2, r2 := keyState(t, ctx, s.Etcd()); c2 != count || r2 != rev {
			t.Errorf("%s: etcd changed: %d keys at revision %d, before %d at %d", what, c2, r2, count, rev)
		}
	}

	// Isolated networks with one CIDR in two tenants, a bridged uplink and a disjoint nat network on h1.
	for _, p := range [][3]string{{"red", "lan", "r-lan"}, {"blue", "lan", "b-lan"}, {"blue", "br", "b-br"}, {"blue", "far", "b-far"}} {
		must(0, port(p[0], p[1], p[2], "h1"))
	}
	must(0, port("red", "ext", "a", "h1"))
	must(0, port("red", "ext", "a2", "h1")) // the same network again: no conflict with itself
	// red/ext is another tenant's network: blue learns that something is in the way, not what.
	refused("create in overlapping routed network", func() error { return port("blue", "pub", "b", "h1") },
		"node h1 already hosts a network of another tenant that overlaps routed network blue/pub 10.1.0.0/16")
	must(0, port("blue", "pub", "b", "h2"))
	refused("move into overlapping network's node", func() error { return move("blue", "b", "h1") },
		"node h1 already hosts a network of another tenant that overlaps routed network blue/pub")

	del("red", "a")
	refused("move while the node still has a port of red/ext", func() error { return move("blue", "b", "h1") },
		"a network of another tenant that overlaps routed network blue/pub")
	del("red", "a2") // the node's last port of red/ext: h1 no longer takes part in it
	must(0, move("blue", "b", "h1"))
	refused("create in nat network on the routed network's node", func() error { return port("red", "ext", "a", "h1") },
		"node h1 already hosts a network of another tenant that overlaps nat network red/ext 10.1.0.0/24")
	must(0, port("red", "ext", "a", "h2")) // h2 was vacated by the move

	// Concurrent creates into two overlapping networks on one node: only one network wins it.
	must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "red", Name: "x", Cidr: "10.3.0.0/24", Mode: nat}))
	must(c.networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "blue", Name: "y", Cidr: "10.3.0.0/25", Mode: routed}))
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant, network := "red", "x"
			if i%2 == 1 {
				tenant, network = "blue", "y"
			}
			errs[i] = port(tenant, network, fmt.Sprintf("c%d", i), "h9")
		}()
	}
	wg.Wait()
	won := map[string]int{}
	for i, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			won[[]string{"x", "y"}[i%2]]++
		case codes.FailedPrecondition:
		default:
			t.Fatalf("concurrent create %d: %v", i, err)
		}
	}
	if len(won) != 1 {
		t.Fatalf("node h9 took ports of both overlapping networks: %v", won)
	}
	ports := must(c.ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Node: "h9"})).Ports
	for _, p := range ports {
		if p.Network != ports[0].Network {
			t.Fatalf("node h9 has ports of %s and %s", ports[0].Network, p.Network)
		}
	}
}
