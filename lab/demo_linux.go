package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// The demo's fabric: two tenants whose "web" networks share one CIDR, and one network of each mode.
//
// The two 10.0.0.0/24 networks are isolated on purpose: without VRF (missing on this kernel) two
// networks with the same CIDR cannot both be nat or routed on the same host, since each would put
// the same gateway route into the host's one routing table. Overlapping CIDRs are fine for
// isolated networks anywhere, and for nat or routed networks on different hosts.
var demoNetworks = []struct {
	tenant, name, cidr string
	mode               vxfabricv1.NetworkMode
	uplinkHost         string
}{
	{"red", "web", "10.0.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, ""},
	{"blue", "web", "10.0.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, ""},
	{"red", "ext", "10.1.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_NAT, ""},
	{"blue", "pub", "10.2.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, ""},
	{"red", "lan", LANPrefix.String(), vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, "h1"},
}

// DemoVMs are the demo's VMs, spread over h1..h3; all are multi-homed. The first nat or routed NIC
// gives a VM its default route. The web addresses are fixed so that the across-tenant checks never
// aim at the sender's own address.
var DemoVMs = []VMSpec{
	{Name: "red-a", Host: "h1", NICs: []NICSpec{{Tenant: "red", Network: "web", IP: "10.0.0.11"}, {Tenant: "red", Network: "ext"}}},
	{Name: "red-b", Host: "h2", NICs: []NICSpec{{Tenant: "red", Network: "web", IP: "10.0.0.12"}, {Tenant: "red", Network: "lan", IP: "192.168.77.121"}}},
	{Name: "blue-a", Host: "h3", NICs: []NICSpec{{Tenant: "blue", Network: "web", IP: "10.0.0.10"}, {Tenant: "blue", Network: "pub"}}},
}

// demoProbePort is where the demo's TCP listeners wait (in outside and in VMs).
const demoProbePort = 7070

// DemoFabric is the demo's fabric once built: its VMs by name.
type DemoFabric struct {
	l   *Lab
	VMs map[string]VM
}

// BuildDemo creates the demo's tenants, networks and VMs (existing tenants and networks are
// reused, existing demo VMs are made again) and, in outside, the static route to the routed
// network through the host of its VM. It needs at least three hosts.
func (l *Lab) BuildDemo(ctx context.Context) (*DemoFabric, error) {
	if l.cfg.Hosts < 3 {
		return nil, fmt.Errorf("lab %q: the demo needs 3 hosts, the lab has %d", l.cfg.Name, l.cfg.Hosts)
	}
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	defer c.Conn.Close()
	for _, tenant := range []string{"red", "blue"} {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Tenants.CreateTenant(callCtx, &vxfabricv1.CreateTenantRequest{Name: tenant, RequestId: requestID()})
		cancel()
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return nil, fmt.Errorf("demo: create tenant %s: %w", tenant, err)
		}
	}
	for _, n := range demoNetworks {
		if err := ensureDemoNetwork(ctx, c, n.tenant, n.name, n.cidr, n.mode, n.uplinkHost); err != nil {
			return nil, err
		}
	}
	d := &DemoFabric{l: l, VMs: map[string]VM{}}
	for _, spec := range DemoVMs {
		if err := l.DeleteVM(ctx, spec.Name); err != nil && !errors.Is(err, ErrNoSuchVM) {
			return nil, fmt.Errorf("demo: remove old vm: %w", err)
		}
		vm, err := l.CreateVM(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		d.VMs[spec.Name] = vm
	}
	// Outside routes blue/pub through h3, where blue-a lives, and red/ext through h1 (so that the
	// "outside to nat VM" check is refused by the nat host, not by a missing route).
	routes := []struct {
		cidr string
		host int
	}{{"10.2.0.0/24", 3}, {"10.1.0.0/24", 1}}
	for _, r := range routes {
		if err := l.RouteReplace(RoleOutside, netip.MustParsePrefix(r.cidr), HostAddr(r.host)); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
	}
	return d, nil
}

func ensureDemoNetwork(ctx context.Context, c *Client, tenant, name, cidr string, mode vxfabricv1.NetworkMode, uplinkHost string) error {
	req := &vxfabricv1.CreateNetworkRequest{Tenant: tenant, Name: name, Cidr: cidr, Mode: mode, RequestId: requestID()}
	if uplinkHost != "" {
		// The LAN's own addresses (its router, 192.168.77.1) stay out of the ports' reach.
		req.Uplink = &vxfabricv1.Uplink{Node: uplinkHost, Interface: LANIface}
		req.AllocationPool = LANPool
	}
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := c.Networks.CreateNetwork(callCtx, req)
	cancel()
	if status.Code(err) == codes.AlreadyExists {
		got, gerr := getNetwork(ctx, c, tenant, name)
		if gerr != nil {
			return fmt.Errorf("demo: network %s/%s: %w", tenant, name, gerr)
		}
		if got.GetCidr() != cidr || got.GetMode() != mode {
			return fmt.Errorf("demo: network %s/%s exists as %s %s, the demo needs %s %s: delete it or use a fresh lab",
				tenant, name, modeName(got.GetMode()), got.GetCidr(), modeName(mode), cidr)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("demo: create network %s/%s: %w", tenant, name, err)
	}
	return nil
}

// Check is one row of the demo's table: a question a user would ask, answered with real traffic.
type Check struct {
	Name     string
	Path     string // who talks to whom
	Expected string
	// Run sends the traffic and returns what was observed and whether that is what was expected.
	Run func(ctx context.Context) (observed string, pass bool)
}

// Result is a Check after it ran.
type Result struct {
	Check
	Observed string
	Pass     bool
	Took     time.Duration
}

// Checks lists the demo's checks, in the order of the table.
func (d *DemoFabric) Checks() []Check {
	redA, redB, blueA := d.VMs["red-a"], d.VMs["red-b"], d.VMs["blue-a"]
	l := d.l
	return []Check{
		{
			Name: "within a tenant, across hosts", Expected: "reaches",
			Path: fmt.Sprintf("red-a (h1) -> red-b (h2) %s", redB.IP(0)),
			Run:  func(ctx context.Context) (string, bool) { return l.expectPing(ctx, "red-a", redB.IP(0), true) },
		},
		{
			Name: "across tenants, same CIDR", Expected: "no reply",
			Path: fmt.Sprintf("red-a (h1) -> blue-a (h3) %s", blueA.IP(0)),
			Run:  func(ctx context.Context) (string, bool) { return l.expectPing(ctx, "red-a", blueA.IP(0), false) },
		},
		{
			Name: "across tenants, reverse", Expected: "no reply",
			Path: fmt.Sprintf("blue-a (h3) -> red-b (h2) %s", redB.IP(0)),
			Run:  func(ctx context.Context) (string, bool) { return l.expectPing(ctx, "blue-a", redB.IP(0), false) },
		},
		{
			Name: "nat VM to outside", Expected: "connects, seen as " + HostAddr(1).String(),
			Path: fmt.Sprintf("red-a (h1, red/ext %s) -> outside %s", redA.IP(1), OutsideAddr),
			Run: func(ctx context.Context) (string, bool) {
				return l.expectTCP(ctx, "red-a", RoleOutside, OutsideAddr, HostAddr(1))
			},
		},
		{
			Name: "outside to nat VM", Expected: "no connection",
			Path: fmt.Sprintf("outside -> red-a %s (route via h1)", redA.IP(1)),
			Run: func(ctx context.Context) (string, bool) {
				return l.expectTCP(ctx, RoleOutside, "red-a", redA.IP(1), netip.Addr{})
			},
		},
		{
			Name: "outside to routed VM", Expected: "connects, VM sees " + OutsideAddr.String(),
			Path: fmt.Sprintf("outside -> blue-a %s (static route via h3)", blueA.IP(1)),
			Run: func(ctx context.Context) (string, bool) {
				return l.expectTCP(ctx, RoleOutside, "blue-a", blueA.IP(1), OutsideAddr)
			},
		},
		{
			Name: "host to isolated VM", Expected: "no reply",
			Path: fmt.Sprintf("h2 -> red-b (h2, red/web) %s", redB.IP(0)),
			Run:  func(ctx context.Context) (string, bool) { return l.expectPing(ctx, "h2", redB.IP(0), false) },
		},
		{
			Name: "VM to the LAN, bridged", Expected: "reaches",
			Path: fmt.Sprintf("red-b (h2) -> lan %s (uplink h1:%s)", LANAddr, LANIface),
			Run:  func(ctx context.Context) (string, bool) { return l.expectPing(ctx, "red-b", LANAddr, true) },
		},
	}
}

// expectPing pings dst from target: a wanted reply may take a few tries (first ARP, a port that was
// just plugged); an unwanted one gets two chances to show up.
func (l *Lab) expectPing(ctx context.Context, target string, dst netip.Addr, want bool) (string, bool) {
	if want {
		res, ok, err := l.Reach(ctx, target, dst, 5*time.Second)
		if err != nil {
			return "error: " + err.Error(), false
		}
		if !ok {
			return "no reply within 5s", false
		}
		return "reply from " + res.From, res.From == dst.String()
	}
	res, err := l.Ping(ctx, target, dst, PingOptions{Count: 2, Interval: 200 * time.Millisecond, Wait: time.Second})
	if err != nil {
		return "error: " + err.Error(), false
	}
	if res.Received > 0 {
		return fmt.Sprintf("reply from %s (%d/%d)", res.From, res.Received, res.Sent), false
	}
	if res.Sent == 0 {
		return "no reply (no route)", true
	}
	return fmt.Sprintf("no reply (%d sent)", res.Sent), true
}

// expectTCP connects from one namespace to a listener in another. wantSource valid: the connection
// must succeed and the listener must see that source address; invalid: it must fail.
func (l *Lab) expectTCP(ctx context.Context, from, to string, dst, wantSource netip.Addr) (string, bool) {
	listenOn := dst
	if ValidateVMName(to) == nil {
		// A VM listens on all its addresses, as a server would.
		listenOn = netip.IPv4Unspecified()
	}
	ln, err := l.ListenTCP(to, netip.AddrPortFrom(listenOn, demoProbePort))
	if err != nil {
		return "error: " + err.Error(), false
	}
	defer ln.Close()
	target := netip.AddrPortFrom(dst, demoProbePort)
	if !wantSource.IsValid() {
		_, err := l.DialTCP(from, target, time.Second)
		if err == nil {
			return "connected", false
		}
		return "no connection (" + shortNetErr(err) + ")", true
	}
	var seen netip.Addr
	deadline := time.Now().Add(5 * time.Second)
	for {
		if seen, err = l.DialTCP(from, target, time.Second); err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return "error: " + ctx.Err().Error(), false
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return "no connection (" + shortNetErr(err) + ")", false
	}
	return "connects, seen as " + seen.String(), seen == wantSource
}

func shortNetErr(err error) string {
	s := err.Error()
	switch {
	case errors.Is(err, context.DeadlineExceeded), strings.Contains(s, "timeout"):
		return "timed out"
	case strings.Contains(s, "refused"):
		return "refused"
	case strings.Contains(s, "unreachable"):
		return "unreachable"
	}
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// RunChecks runs checks one after the other (they share namespaces and ports).
func RunChecks(ctx context.Context, checks []Check) []Result {
	results := make([]Result, 0, len(checks))
	for _, c := range checks {
		began := time.Now()
		obs, pass := c.Run(ctx)
		results = append(results, Result{Check: c, Observed: obs, Pass: pass, Took: time.Since(began)})
	}
	return results
}

// PrintResults writes the demo's table.
func PrintResults(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tPATH\tEXPECTED\tOBSERVED\tPASS")
	for _, r := range results {
		pass := "yes"
		if !r.Pass {
			pass = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Path, r.Expected, r.Observed, pass)
	}
	tw.Flush()
}

// demoHints are the commands the demo suggests after its table, each with what it shows; cli is how
// the user runs vxfab. Each works as printed: the lab commands name a lab other than the default
// one, the API commands reach a lab the default profile does not point at through its own.
func (l *Lab) demoHints(cli string, redB netip.Addr) [][2]string {
	lab := cli + " lab"
	if l.cfg.Name != Default().Name {
		lab += " --name " + l.cfg.Name
	}
	api := cli
	if env := l.ProfileEnv(); env != "" {
		api = env + " " + cli
	}
	return [][2]string{
		{lab + " status", "hosts, agents, networks, VMs"},
		{api + " network list", "the fabric through its API (also: port list, node list)"},
		{lab + " exec red-a -- ping " + redB.String(), "a VM is a namespace: run anything in it"},
		{lab + " exec h1 -- bridge fdb show", "what the agent wrote (also: ip -d link, nft list ruleset)"},
		{lab + " agent kill h2; " + lab + " agent start h2", "fault injection (also: host cut|restore, server stop|start)"},
		{"logs", l.logDir()},
		{lab + " down", "tear it all down"},
	}
}

// Demo builds the demo's fabric, runs every check with real traffic, prints the table and how to
// look around (cli is how the user runs vxfab, e.g. "bin/vxfab"). It fails if a check fails; the lab
// stays up either way.
func (l *Lab) Demo(ctx context.Context, w io.Writer, cli string) error {
	began := time.Now()
	fmt.Fprintf(w, "building the demo: tenants red and blue (both with web 10.0.0.0/24), one network of each mode, 3 VMs\n")
	d, err := l.BuildDemo(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "built in %.1fs; checking with real traffic:\n\n", time.Since(began).Seconds())
	results := RunChecks(ctx, d.Checks())
	PrintResults(w, results)
	failed := 0
	for _, r := range results {
		if !r.Pass {
			failed++
		}
	}
	fmt.Fprintf(w, `
%d of %d checks passed in %.1fs.

Note: red/web and blue/web share 10.0.0.0/24 and are isolated networks. Without VRF (this kernel
has none), two networks with the same CIDR cannot both be nat or routed on the same host (their
gateway routes would collide in the host's one routing table): keep such pairs on different hosts.

Look around (the lab stays up):
`, len(results)-failed, len(results), time.Since(began).Seconds())
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, h := range l.demoHints(cli, d.VMs["red-b"].IP(0)) {
		fmt.Fprintf(tw, "  %s\t%s\n", h[0], h[1])
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("demo: %d of %d checks failed", failed, len(results))
	}
	return nil
}
