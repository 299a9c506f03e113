package lab

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/server"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// apiLab is testLab with a real API server (embedded etcd) on the lab's unix socket, and no
// namespaces: enough for what the lab does through the API alone.
func apiLab(t *testing.T) (*Lab, *Client) {
	t.Helper()
	l := testLab(t, 1)
	if err := os.MkdirAll(l.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := server.Default()
	cfg.Listen = "unix://" + l.SocketPath()
	cfg.DataDir = t.TempDir()
	cfg.EmbeddedFast = true
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := server.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Conn.Close()
		srv.Close()
		if err := <-errc; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return l, c
}

// Deleting a VM that never existed (a typo) fails with ErrNoSuchVM instead of succeeding quietly;
// a VM left with ports but no namespace is deleted, after which it too is gone.
func TestPrivilegedDeleteVM(t *testing.T) {
	privileged(t)
	l, c := apiLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := l.DeleteVM(ctx, "nosuch"); !errors.Is(err, ErrNoSuchVM) {
		t.Fatalf("delete a VM that never existed: %v, want ErrNoSuchVM", err)
	}

	if _, err := c.Tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "web",
		Cidr: "10.60.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: "acme", Network: "web",
		Name: "half-web-0", Node: "h1", Vm: "half"}); err != nil {
		t.Fatal(err)
	}
	// What was deleted is said, for `lab vm delete` to print it.
	if removed, err := l.RemoveVM(ctx, "half"); err != nil || removed != (RemovedVM{Ports: 1}) {
		t.Fatalf("delete a VM with a port and no namespace: %+v, %v; want its 1 port and no namespace", removed, err)
	}
	ports, err := c.Ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Vm: "half"})
	if err != nil || len(ports.GetPorts()) != 0 {
		t.Fatalf("after delete, ports of vm half: %v %v", ports.GetPorts(), err)
	}
	if err := l.DeleteVM(ctx, "half"); !errors.Is(err, ErrNoSuchVM) {
		t.Fatalf("delete the deleted VM again: %v, want ErrNoSuchVM", err)
	}

	// A VM with a command still running in it (`lab exec busy -- iperf3 -s` in another terminal):
	// the command goes with the VM. Left running, it would keep the namespace, and the port's link,
	// alive after its name is gone, where nothing finds it again.
	busy := l.VMNamespace("busy")
	if err := ensureNamespace(ctx, busy); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(context.Background(), busy) })
	sleeper := exec.Command("ip", "netns", "exec", busy, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	t.Cleanup(func() { _ = sleeper.Process.Kill() })
	// `ip netns exec` enters the namespace after it starts: a delete before that finds nobody in it,
	// and the command enters a namespace nobody can name any more.
	if err := poll(ctx, 5*time.Second, func() (bool, error) {
		pids, err := processesIn([]string{busy}, nil)
		return slices.Contains(pids, sleeper.Process.Pid), err
	}); err != nil {
		t.Fatalf("the command never ran in the VM's namespace: %v", err)
	}
	if removed, err := l.RemoveVM(ctx, "busy"); err != nil || removed != (RemovedVM{Namespace: true}) {
		t.Fatalf("delete a VM with a command running in it: %+v, %v; want its namespace and no port", removed, err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the command running in the deleted VM is still alive")
	}
	if namespaceExists(busy) {
		t.Errorf("namespace %s left after the VM's delete", busy)
	}
}

// outsideLab is a lab of one host whose outside namespace exists (and nothing else), for exec tests.
func outsideLab(t *testing.T) *Lab {
	t.Helper()
	privileged(t)
	l := testLab(t, 1)
	ns := l.Namespace(RoleOutside)
	if err := ensureNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(context.Background(), ns) })
	return l
}

// A cancelled `lab exec` (^C) lets the command end its own way: it gets SIGINT, as at a terminal,
// not SIGKILL, so ping prints its summary and tcpdump flushes its file; the status is 130.
func TestPrivilegedExecInterruptedEndsTheCommandItsOwnWay(t *testing.T) {
	l := outsideLab(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- l.Exec(ctx, RoleOutside, []string{"sh", "-c", "trap 'echo summary; exit 0' INT; echo started; while :; do sleep 0.1; done"},
			Stdio{Stdout: &out})
	}()
	for deadline := time.Now().Add(10 * time.Second); out.String() == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the shell did not start")
		}
	}
	began := time.Now()
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * execGrace):
		t.Fatal("the interrupted command did not end")
	}
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != 130 || !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted exec: %v, want status 130 wrapping context.Canceled", err)
	}
	if took := time.Since(began); took >= execGrace {
		t.Errorf("the command ended %s after the interrupt: it was killed, not interrupted", took)
	}
	if got := out.String(); got != "started\nsummary\n" {
		t.Errorf("the command wrote %q, want its trap's summary after its start", got)
	}
}

// A command that runs and fails passes its status through, and one a signal ends reports 128+N as a
// shell does (exec's own ExitCode says -1, which would leave vxfab with exit status 255).
func TestPrivilegedExecStatus(t *testing.T) {
	l := outsideLab(t)
	for script, want := range map[string]int{"exit 7": 7, "kill -9 $$": 128 + 9, "kill -TERM $$": 128 + 15} {
		err := l.Exec(context.Background(), RoleOutside, []string{"sh", "-c", script}, Stdio{})
		var exit *ExitError
		if !errors.As(err, &exit) || exit.Code != want {
			t.Errorf("exec sh -c %q: %v, want an ExitError with status %d", script, err, want)
		}
	}
	if err := l.Exec(context.Background(), "nosuch", []string{"true"}, Stdio{}); err == nil || errors.As(err, new(*ExitError)) {
		t.Errorf("exec in a target that does not exist: %v, want an error of the lab's own", err)
	}
	// A command that does not exist: 127, as a shell says it.
	var exit *ExitError
	if err := l.Exec(context.Background(), RoleOutside, []string{"no-such-command-here"}, Stdio{}); !errors.As(err, &exit) || exit.Code != 127 ||
		!strings.Contains(err.Error(), "command not found") {
		t.Errorf("exec of a command that does not exist: %v, want status 127, command not found", err)
	}
}

// syncBuffer is a bytes.Buffer that a command writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
