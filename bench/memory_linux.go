//go:build linux

package bench

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vxfabric/vxfabric/nodeagent/binpages"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// MemoryConfig is benchmark 7.
type MemoryConfig struct {
	// Bin is the vxfab binary whose agent is measured.
	Bin string
	// Hosts are the nodes holding the Ports remote ports, each with a Sync stream open.
	Hosts int
	Ports int
	// Settle is how long RSS is sampled (every 100 ms, the maximum counts) once a state is reached.
	Settle time.Duration
	// IdleWindow and LoadedWindow, when set, are how long the agent is sampled idle and loaded
	// instead: long enough to hold one of its periodic full reconcile passes, whose code and
	// allocations following changes alone would not show (and, idle, to see the binary's pages the
	// agent releases once it has converged come back as it uses them).
	IdleWindow, LoadedWindow time.Duration
	Targets                  MemoryTargets
	// ProfileDir, when set, receives the server's heap profile at the end (memory-server.heap.pprof).
	ProfileDir string
	LogLevel   slog.Level
	Progress   func(format string, args ...any)
}

// MemoryTargets are in MiB.
type MemoryTargets struct{ AgentIdle, AgentLoaded, Server float64 }

const (
	memNode = "mem-agent"
	memVTEP = "198.18.254.1"
)

// RunMemory runs benchmark 7: the real `vxfab agent` binary in a namespace of its own with the real
// kernel datapath, against the simulated fabric's server process (controlplane/server with embedded
// etcd and the fan-out hub) on a unix socket. Hosts nodes register and keep a Sync stream open each,
// Ports ports are spread over them; the agent's RSS is read idle (no network on its node) and after a
// port bound to its node brings it the network with every remote port; the server's RSS is read last.
func RunMemory(ctx context.Context, cfg MemoryConfig) Outcome {
	out := Outcome{Benchmark: "7 memory"}
	if os.Geteuid() != 0 {
		out.Skipped = "needs root (the agent runs in a network namespace with the real datapath)"
		return out
	}
	if err := memory(ctx, cfg, &out); err != nil {
		out.Error = err.Error()
	}
	return out
}

func memory(ctx context.Context, cfg MemoryConfig, out *Outcome) error {
	bin, err := filepath.Abs(cfg.Bin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		return fmt.Errorf("vxfab binary %s (run `make build`): %w", cfg.Bin, err)
	}
	dir, cleanup, err := TempDir("mem")
	if err != nil {
		return err
	}
	defer cleanup()
	sock := "unix://" + filepath.Join(dir, "server.sock")
	var heap string
	if cfg.ProfileDir != "" {
		heap = filepath.Join(cfg.ProfileDir, "memory-server.heap.pprof")
	}
	srv, err := startSimServer(ctx, filepath.Join(dir, "data"), sock, cfg.LogLevel, "", heap)
	if err != nil {
		return err
	}
	defer srv.stop()
	conn, err := grpc.NewClient(srv.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", srv.addr, err)
	}
	defer conn.Close()

	// The agent, idle: registered, synced, no network on its node.
	ns := fmt.Sprintf("vxb-mem-%d", os.Getpid())
	agent, err := startNSAgent(ctx, bin, ns, srv.addr, filepath.Join(dir, "agent"), cfg.LogLevel)
	if err != nil {
		return err
	}
	defer agent.stop()
	nodes := vxfabricv1.NewNodeServiceClient(conn)
	if err := waitNodeApplied(ctx, nodes, memNode, 1); err != nil {
		return err
	}
	idle, err := sampleRSS(ctx, agent.pid(), cmp.Or(cfg.IdleWindow, cfg.Settle))
	if err != nil {
		return err
	}
	idleAnon, err := readStatus(agent.pid(), "RssAnon")
	if err != nil {
		return err
	}
	idleFile, err := readStatus(agent.pid(), "RssFile")
	if err != nil {
		return err
	}
	idleCode, idleRO, err := readBinaryRSS(agent.pid())
	if err != nil {
		return err
	}
	cfg.Progress("memory: agent idle %.1f MiB (anonymous %.1f, file-backed %.1f: binary code %.1f, binary read-only data %.1f)",
		idle, idleAnon, idleFile, idleCode, idleRO)

	// The fabric: Hosts registered nodes and Ports ports over them, then a Sync stream per node.
	agents := vxfabricv1.NewAgentServiceClient(conn)
	for i := range cfg.Hosts {
		if _, err := agents.RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: HostName(i), Vtep: hostVTEP(i).String(), Version: "bench"}); err != nil {
			return fmt.Errorf("register node %s: %w", HostName(i), err)
		}
	}
	if _, err := vxfabricv1.NewTenantServiceClient(conn).CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: simTenant}); err != nil {
		return fmt.Errorf("create tenant %q: %w", simTenant, err)
	}
	if _, err := vxfabricv1.NewNetworkServiceClient(conn).CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
		Tenant: simTenant, Name: simNetwork, Cidr: simCIDR, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED,
	}); err != nil {
		return fmt.Errorf("create network %q: %w", simNetwork, err)
	}
	start := time.Now()
	if _, _, err := runCreatePorts(ctx, PortBatch{Addr: srv.addr, Prefix: "mem", Count: cfg.Ports, Hosts: cfg.Hosts, MACBase: 1, Clients: 16}); err != nil {
		return err
	}
	cfg.Progress("memory: %d ports on %d nodes created in %s", cfg.Ports, cfg.Hosts, time.Since(start).Round(time.Millisecond))
	streams, err := openStreams(ctx, srv.addr, cfg.Hosts)
	if err != nil {
		return err
	}
	defer streams.close()
	cfg.Progress("memory: %d Sync streams open with their snapshots", cfg.Hosts)

	// The agent, loaded: a port on its node brings it the network.
	resp, err := vxfabricv1.NewPortServiceClient(conn).CreatePort(ctx, &vxfabricv1.CreatePortRequest{
		Tenant: simTenant, Network: simNetwork, Name: "mem-own", Node: memNode,
	})
	if err != nil {
		return fmt.Errorf("create the agent's port: %w", err)
	}
	if err := waitNodeApplied(ctx, nodes, memNode, resp.GetPort().GetRevision()); err != nil {
		return err
	}
	fdb, err := countFDB(ns)
	if err != nil {
		return err
	}
	if fdb < cfg.Ports {
		return fmt.Errorf("agent reports revision %d applied, but its kernel holds %d FDB entries, want %d", resp.GetPort().GetRevision(), fdb, cfg.Ports)
	}
	loaded, err := sampleRSS(ctx, agent.pid(), cmp.Or(cfg.LoadedWindow, cfg.Settle))
	if err != nil {
		return err
	}
	server, err := sampleRSS(ctx, srv.pid(), cfg.Settle)
	if err != nil {
		return err
	}
	cfg.Progress("memory: agent with %d remote ports %.1f MiB, server %.1f MiB", cfg.Ports, loaded, server)
	if heap != "" {
		_ = os.Remove(heap)
		if err := srv.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			return fmt.Errorf("ask the server for a heap profile: %w", err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := os.Stat(heap); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("server wrote no heap profile to %s", heap)
			}
		}
	}
	out.Metrics = []Metric{
		NewMetric("agent RSS idle", idle, "MiB", AtMost, cfg.Targets.AgentIdle),
		InfoMetric("agent idle: anonymous (heap, stacks)", idleAnon, "MiB"),
		InfoMetric("agent idle: file-backed (pages of the binary)", idleFile, "MiB"),
		InfoMetric("agent idle: file-backed, binary code (.text)", idleCode, "MiB"),
		InfoMetric("agent idle: file-backed, binary read-only data (.rodata, .gopclntab)", idleRO, "MiB"),
		NewMetric(fmt.Sprintf("agent RSS holding %d remote ports", cfg.Ports), loaded, "MiB", AtMost, cfg.Targets.AgentLoaded),
		NewMetric(fmt.Sprintf("server RSS, %d hosts, %d ports (embedded etcd included)", cfg.Hosts, cfg.Ports), server, "MiB", AtMost, cfg.Targets.Server),
	}
	out.Metrics[5].Note = fmt.Sprintf("%d FDB entries in the agent's namespace", fdb)
	out.Notes = append(out.Notes,
		fmt.Sprintf("VmRSS from /proc/PID/status, the maximum of samples every 100 ms once the state is reached: agent idle over %s, "+
			"agent loaded over %s, server over %s", cmp.Or(cfg.IdleWindow, cfg.Settle), cmp.Or(cfg.LoadedWindow, cfg.Settle), cfg.Settle),
		"agent: once converged, the agent drops its mappings of the binary's pages (MADV_DONTNEED on its read-only mappings, "+
			"the pages stay in the page cache); those it then uses come back, as the idle window's periodic full pass shows",
		"agent: the real `vxfab agent` binary (static membership, no gossip) in its own network namespace with the real kernel datapath",
		"agent idle, file-backed: the kernel maps the 64 KiB around each touched page of the binary (fault-around), so one function or "+
			"type touched costs 64 KiB; the binary's code and read-only data come from its /proc/PID/smaps mappings",
		fmt.Sprintf("server: controlplane/server with embedded etcd and the fan-out hub in a process of its own (as in benchmark 1), "+
			"with %d nodes registered, each with a Sync stream open (a client asking for snapshots in parts as the agent does, reading and discarding)", cfg.Hosts))
	return nil
}

// nsAgent is a `vxfab agent` process inside a namespace of its own.
type nsAgent struct {
	ns   string
	cmd  *exec.Cmd
	done chan error
}

func startNSAgent(ctx context.Context, bin, ns, server, stateDir string, level slog.Level) (*nsAgent, error) {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	a := &nsAgent{ns: ns}
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", memVTEP + "/32", "dev", "lo"}} {
		if out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			a.stop()
			return nil, fmt.Errorf("namespace %s: ip %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	a.cmd = exec.Command("ip", "netns", "exec", ns, bin, "agent", "--node", memNode, "--vtep", memVTEP,
		"--server", server, "--state-dir", stateDir, "--log-level", level.String())
	a.cmd.Stderr = os.Stderr
	if err := a.cmd.Start(); err != nil {
		a.cmd = nil
		a.stop()
		return nil, fmt.Errorf("start vxfab agent: %w", err)
	}
	a.done = make(chan error, 1)
	go func() { a.done <- a.cmd.Wait() }()
	return a, nil
}

// pid is the agent's process id (ip netns exec execs the agent in its own process).
func (a *nsAgent) pid() int { return a.cmd.Process.Pid }

// stop ends the agent (SIGTERM, then SIGKILL after 10 s) and deletes its namespace.
func (a *nsAgent) stop() {
	if a.cmd != nil {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
		a.cmd = nil
	}
	_ = exec.Command("ip", "netns", "del", a.ns).Run()
}

// waitNodeApplied polls the server until node reports rev applied (2 minutes at most).
func waitNodeApplied(ctx context.Context, nodes vxfabricv1.NodeServiceClient, node string, rev int64) error {
	deadline := time.Now().Add(2 * time.Minute)
	var last int64
	for {
		resp, err := nodes.GetNode(ctx, &vxfabricv1.GetNodeRequest{Name: node})
		if err == nil {
			last = resp.GetNode().GetAppliedRevision()
			if last >= rev {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: applied revision %d, want %d after 2m (last error %v)", node, last, rev, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sampleRSS returns the largest VmRSS (MiB) of pid over d, sampled every 100 ms.
func sampleRSS(ctx context.Context, pid int, d time.Duration) (float64, error) {
	var peak float64
	for end := time.Now().Add(d); ; {
		v, err := readRSS(pid)
		if err != nil {
			return 0, err
		}
		peak = max(peak, v)
		if time.Now().After(end) {
			return peak, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// readRSS reads VmRSS of pid in MiB.
func readRSS(pid int) (float64, error) { return readStatus(pid, "VmRSS") }

// readStatus reads a kB field of /proc/PID/status in MiB.
func readStatus(pid int, field string) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: %s %q: %w", pid, field, v, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no %s in /proc/%d/status", pid, field, pid)
}

// readBinaryRSS reads the resident size in MiB of pid's executable's code and read-only data
// mappings.
func readBinaryRSS(pid int) (code, rodata float64, err error) {
	ms, err := binpages.Of(pid)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range ms {
		switch m.Perms {
		case "r-xp":
			code += float64(m.Rss) / (1 << 20)
		case "r--p":
			rodata += float64(m.Rss) / (1 << 20)
		}
	}
	return code, rodata, nil
}

// countFDB counts the unicast FDB entries with a remote destination on the vxlan devices of ns.
func countFDB(ns string) (int, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return 0, fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return 0, fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		return 0, fmt.Errorf("links of %s: %w", ns, err)
	}
	n := 0
	for _, l := range links {
		if l.Type() != "vxlan" || !strings.HasPrefix(l.Attrs().Name, overlay.DeviceNamePrefix) {
			continue
		}
		var neighs []netlink.Neigh
		for attempt := 0; ; attempt++ {
			neighs, err = nl.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
			if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == 3 {
				break
			}
		}
		if err != nil {
			return 0, fmt.Errorf("fdb of %s in %s: %w", l.Attrs().Name, ns, err)
		}
		for _, e := range neighs {
			if e.IP != nil && len(e.HardwareAddr) == 6 && string(e.HardwareAddr) != string(make([]byte, 6)) {
				n++
			}
		}
	}
	return n, nil
}

// syncStreams are raw Sync clients: one connection and stream per node, messages read and dropped.
type syncStreams struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	conns  []*grpc.ClientConn
}

// openStreams opens a Sync stream for nodes 0..n-1 and returns once each has its first message.
func openStreams(ctx context.Context, addr string, n int) (*syncStreams, error) {
	sctx, cancel := context.WithCancel(context.Background())
	s := &syncStreams{cancel: cancel}
	first := make(chan error, n)
	for i := range n {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			s.close()
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		s.conns = append(s.conns, conn)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			stream, err := vxfabricv1.NewAgentServiceClient(conn).Sync(sctx, &vxfabricv1.SyncRequest{Node: HostName(i), SnapshotParts: true})
			if err != nil {
				first <- fmt.Errorf("sync %s: %w", HostName(i), err)
				return
			}
			if _, err := stream.Recv(); err != nil {
				first <- fmt.Errorf("sync %s: %w", HostName(i), err)
				return
			}
			first <- nil
			for {
				if _, err := stream.Recv(); err != nil {
					return
				}
			}
		}()
	}
	for range n {
		select {
		case err := <-first:
			if err != nil {
				s.close()
				return nil, err
			}
		case <-ctx.Done():
			s.close()
			return nil, ctx.Err()
		}
	}
	return s, nil
}

func (s *syncStreams) close() {
	s.cancel()
	s.wg.Wait()
	for _, c := range s.conns {
		c.Close()
	}
}
