package membership

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runChild is a member in its own process (so that it can be stopped and killed for real); it runs
// until its standard input closes.
func runChild(name, seed string) {
	cfg := Default(RoleAgent, name)
	cfg.VTEP = netip.MustParseAddr("198.18.0.99")
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Join = []string{seed}
	cfg.PushPullInterval = 2 * time.Second
	m, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = m.Leave(time.Second)
	_ = m.Shutdown()
	os.Exit(0)
}

type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startChild(t *testing.T, name, seed string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "VXFAB_MEMBERSHIP_CHILD="+name, "VXFAB_MEMBERSHIP_SEED="+seed)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString(10)
	if err != nil || line != "ready\n" {
		t.Fatalf("child member %s did not start: %q %v", name, line, err)
	}
	return c
}

// TestPausedProcessNotDeclaredDead stops a member's process with SIGSTOP for 3 s: nobody may declare
// it dead (it may be suspected). Then SIGKILL: everyone declares it dead within 5 s.
func TestPausedProcessNotDeclaredDead(t *testing.T) {
	pauses := 1
	if n, err := strconv.Atoi(os.Getenv("VXFAB_GOSSIP_TRIALS")); err == nil && n > 0 {
		pauses = n
	}
	var ms []*Member
	for i := range 4 {
		var seeds []string
		if i > 0 {
			seeds = []string{ms[0].LocalAddr().String()}
		}
		ms = append(ms, startMember(t, fmt.Sprintf("obs-%d", i), memberOpts{seeds: seeds}))
	}
	c := startChild(t, "paused", ms[0].LocalAddr().String())
	for _, m := range ms {
		waitState(t, m, "paused", StateAlive, 10*time.Second)
	}
	var mu sync.Mutex
	seen := map[State]int{}
	downs := 0 // the host's kernel answers dials while the process is stopped: never Down
	var wg sync.WaitGroup
	var cancels []func()
	for _, m := range ms {
		ch, cancel := m.Subscribe()
		cancels = append(cancels, cancel)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range ch {
				if ev.Peer.Name == "paused" && ev.Peer.State != ev.Previous {
					mu.Lock()
					seen[ev.Peer.State]++
					mu.Unlock()
				}
				if ev.Peer.Name == "paused" && ev.Peer.Down() && !ev.PreviousDown {
					mu.Lock()
					downs++
					mu.Unlock()
				}
			}
		}()
	}
	for range pauses {
		if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		// A death would be declared by now: the suspicion timeout is 4 s from the first failed probe.
		time.Sleep(2 * time.Second)
		for _, m := range ms {
			if st := stateOf(m, "paused"); st != StateAlive {
				t.Fatalf("%s sees the resumed member as %s", m.Name(), st)
			}
		}
	}
	mu.Lock()
	t.Logf("during %d pauses of 3 s the observers saw: %d suspect, %d dead", pauses, seen[StateSuspect], seen[StateDead])
	if seen[StateDead] > 0 || seen[StateLeft] > 0 || downs > 0 {
		t.Fatalf("a member paused for 3 s was declared dead or left (%v) or down (%d times)", seen, downs)
	}
	mu.Unlock()

	killed := time.Now()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var worst time.Duration
	for _, m := range ms {
		waitState(t, m, "paused", StateDead, 8*time.Second)
		for _, p := range m.Members() {
			if p.Name == "paused" {
				worst = max(worst, p.Since.Sub(killed))
			}
		}
	}
	t.Logf("SIGKILLed process dead at every observer after %s", worst)
	if worst > deadBound {
		t.Fatalf("killed process took %s to be declared dead everywhere, want under %s", worst, deadBound)
	}
	for _, cancel := range cancels {
		cancel()
	}
	wg.Wait()
}

// TestExchangeSkipsSuspects: a state exchange asks only the members this member holds alive. A
// suspect (here a paused process, whose kernel completes the handshake and which never answers) would
// hold the exchange, and maintain with it, for memberlist's TCPTimeout (10 s). memberlist's own member
// list does not tell: it lists suspects and never sets Node.State.
func TestExchangeSkipsSuspects(t *testing.T) {
	a := startMember(t, "ex-a", memberOpts{})
	c := startChild(t, "ex-paused", a.LocalAddr().String())
	waitState(t, a, "ex-paused", StateAlive, 10*time.Second)
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.cmd.Process.Signal(syscall.SIGCONT) }()
	waitState(t, a, "ex-paused", StateSuspect, 5*time.Second)
	start := time.Now()
	a.exchange()
	took := time.Since(start)
	if took > 2*time.Second {
		t.Fatalf("a state exchange took %s with a suspect member paused, want it not asked", took)
	}
	if st := stateOf(a, "ex-paused"); st != StateSuspect {
		t.Fatalf("the paused member is %s after the exchange, want still suspect (too slow a machine?)", st)
	}
}
