package server

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testConfig is a fast configuration on a free loopback port with an embedded etcd in a temp dir.
func testConfig(t *testing.T) Config {
	cfg := Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.EmbeddedFast = true
	cfg.HealthInterval = 50 * time.Millisecond
	cfg.Etcd.DialTimeout = time.Second
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.Logger = testLogger(t)
	return cfg
}

// startServer runs a server and returns it with a client connection; both close in t.Cleanup.
func startServer(t *testing.T, cfg Config) (*Server, *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve() }()
	t.Cleanup(func() {
		s.Close()
		if err := <-errc; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	addr := s.Addr().String()
	if s.Addr().Network() == "unix" {
		addr = "unix://" + addr
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, conn
}

// startEtcd runs an embedded etcd for several servers to share; it closes in t.Cleanup.
func startEtcd(t *testing.T, clientURL string) *testEtcd {
	t.Helper()
	cfg := etcdembed.Default(t.TempDir())
	cfg.Fast = true
	if clientURL != "" {
		cfg.ClientURL = clientURL
	}
	e, err := etcdembed.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	te := &testEtcd{Server: e}
	t.Cleanup(te.Close) // registered before the servers that use it, so it closes after them
	return te
}

// testEtcd may be closed by the test and again by its cleanup (etcd's own Close panics the second
// time).
type testEtcd struct {
	*etcdembed.Server
	once sync.Once
}

func (e *testEtcd) Close() { e.once.Do(e.Server.Close) }

type clients struct {
	tenants  vxfabricv1.TenantServiceClient
	networks vxfabricv1.NetworkServiceClient
	ports    vxfabricv1.PortServiceClient
	nodes    vxfabricv1.NodeServiceClient
}

func newClients(conn *grpc.ClientConn) clients {
	return clients{
		tenants:  vxfabricv1.NewTenantServiceClient(conn),
		networks: vxfabricv1.NewNetworkServiceClient(conn),
		ports:    vxfabricv1.NewPortServiceClient(conn),
		nodes:    vxfabricv1.NewNodeServiceClient(conn),
	}
}

// testContext bounds a test against a hang, not a speed: a loaded CI machine runs etcd, two
// servers and hundreds of clients on two cores.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails unless err carries code.
func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, code)
	}
}

// currentT is the running test, for must (tests in this package do not run in parallel).
var currentT *testing.T

func useT(t *testing.T) { currentT = t }

// retried calls create again while it fails with Unavailable or Aborted (etcd slow to commit under
// the load of a test, or too much contention), as a client of the API should: with the same
// request id a retry is safe, which is what the callers check.
func retried[T any](create func() (T, error)) (T, error) {
	for attempt := 1; ; attempt++ {
		v, err := create()
		if c := status.Code(err); c != codes.Unavailable && c != codes.Aborted || attempt == 5 {
			return v, err
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
}

// must returns v, failing the current test on err: must(client.Call(ctx, req)).
func must[T any](v T, err error) T {
	if err != nil {
		currentT.Helper()
		currentT.Fatal(err)
	}
	return v
}

// keyState is the number of vxfabric keys and the store revision: a refused request changes neither.
func keyState(t *testing.T, ctx context.Context, cli *clientv3.Client) (int64, int64) {
	t.Helper()
	resp, err := cli.Get(ctx, "/vxfabric/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count, resp.Header.Revision
}

func clientv3WithPrefix() []clientv3.OpOption { return []clientv3.OpOption{clientv3.WithPrefix()} }
