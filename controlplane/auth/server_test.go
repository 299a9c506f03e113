package auth

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/fanout"
	"github.com/vxfabric/vxfabric/controlplane/server"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

// startRealServer runs the real API server with the auth plugin and its own PKI (no TLS flags), and a
// certificate for node h1 made by its CA.
func startRealServer(t *testing.T) *testServer {
	t.Helper()
	dataDir := t.TempDir()
	cfg := server.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = dataDir
	cfg.EmbeddedFast = true
	cfg.Logger = slog.New(slog.DiscardHandler)
	authCfg := Default(dataDir)
	// Auth first: interceptors run in the order the plugins hand them in.
	cfg.Plugins = []server.Plugin{Plugin(authCfg), fanout.Plugin(fanout.Default())}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})

	// The server made its own CA; a node certificate from the same CA is added later with the
	// same command an operator would run (pki.Init on the server's pki directory).
	pkiDir := filepath.Join(dataDir, "pki")
	initCfg := pki.DefaultInit(pkiDir)
	initCfg.Nodes = []string{"h1"}
	if _, err := pki.Init(initCfg); err != nil {
		t.Fatal(err)
	}
	adminToken, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{addr: srv.Addr().String(), pkiDir: pkiDir, admin: strings.TrimSpace(string(adminToken))}
}

// TestRealServerTenantIsolation runs the real API server with the auth plugin and its own PKI
// (no TLS flags), and checks tenant isolation against the real services and etcd.
func TestRealServerTenantIsolation(t *testing.T) {
	s := startRealServer(t)
	ctx := ctxT(t)

	adm := s.dial(t, client{token: s.admin})
	tenants := vxfabricv1.NewTenantServiceClient(adm)
	for _, name := range []string{"a", "b"} {
		if _, err := tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: name}); err != nil {
			t.Fatalf("create tenant %s: %v", name, err)
		}
	}
	admNets := vxfabricv1.NewNetworkServiceClient(adm)
	if _, err := admNets.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "b", Name: "net", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}); err != nil {
		t.Fatal(err)
	}
	if _, err := vxfabricv1.NewPortServiceClient(adm).CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "b", Network: "net", Name: "p", Node: "h1"}); err != nil {
		t.Fatal(err)
	}
	tok, err := vxfabricv1.NewTokenServiceClient(adm).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	if err != nil {
		t.Fatal(err)
	}

	a := s.dial(t, client{token: tok.GetSecret()})
	nets, ports := vxfabricv1.NewNetworkServiceClient(a), vxfabricv1.NewPortServiceClient(a)
	// Same name and CIDR as tenant b's: tenants are separate namespaces.
	if _, err := nets.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Name: "net", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}); err != nil {
		t.Fatalf("tenant a creates its network: %v", err)
	}
	if _, err := ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Network: "net", Name: "p", Node: "h1"}); err != nil {
		t.Fatalf("tenant a creates its port: %v", err)
	}
	ln, err := nets.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ln.GetNetworks() {
		if n.GetTenant() != "a" {
			t.Errorf("tenant a lists network %s/%s", n.GetTenant(), n.GetName())
		}
	}
	if len(ln.GetNetworks()) != 1 {
		t.Errorf("tenant a lists %d networks, want 1", len(ln.GetNetworks()))
	}
	lp, err := ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Node: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(lp.GetPorts()) != 1 || lp.GetPorts()[0].GetTenant() != "a" {
		t.Errorf("tenant a lists ports %v, want only its own", lp.GetPorts())
	}

	_, err = nets.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: "b", Name: "net"})
	wantCode(t, "a gets b/net", err, codes.PermissionDenied)
	_, err = nets.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: "b", Name: "net"})
	wantCode(t, "a deletes b/net", err, codes.PermissionDenied)
	_, err = nets.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "b", Name: "net", Mtu: 1400})
	wantCode(t, "a updates b/net", err, codes.PermissionDenied)
	_, err = ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "b", Network: "net", Name: "intruder", Node: "h1"})
	wantCode(t, "a creates a port in b/net", err, codes.PermissionDenied)
	_, err = ports.GetPort(ctx, &vxfabricv1.GetPortRequest{Tenant: "b", Name: "p"})
	wantCode(t, "a gets b's port", err, codes.PermissionDenied)
	_, err = ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Tenant: "b"})
	wantCode(t, "a lists b's ports", err, codes.PermissionDenied)
	_, err = tenants.GetTenant(ctx, &vxfabricv1.GetTenantRequest{Name: "a"}) // admin, for contrast
	wantCode(t, "admin gets tenant a", err, codes.OK)
	_, err = vxfabricv1.NewTenantServiceClient(a).DeleteTenant(ctx, &vxfabricv1.DeleteTenantRequest{Name: "b"})
	wantCode(t, "a deletes tenant b", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewNodeServiceClient(a).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "a lists nodes", err, codes.PermissionDenied)

	// Tenant b's network is untouched.
	if got, err := admNets.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: "b", Name: "net"}); err != nil || got.GetNetwork().GetMtu() == 1400 {
		t.Errorf("b/net after tenant a's attempts: %v, %v", got, err)
	}

	// Node certificates made later by the same CA are accepted by the real Sync hub, for their own
	// node only; agents cannot use the admin API.
	h1 := s.dial(t, client{cert: "node-h1"})
	// The hub serves what its etcd watch has delivered: under load that may trail the writes
	// above for a moment, so the first snapshot is asked for again until it holds them.
	var snap *vxfabricv1.SyncResponse
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		snap, err = syncFirst(ctx, h1, "h1")
		if err != nil {
			t.Fatalf("h1 Syncs h1: %v", err)
		}
		if len(snap.GetLocalPorts()) == 2 || time.Now().After(deadline) {
			break
		}
	}
	if !snap.GetSnapshot() || len(snap.GetLocalPorts()) != 2 {
		t.Errorf("h1's snapshot: %v, want both tenants' ports bound to h1", snap)
	}
	_, err = syncFirst(ctx, h1, "h2")
	wantCode(t, "h1 Syncs h2", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewAgentServiceClient(h1).ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "h2", Revision: snap.GetRevision()})
	wantCode(t, "h1 reports for h2", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewAgentServiceClient(h1).ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "h1", Revision: snap.GetRevision()})
	wantCode(t, "h1 reports for h1", err, codes.OK)
	_, err = syncFirst(ctx, a, "h1")
	wantCode(t, "tenant a Syncs h1", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewNetworkServiceClient(h1).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	wantCode(t, "node h1 lists networks", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewNetworkServiceClient(s.dial(t, client{})).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	wantCode(t, "anonymous lists networks", err, codes.Unauthenticated)
	_, err = vxfabricv1.NewNetworkServiceClient(s.dial(t, client{plain: true, token: s.admin})).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	wantCode(t, "plaintext admin on TCP", err, codes.Unavailable)
}

// A bridged network's bridge carries its uplink host's LAN address, so its MTU is that host's: a
// tenant may not change it, an admin may.
func TestRealServerBridgedMTUNeedsAnAdmin(t *testing.T) {
	s := startRealServer(t)
	ctx := ctxT(t)
	adm := s.dial(t, client{token: s.admin})
	if _, err := vxfabricv1.NewTenantServiceClient(adm).CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	admNets := vxfabricv1.NewNetworkServiceClient(adm)
	for _, r := range []*vxfabricv1.CreateNetworkRequest{
		{Tenant: "a", Name: "lan", Cidr: "192.168.77.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth1"}},
		{Tenant: "a", Name: "web", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT},
	} {
		if _, err := admNets.CreateNetwork(ctx, r); err != nil {
			t.Fatalf("create %s: %v", r.Name, err)
		}
	}
	tok, err := vxfabricv1.NewTokenServiceClient(adm).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	if err != nil {
		t.Fatal(err)
	}
	nets := vxfabricv1.NewNetworkServiceClient(s.dial(t, client{token: tok.GetSecret()}))

	_, err = nets.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Name: "lan", Mtu: 1000})
	wantCode(t, "tenant a changes its bridged network's MTU", err, codes.PermissionDenied)
	if got, err := admNets.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: "a", Name: "lan"}); err != nil || got.GetNetwork().GetMtu() == 1000 {
		t.Errorf("a/lan after the tenant's refused change: %v, %v", got, err)
	}
	_, err = nets.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Name: "web", Mtu: 1000})
	wantCode(t, "tenant a changes its nat network's MTU", err, codes.OK)
	got, err := admNets.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "a", Name: "lan", Mtu: 1000})
	wantCode(t, "admin changes a/lan's MTU", err, codes.OK)
	if got.GetNetwork().GetMtu() != 1000 {
		t.Errorf("a/lan after the admin's change: %v", got)
	}
}

// A bridged network's allocation pool keeps the fabric off the LAN's own addresses: ports get
// addresses in it, a tenant may not ask for one outside it (the LAN's router, say), an admin may.
func TestRealServerAllocationPool(t *testing.T) {
	s := startRealServer(t)
	ctx := ctxT(t)
	adm := s.dial(t, client{token: s.admin})
	if _, err := vxfabricv1.NewTenantServiceClient(adm).CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	lan := &vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "lan", Cidr: "192.168.77.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED,
		Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth1"}, AllocationPool: "192.168.77.100-192.168.77.103"}
	admNets := vxfabricv1.NewNetworkServiceClient(adm)
	for _, bad := range []string{"192.168.77.103-192.168.77.100", "192.168.78.1-192.168.78.9", "192.168.77.0-192.168.77.9", "192.168.77.100"} {
		r := proto.Clone(lan).(*vxfabricv1.CreateNetworkRequest)
		r.AllocationPool = bad
		_, err := admNets.CreateNetwork(ctx, r)
		wantCode(t, "network with pool "+bad, err, codes.InvalidArgument)
	}
	made, err := admNets.CreateNetwork(ctx, lan)
	if err != nil {
		t.Fatal(err)
	}
	if got := made.GetNetwork().GetAllocationPool(); got != "192.168.77.100-192.168.77.103" {
		t.Errorf("stored pool %q", got)
	}
	tok, err := vxfabricv1.NewTokenServiceClient(adm).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	if err != nil {
		t.Fatal(err)
	}
	ports := vxfabricv1.NewPortServiceClient(s.dial(t, client{token: tok.GetSecret()}))
	for i := range 4 {
		p, err := ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Network: "lan", Name: fmt.Sprintf("p%d", i), Node: "h2"})
		if err != nil {
			t.Fatal(err)
		}
		if a := netip.MustParseAddr(p.GetPort().GetIp()); a.Less(netip.MustParseAddr("192.168.77.100")) || netip.MustParseAddr("192.168.77.103").Less(a) {
			t.Errorf("port p%d got %s, outside the pool", i, a)
		}
	}
	_, err = ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Network: "lan", Name: "p4", Node: "h2"})
	wantCode(t, "a port in a full pool", err, codes.ResourceExhausted)
	_, err = ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Network: "lan", Name: "router", Node: "h2", Ip: "192.168.77.1"})
	wantCode(t, "tenant's port asking for the LAN router's address", err, codes.InvalidArgument)
	_, err = vxfabricv1.NewPortServiceClient(adm).CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "a", Network: "lan", Name: "fixed", Node: "h2", Ip: "192.168.77.50"})
	wantCode(t, "admin's port at an address outside the pool", err, codes.OK)
}

// A tenant's refusals do not name what NodeService (admin-only) hides: a tenant creating a network
// over a host's underlay address is told that much, an admin which node and address it is.
func TestRealServerVTEPRefusalNamesTheNodeOnlyToAdmins(t *testing.T) {
	s := startRealServer(t)
	ctx := ctxT(t)
	adm := s.dial(t, client{token: s.admin})
	if _, err := vxfabricv1.NewTenantServiceClient(adm).CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := vxfabricv1.NewAgentServiceClient(s.dial(t, client{cert: "node-h1"})).RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.5.1"}); err != nil {
		t.Fatal(err)
	}
	tok, err := vxfabricv1.NewTokenServiceClient(adm).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	if err != nil {
		t.Fatal(err)
	}
	req := &vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "web", Cidr: "198.18.5.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED}

	_, err = vxfabricv1.NewNetworkServiceClient(s.dial(t, client{token: tok.GetSecret()})).CreateNetwork(ctx, req)
	wantCode(t, "tenant creates a network over h1's VTEP", err, codes.FailedPrecondition)
	if msg := status.Convert(err).Message(); strings.Contains(msg, "h1") || strings.Contains(msg, "198.18.5.1") || !strings.Contains(msg, "underlay address of a host") {
		t.Errorf("tenant's refusal %q: want it to say a host's underlay address is inside, without naming node h1 or 198.18.5.1", msg)
	}
	_, err = vxfabricv1.NewNetworkServiceClient(adm).CreateNetwork(ctx, req)
	wantCode(t, "admin creates a network over h1's VTEP", err, codes.FailedPrecondition)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "node h1") || !strings.Contains(msg, "198.18.5.1") {
		t.Errorf("admin's refusal %q does not name node h1 and its VTEP", msg)
	}
}

// A nat or routed network's port is not bound to a host whose underlay the network overlaps (its
// agent's report: its subnet, its router, its servers): the gateway there would cut the host off.
// The refusal writes nothing; the same network's ports go to other hosts, and an isolated network,
// which puts nothing on the hosts, goes anywhere.
func TestRealServerRefusesGatewaysOverAHostsUnderlay(t *testing.T) {
	s := startRealServer(t)
	ctx := ctxT(t)
	adm := s.dial(t, client{token: s.admin})
	if _, err := vxfabricv1.NewTenantServiceClient(adm).CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	h1 := vxfabricv1.NewAgentServiceClient(s.dial(t, client{cert: "node-h1"}))
	if _, err := h1.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.5.11"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h1.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "h1",
		UnderlayRoutes: []string{"198.18.5.0/24", "198.18.5.254/32", "10.99.0.5/32"}}); err != nil {
		t.Fatal(err)
	}
	tok, err := vxfabricv1.NewTokenServiceClient(adm).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	if err != nil {
		t.Fatal(err)
	}
	conn := s.dial(t, client{token: tok.GetSecret()})
	nets, ports := vxfabricv1.NewNetworkServiceClient(conn), vxfabricv1.NewPortServiceClient(conn)
	nat, routed, iso := vxfabricv1.NetworkMode_NETWORK_MODE_NAT, vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED
	for _, tc := range []struct {
		name, cidr string
		mode       vxfabricv1.NetworkMode
		onH1       codes.Code
	}{
		{"subnet", "198.18.5.248/29", nat, codes.FailedPrecondition}, // h1's subnet and router
		{"server", "10.99.0.0/24", routed, codes.FailedPrecondition}, // a server h1 reaches
		{"iso", "198.18.5.248/29", iso, codes.OK},
		{"beside", "10.98.0.0/24", routed, codes.OK},
	} {
		if _, err := nets.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Name: tc.name, Cidr: tc.cidr, Mode: tc.mode}); err != nil {
			t.Fatalf("create %s network %s: %v", tc.mode, tc.cidr, err)
		}
		_, err := ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Network: tc.name, Name: tc.name + "-1", Node: "h1"})
		wantCode(t, fmt.Sprintf("port of %s network %s on h1", tc.mode, tc.cidr), err, tc.onH1)
		if msg := status.Convert(err).Message(); tc.onH1 != codes.OK && (strings.Contains(msg, "198.18.5") && !strings.Contains(msg, tc.cidr) ||
			strings.Contains(msg, "10.99.0.5") || !strings.Contains(msg, "underlay of node h1")) {
			t.Errorf("refusal %q: want it to say h1's underlay is in the way, without naming h1's routes", msg)
		}
		// Another host, which reported nothing in the way, takes it; a move to h1 is refused.
		if _, err := ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Network: tc.name, Name: tc.name + "-2", Node: "h2"}); err != nil {
			t.Fatalf("port of %s network %s on h2: %v", tc.mode, tc.cidr, err)
		}
		_, err = ports.UpdatePort(ctx, &vxfabricv1.UpdatePortRequest{Name: tc.name + "-2", Node: "h1"})
		wantCode(t, fmt.Sprintf("move of a port of %s network %s to h1", tc.mode, tc.cidr), err, tc.onH1)
	}
	list, err := ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Node: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list.GetPorts() {
		names = append(names, p.GetName())
	}
	if got := strings.Join(names, " "); got != "beside-1 beside-2 iso-1 iso-2" {
		t.Errorf("ports on h1 after the refusals: %s, want beside-1 beside-2 iso-1 iso-2", got)
	}
}

// Listing the tokens of a tenant that does not exist is NotFound, as listing its networks is.
func TestRealServerListTokensOfMissingTenant(t *testing.T) {
	s := startRealServer(t)
	ctx := ctxT(t)
	adm := s.dial(t, client{token: s.admin})
	_, err := vxfabricv1.NewTokenServiceClient(adm).ListTokens(ctx, &vxfabricv1.ListTokensRequest{Tenant: "nosuch"})
	wantCode(t, "list tokens of tenant nosuch", err, codes.NotFound)
	msg := status.Convert(err).Message()
	_, err = vxfabricv1.NewNetworkServiceClient(adm).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{Tenant: "nosuch"})
	wantCode(t, "list networks of tenant nosuch", err, codes.NotFound)
	if msg != "tenant nosuch" || status.Convert(err).Message() != msg {
		t.Errorf("tokens of a missing tenant: %q; networks of it: %q; want both \"tenant nosuch\"", msg, status.Convert(err).Message())
	}
	all, err := vxfabricv1.NewTokenServiceClient(adm).ListTokens(ctx, &vxfabricv1.ListTokensRequest{})
	if err != nil || len(all.GetTokens()) != 0 {
		t.Errorf("list all tokens: %v, %v; want none", all, err)
	}
}
