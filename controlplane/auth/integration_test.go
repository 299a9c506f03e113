package auth

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

func syncFirst(ctx context.Context, conn *grpc.ClientConn, node string) (*vxfabricv1.SyncResponse, error) {
	stream, err := vxfabricv1.NewAgentServiceClient(conn).Sync(ctx, &vxfabricv1.SyncRequest{Node: node})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

func TestAgentCertificateScopedToItsNode(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx := ctxT(t)
	h1 := s.dial(t, client{cert: "node-h1"})

	resp, err := syncFirst(ctx, h1, "h1")
	if err != nil {
		t.Fatalf("h1 Sync h1: %v", err)
	}
	if got := resp.GetNetworks()[0].GetName(); got != "h1" {
		t.Errorf("Sync answered for %q", got)
	}
	_, err = syncFirst(ctx, h1, "h2")
	wantCode(t, "h1 Sync h2", err, codes.PermissionDenied)

	agent := vxfabricv1.NewAgentServiceClient(h1)
	_, err = agent.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "h1", Revision: 3})
	wantCode(t, "h1 ReportApplied h1", err, codes.OK)
	_, err = agent.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: "h2", Revision: 3})
	wantCode(t, "h1 ReportApplied h2", err, codes.PermissionDenied)
	_, err = agent.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h2", Vtep: "198.18.0.2"})
	wantCode(t, "h1 RegisterNode h2", err, codes.PermissionDenied)
	_, err = agent.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.0.1"})
	wantCode(t, "h1 RegisterNode h1", err, codes.OK)

	// Agents cannot call the admin or tenant API.
	_, err = vxfabricv1.NewNetworkServiceClient(h1).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	wantCode(t, "h1 ListNetworks", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewNodeServiceClient(h1).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "h1 ListNodes", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewTokenServiceClient(h1).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	wantCode(t, "h1 CreateToken", err, codes.PermissionDenied)

	// The admin certificate may do anything, Sync of any node included.
	adm := s.dial(t, client{cert: "admin"})
	if _, err := syncFirst(ctx, adm, "h2"); err != nil {
		t.Errorf("admin cert Sync h2: %v", err)
	}
	_, err = vxfabricv1.NewNodeServiceClient(adm).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "admin cert ListNodes", err, codes.OK)
}

func TestNoCredentials(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx := ctxT(t)
	conn := s.dial(t, client{})
	_, err := vxfabricv1.NewNetworkServiceClient(conn).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	wantCode(t, "anonymous ListNetworks", err, codes.Unauthenticated)
	_, err = syncFirst(ctx, conn, "h1")
	wantCode(t, "anonymous Sync", err, codes.Unauthenticated)
	_, err = vxfabricv1.NewTokenServiceClient(conn).ListTokens(ctx, &vxfabricv1.ListTokensRequest{})
	wantCode(t, "anonymous ListTokens", err, codes.Unauthenticated)
	// Health stays open, for load balancers and probes.
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	wantCode(t, "anonymous health check", err, codes.OK)

	for _, tok := range []string{"nonsense", "vxft_0123456789abcdef_AAAA", s.admin + "x"} {
		bad := s.dial(t, client{token: tok})
		_, err = vxfabricv1.NewNetworkServiceClient(bad).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
		wantCode(t, "bad token "+tok, err, codes.Unauthenticated)
	}
}

func TestTenantTokensAreConfinedToTheirTenant(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx := ctxT(t)
	putTenant(t, cli, "a")
	putTenant(t, cli, "b")

	adm := s.dial(t, client{token: s.admin})
	tokens := vxfabricv1.NewTokenServiceClient(adm)
	ta, err := tokens.CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "b"}); err != nil {
		t.Fatal(err)
	}
	_, err = tokens.CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "nobody"})
	wantCode(t, "token for missing tenant", err, codes.NotFound)
	_, err = tokens.CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "Bad Name"})
	wantCode(t, "token for invalid tenant", err, codes.InvalidArgument)
	list, err := tokens.ListTokens(ctx, &vxfabricv1.ListTokensRequest{})
	if err != nil || len(list.GetTokens()) != 2 {
		t.Fatalf("ListTokens: %v, %v", list, err)
	}
	for _, tok := range list.GetTokens() {
		if tok.GetId() == "" || tok.GetCreateTime() == nil {
			t.Errorf("listed token %v lacks id or time", tok)
		}
	}

	// Tenant b owns a network; tenant a's token must not see or touch it.
	admNets := vxfabricv1.NewNetworkServiceClient(adm)
	if _, err := admNets.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "b", Name: "secret", Cidr: "10.0.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	a := s.dial(t, client{token: ta.GetSecret()})
	nets := vxfabricv1.NewNetworkServiceClient(a)
	if _, err := nets.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Name: "mine", Cidr: "10.0.0.0/24"}); err != nil {
		t.Fatalf("tenant a creates in its own tenant (tenant left empty): %v", err)
	}
	got, err := nets.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetNetworks()) != 1 || got.GetNetworks()[0].GetTenant() != "a" || got.GetNetworks()[0].GetName() != "mine" {
		t.Errorf("tenant a lists %v, want only a/mine", got.GetNetworks())
	}
	_, err = nets.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{Tenant: "b"})
	wantCode(t, "a lists b", err, codes.PermissionDenied)
	_, err = nets.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: "b", Name: "secret"})
	wantCode(t, "a gets b/secret", err, codes.PermissionDenied)
	_, err = nets.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: "b", Name: "nonexistent"})
	wantCode(t, "a gets b/nonexistent (same answer: existence does not leak)", err, codes.PermissionDenied)
	_, err = nets.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: "b", Name: "secret"})
	wantCode(t, "a deletes b/secret", err, codes.PermissionDenied)
	if all, _ := admNets.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{}); len(all.GetNetworks()) != 2 {
		t.Errorf("admin lists %v, want a/mine and b/secret", all.GetNetworks())
	}
	_, err = vxfabricv1.NewTenantServiceClient(a).GetTenant(ctx, &vxfabricv1.GetTenantRequest{Name: "a"})
	wantCode(t, "a gets tenant a", err, codes.OK)
	_, err = vxfabricv1.NewTenantServiceClient(a).GetTenant(ctx, &vxfabricv1.GetTenantRequest{Name: "b"})
	wantCode(t, "a gets tenant b", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewTenantServiceClient(a).ListTenants(ctx, &vxfabricv1.ListTenantsRequest{})
	wantCode(t, "a lists tenants", err, codes.PermissionDenied)
	_, err = vxfabricv1.NewTokenServiceClient(a).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "a"})
	wantCode(t, "a creates a token", err, codes.PermissionDenied)
	_, err = syncFirst(ctx, a, "h1")
	wantCode(t, "a Syncs h1", err, codes.PermissionDenied)

	// Revocation: the token stops working within a second.
	if _, err := tokens.RevokeToken(ctx, &vxfabricv1.RevokeTokenRequest{Id: ta.GetToken().GetId()}); err != nil {
		t.Fatal(err)
	}
	_, err = nets.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	wantCode(t, "revoked token", err, codes.Unauthenticated)
	_, err = tokens.RevokeToken(ctx, &vxfabricv1.RevokeTokenRequest{Id: ta.GetToken().GetId()})
	wantCode(t, "revoke twice", err, codes.NotFound)
	_, err = tokens.RevokeToken(ctx, &vxfabricv1.RevokeTokenRequest{Id: "../../tenants/a"})
	wantCode(t, "revoke a path", err, codes.InvalidArgument)
}

func TestWrongCAFailsHandshake(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	other := makePKI(t)

	// A client certificate from another CA is refused in the handshake, whatever token comes with it.
	conn := s.dial(t, client{certDir: other, cert: "node-h1", token: s.admin})
	_, err := vxfabricv1.NewNodeServiceClient(conn).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "foreign client certificate", err, codes.Unavailable)

	// A client trusting another CA refuses the server: the token is never sent.
	conn = s.dial(t, client{caDir: other, token: s.admin})
	_, err = vxfabricv1.NewNodeServiceClient(conn).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "server of another CA", err, codes.Unavailable)

	// Plaintext to the TLS-only TCP port.
	conn = s.dial(t, client{plain: true, token: s.admin})
	_, err = vxfabricv1.NewNodeServiceClient(conn).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "plaintext to TLS port", err, codes.Unavailable)
}

func TestUnixSocketPlaintextStillAuthenticates(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx := ctxT(t)
	_, err := vxfabricv1.NewNodeServiceClient(s.dial(t, client{unix: true, plain: true})).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "unix plaintext without token", err, codes.Unauthenticated)
	_, err = vxfabricv1.NewNodeServiceClient(s.dial(t, client{unix: true, plain: true, token: s.admin})).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "unix plaintext with admin token", err, codes.OK)
	// TLS over the same socket, with a node certificate.
	h1 := s.dial(t, client{unix: true, cert: "node-h1"})
	if _, err := syncFirst(ctx, h1, "h1"); err != nil {
		t.Errorf("unix TLS h1 Sync h1: %v", err)
	}
	_, err = syncFirst(ctx, h1, "h2")
	wantCode(t, "unix TLS h1 Sync h2", err, codes.PermissionDenied)
}

func TestInsecureServesPlaintextWithTokens(t *testing.T) {
	cli := startEtcd(t)
	var logBuf strings.Builder
	s := startServer(t, cli, func(c *Config) {
		c.Insecure = true
		c.Logger = slog.New(slog.NewTextHandler(&syncWriter{w: &logBuf}, nil))
	})
	ctx := ctxT(t)
	if !strings.Contains(logBuf.String(), "level=WARN") || !strings.Contains(logBuf.String(), "insecure") {
		t.Errorf("no warning about --insecure in the log:\n%s", logBuf.String())
	}
	_, err := vxfabricv1.NewNodeServiceClient(s.dial(t, client{plain: true, token: s.admin})).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "plaintext admin token", err, codes.OK)
	_, err = vxfabricv1.NewNodeServiceClient(s.dial(t, client{plain: true})).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	wantCode(t, "plaintext anonymous", err, codes.Unauthenticated)
	// TLS with client certificates keeps working beside plaintext.
	if _, err := syncFirst(ctx, s.dial(t, client{cert: "node-h1"}), "h1"); err != nil {
		t.Errorf("TLS node cert under --insecure: %v", err)
	}
}

type syncWriter struct{ w *strings.Builder }

func (s *syncWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

func TestAdminTokenFileAndOwnPKI(t *testing.T) {
	cli := startEtcd(t)
	dataDir := t.TempDir()
	var logBuf strings.Builder
	cfg := Default(dataDir)
	cfg.TLSSANs = []string{"api.example", "198.18.0.9"}
	cfg.Logger = slog.New(slog.NewTextHandler(&syncWriter{w: &logBuf}, nil))
	a, err := New(cfg, cli)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dataDir, "admin.token")
	if a.AdminTokenFile() != path {
		t.Errorf("admin token file %s, want %s", a.AdminTokenFile(), path)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("admin token mode %v, want 0600", st.Mode().Perm())
	}
	if !strings.Contains(logBuf.String(), "admin token written") || !strings.Contains(logBuf.String(), path) {
		t.Errorf("log does not say where the admin token is:\n%s", logBuf.String())
	}
	first, _ := os.ReadFile(path)
	if len(strings.TrimSpace(string(first))) < 40 {
		t.Errorf("admin token %q is short", first)
	}
	// The server made its own CA and a certificate with the SANs asked for.
	if a.CAFile() != filepath.Join(dataDir, "pki", pki.CACertFile) {
		t.Errorf("CA file %s", a.CAFile())
	}
	srvCert, err := os.ReadFile(filepath.Join(dataDir, "pki", pki.ServerCert))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(srvCert), "CERTIFICATE") {
		t.Error("server certificate missing")
	}

	// A second start keeps the token.
	if _, err := New(cfg, cli); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(path)
	if string(first) != string(second) {
		t.Error("admin token changed on restart")
	}

	// Its revocation list is <data-dir>/pki/crl.pem, taken from the first one written.
	admin, err := pki.ReadCertFile(filepath.Join(dataDir, "pki", pki.AdminCert))
	if err != nil {
		t.Fatal(err)
	}
	if a.revoked == nil || a.revoked.Revoked(admin) {
		t.Fatalf("own PKI: revocation list %v, admin revoked before any revocation", a.revoked)
	}
	if _, err := pki.Revoke(filepath.Join(dataDir, "pki"), []*x509.Certificate{admin}, time.Now()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if !a.revoked.Revoked(admin) {
		t.Error("own PKI: the admin certificate revoked in <data-dir>/pki/crl.pem is not refused")
	}
}

func TestConfigValidate(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"cert without key": func(c *Config) { c.TLSCert = "x" },
		"no data dir":      func(c *Config) { c.DataDir = "" },
		"tiny messages":    func(c *Config) { c.MaxRecvMsgSize = 10 },
		"no streams":       func(c *Config) { c.MaxConcurrentStreams = 0 },
		"slow revocation":  func(c *Config) { c.TokenCacheTTL = 5 * time.Second },
		"san with a slash": func(c *Config) { c.TLSSANs = []string{"a/b"} },
	} {
		cfg := Default("/tmp/x")
		mut(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, cfg)
		}
	}
	if err := Default("/tmp/x").Validate(); err != nil {
		t.Errorf("default: %v", err)
	}
}

func TestClientConfigRefusesCleartextCredentials(t *testing.T) {
	for name, c := range map[string]ClientConfig{
		"token over plain TCP without asking": {Token: "x"},
		"nothing at all":                      {},
		"certificate without a CA":            {CertFile: "a.crt", KeyFile: "a.key", Insecure: true},
		"CA file missing":                     {CAFile: "/nonexistent/ca.crt"},
	} {
		if _, err := c.DialOptions(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, c := range map[string]ClientConfig{
		"insecure with token": {Token: "x", Insecure: true},
		"unix with token":     {Token: "x", Unix: true},
	} {
		if _, err := c.DialOptions(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestRevokedCertificate: within a second of a certificate's revocation (on the --tls-crl list, as
// `vxfab certs revoke` writes it) the server refuses it: on calls over a connection already open,
// on a stream already running (at its next message), and in new handshakes. Other certificates
// work on.
func TestRevokedCertificate(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli, func(c *Config) {
		// An empty list to start with: a list named explicitly must exist.
		dir := filepath.Dir(c.TLSCA)
		if _, err := pki.Revoke(dir, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
		c.TLSCRL = filepath.Join(dir, pki.CRLFile)
	})
	ctx := ctxT(t)
	h1 := vxfabricv1.NewAgentServiceClient(s.dial(t, client{cert: "node-h1"}))
	h2 := vxfabricv1.NewAgentServiceClient(s.dial(t, client{cert: "node-h2"}))
	report := func(c vxfabricv1.AgentServiceClient, node string) error {
		_, err := c.ReportApplied(ctx, &vxfabricv1.ReportAppliedRequest{Node: node, Revision: 1})
		return err
	}
	wantCode(t, "h1 before the revocation", report(h1, "h1"), codes.OK)
	stream, err := vxfabricv1.NewAgentServiceClient(s.dial(t, client{cert: "admin"})).Sync(ctx, &vxfabricv1.SyncRequest{Node: "flood"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	var certs []*x509.Certificate
	for _, name := range []string{pki.NodeCertFile("h1"), pki.AdminCert} {
		c, err := pki.ReadCertFile(filepath.Join(s.pkiDir, name))
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	revokedAt := time.Now()
	if _, err := pki.Revoke(s.pkiDir, certs, revokedAt); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err = stream.Recv(); err != nil {
			break
		}
	}
	wantCode(t, "the admin's running Sync stream", err, codes.Unauthenticated)
	if took := time.Since(revokedAt); took > 2*time.Second {
		t.Errorf("the revoked stream ended %s after the revocation, want within a second", took)
	}
	wantCode(t, "h1 on its open connection", report(h1, "h1"), codes.Unauthenticated)
	fresh := vxfabricv1.NewAgentServiceClient(s.dial(t, client{cert: "node-h1"}))
	wantCode(t, "h1 on a new connection", report(fresh, "h1"), codes.Unavailable)
	wantCode(t, "h2", report(h2, "h2"), codes.OK)

	// An idle stream (nothing changes for h2, so nothing is sent) ends too, within a second or so.
	idle, err := h2.Sync(ctx, &vxfabricv1.SyncRequest{Node: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idle.Recv(); err != nil { // the snapshot
		t.Fatal(err)
	}
	h2cert, err := pki.ReadCertFile(filepath.Join(s.pkiDir, pki.NodeCertFile("h2")))
	if err != nil {
		t.Fatal(err)
	}
	revokedAt = time.Now()
	if _, err := pki.Revoke(s.pkiDir, []*x509.Certificate{h2cert}, revokedAt); err != nil {
		t.Fatal(err)
	}
	_, err = idle.Recv()
	wantCode(t, "h2's idle Sync stream", err, codes.Unauthenticated)
	if took := time.Since(revokedAt); took > 3*time.Second {
		t.Errorf("the idle revoked stream ended %s after the revocation, want within about two seconds", took)
	}
}

// TestRevokedServerCertificate: a client given the CA's revocation list refuses a server whose
// certificate is on it, before sending anything (its token included); without the list it connects.
func TestRevokedServerCertificate(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx := ctxT(t)
	list := func(conn *grpc.ClientConn) error {
		_, err := vxfabricv1.NewNodeServiceClient(conn).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
		return err
	}
	if _, err := pki.Revoke(s.pkiDir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	open := s.dial(t, client{token: s.admin, crl: true})
	wantCode(t, "server not revoked", list(open), codes.OK)

	srv, err := pki.ReadCertFile(filepath.Join(s.pkiDir, pki.ServerCert))
	if err != nil {
		t.Fatal(err)
	}
	revokedAt := time.Now()
	if _, err := pki.Revoke(s.pkiDir, []*x509.Certificate{srv}, revokedAt); err != nil {
		t.Fatal(err)
	}
	// A connection made before the revocation is closed within about two seconds (the list is
	// looked at once a second, the connection checked once a second); the calls after it fail.
	for list(open) == nil && time.Since(revokedAt) < 5*time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(revokedAt); took > 3*time.Second {
		t.Errorf("the connection open before the revocation still served calls %s after it", took.Round(time.Millisecond))
	}
	err = list(s.dial(t, client{token: s.admin, crl: true}))
	wantCode(t, "revoked server", err, codes.Unavailable)
	if !strings.Contains(err.Error(), "certificate revoked") {
		t.Errorf("revoked server: %v, want it to say the certificate is revoked", err)
	}
	wantCode(t, "revoked server, client without the list", list(s.dial(t, client{token: s.admin})), codes.OK)

	// A list named explicitly must exist.
	if _, err := (ClientConfig{CAFile: filepath.Join(s.pkiDir, pki.CACertFile), CRLFile: filepath.Join(t.TempDir(), "none.pem")}).DialOptions(); err == nil {
		t.Error("a missing revocation list was accepted")
	}
}
