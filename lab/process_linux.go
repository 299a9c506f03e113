package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vxfabric/vxfabric/security/pki"
)

// proc is one long-running process of the lab.
type proc struct {
	name string // "server" or "agent-hN": names its pid file and log
	ns   string
	args []string
}

const serverProc = "server"

func agentProc(host string) string { return "agent-" + host }

// serverAddr is the server's gRPC address on the underlay, for agents.
func serverAddr() string { return ControlAddr.String() + ":" + strconv.Itoa(ServerPort) }

func gossipAddr(a netip.Addr) string { return a.String() + ":" + strconv.Itoa(GossipPort) }

// The server listens on the underlay (for agents, TLS with the lab's PKI: agents present their node
// certificates) and on a unix socket in the state directory (for the root namespace's CLI, with the
// admin token the server writes on first start: no link into the root namespace is needed). Its
// gossip, encrypted with the lab's key, has the hosts as seeds: a restarted server re-joins them
// while it is alone, whereas agents that still see each other would never come back to a seed that
// restarted.
func (l *Lab) serverSpec() proc {
	seeds := make([]string, l.cfg.Hosts)
	for i := range seeds {
		seeds[i] = gossipAddr(HostAddr(i + 1))
	}
	return proc{name: serverProc, ns: l.Namespace(RoleControl), args: []string{
		"server",
		"--listen", serverAddr(),
		"--listen", "unix://" + l.SocketPath(),
		"--data-dir", l.etcdDir(),
		"--gossip-bind", gossipAddr(ControlAddr),
		"--join", strings.Join(seeds, ","),
		"--gossip-keyring", l.pkiPath(pki.GossipKeyFile),
		"--tls-cert", l.pkiPath(pki.ServerCert),
		"--tls-key", l.pkiPath(pki.ServerKey),
		"--tls-ca", l.pkiPath(pki.CACertFile),
		"--tls-crl", l.pkiPath(pki.CRLFile),
		"--admin-token-file", l.AdminTokenPath(),
		// Every agent is local and confirms a step within a second: short steps shut a revoked
		// host out of gossip about 10 s after its revocation.
		"--gossip-revoke-rotation", "5s",
	}}
}

func (l *Lab) agentSpec(host string) proc {
	i, _ := HostIndex(host)
	addr := HostAddr(i).String()
	return proc{name: agentProc(host), ns: l.Namespace(host), args: []string{
		"agent",
		"--node", host,
		"--vtep", addr,
		"--underlay-iface", UnderlayIface,
		"--join", gossipAddr(ControlAddr),
		"--gossip-bind", gossipAddr(HostAddr(i)),
		"--gossip-keyring", l.AgentKeyringPath(host),
		"--tls-ca", l.pkiPath(pki.CACertFile),
		"--tls-cert", l.pkiPath(pki.NodeCertFile(host)),
		"--tls-key", l.pkiPath(pki.NodeKeyFile(host)),
		"--tls-crl", l.pkiPath(pki.CRLFile),
		"--state-dir", l.AgentStateDir(host),
		"--metrics-listen", addr + ":" + strconv.Itoa(MetricsPort),
	}}
}

func (l *Lab) pidPath(name string) string { return filepath.Join(l.runDir(), name+".pid") }

// running returns the pid of a lab process that is alive, or 0. A pid file is trusted only if the
// process it names still carries the lab's state directory on its command line (pids are reused).
func (l *Lab) running(name string) int {
	data, err := os.ReadFile(l.pidPath(name))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	if !processAlive(pid) || !l.ownsProcess(pid) {
		return 0
	}
	return pid
}

// processAlive is false for a pid that is gone or a zombie (exited, not yet reaped).
func processAlive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may itself hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	state := data[i+2]
	return state != 'Z' && state != 'X'
}

func processCmdline(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}

// ownsProcess: every process the lab starts names a path inside the lab's state directory.
func (l *Lab) ownsProcess(pid int) bool {
	marker := l.Dir() + string(filepath.Separator)
	for _, arg := range processCmdline(pid) {
		if strings.HasPrefix(arg, marker) || strings.Contains(arg, "://"+marker) {
			return true
		}
	}
	return false
}

// childEnv is the environment of lab processes: the caller's, without VXFAB_* settings that are
// meant for the caller's own CLI (a VXFAB_SERVER pointing elsewhere must not steer an agent).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VXFAB_") {
			env = append(env, kv)
		}
	}
	return env
}

// start runs p in its namespace, in a session of its own (so that the terminal's Ctrl-C does not
// reach it), with its output appended to its log, and records its pid. It returns once the process
// is the vxfab binary (ip netns exec has exec'ed it), or fails if it exits before.
func (l *Lab) start(ctx context.Context, p proc) (int, error) {
	if pid := l.running(p.name); pid != 0 {
		if inNamespaceOf(pid, p.ns) {
			return pid, nil
		}
		// Its namespace was deleted (and made anew since): it runs cut off from the lab, where
		// nothing reaches it. It goes, and a new one starts in the namespace of that name.
		l.log.Warn("lab process runs outside its namespace: restarting it", "proc", p.name, "pid", pid, "namespace", p.ns)
		if err := l.signal(ctx, p.name, syscall.SIGKILL, 5*time.Second); err != nil {
			return 0, err
		}
	}
	logFile, err := os.OpenFile(l.LogPath(p.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("%s: open log: %w", p.name, err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "--- vxfab lab: %s start %s: %s %s\n", p.name, time.Now().UTC().Format(time.RFC3339Nano),
		l.cfg.Bin, strings.Join(p.args, " "))
	argv := append([]string{"netns", "exec", p.ns, l.cfg.Bin}, p.args...)
	cmd := exec.Command("ip", argv...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("%s: start %s in %s: %w", p.name, l.cfg.Bin, p.ns, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	// Reap the child when it exits, so that a process killed while this one still runs does not
	// linger as a zombie.
	go func() { exited <- cmd.Wait() }()
	if err := writeFileAtomic(l.pidPath(p.name), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return 0, fmt.Errorf("%s: %w", p.name, err)
	}
	exe, _ := filepath.EvalSymlinks(l.cfg.Bin)
	err = poll(ctx, 5*time.Second, func() (bool, error) {
		select {
		case err := <-exited:
			return false, fmt.Errorf("%s exited at start (%v): %s", p.name, err, l.logTail(p.name, 5))
		default:
		}
		got, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		// The kernel points exe at the new binary before it lays out the new command line (an
		// empty cmdline for a moment, under load): wait for both, so that running() finds it.
		return err == nil && (got == exe || got == l.cfg.Bin) && l.ownsProcess(pid), nil
	})
	if err != nil {
		return 0, err
	}
	l.log.Info("lab process started", "proc", p.name, "pid", pid)
	return pid, nil
}

// logTail returns the last n lines of a process's log, on one line, for error messages.
func (l *Lab) logTail(name string, n int) string {
	data, err := os.ReadFile(l.LogPath(name))
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "log " + l.LogPath(name) + ": " + strings.Join(lines, " | ")
}

// signal sends sig to a lab process and waits until it is gone. Stopping a stopped process is
// success. A graceful stop (SIGTERM) that takes longer than grace ends with SIGKILL.
func (l *Lab) signal(ctx context.Context, name string, sig syscall.Signal, grace time.Duration) error {
	pid := l.running(name)
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%s: signal %d (pid %d): %w", name, sig, pid, err)
	}
	gone := func() (bool, error) { return !processAlive(pid), nil }
	if err := poll(ctx, grace, gone); err != nil {
		if sig == syscall.SIGKILL {
			return fmt.Errorf("%s (pid %d) still alive after SIGKILL: %w", name, pid, err)
		}
		l.log.Warn("lab process ignored SIGTERM, killing", "proc", name, "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if err := poll(ctx, 5*time.Second, gone); err != nil {
			return fmt.Errorf("%s (pid %d) still alive after SIGKILL: %w", name, pid, err)
		}
	}
	l.log.Info("lab process stopped", "proc", name, "pid", pid, "signal", sig.String())
	return nil
}

// labProcesses finds every process that belongs to the lab, also after a crash that lost the pid
// files: those whose network namespace is one of the lab's, and those whose command line names the
// lab's state directory. The calling process and its ancestors are left out.
func (l *Lab) labProcesses() ([]int, error) {
	nss, err := listNamespaces(l.NamespacePrefix())
	if err != nil {
		return nil, err
	}
	return processesIn(nss, l.ownsProcess)
}

// inNamespaceOf reports whether process pid runs in the named namespace.
func inNamespaceOf(pid int, ns string) bool {
	have, ok := statNS("/proc/" + strconv.Itoa(pid) + "/ns/net")
	want, known := statNS(filepath.Join(netnsDir, ns))
	return ok && known && have == want
}

// processesIn lists the processes whose network namespace is one of the named ones, or for which
// also (when not nil) holds. The calling process and its ancestors are left out.
func processesIn(nss []string, also func(pid int) bool) ([]int, error) {
	ids := map[nsID]bool{}
	for _, ns := range nss {
		if id, ok := statNS(filepath.Join(netnsDir, ns)); ok {
			ids[id] = true
		}
	}
	spare := map[int]bool{}
	for pid := os.Getpid(); pid > 1; pid = parentPid(pid) {
		spare[pid] = true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || spare[pid] || !processAlive(pid) {
			continue
		}
		id, ok := statNS("/proc/" + e.Name() + "/ns/net")
		if (ok && ids[id]) || (also != nil && also(pid)) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killProcessesIn kills (SIGKILL) every process in the named namespace and waits until they are
// gone: a process left there would keep the namespace, and the port's link, alive after the name is
// removed, where nothing would find it again.
func killProcessesIn(ctx context.Context, ns string) error {
	pids, err := processesIn([]string{ns}, nil)
	if err != nil || len(pids) == 0 {
		return err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	err = poll(ctx, 5*time.Second, func() (bool, error) {
		return !slices.ContainsFunc(pids, processAlive), nil
	})
	if err != nil {
		return fmt.Errorf("processes %v in namespace %s still alive after SIGKILL: %w", pids, ns, err)
	}
	return nil
}

func parentPid(pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// poll calls cond until it reports true, returns an error, or timeout passes. It never sleeps
// longer than 20 ms between calls.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s: %w", timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// StartServer starts the server (a running one is left alone) and waits until it serves.
func (l *Lab) StartServer(ctx context.Context) error {
	if _, err := l.start(ctx, l.serverSpec()); err != nil {
		return err
	}
	return l.waitServer(ctx)
}

// StopServer stops the server gracefully (SIGTERM).
func (l *Lab) StopServer(ctx context.Context) error {
	return l.signal(ctx, serverProc, syscall.SIGTERM, 10*time.Second)
}

// StartAgent starts a host's agent (a running one is left alone). It does not wait for the agent
// to join: see WaitAgents.
func (l *Lab) StartAgent(ctx context.Context, host string) error {
	if err := l.checkHost(host); err != nil {
		return err
	}
	if err := os.MkdirAll(l.AgentStateDir(host), 0o700); err != nil {
		return fmt.Errorf("agent %s: state dir: %w", host, err)
	}
	if err := l.ensureAgentKeyring(host); err != nil {
		return err
	}
	_, err := l.start(ctx, l.agentSpec(host))
	return err
}

// AgentKeyringPath is host's own copy of the gossip keyring, as a separate machine would hold it:
// made from the lab's at the agent's first start, then kept current by the agent alone (so a host
// that misses a rotation, or is revoked, holds the keys it had).
func (l *Lab) AgentKeyringPath(host string) string {
	return filepath.Join(l.AgentStateDir(host), pki.GossipKeyFile)
}

func (l *Lab) ensureAgentKeyring(host string) error {
	path := l.AgentKeyringPath(host)
	if _, err := os.Stat(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	keys, err := os.ReadFile(l.pkiPath(pki.GossipKeyFile))
	if err != nil {
		return fmt.Errorf("agent %s: gossip keyring: %w", host, err)
	}
	if err := pki.WriteFileAtomic(path, keys, 0o600); err != nil {
		return fmt.Errorf("agent %s: gossip keyring: %w", host, err)
	}
	return nil
}

// StopAgent stops a host's agent gracefully (SIGTERM): it leaves the gossip cluster.
func (l *Lab) StopAgent(ctx context.Context, host string) error {
	if err := l.checkHost(host); err != nil {
		return err
	}
	return l.signal(ctx, agentProc(host), syscall.SIGTERM, 10*time.Second)
}

// KillAgent kills a host's agent with SIGKILL, as a crash would.
func (l *Lab) KillAgent(ctx context.Context, host string) error {
	if err := l.checkHost(host); err != nil {
		return err
	}
	return l.signal(ctx, agentProc(host), syscall.SIGKILL, 5*time.Second)
}

// ServerPID and AgentPID return the pid of a running process, or 0.
func (l *Lab) ServerPID() int           { return l.running(serverProc) }
func (l *Lab) AgentPID(host string) int { return l.running(agentProc(host)) }

// PauseAgent stops a host's agent with SIGSTOP, as a stalled machine or a long pause would: the
// process keeps its sockets and kernel state but answers nothing until ResumeAgent.
func (l *Lab) PauseAgent(host string) error {
	if err := l.checkHost(host); err != nil {
		return err
	}
	pid := l.running(agentProc(host))
	if pid == 0 {
		return fmt.Errorf("pause agent %s: not running", host)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause agent %s (pid %d): %w", host, pid, err)
	}
	l.log.Info("lab process paused", "proc", agentProc(host), "pid", pid)
	return nil
}

// AgentPaused reports whether host's agent is running but stopped (PauseAgent).
func (l *Lab) AgentPaused(host string) bool {
	pid := l.AgentPID(host)
	if pid == 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ')'.
	_, rest, ok := bytes.Cut(stat[bytes.LastIndexByte(stat, ')')+1:], []byte(" "))
	return ok && len(rest) > 0 && (rest[0] == 'T' || rest[0] == 't')
}

// ResumeAgent continues a paused agent (SIGCONT). An agent that is running or not running at all
// is left as it is.
func (l *Lab) ResumeAgent(host string) error {
	if err := l.checkHost(host); err != nil {
		return err
	}
	pid := l.running(agentProc(host))
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("resume agent %s (pid %d): %w", host, pid, err)
	}
	return nil
}
