package server

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

func TestConfigValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"listen without port":   func(c *Config) { c.Listen = "127.0.0.1" },
		"relative unix socket":  func(c *Config) { c.Listen = "unix://run/x.sock" },
		"no data dir":           func(c *Config) { c.DataDir = "" },
		"cert without key":      func(c *Config) { c.Etcd.Endpoints, c.Etcd.CertFile = []string{"http://e:2379"}, "c.pem" },
		"tls without endpoints": func(c *Config) { c.Etcd.CAFile = "ca.pem" },
		"no vni range":          func(c *Config) { c.VNIRanges = nil },
		"overlapping ranges":    func(c *Config) { c.VNIRanges = []alloc.Range{{First: 10, Last: 20}, {First: 15, Last: 30}} },
		"vni 0":                 func(c *Config) { c.VNIRanges = []alloc.Range{{First: 0, Last: 20}} },
		"tiny underlay mtu":     func(c *Config) { c.UnderlayMTU = 600 },
		"no logger":             func(c *Config) { c.Logger = nil },
		"nil plugin":            func(c *Config) { c.Plugins = []Plugin{nil} },
	} {
		c := Default()
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c := Default()
	c.Listen = "unix:///run/vxfabric/api.sock"
	c.Etcd.Endpoints, c.DataDir = []string{"https://e1:2379"}, ""
	if err := c.Validate(); err != nil {
		t.Errorf("unix socket with external etcd: %v", err)
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitHealth(t *testing.T, h healthpb.HealthClient, service string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last healthpb.HealthCheckResponse_ServingStatus
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err == nil {
			if last = resp.Status; last == want {
				return
			}
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
	t.Fatalf("health of %q: %v, want %v", service, last, want)
}

// TestHealthFollowsEtcd starts a server whose etcd is not up yet: it starts at once and reports
// NOT_SERVING, turns SERVING when etcd comes up, and NOT_SERVING again when etcd goes away.
func TestHealthFollowsEtcd(t *testing.T) {
	useT(t)
	etcdAddr := freePort(t)
	cfg := testConfig(t)
	cfg.Etcd.Endpoints = []string{"http://" + etcdAddr}
	cfg.Etcd.DialTimeout = 300 * time.Millisecond
	start := time.Now()
	_, conn := startServer(t, cfg)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("startup took %s", d)
	}
	h := healthpb.NewHealthClient(conn)
	tenantSvc := vxfabricv1.TenantService_ServiceDesc.ServiceName
	waitHealth(t, h, "", healthpb.HealthCheckResponse_NOT_SERVING)
	waitHealth(t, h, tenantSvc, healthpb.HealthCheckResponse_NOT_SERVING)

	e := startEtcd(t, "http://"+etcdAddr)
	waitHealth(t, h, "", healthpb.HealthCheckResponse_SERVING)
	waitHealth(t, h, tenantSvc, healthpb.HealthCheckResponse_SERVING)
	ctx := testContext(t)
	must(newClients(conn).tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme"}))

	e.Close()
	waitHealth(t, h, "", healthpb.HealthCheckResponse_NOT_SERVING)
}

// TestReflectionAndUnixSocket serves on a unix socket (replacing a stale one) and lists the services
// through reflection, as grpcurl does.
func TestReflectionAndUnixSocket(t *testing.T) {
	useT(t)
	sock := filepath.Join(t.TempDir(), "run", "api.sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	stale := must(net.Listen("unix", sock+".tmp")) // a socket file left behind by a crash
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if err := os.Rename(sock+".tmp", sock); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Listen = "unix://" + sock
	cfg.Plugins = []Plugin{func(context.Context, Host) (Extension, error) {
		return Extension{
			Register: func(s *grpc.Server) { s.RegisterService(&extraService, struct{}{}) },
			Services: []string{"vxfabric.test.ExtraService"},
		}, nil
	}}
	_, conn := startServer(t, cfg)
	ctx := testContext(t)
	stream := must(reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx))
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp := must(stream.Recv())
	stream.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	for _, want := range []string{
		"vxfabric.v1.TenantService", "vxfabric.v1.NetworkService", "vxfabric.v1.PortService", "vxfabric.v1.NodeService",
		"grpc.health.v1.Health", "vxfabric.test.ExtraService",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	waitHealth(t, healthpb.NewHealthClient(conn), "vxfabric.test.ExtraService", healthpb.HealthCheckResponse_SERVING)
}

// extraService stands in for a plugin's service (the fan-out's AgentService, the TokenService).
var extraService = grpc.ServiceDesc{ServiceName: "vxfabric.test.ExtraService", HandlerType: (*any)(nil)}
