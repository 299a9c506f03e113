//go:build linux

package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vxfabric/vxfabric/lab"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// The suite's lab: its own name, namespace prefix and state root, so that it never meets a user's
// lab (a user's `vxfab lab down` or `lab status` lists the labs of the default root only). Runs of
// the suite on one machine take turns through lockPath.
const (
	labName   = "e2e"
	nsPrefix  = "vxt-"
	stateRoot = "/run/vxfabric/tests"
	lockPath  = "/run/vxfabric/tests.lock"
)

var suite struct {
	once sync.Once
	l    *lab.Lab
	err  error
	// built is set once the suite has run `lab up`, so that TestMain takes the lab down.
	built bool
}

func TestMain(m *testing.M) {
	code := m.Run()
	if suite.built {
		if code != 0 {
			showLogs(filepath.Join(stateRoot, labName, "log"))
		}
		if out, err := vxfab(context.Background(), "lab", "down"); err != nil {
			fmt.Fprintf(os.Stderr, "tests: lab down: %v\n%s", err, out)
			code = 1
		} else if left, err := suite.l.Leftovers(); err != nil || len(left) > 0 {
			fmt.Fprintf(os.Stderr, "tests: left after lab down: %v %v\n", left, err)
			code = 1
		}
	}
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "tests: goroutines leaked: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

// showLogs keeps the lab's logs of a failed run (lab down removes them): the last lines of each on
// stderr, where a CI run's output has them, and the whole files in a directory of their own.
func showLogs(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	keep, err := os.MkdirTemp("", "vxfab-e2e-logs-")
	if err != nil {
		keep = ""
	}
	const tail = 40
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if keep != "" {
			_ = os.WriteFile(filepath.Join(keep, filepath.Base(f)), b, 0o600)
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		lines = lines[max(0, len(lines)-tail):]
		fmt.Fprintf(os.Stderr, "tests: the last %d lines of %s:\n%s\n", len(lines), filepath.Base(f), strings.Join(lines, "\n"))
	}
	if keep != "" {
		fmt.Fprintf(os.Stderr, "tests: the lab's logs are kept in %s\n", keep)
	}
}

// vxfab runs the binary under test; "lab" commands are pointed at the suite's lab.
func vxfab(ctx context.Context, args ...string) (string, error) {
	if len(args) > 0 && args[0] == "lab" {
		args = append([]string{"lab", "--name=" + labName, "--namespace-prefix=" + nsPrefix, "--state-root=" + stateRoot}, args[1:]...)
	}
	cmd := exec.CommandContext(ctx, os.Getenv("VXFAB_BIN"), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The suite's own lab, never the user's (an empty VXFAB_PROFILE would mean the default one).
	cmd.Env = append(os.Environ(), "VXFAB_PROFILE="+filepath.Join(stateRoot, labName, "client.json"))
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("vxfab %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// mustVxfab runs the binary and fails the test if the command fails.
func mustVxfab(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := vxfab(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// requireLab skips unless the suite can run (root, VXFAB_BIN) and returns the shared lab, bringing
// it up on first use (after removing a lab a crashed run may have left).
func requireLab(t *testing.T) *lab.Lab {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	if os.Getenv("VXFAB_SKIP_PRIVILEGED") != "" {
		t.Skip("VXFAB_SKIP_PRIVILEGED is set")
	}
	bin := os.Getenv("VXFAB_BIN")
	if bin == "" {
		t.Skip("VXFAB_BIN is not set: run `make test` (it builds bin/vxfab), or set VXFAB_BIN to a vxfab binary")
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Skipf("VXFAB_BIN=%s is not an executable: run `make build`", bin)
	}
	suite.once.Do(func() {
		if suite.err = takeTurn(t); suite.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := vxfab(ctx, "lab", "down"); err != nil {
			suite.err = fmt.Errorf("remove a leftover lab: %w\n%s", err, out)
			return
		}
		suite.built = true
		began := time.Now()
		if _, err := vxfab(ctx, "lab", "up", "--hosts=3", "--default-profile=false"); err != nil {
			suite.err = err
			return
		}
		t.Logf("lab up in %s", time.Since(began).Round(time.Millisecond))
		cfg := lab.Default()
		cfg.Name = labName
		cfg.NamespacePrefix = nsPrefix
		cfg.StateRoot = stateRoot
		suite.l, suite.err = lab.Open(cfg)
	})
	if suite.err != nil {
		t.Fatalf("lab: %v", suite.err)
	}
	return suite.l
}

// fixture is one test's slice of the shared lab: its own tenant, whose networks and VMs are removed
// when the test ends.
type fixture struct {
	t      *testing.T
	l      *lab.Lab
	c      *lab.Client
	ctx    context.Context
	tenant string
}

func newFixture(t *testing.T, tenant string) *fixture {
	t.Helper()
	l := requireLab(t)
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, l: l, c: c, ctx: context.Background(), tenant: tenant}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := removeTenant(ctx, l, c, tenant); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		c.Conn.Close()
	})
	// A crashed run of this test may have left the tenant behind.
	if err := removeTenant(f.ctx, l, c, tenant); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Tenants.CreateTenant(f.ctx, &vxfabricv1.CreateTenantRequest{Name: tenant}); err != nil {
		t.Fatalf("create tenant %s: %v", tenant, err)
	}
	return f
}

// removeTenant deletes a tenant with its VMs (ports and namespaces) and networks; a tenant that
// does not exist is success.
func removeTenant(ctx context.Context, l *lab.Lab, c *lab.Client, tenant string) error {
	ports, err := c.Ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Tenant: tenant})
	if status.Code(err) == codes.NotFound {
		return nil // no such tenant
	}
	if err != nil {
		return fmt.Errorf("list ports of %s: %w", tenant, err)
	}
	vms := map[string]bool{}
	for _, p := range ports.GetPorts() {
		if p.GetTenant() != tenant {
			continue
		}
		if p.GetVm() != "" && !vms[p.GetVm()] {
			vms[p.GetVm()] = true
			if err := l.DeleteVM(ctx, p.GetVm()); err != nil {
				return err
			}
			continue
		}
		if p.GetVm() == "" {
			_, err := c.Ports.DeletePort(ctx, &vxfabricv1.DeletePortRequest{Tenant: tenant, Name: p.GetName()})
			if err != nil && status.Code(err) != codes.NotFound {
				return fmt.Errorf("delete port %s/%s: %w", tenant, p.GetName(), err)
			}
		}
	}
	nets, err := c.Networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{Tenant: tenant})
	if err != nil {
		return fmt.Errorf("list networks of %s: %w", tenant, err)
	}
	for _, n := range nets.GetNetworks() {
		if n.GetTenant() != tenant {
			continue
		}
		_, err := c.Networks.DeleteNetwork(ctx, &vxfabricv1.DeleteNetworkRequest{Tenant: tenant, Name: n.GetName()})
		if err != nil && status.Code(err) != codes.NotFound {
			return fmt.Errorf("delete network %s/%s: %w", tenant, n.GetName(), err)
		}
	}
	_, err = c.Tenants.DeleteTenant(ctx, &vxfabricv1.DeleteTenantRequest{Name: tenant})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("delete tenant %s: %w", tenant, err)
	}
	return nil
}

func (f *fixture) network(name, cidr string, mode vxfabricv1.NetworkMode) *vxfabricv1.Network {
	f.t.Helper()
	resp, err := f.c.Networks.CreateNetwork(f.ctx, &vxfabricv1.CreateNetworkRequest{
		Tenant: f.tenant, Name: name, Cidr: cidr, Mode: mode})
	if err != nil {
		f.t.Fatalf("create network %s/%s: %v", f.tenant, name, err)
	}
	return resp.GetNetwork()
}

// vm creates a VM on host with one NIC per network of the fixture's tenant (name=IP fixes the IP).
func (f *fixture) vm(name, host string, networks ...string) lab.VM {
	f.t.Helper()
	spec := lab.VMSpec{Name: name, Host: host}
	for _, n := range networks {
		netName, ip, _ := strings.Cut(n, "=")
		spec.NICs = append(spec.NICs, lab.NICSpec{Tenant: f.tenant, Network: netName, IP: ip})
	}
	return f.createVM(spec)
}

func (f *fixture) createVM(spec lab.VMSpec) lab.VM {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	vm, err := f.l.CreateVM(ctx, spec)
	if err != nil {
		f.t.Fatal(err)
	}
	return vm
}

func (f *fixture) deleteVM(name string) {
	f.t.Helper()
	if err := f.l.DeleteVM(f.ctx, name); err != nil {
		f.t.Fatal(err)
	}
}

// reach fails the test unless from gets an echo reply from dst within timeout.
func (f *fixture) reach(from string, dst netip.Addr, timeout time.Duration) {
	f.t.Helper()
	res, ok, err := f.l.Reach(f.ctx, from, dst, timeout)
	if err != nil {
		f.t.Fatal(err)
	}
	if !ok {
		f.t.Fatalf("%s does not reach %s within %s:\n%s", from, dst, timeout, res.Output)
	}
}

// waitNode waits until the server records node name with status want; it fails the test (saying what
// about) when that does not happen within the time given.
func (f *fixture) waitNode(name string, want vxfabricv1.NodeStatus, within time.Duration, about string) {
	f.t.Helper()
	if _, err := lab.WaitFor(f.ctx, within, func() (bool, error) {
		return f.node(name).GetStatus() == want, nil
	}); err != nil {
		f.t.Fatalf("%s: %s is %s after %s, want %s", about, name, f.node(name).GetStatus(), within, want)
	}
}

// node is the server's record of a node (what `vxfab node list` prints); nil when it has none.
func (f *fixture) node(name string) *vxfabricv1.Node {
	f.t.Helper()
	resp, err := f.c.Nodes.ListNodes(f.ctx, &vxfabricv1.ListNodesRequest{})
	if err != nil {
		f.t.Fatalf("list nodes: %v", err)
	}
	for _, n := range resp.GetNodes() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

// fdbTo returns the FDB entries of network vni on host that point at vtep.
func (f *fixture) fdbTo(host string, vni uint32, vtep netip.Addr) []lab.FDBEntry {
	f.t.Helper()
	entries, err := f.l.FDB(host, vni)
	if err != nil {
		f.t.Fatal(err)
	}
	var to []lab.FDBEntry
	for _, e := range entries {
		if e.Dst == vtep {
			to = append(to, e)
		}
	}
	return to
}

// scrape reads the Prometheus metrics of host's agent, from inside the host's namespace.
func (f *fixture) scrape(host string) string {
	f.t.Helper()
	dial, err := f.l.DialerIn(host)
	if err != nil {
		f.t.Fatal(err)
	}
	i, err := strconv.Atoi(strings.TrimPrefix(host, "h"))
	if err != nil {
		f.t.Fatalf("host %q", host)
	}
	tr := &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) }}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
	url := "http://" + netip.AddrPortFrom(lab.HostAddr(i), lab.MetricsPort).String() + "/metrics"
	resp, err := c.Get(url)
	if err != nil {
		f.t.Fatalf("scrape %s's agent: %v", host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		f.t.Fatalf("scrape %s: %s, %v\n%s", url, resp.Status, err, body)
	}
	return string(body)
}

// metricValue is the value of the sample of metric name whose labels hold label, 0 without one.
func metricValue(text, name, label string) float64 {
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return v
		}
	}
	return 0
}

// grepLines returns the lines of text that start with prefix.
func grepLines(text, prefix string) string {
	var b strings.Builder
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, prefix) {
			b.WriteString(line)
		}
	}
	return b.String()
}

// hasMAC reports whether entries hold mac.
func hasMAC(entries []lab.FDBEntry, mac string) bool {
	for _, e := range entries {
		if strings.EqualFold(e.MAC.String(), mac) {
			return true
		}
	}
	return false
}

// restoreOnCleanup brings an agent, the server or a host back when the test ends, whatever
// happened ("agent start" and "host restore" wait until the agent is ALIVE again).
func restoreOnCleanup(t *testing.T, args ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := vxfab(ctx, append([]string{"lab"}, args...)...); err != nil {
			t.Errorf("cleanup: %v\n%s", err, out)
		}
	})
}

// takeTurn waits until no other run of the suite on this machine holds the lab, and keeps it until
// this process exits (the kernel drops the lock with the process, also after a crash).
func takeTurn(t *testing.T) error {
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		return nil // f stays open: the lock lasts as long as the process
	}
	t.Logf("another run of the suite holds the lab (%s): waiting for it", lockPath)
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lockPath, err)
	}
	return nil
}
