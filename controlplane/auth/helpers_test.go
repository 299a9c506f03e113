package auth

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's client and embedded server leave these behind for a moment after Close.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
	)
}

// startEtcd runs an embedded etcd for one test and returns a client to it.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t)
}

func putTenant(t *testing.T, cli *clientv3.Client, name string) {
	t.Helper()
	b, _ := proto.Marshal(&vxfabricv1.Tenant{Name: name})
	if _, err := cli.Put(context.Background(), tenantsPrefix+name, string(b)); err != nil {
		t.Fatal(err)
	}
}

// makePKI runs pki.Init for nodes h1 and h2 in a fresh directory.
func makePKI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := pki.DefaultInit(dir)
	cfg.Nodes = []string{"h1", "h2"}
	if _, err := pki.Init(cfg); err != nil {
		t.Fatal(err)
	}
	return dir
}

// testServer is an API server with the real authenticator in front of fake services.
type testServer struct {
	addr     string // TCP host:port
	unixPath string
	pkiDir   string
	auth     *Authenticator
	admin    string // admin token
	nets     *fakeNetworks
}

type serverOpt func(*Config)

func startServer(t *testing.T, cli *clientv3.Client, opts ...serverOpt) *testServer {
	t.Helper()
	pkiDir := makePKI(t)
	dataDir := t.TempDir()
	cfg := Default(dataDir)
	cfg.TLSCert = filepath.Join(pkiDir, pki.ServerCert)
	cfg.TLSKey = filepath.Join(pkiDir, pki.ServerKey)
	cfg.TLSCA = filepath.Join(pkiDir, pki.CACertFile)
	cfg.Logger = slog.New(slog.DiscardHandler)
	for _, o := range opts {
		o(&cfg)
	}
	a, err := New(cfg, cli)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(a.ServerOptions()...)
	a.Register(srv)
	nets := &fakeNetworks{byTenant: map[string][]*vxfabricv1.Network{}}
	vxfabricv1.RegisterNetworkServiceServer(srv, nets)
	vxfabricv1.RegisterAgentServiceServer(srv, &fakeAgent{})
	vxfabricv1.RegisterTenantServiceServer(srv, &fakeTenants{})
	vxfabricv1.RegisterNodeServiceServer(srv, &fakeNodes{})
	healthpb.RegisterHealthServer(srv, health.NewServer())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); srv.Serve(ln) }()
	go func() { defer wg.Done(); srv.Serve(uln) }()
	t.Cleanup(func() {
		srv.Stop()
		wg.Wait()
	})
	data, err := os.ReadFile(a.AdminTokenFile())
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{addr: ln.Addr().String(), unixPath: sock, pkiDir: pkiDir, auth: a, admin: strings.TrimSpace(string(data)), nets: nets}
}

// client describes how a test dials.
type client struct {
	token    string
	cert     string // file name in the pki dir without extension, e.g. "node-h1", "admin"; "" none
	caDir    string // pki dir whose CA the client trusts ("" : the server's)
	certDir  string // pki dir the client certificate comes from ("" : the server's)
	plain    bool
	unix     bool
	crl      bool // check the server's certificate against the CA's revocation list
	dialOpts []grpc.DialOption
}

func (s *testServer) dial(t *testing.T, c client) *grpc.ClientConn {
	t.Helper()
	target := s.addr
	if c.unix {
		target = "unix://" + s.unixPath
	}
	cc := ClientConfig{Token: c.token, Insecure: c.plain, Unix: c.unix}
	if !c.plain {
		caDir, certDir := firstOf(c.caDir, s.pkiDir), firstOf(c.certDir, s.pkiDir)
		cc.CAFile = filepath.Join(caDir, pki.CACertFile)
		if c.cert != "" {
			cc.CertFile, cc.KeyFile = filepath.Join(certDir, c.cert+".crt"), filepath.Join(certDir, c.cert+".key")
		}
		if c.crl {
			cc.CRLFile = filepath.Join(caDir, pki.CRLFile)
		}
	}
	opts, err := cc.DialOptions()
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, c.dialOpts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: got %v (%v), want %v", what, got, err, want)
	}
}

// fakeNetworks is a NetworkService that trusts its requests completely, as the real one does: the
// interceptors are what keeps tenants apart.
type fakeNetworks struct {
	vxfabricv1.UnimplementedNetworkServiceServer
	mu       sync.Mutex
	byTenant map[string][]*vxfabricv1.Network
}

func (f *fakeNetworks) CreateNetwork(_ context.Context, r *vxfabricv1.CreateNetworkRequest) (*vxfabricv1.CreateNetworkResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := &vxfabricv1.Network{Tenant: r.GetTenant(), Name: r.GetName(), Cidr: r.GetCidr()}
	f.byTenant[r.GetTenant()] = append(f.byTenant[r.GetTenant()], n)
	return &vxfabricv1.CreateNetworkResponse{Network: n}, nil
}

func (f *fakeNetworks) GetNetwork(_ context.Context, r *vxfabricv1.GetNetworkRequest) (*vxfabricv1.GetNetworkResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.byTenant[r.GetTenant()] {
		if n.Name == r.GetName() {
			return &vxfabricv1.GetNetworkResponse{Network: n}, nil
		}
	}
	return nil, status.Error(codes.NotFound, "no such network")
}

func (f *fakeNetworks) ListNetworks(_ context.Context, r *vxfabricv1.ListNetworksRequest) (*vxfabricv1.ListNetworksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*vxfabricv1.Network
	for tenant, nets := range f.byTenant {
		if r.GetTenant() == "" || r.GetTenant() == tenant {
			out = append(out, nets...)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tenant+out[i].Name < out[j].Tenant+out[j].Name })
	return &vxfabricv1.ListNetworksResponse{Networks: out}, nil
}

func (f *fakeNetworks) DeleteNetwork(_ context.Context, r *vxfabricv1.DeleteNetworkRequest) (*vxfabricv1.DeleteNetworkResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	nets := f.byTenant[r.GetTenant()]
	for i, n := range nets {
		if n.Name == r.GetName() {
			f.byTenant[r.GetTenant()] = append(nets[:i], nets[i+1:]...)
			return &vxfabricv1.DeleteNetworkResponse{}, nil
		}
	}
	return nil, status.Error(codes.NotFound, "no such network")
}

// floodSent counts the messages the "flood" Sync streams got past Send.
var floodSent atomic.Int64

// fakeAgent answers Sync with one snapshot naming the node asked for, then (for node "flood")
// keeps sending 16 KiB messages until the client goes away.
type fakeAgent struct {
	vxfabricv1.UnimplementedAgentServiceServer
}

func (fakeAgent) Sync(r *vxfabricv1.SyncRequest, s grpc.ServerStreamingServer[vxfabricv1.SyncResponse]) error {
	if err := s.Send(&vxfabricv1.SyncResponse{Revision: 1, Snapshot: true, Networks: []*vxfabricv1.NetworkState{{Name: r.GetNode()}}}); err != nil {
		return err
	}
	switch r.GetNode() {
	case "flood":
	case "h2": // idle, as an agent's stream is while nothing changes for it
		<-s.Context().Done()
		return s.Context().Err()
	default:
		return nil
	}
	big := &vxfabricv1.SyncResponse{Networks: []*vxfabricv1.NetworkState{{Name: strings.Repeat("x", 16<<10)}}}
	for {
		if err := s.Send(big); err != nil {
			return err
		}
		floodSent.Add(1)
	}
}

func (fakeAgent) ReportApplied(context.Context, *vxfabricv1.ReportAppliedRequest) (*vxfabricv1.ReportAppliedResponse, error) {
	return &vxfabricv1.ReportAppliedResponse{}, nil
}

func (fakeAgent) RegisterNode(_ context.Context, r *vxfabricv1.RegisterNodeRequest) (*vxfabricv1.RegisterNodeResponse, error) {
	return &vxfabricv1.RegisterNodeResponse{Node: &vxfabricv1.Node{Name: r.GetName(), Vtep: r.GetVtep()}}, nil
}

type fakeTenants struct {
	vxfabricv1.UnimplementedTenantServiceServer
}

func (fakeTenants) GetTenant(_ context.Context, r *vxfabricv1.GetTenantRequest) (*vxfabricv1.GetTenantResponse, error) {
	return &vxfabricv1.GetTenantResponse{Tenant: &vxfabricv1.Tenant{Name: r.GetName()}}, nil
}

func (fakeTenants) ListTenants(context.Context, *vxfabricv1.ListTenantsRequest) (*vxfabricv1.ListTenantsResponse, error) {
	return &vxfabricv1.ListTenantsResponse{}, nil
}

type fakeNodes struct {
	vxfabricv1.UnimplementedNodeServiceServer
}

func (fakeNodes) ListNodes(context.Context, *vxfabricv1.ListNodesRequest) (*vxfabricv1.ListNodesResponse, error) {
	return &vxfabricv1.ListNodesResponse{}, nil
}
