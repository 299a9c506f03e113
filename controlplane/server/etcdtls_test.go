package server

import (
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

// An external etcd that demands client certificates: with --etcd-cert/--etcd-key/--etcd-ca the server
// serves the API on it; without a client certificate it stays NOT_SERVING.
func TestExternalEtcdWithClientCertificates(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Init(pki.InitConfig{Dir: dir, Nodes: []string{"api"}}); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, pki.CACertFile)

	ec := embed.NewConfig()
	ec.Dir = t.TempDir()
	ec.TickMs, ec.ElectionMs = 10, 100
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	curl, _ := url.Parse("https://127.0.0.1:0")
	purl, _ := url.Parse("http://127.0.0.1:0")
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*curl}, []url.URL{*curl}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*purl}, []url.URL{*purl}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ClientTLSInfo.CertFile = filepath.Join(dir, pki.ServerCert)
	ec.ClientTLSInfo.KeyFile = filepath.Join(dir, pki.ServerKey)
	ec.ClientTLSInfo.TrustedCAFile = ca
	ec.ClientTLSInfo.ClientCertAuth = true
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		t.Fatal("tls etcd not ready")
	}
	endpoint := "https://" + e.Clients[0].Addr().String()

	t.Run("with a client certificate", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.Etcd.Endpoints = []string{endpoint}
		cfg.Etcd.CertFile = filepath.Join(dir, pki.NodeCertFile("api"))
		cfg.Etcd.KeyFile = filepath.Join(dir, pki.NodeKeyFile("api"))
		cfg.Etcd.CAFile = ca
		_, conn := startServer(t, cfg)
		ctx := testContext(t)
		if _, err := vxfabricv1.NewTenantServiceClient(conn).CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme"}); err != nil {
			t.Fatalf("create tenant over a TLS etcd: %v", err)
		}
		got, err := vxfabricv1.NewTenantServiceClient(conn).GetTenant(ctx, &vxfabricv1.GetTenantRequest{Name: "acme"})
		if err != nil || got.GetTenant().GetRevision() == 0 {
			t.Fatalf("tenant read back from the TLS etcd: %v %v", got, err)
		}
	})

	t.Run("without a client certificate", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.Etcd.Endpoints = []string{endpoint}
		cfg.Etcd.CAFile = ca
		_, conn := startServer(t, cfg)
		// Health stays NOT_SERVING through many health checks: etcd refuses the handshake.
		for range 20 {
			hc, err := healthpb.NewHealthClient(conn).Check(testContext(t), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("health %s with an etcd that refuses us, want NOT_SERVING", hc.GetStatus())
			}
			time.Sleep(cfg.HealthInterval)
		}
	})
}
