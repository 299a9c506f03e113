package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/pkg/v3/featuregate"
	"go.etcd.io/etcd/server/v3/features"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestStartPutGetRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	cfg := Default(dir)
	cfg.Fast = true
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Put(cctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	s.Close()

	// Acknowledged writes survive a restart on the same directory.
	s, err = Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cli, err = s.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(cctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart got %v, want /k=v", resp.Kvs)
	}
	// Leases' remaining TTLs are checkpointed and persisted, so a restart does not renew them.
	for _, f := range []featuregate.Feature{features.LeaseCheckpoint, features.LeaseCheckpointPersist} {
		if !s.etcd.Server.Cfg.ServerFeatureGate.Enabled(f) {
			t.Errorf("embedded etcd runs without %s", f)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := (Config{}).Validate(); err == nil {
		t.Fatal("empty config validated")
	}
}

func TestCloseTwice(t *testing.T) {
	cfg := Default(t.TempDir())
	cfg.Fast = true
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()
}

// TestPrivateSockets: by default etcd listens on unix sockets in its data directory, which only its
// user may enter: another local user cannot reach the unauthenticated etcd, and no TCP port is open.
func TestPrivateSockets(t *testing.T) {
	// Not t.TempDir: its parent is private, and another user must get as far as the data directory.
	dir, err := os.MkdirTemp("", "vxfab-etcdtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := Default(filepath.Join(dir, "etcd"))
	cfg.Fast = true
	if err := os.Mkdir(cfg.Dir, 0o755); err != nil { // left open by someone: Start closes it
		t.Fatal(err)
	}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sock := filepath.Join(dir, "etcd", "client.sock")
	if got := s.Endpoint(); got != "unix://"+sock {
		t.Fatalf("endpoint %q, want unix://%s", got, sock)
	}
	for _, l := range []net.Listener{s.etcd.Clients[0], s.etcd.Peers[0].Listener} {
		if l.Addr().Network() != "unix" || filepath.Dir(l.Addr().String()) != filepath.Join(dir, "etcd") {
			t.Errorf("etcd listens on %s %s, want a unix socket in its data directory", l.Addr().Network(), l.Addr())
		}
	}
	if fi, err := os.Stat(cfg.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	if os.Geteuid() != 0 {
		t.Skip("another user's attempt needs root")
	}
	// Another user (nobody), in a process of its own, cannot connect: only the data directory's
	// mode stops it (its parent, the socket itself and the copy of this test binary it runs are
	// opened to all).
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "etcdembed.test")
	self, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(bin, self, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestHelperDial$")
	cmd.Env = append(os.Environ(), "VXFAB_TEST_DIAL="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("user nobody dialling %s: %v\n%s", sock, err, out)
	}
}

// TestHelperDial dials the unix socket VXFAB_TEST_DIAL and prints the outcome (TestPrivateSockets
// runs it as another user).
func TestHelperDial(t *testing.T) {
	sock := os.Getenv("VXFAB_TEST_DIAL")
	if sock == "" {
		t.Skip("run by TestPrivateSockets")
	}
	c, err := net.Dial("unix", sock)
	if err == nil {
		c.Close()
		t.Fatalf("connected to %s", sock)
	}
	fmt.Println(err)
}

// TestLongDirSockets: a data directory too deep for a socket path puts the sockets in a private
// temporary directory, removed on Close.
func TestLongDirSockets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	cfg := Default(dir)
	cfg.Fast = true
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	sockDir := filepath.Dir(strings.TrimPrefix(s.Endpoint(), "unix://"))
	if !strings.HasPrefix(filepath.Base(sockDir), "vxfab-etcd-") {
		s.Close()
		t.Fatalf("endpoint %s, want a socket in a temporary directory", s.Endpoint())
	}
	cli, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	s.Close()
	if _, err := os.Stat(sockDir); !os.IsNotExist(err) {
		t.Errorf("socket directory %s after Close: %v", sockDir, err)
	}
}

// TestUpgradeFromLoopback: a data directory written by an etcd on loopback TCP (as earlier versions
// ran it) starts on the private sockets with its data.
func TestUpgradeFromLoopback(t *testing.T) {
	cfg := Default(t.TempDir())
	cfg.Fast = true
	old := cfg
	old.ClientURL, old.PeerURL = "http://127.0.0.1:0", "http://127.0.0.1:0"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, c := range []Config{old, cfg} {
		s, err := Start(ctx, c)
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		cli, err := s.Client()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			_, err = cli.Put(ctx, "/k", "v")
		} else {
			var resp *clientv3.GetResponse
			if resp, err = cli.Get(ctx, "/k"); err == nil && (len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v") {
				err = fmt.Errorf("got %v, want /k=v", resp.Kvs)
			}
		}
		cli.Close()
		s.Close()
		if err != nil {
			t.Fatalf("start %d (%s): %v", i, c.ClientURL, err)
		}
	}
}

// TestRelativeDirAndSecondInstance: a relative data directory works (its sockets get an absolute
// path), and a second instance on the same directory is refused without taking the first one's
// sockets.
func TestRelativeDirAndSecondInstance(t *testing.T) {
	t.Chdir(t.TempDir())
	cfg := Default(filepath.Join("data", "etcd"))
	cfg.Fast = true
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ep := s.Endpoint(); !strings.HasPrefix(ep, "unix:///") {
		t.Errorf("endpoint %q, want an absolute socket path", ep)
	}
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "already serves") {
		t.Fatalf("second instance: %v, want refused", err)
	}
	cli, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("the first instance after the second was refused: %v", err)
	}
}

// The in-process client is the same etcd as the socket's: what one writes the other reads and
// watches, leases are kept alive, and etcd's own limits answer as they would over the socket.
func TestInProcessClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := Default(t.TempDir())
	cfg.Fast = true
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sock, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	in := s.InProcessClient()

	wc := in.Watch(ctx, "/w/", clientv3.WithPrefix())
	if _, err := sock.Put(ctx, "/w/a", "over the socket"); err != nil {
		t.Fatal(err)
	}
	select {
	case wr := <-wc:
		if err := wr.Err(); err != nil || len(wr.Events) != 1 || string(wr.Events[0].Kv.Value) != "over the socket" {
			t.Fatalf("in-process watch: %v %v", err, wr.Events)
		}
	case <-ctx.Done():
		t.Fatal("in-process watch saw nothing")
	}

	lease, err := in.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if lease.TTL > 2 {
		t.Fatalf("lease granted with a TTL of %d s, want 1-2", lease.TTL)
	}
	if _, err := in.KeepAlive(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	resp, err := in.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision("/k"), "=", 0)).
		Then(clientv3.OpPut("/k", "in-process", clientv3.WithLease(lease.ID))).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("in-process txn: %v %v", resp, err)
	}
	time.Sleep(2500 * time.Millisecond) // beyond the lease's TTL: kept alive
	got, err := sock.Get(ctx, "/k")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "in-process" {
		t.Fatalf("read over the socket after the lease's TTL: %v %v", got, err)
	}

	ops := make([]clientv3.Op, 200) // etcd's --max-txn-ops is 128
	for i := range ops {
		ops[i] = clientv3.OpPut(fmt.Sprintf("/many/%d", i), "x")
	}
	if _, err := in.Txn(ctx).Then(ops...).Commit(); !errors.Is(err, rpctypes.ErrTooManyOps) {
		t.Fatalf("txn of 200 operations in-process: %v, want %v", err, rpctypes.ErrTooManyOps)
	}
	if _, err := in.Put(ctx, "/big", strings.Repeat("x", 2<<20)); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Fatalf("put of 2 MiB in-process: %v, want %v", err, rpctypes.ErrRequestTooLarge)
	}

	// A call whose context has ended reports the context's error, as over the socket.
	expired, cancelExpired := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancelExpired()
	if _, err := in.Put(expired, "/late", "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("put with an expired deadline: %v, want %v", err, context.DeadlineExceeded)
	}

	// Closed, the client writes nothing more.
	in.Close()
	if _, err := in.Put(ctx, "/after-close", "x"); status.Code(err) != codes.Canceled {
		t.Fatalf("put after Close: %v, want Canceled", err)
	}
	if got, err := sock.Get(ctx, "/after-close"); err != nil || len(got.Kvs) != 0 {
		t.Fatalf("read of the put after Close over the socket: %v %v, want nothing", got, err)
	}
}

// A call held up inside etcd (a disk that stalls an fsync holds reads too) returns when its
// context ends, and when the client is closed.
func TestBoundedCallReturnsWithItsContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	stuck := func(context.Context, string, ...grpc.CallOption) (string, error) {
		<-release
		return "late", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := bounded(ctx, context.Background(), stuck, "req")
	if !errors.Is(clientv3.ContextError(ctx, err), context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("stuck call with a 50 ms deadline: %v after %s, want DeadlineExceeded at 50 ms", err, time.Since(start))
	}
	closed, closeClient := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, closeClient)
	if _, err := bounded(context.Background(), closed, stuck, "req"); status.Code(err) != codes.Canceled {
		t.Fatalf("stuck call, client closed: %v, want Canceled", err)
	}
	// etcd sees none of the metadata of a gRPC call the caller serves (an API client's token).
	served := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer api-client"))
	seen := func(ctx context.Context, _ string, _ ...grpc.CallOption) (string, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		return strings.Join(md.Get("authorization"), ","), nil
	}
	if got, err := bounded(served, context.Background(), seen, "req"); err != nil || got != "" {
		t.Fatalf("metadata etcd saw: %q, %v; want none", got, err)
	}
	// etcd answers a proposal whose context expired with ErrTimeout; the caller sees its context's error.
	timedOut := func(ctx context.Context, _ string, _ ...grpc.CallOption) (string, error) {
		<-ctx.Done()
		return "", rpctypes.ErrGRPCTimeout
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if _, err := bounded(ctx2, context.Background(), timedOut, "req"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("proposal timed out with its context: %v, want DeadlineExceeded", err)
	}
}
