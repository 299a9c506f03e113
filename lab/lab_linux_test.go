package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vxfabric/vxfabric/controlplane/client"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	ok := Default()
	ok.Bin = "/bin/true"
	tests := []struct {
		name   string
		change func(*Config)
		valid  bool
	}{
		{"default", func(*Config) {}, true},
		{"dash in name", func(c *Config) { c.Name = "my-lab" }, false},
		{"name too long", func(c *Config) { c.Name = "abcdefghijklm" }, false},
		{"name starts with digit", func(c *Config) { c.Name = "1lab" }, false},
		{"no hosts", func(c *Config) { c.Hosts = 0 }, false},
		{"too many hosts", func(c *Config) { c.Hosts = MaxHosts + 1 }, false},
		{"relative state root", func(c *Config) { c.StateRoot = "run/lab" }, false},
		{"no binary", func(c *Config) { c.Bin = "" }, false},
		{"bad prefix", func(c *Config) { c.NamespacePrefix = "vxl" }, false},
		{"test prefix", func(c *Config) { c.NamespacePrefix = "vxt-" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.change(&c)
			if err := c.Validate(); (err == nil) != tt.valid {
				t.Fatalf("Validate() = %v, want valid=%t", err, tt.valid)
			}
		})
	}
}

func TestNames(t *testing.T) {
	for host, want := range map[string]int{"h1": 1, "h32": 32, "h0": 0, "h33": 0, "h01": 0, "x1": 0, "h": 0} {
		i, ok := HostIndex(host)
		if ok != (want > 0) || (ok && i != want) {
			t.Errorf("HostIndex(%q) = %d, %t; want %d", host, i, ok, want)
		}
	}
	if got := HostAddr(3); got != netip.MustParseAddr("198.18.0.13") {
		t.Errorf("HostAddr(3) = %s", got)
	}
	for port, want := range map[string]string{"h1-ul": "h1", "h12-lan": "h12", "ctl-ul": "", "out-ul": ""} {
		if got := hostOfPort(port); got != want {
			t.Errorf("hostOfPort(%q) = %q, want %q", port, got, want)
		}
	}
	for _, bad := range []string{"h1", "outside", "lan", "ctl", "ul", "Web", "-a", ""} {
		if ValidateVMName(bad) == nil {
			t.Errorf("ValidateVMName(%q) accepted", bad)
		}
	}
	if err := ValidateVMName("web-1"); err != nil {
		t.Errorf("ValidateVMName(web-1): %v", err)
	}
	for _, w := range (&Lab{cfg: Config{Name: "lab", Hosts: MaxHosts, NamespacePrefix: "vxl-"}}).wires() {
		if len(w.switchEnd) > 15 || len(w.nsEnd) > 15 {
			t.Errorf("interface name too long: %q / %q", w.switchEnd, w.nsEnd)
		}
	}
}

func privileged(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	if os.Getenv("VXFAB_SKIP_PRIVILEGED") != "" {
		t.Skip("VXFAB_SKIP_PRIVILEGED is set")
	}
}

// testLab returns a lab with unique vxt- namespaces and a temporary state root, removed at cleanup.
// topologyLab is testLab with its run directory and namespaces (switch, hosts, outside) built.
func topologyLab(t *testing.T, hosts int) *Lab {
	t.Helper()
	l := testLab(t, hosts)
	if err := os.MkdirAll(l.runDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := l.ensureTopology(context.Background()); err != nil {
		t.Fatal(err)
	}
	return l
}

func testLab(t *testing.T, hosts int) *Lab {
	t.Helper()
	cfg := Default()
	cfg.Name = fmt.Sprintf("t%d", os.Getpid()%1000000)
	cfg.Hosts = hosts
	cfg.StateRoot = t.TempDir()
	cfg.NamespacePrefix = "vxt-"
	cfg.Bin = "/bin/sh"
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	return l
}

func mustReach(t *testing.T, l *Lab, from string, dst netip.Addr) {
	t.Helper()
	res, ok, err := l.Reach(context.Background(), from, dst, 3*time.Second)
	if err != nil || !ok {
		t.Fatalf("%s cannot reach %s: %v %s", from, dst, err, res.Output)
	}
}

func mustNotReach(t *testing.T, l *Lab, from string, dst netip.Addr) {
	t.Helper()
	res, err := l.Ping(context.Background(), from, dst, PingOptions{Count: 2, Interval: 100 * time.Millisecond, Wait: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Received > 0 {
		t.Fatalf("%s reaches %s: %s", from, dst, res.Output)
	}
}

func linkIndexes(t *testing.T, l *Lab) map[string]int {
	t.Helper()
	idx := map[string]int{}
	for _, w := range l.wires() {
		h, err := l.Handle(RoleSwitch)
		if err != nil {
			t.Fatal(err)
		}
		link, err := h.LinkByName(w.switchEnd)
		h.Close()
		if err != nil {
			t.Fatalf("switch end %s: %v", w.switchEnd, err)
		}
		idx[w.switchEnd] = link.Attrs().Index
	}
	return idx
}

// TestPrivilegedTopology builds the lab's namespaces and cables (no fabric processes), checks the
// underlay from the inside, repairs a cut cable end, cuts and restores a host, runs and kills a
// lab process, and checks that Down leaves nothing.
func TestPrivilegedTopology(t *testing.T) {
	privileged(t)
	ctx := context.Background()
	l := testLab(t, 2)
	for _, dir := range []string{l.Dir(), l.logDir(), l.runDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.ensureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	mustReach(t, l, "h1", HostAddr(2))
	mustReach(t, l, "h2", ControlAddr)
	mustReach(t, l, "outside", HostAddr(1))

	// br_netfilter is off for the bridges of hosts and switch unless the lab asks for it, whatever
	// the machine's module state ("" when the module is not loaded: nothing to switch).
	checkBridgeNetfilter := func(want string) {
		t.Helper()
		for _, r := range []string{RoleSwitch, "h1", "h2"} {
			got, err := bridgeNetfilter(l.Namespace(r))
			if err != nil {
				t.Fatal(err)
			}
			if got != "" && got != want {
				t.Errorf("%s: bridge-nf-call-{arptables,iptables,ip6tables} = %s, want %s", r, got, want)
			}
		}
	}
	checkBridgeNetfilter("0,0,0")
	l.cfg.BridgeNetfilter = true
	if err := l.ensureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	checkBridgeNetfilter("1,1,1")
	l.cfg.BridgeNetfilter = false

	h1, err := l.Handle("h1")
	if err != nil {
		t.Fatal(err)
	}
	lan0, err := h1.LinkByName(LANIface)
	if err != nil {
		t.Fatalf("h1 has no %s: %v", LANIface, err)
	}
	if addrs, _ := h1.AddrList(lan0, netlink.FAMILY_V4); len(addrs) != 0 {
		t.Errorf("h1 %s has addresses %v, want none", LANIface, addrs)
	}
	h1.Close()
	// The LAN segment: give h1's lan0 an address in a test-only way and reach the lan namespace.
	if out, err := l.Output(ctx, "h1", "ip", "addr", "add", "192.168.77.99/24", "dev", LANIface); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	mustReach(t, l, "h1", LANAddr)

	// Idempotent: a second pass changes no link.
	before := linkIndexes(t, l)
	if err := l.ensureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	if after := linkIndexes(t, l); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("second ensureTopology recreated links: %v -> %v", before, after)
	}

	// A lone cable end (its peer deleted by hand) is repaired.
	if _, err := l.Output(ctx, "ul", "ip", "link", "del", "h2-ul"); err != nil {
		t.Fatal(err)
	}
	if err := l.ensureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	mustReach(t, l, "h1", HostAddr(2))

	// Cut and restore; a cut survives ensureTopology (lab up on an existing lab).
	if err := l.CutHost("h2"); err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, l, "h1", HostAddr(2))
	if err := l.ensureTopology(ctx); err != nil {
		t.Fatal(err)
	}
	if cut, err := l.HostCut("h2"); err != nil || !cut {
		t.Fatalf("HostCut(h2) = %t, %v after ensureTopology", cut, err)
	}
	if err := l.RestoreHost("h2"); err != nil {
		t.Fatal(err)
	}
	mustReach(t, l, "h1", HostAddr(2))

	// A process in a host namespace is found through its pid file, and by the scan when the pid
	// file is lost.
	p := proc{name: agentProc("h1"), ns: l.Namespace("h1"),
		args: []string{"-c", "while :; do sleep 1; done", filepath.Join(l.Dir(), "marker")}}
	pid, err := l.start(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.AgentPID("h1"); got != pid {
		t.Fatalf("AgentPID(h1) = %d, want %d", got, pid)
	}
	if err := l.KillAgent(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	if got := l.AgentPID("h1"); got != 0 {
		t.Fatalf("AgentPID(h1) = %d after kill", got)
	}
	if _, err := l.start(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(l.pidPath(p.name)); err != nil {
		t.Fatal(err)
	}
	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	left, err := l.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("left after Down: %v", left)
	}
	nss, _ := listNamespaces(l.NamespacePrefix())
	if len(nss) != 0 {
		t.Fatalf("namespaces left: %v", nss)
	}
}

// TestPrivilegedProbes checks the in-namespace TCP helpers: the listener reports the source address
// the connection arrived from.
func TestPrivilegedProbes(t *testing.T) {
	privileged(t)
	l := topologyLab(t, 1)
	ln, err := l.ListenTCP(RoleOutside, netip.AddrPortFrom(OutsideAddr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen, err := l.DialTCP("h1", ln.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if seen != HostAddr(1) {
		t.Fatalf("outside saw %s, want %s", seen, HostAddr(1))
	}
	// The listener is in outside, not in this process's namespace (read from the kernel's tables:
	// a dial from here would leave the machine through its default route).
	if in, err := l.TCPListeners(RoleOutside); err != nil || !slices.Contains(in, ln.Addr()) {
		t.Fatalf("listeners in outside: %v, %v; want %s", in, err, ln.Addr())
	}
	table, err := os.ReadFile("/proc/thread-self/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	if here, err := parseTCPListeners(string(table)); err != nil || slices.Contains(here, ln.Addr()) {
		t.Fatalf("listeners in the test's own namespace: %v, %v; want no %s", here, err, ln.Addr())
	}
	if _, err := l.DialTCP("h1", netip.AddrPortFrom(OutsideAddr, 1), time.Second); err == nil ||
		!strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial to a closed port: %v, want refused", err)
	}
}

func TestParseNIC(t *testing.T) {
	tests := []struct {
		in   string
		want NICSpec
		ok   bool
	}{
		{"acme/web", NICSpec{Tenant: "acme", Network: "web"}, true},
		{"acme/web=10.0.0.5", NICSpec{Tenant: "acme", Network: "web", IP: "10.0.0.5"}, true},
		{"acme/web=", NICSpec{Tenant: "acme", Network: "web"}, true},
		{"acme/", NICSpec{}, false},
		{"/web", NICSpec{}, false},
		{"acme/web/x", NICSpec{}, false},
		{"a/b=::1", NICSpec{}, false},
		{"a/b=1.2.3.4%eth0", NICSpec{}, false},
		{"a/b=c=d", NICSpec{}, false},
		{"", NICSpec{}, false},
	}
	for _, tt := range tests {
		got, err := ParseNIC(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseNIC(%q) = %+v, %v; want %+v ok=%t", tt.in, got, err, tt.want, tt.ok)
		}
	}
	// The user reads what is wrong with the NIC they gave, not netip's parser internals.
	for in, want := range map[string]string{
		"acme/web2=999.1.1.1": `nic "acme/web2=999.1.1.1": 999.1.1.1 is not an IPv4 address`,
		"acme/web2=::1":       `nic "acme/web2=::1": ::1 is not an IPv4 address`,
		"acme":                `nic "acme": want TENANT/NETWORK[=IP]`,
	} {
		if _, err := ParseNIC(in); err == nil || err.Error() != want {
			t.Errorf("ParseNIC(%q): error %v, want %q", in, err, want)
		}
	}
}

// bridgeNetfilter reads the three switches in a namespace: "" when br_netfilter is not loaded,
// else their values joined by commas.
func bridgeNetfilter(ns string) (string, error) {
	var vals []string
	err := inNamespace(ns, func() error {
		for _, path := range bridgeNetfilterSysctls {
			b, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				vals = nil
				return nil
			}
			if err != nil {
				return fmt.Errorf("namespace %q: read %s: %w", ns, path, err)
			}
			vals = append(vals, strings.TrimSpace(string(b)))
		}
		return nil
	})
	return strings.Join(vals, ","), err
}

// TestProfileFollowsTheLabLeftUp: taking down the lab the shared client profile points at hands
// the profile to the one lab still up; with none or several left, it goes.
func TestProfileFollowsTheLabLeftUp(t *testing.T) {
	root := t.TempDir()
	shared := filepath.Join(root, "client.json")
	open := func(name string) *Lab {
		t.Helper()
		cfg := Default()
		cfg.Name, cfg.StateRoot, cfg.ProfilePath, cfg.Bin = name, root, shared, "/bin/true" // nothing is run
		l, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(l.Dir(), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := l.writeProfiles(); err != nil {
			t.Fatal(err)
		}
		return l
	}
	server := func() string {
		p, err := client.ReadProfile(shared)
		if errors.Is(err, os.ErrNotExist) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return p.Server
	}
	a, b := open("a"), open("b") // b was brought up last: the shared profile is b's
	if err := b.removeProfile(); err != nil {
		t.Fatal(err)
	}
	if got := server(); got != a.Profile().Server {
		t.Errorf("after b went: shared profile %q, want a's %q", got, a.Profile().Server)
	}
	if err := os.RemoveAll(b.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := a.removeProfile(); err != nil {
		t.Fatal(err)
	}
	if got := server(); got != "" {
		t.Errorf("after the last lab went: shared profile %q, want none", got)
	}
}

// The CLI reaches a lab with no flags only when the default profile points at it; for any other
// lab, `lab up` and the demo's hints put VXFAB_PROFILE=<the lab's own profile> in front.
func TestProfileEnv(t *testing.T) {
	root := t.TempDir()
	shared := filepath.Join(root, "client.json")
	handle := func(name, profile string) *Lab {
		t.Helper()
		cfg := Default()
		cfg.Name, cfg.StateRoot, cfg.ProfilePath, cfg.Bin = name, root, profile, "/bin/true" // nothing is run
		l, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	up := func(name, profile string) *Lab {
		t.Helper()
		l := handle(name, profile)
		if err := os.MkdirAll(l.Dir(), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := l.writeProfiles(); err != nil {
			t.Fatal(err)
		}
		return l
	}
	a := up("lab", shared)    // lab up: the default profile is this lab's
	b := up("rv", "")         // lab up --name rv --default-profile=false
	c := handle("rv", shared) // rv as a later command opens it: the default profile is a's
	d := handle("lab", "")    // a lab under another state root: no default profile at all
	for _, tc := range []struct {
		l    *Lab
		want string
	}{
		{a, ""},
		{b, "VXFAB_PROFILE=" + filepath.Join(root, "rv", "client.json")},
		{c, "VXFAB_PROFILE=" + filepath.Join(root, "rv", "client.json")},
		{d, "VXFAB_PROFILE=" + filepath.Join(root, "lab", "client.json")},
	} {
		if got := tc.l.ProfileEnv(); got != tc.want {
			t.Errorf("lab %s: ProfileEnv() = %q, want %q", tc.l.Name(), got, tc.want)
		}
	}
	hints := func(l *Lab) string {
		var s []string
		for _, h := range l.demoHints("vxfab", netip.MustParseAddr("10.0.0.12")) {
			s = append(s, h[0])
		}
		return strings.Join(s, "\n")
	}
	if got := hints(a); !strings.Contains(got, "\nvxfab network list\n") || strings.Contains(got, "VXFAB_PROFILE") || strings.Contains(got, "--name") {
		t.Errorf("demo hints of the default lab:\n%s", got)
	}
	if got := hints(c); !strings.Contains(got, "\nVXFAB_PROFILE="+c.ProfilePath()+" vxfab network list\n") || !strings.Contains(got, "vxfab lab --name rv status") {
		t.Errorf("demo hints of lab rv, not the default profile's:\n%s", got)
	}
}

// Up and Down of one lab take turns: a second holder of the lab's lock waits for the first, and
// gives up when its context ends; Down of a lab that is gone removes the lock file and the state root.
func TestLabLockTakesTurns(t *testing.T) {
	l := testLab(t, 1)
	unlock, err := l.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := l.lock(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second lock while the first is held: %v, want it to wait until its deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		unlock2, err := l.lock(context.Background())
		if err == nil {
			unlock2(false)
		}
		got <- err
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("the second lock returned (%v) while the first was held", err)
	default:
	}
	unlock(false)
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second lock did not get it once the first was released")
	}
	if err := l.Down(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.cfg.StateRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state root after the last lab's down: %v, want it gone with the lock file", err)
	}
}

// A namespace name left without its namespace (a plain file, as `ip netns add` cut short leaves
// it) is made anew instead of failing every later `lab up`.
func TestPrivilegedStaleNamespaceNameMadeAnew(t *testing.T) {
	privileged(t)
	l := testLab(t, 1)
	ns := l.Namespace(RoleOutside)
	path := filepath.Join(netnsDir, ns)
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(context.Background(), ns); _ = os.Remove(path) })
	if err := ensureNamespace(context.Background(), ns); err != nil {
		t.Fatalf("ensure a namespace whose name is a stale file: %v", err)
	}
	if !isNamespaceMount(path) {
		t.Fatalf("%s is not a namespace after ensureNamespace", path)
	}
	if out, err := l.Output(context.Background(), RoleOutside, "ip", "-o", "link", "show", "lo"); err != nil || !strings.Contains(out, "UP") {
		t.Errorf("loopback of the namespace made anew: %q, %v", out, err)
	}
}
