package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/fanout"
	"github.com/vxfabric/vxfabric/controlplane/server"
)

// ServeSimCommand is the argument that makes vxbench run ServeSim instead of the benchmarks.
const ServeSimCommand = "serve-sim"

// ServeSim runs the API server of a simulated fabric (embedded etcd under dir, the fan-out hub as a
// plugin, as `vxfab server` assembles them) until ctx ends or stdin closes. It writes one line,
// "ready <grpc address> <etcd endpoint>", to w once it serves, then a "commit <revision> <unix ns>"
// line per port written (see reportCommits).
//
// It runs in a process of its own so that the operating system, not the Go scheduler of the process
// running a thousand simulated agents, shares the CPU between the server and the agents: the server
// of a real fabric does not wait behind its agents' reconcile passes.
//
// listen is "127.0.0.1:0" when empty; a unix:///path socket reaches the server from other network
// namespaces.
func ServeSim(ctx context.Context, dir, listen string, w io.Writer, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin) // the parent holds stdin open while it wants the server
		cancel()
	}()
	cfg := server.Default()
	cfg.Listen = listen
	if listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.DataDir = dir
	cfg.Logger = log
	cfg.Plugins = []server.Plugin{fanout.Plugin(fanout.Default())} // as `vxfab server` has it
	s, err := server.New(ctx, cfg)
	if err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve() }()
	addr := s.Addr().String()
	if strings.HasPrefix(listen, "unix://") {
		addr = listen
	}
	var wmu sync.Mutex
	wmu.Lock()
	if err := reportCommits(ctx, s.Etcd(), w, &wmu); err != nil {
		wmu.Unlock()
		s.Close()
		return err
	}
	_, err = fmt.Fprintf(w, "ready %s %s\n", addr, s.EtcdEndpoint())
	wmu.Unlock()
	if err != nil {
		s.Close()
		return fmt.Errorf("announce server: %w", err)
	}
	select {
	case <-ctx.Done():
		s.Close()
		return <-errc
	case err := <-errc:
		s.Close()
		return err
	}
}

// simServer is a ServeSim child process.
type simServer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
	etcd  string
	done  chan error
	// commits collects the server's commit lines.
	commits *commitWatch
}

// startSimServer runs ServeSim in a child process (this executable, ServeSimCommand).
// With profile set, the child writes its CPU profile there when it stops.
func startSimServer(ctx context.Context, dir, listen string, logLevel slog.Level, profile string, heapProfile ...string) (*simServer, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find vxbench executable: %w", err)
	}
	cmd := exec.Command(self, ServeSimCommand, "-dir", dir, "-log-level", logLevel.String(), "-cpuprofile", profile, "-listen", listen)
	if len(heapProfile) > 0 && heapProfile[0] != "" {
		cmd.Args = append(cmd.Args, "-memprofile", heapProfile[0])
	}
	prioritise(cmd)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("server stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("server stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server process: %w", err)
	}
	s := &simServer{cmd: cmd, stdin: stdin, done: make(chan error, 1), commits: newCommitWatch()}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		for sc.Scan() {
			s.commits.line(sc.Text())
		}
		s.commits.end()
		_, _ = io.Copy(io.Discard, stdout)
		s.done <- cmd.Wait()
	}()
	select {
	case line, ok := <-lines:
		f := strings.Fields(line)
		if !ok || len(f) != 3 || f[0] != "ready" {
			s.stop()
			return nil, fmt.Errorf("server process did not start (said %q)", line)
		}
		s.addr, s.etcd = f[1], f[2]
		return s, nil
	case <-time.After(time.Minute):
		s.stop()
		return nil, errors.New("server process not ready after 1m")
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	}
}

// ServerNice is the nice value of the simulated fabric's server and API client processes when
// vxbench runs as root: a real fabric's server does not share its CPU with a thousand agents, and
// the simulated agents (nice 0) must not starve it. Agents still get every cycle the server leaves.
const ServerNice = -10

// prioritise makes cmd run at ServerNice, through nice(1), when this process may raise priorities.
func prioritise(cmd *exec.Cmd) {
	if os.Geteuid() != 0 {
		return
	}
	nice, err := exec.LookPath("nice")
	if err != nil {
		return
	}
	cmd.Args = append([]string{nice, "-n", strconv.Itoa(ServerNice)}, cmd.Args...)
	cmd.Path = nice
}

// pid is the server process's id.
func (s *simServer) pid() int { return s.cmd.Process.Pid }

// stop closes the server's stdin (it shuts down gracefully) and kills it if it has not ended in 20 s.
func (s *simServer) stop() {
	s.stdin.Close()
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
	}
}
