//go:build linux

package tests

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vxfabric/vxfabric/lab"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

// agentConn is a gRPC connection to the server's underlay address made from a host's namespace
// with that host's node certificate: what the host's agent presents.
func agentConn(t *testing.T, l *lab.Lab, host string) *grpc.ClientConn {
	t.Helper()
	dial, err := l.DialerIn(host)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ClientTLSConfig(l.PKIFile(pki.CACertFile), l.PKIFile(pki.NodeCertFile(host)), l.PKIFile(pki.NodeKeyFile(host)), "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+netip.AddrPortFrom(lab.ControlAddr, lab.ServerPort).String(),
		grpc.WithContextDialer(dial), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// firstSync opens AgentService.Sync for node and returns the first message's error.
func firstSync(conn *grpc.ClientConn, node string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := vxfabricv1.NewAgentServiceClient(conn).Sync(ctx, &vxfabricv1.SyncRequest{Node: node})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

// TestPrivilegedAgentCertScopedToNode: h1's node certificate, presented from h1 over the underlay,
// syncs h1's state but is refused h2's and the admin API.
func TestPrivilegedAgentCertScopedToNode(t *testing.T) {
	l := requireLab(t)
	conn := agentConn(t, l, "h1")
	if err := firstSync(conn, "h1"); err != nil {
		t.Fatalf("control: h1's certificate cannot sync h1: %v", err)
	}
	if err := firstSync(conn, "h2"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("h1's certificate syncing h2: %v, want PermissionDenied", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := vxfabricv1.NewTenantServiceClient(conn).ListTenants(ctx, &vxfabricv1.ListTenantsRequest{})
	if code := status.Code(err); code != codes.PermissionDenied && code != codes.Unauthenticated {
		t.Errorf("h1's certificate listing tenants: %v, want PermissionDenied", err)
	}
}

// bearer attaches a tenant token over the lab's unix socket.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

// TestPrivilegedTenantToken: a tenant token sees and changes only its own tenant's networks.
func TestPrivilegedTenantToken(t *testing.T) {
	own := newFixture(t, "e2e-tok-a")
	other := newFixture(t, "e2e-tok-b")
	own.network("net", "10.58.0.0/24", isolated)
	other.network("secret", "10.58.0.0/24", isolated)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tokens := vxfabricv1.NewTokenServiceClient(own.c.Conn)
	tok, err := tokens.CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: own.tenant})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := tokens.RevokeToken(context.Background(), &vxfabricv1.RevokeTokenRequest{Id: tok.GetToken().GetId()}); err != nil {
			t.Errorf("cleanup: revoke token: %v", err)
		}
	})
	conn, err := grpc.NewClient(own.l.Profile().Server, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(tok.GetSecret())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nets := vxfabricv1.NewNetworkServiceClient(conn)
	list, err := nets.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	if err != nil {
		t.Fatalf("control: tenant token lists its networks: %v", err)
	}
	for _, n := range list.GetNetworks() {
		if n.GetTenant() != own.tenant {
			t.Errorf("tenant token lists %s/%s", n.GetTenant(), n.GetName())
		}
	}
	if len(list.GetNetworks()) != 1 {
		t.Errorf("tenant token lists %d networks, want its own 1", len(list.GetNetworks()))
	}
	_, err = nets.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: other.tenant, Name: "secret"})
	if code := status.Code(err); code != codes.PermissionDenied && code != codes.NotFound {
		t.Errorf("tenant token reading another tenant's network: %v, want PermissionDenied or NotFound", err)
	}
	_, err = vxfabricv1.NewPortServiceClient(conn).CreatePort(ctx, &vxfabricv1.CreatePortRequest{
		Tenant: other.tenant, Network: "secret", Name: "intruder", Node: "h1"})
	if code := status.Code(err); code != codes.PermissionDenied && code != codes.NotFound {
		t.Errorf("tenant token creating a port in another tenant's network: %v, want PermissionDenied or NotFound", err)
	}
	ports, err := other.c.Ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Tenant: other.tenant})
	if err != nil {
		t.Fatal(err)
	}
	if len(ports.GetPorts()) != 0 {
		t.Errorf("the other tenant has ports after the refused create: %v", ports.GetPorts())
	}
}

// TestPrivilegedVMCannotReachControlPlane: a VM on a nat network reaches the outside (through its
// host's NAT) but not the server's API or gossip, nor any host's gossip or metrics port.
func TestPrivilegedVMCannotReachControlPlane(t *testing.T) {
	f := newFixture(t, "e2e-cp")
	n := f.network("ext", "10.59.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_NAT)
	f.vm("cp-v", "h1", "ext")
	ln, err := f.l.ListenTCP(lab.RoleOutside, netip.AddrPortFrom(lab.OutsideAddr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := f.l.DialTCP("cp-v", ln.Addr(), 2*time.Second); err != nil {
		t.Fatalf("control: the nat VM does not reach outside: %v", err)
	}
	gw := netip.MustParseAddr(n.GetGateway())
	targets := []struct {
		name string
		dst  netip.AddrPort
	}{
		{"server API", netip.AddrPortFrom(lab.ControlAddr, lab.ServerPort)},
		{"server gossip", netip.AddrPortFrom(lab.ControlAddr, lab.GossipPort)},
		{"own host gossip", netip.AddrPortFrom(lab.HostAddr(1), lab.GossipPort)},
		{"own host metrics", netip.AddrPortFrom(lab.HostAddr(1), lab.MetricsPort)},
		{"other host gossip", netip.AddrPortFrom(lab.HostAddr(2), lab.GossipPort)},
		{"other host metrics", netip.AddrPortFrom(lab.HostAddr(2), lab.MetricsPort)},
		{"gateway gossip", netip.AddrPortFrom(gw, lab.GossipPort)},
	}
	for _, tc := range targets {
		name, dst := tc.name, tc.dst
		c, err := f.l.DialerIn("cp-v")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := c(ctx, dst.String())
		cancel()
		if err == nil {
			conn.Close()
			t.Errorf("the VM opened a connection to the %s at %s", name, dst)
		}
	}
}
