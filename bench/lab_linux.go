//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/lab"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// LabName is the lab the throughput and failover benchmarks build (namespaces vxl-bench-*).
const LabName = "bench"

// LabConfig is benchmarks 5 (throughput) and 6 (failover), which share one lab.
type LabConfig struct {
	// Bin is the vxfab binary the lab runs.
	Bin   string
	Hosts int
	// Throughput: Rounds of Seconds-long iperf3 runs over each path.
	Rounds  int
	Seconds int
	// Failover: Trials cuts, polling every Poll, each waiting at most Timeout.
	Trials  int
	Poll    time.Duration
	Timeout time.Duration
	// Pause is how long a healthy agent is stopped (SIGSTOP) in the false-withdrawal check.
	Pause      time.Duration
	Throughput bool
	Failover   bool
	// KeepLogs, when set, receives the logs of the lab's server and agents before the lab goes.
	KeepLogs string
	Logger   *slog.Logger
	Progress func(format string, args ...any)
}

// labFabric is the lab with one network spanning every host and a VM per host.
type labFabric struct {
	l   *lab.Lab
	vni uint32
	vms []lab.VM // vms[i] is on host i+1
}

// RunLab builds the lab "bench" (removing a leftover one first), runs the throughput and failover
// benchmarks that cfg asks for, and takes the lab down, also on failure.
func RunLab(ctx context.Context, cfg LabConfig) []Outcome {
	tput := Outcome{Benchmark: "5 throughput"}
	fail := Outcome{Benchmark: "6 failover"}
	var outs []*Outcome
	if cfg.Throughput {
		outs = append(outs, &tput)
	}
	if cfg.Failover {
		outs = append(outs, &fail)
	}
	result := func() []Outcome {
		var r []Outcome
		for _, o := range outs {
			r = append(r, *o)
		}
		return r
	}
	setError := func(err error) []Outcome {
		for _, o := range outs {
			if o.Error == "" && len(o.Metrics) == 0 {
				o.Error = err.Error()
			}
		}
		return result()
	}
	if os.Geteuid() != 0 {
		for _, o := range outs {
			o.Skipped = "needs root (the lab is built of network namespaces)"
		}
		return result()
	}
	bin, err := filepath.Abs(cfg.Bin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		return setError(fmt.Errorf("vxfab binary %s (run `make build`): %w", cfg.Bin, err))
	}
	lcfg := lab.Default()
	lcfg.Name = LabName
	lcfg.Hosts = cfg.Hosts
	lcfg.Bin = bin
	lcfg.Logger = cfg.Logger
	l, err := lab.New(lcfg)
	if err != nil {
		return setError(err)
	}
	down := func() error {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		return l.Down(dctx)
	}
	if err := down(); err != nil {
		return setError(fmt.Errorf("remove a leftover lab %q: %w", LabName, err))
	}
	defer func() {
		if cfg.KeepLogs != "" {
			if err := l.CopyLogs(cfg.KeepLogs); err != nil {
				cfg.Progress("lab %q: %v", LabName, err)
			} else {
				cfg.Progress("lab %q: logs kept in %s", LabName, cfg.KeepLogs)
			}
		}
		if err := down(); err != nil {
			for _, o := range outs {
				o.Notes = append(o.Notes, fmt.Sprintf("lab down failed: %v (run `vxfab lab down --name %s`)", err, LabName))
			}
		}
		cfg.Progress("lab %q down", LabName)
	}()
	cfg.Progress("lab %q: up with %d hosts", LabName, cfg.Hosts)
	if err := l.Up(ctx); err != nil {
		return setError(fmt.Errorf("lab up: %w", err))
	}
	f, err := buildFabric(ctx, l, cfg.Hosts)
	if err != nil {
		return setError(err)
	}
	if cfg.Throughput {
		if err := throughput(ctx, f, cfg, &tput); err != nil {
			tput.Error = err.Error()
		}
	}
	if cfg.Failover {
		if err := failover(ctx, f, cfg, &fail); err != nil {
			fail.Error = err.Error()
		}
	}
	return result()
}

func buildFabric(ctx context.Context, l *lab.Lab, hosts int) (*labFabric, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	defer c.Conn.Close()
	if _, err := c.Tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "bench"}); err != nil {
		return nil, fmt.Errorf("create tenant bench: %w", err)
	}
	resp, err := c.Networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
		Tenant: "bench", Name: "span", Cidr: "10.77.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED,
	})
	if err != nil {
		return nil, fmt.Errorf("create network bench/span: %w", err)
	}
	f := &labFabric{l: l, vni: resp.GetNetwork().GetVni()}
	for i := 1; i <= hosts; i++ {
		vm, err := l.CreateVM(ctx, lab.VMSpec{Name: fmt.Sprintf("v%d", i), Host: lab.HostName(i), NICs: []lab.NICSpec{{Tenant: "bench", Network: "span"}}})
		if err != nil {
			return nil, fmt.Errorf("create vm v%d: %w", i, err)
		}
		f.vms = append(f.vms, vm)
	}
	return f, nil
}

// iperf3 runs one TCP test from client to server (targets of lab.Exec) towards dst and returns the
// receiver's rate in bit/s. With cpus, the client runs on CPU cpus[0] and the server on cpus[1].
func iperf3(ctx context.Context, l *lab.Lab, server, client string, dst netip.Addr, seconds int, cpus []int) (float64, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srvDone := make(chan error, 1)
	srv := []string{"iperf3", "-s", "-1", "-B", dst.String()}
	cli := []string{"iperf3", "-c", dst.String(), "-t", fmt.Sprint(seconds), "-J"}
	if cpus != nil {
		srv = append(srv, "-A", fmt.Sprint(cpus[1]))
		cli = append(cli, "-A", fmt.Sprint(cpus[0]))
	}
	go func() {
		srvDone <- l.Exec(sctx, server, srv, lab.Stdio{})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		bps, err := iperf3Client(ctx, l, client, dst, cli)
		if err == nil {
			return bps, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, err
		}
		select { // most likely the server is not listening yet
		case serr := <-srvDone:
			return 0, fmt.Errorf("iperf3 server in %s ended (%v) before a test ran: %w", server, serr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// iperf3Client runs the client side (argv) once and returns the receiver's rate in bit/s.
func iperf3Client(ctx context.Context, l *lab.Lab, client string, dst netip.Addr, argv []string) (float64, error) {
	out, err := l.Output(ctx, client, argv...)
	var rep struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if derr := json.NewDecoder(bytes.NewReader([]byte(out))).Decode(&rep); derr != nil {
		return 0, fmt.Errorf("iperf3 %s -> %s: %w (report: %v)", client, dst, err, derr)
	}
	if rep.Error != "" || rep.End.SumReceived.BitsPerSecond <= 0 {
		return 0, fmt.Errorf("iperf3 %s -> %s: %q", client, dst, rep.Error)
	}
	return rep.End.SumReceived.BitsPerSecond, nil
}

func throughput(ctx context.Context, f *labFabric, cfg LabConfig, out *Outcome) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		out.Skipped = "iperf3 is not installed: apt-get install -y iperf3 (make bench installs it as root)"
		return nil
	}
	// Each of the two hosts gets a CPU of its own, for both paths: its iperf3 runs there (left to
	// the scheduler, sender and receiver sometimes shared a core, which swung the ratio between 0.71
	// and 0.95). Two placements of the kernel's receive work are measured in every round: the
	// kernel's own, in which a veth delivers in the sender's context, so that h1's CPU carries each
	// packet through the switch and the whole of h2's receive path; and one in which receive packet
	// steering hands what arrives on each host's uplink to that host's CPU, as a packet reaching
	// another machine is processed there. Neither is two machines: the first puts both hosts'
	// kernel work of a packet on one core, the second hands each packet across cores at a cost that
	// both cores pay. bench/README.md has what each changes.
	cpus := usableCPUs()
	if len(cpus) < 2 {
		cpus = nil
	} else {
		cpus = cpus[:2]
	}
	placements := []placement{{name: "receive where the kernel runs it"}}
	var prev []string // the uplinks' steering as the lab made them: none, unless the machine sets a default
	if cpus != nil {
		var err error
		prev, err = readSteering(ctx, f.l)
		if err != nil {
			out.Notes = append(out.Notes, fmt.Sprintf("receive steering not measured: %v", err))
		} else {
			placements = append(placements, placement{name: "receive on the receiving host's CPU", steer: true})
			defer func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if err := writeSteering(rctx, f.l, prev); err != nil {
					out.Notes = append(out.Notes, fmt.Sprintf("receive steering not restored: %v", err))
				}
			}()
		}
	}
	for r := range cfg.Rounds {
		// Alternate the placements' order between rounds, so that drift on a shared machine
		// favours neither.
		for k := range placements {
			p := &placements[(k+r)%len(placements)]
			if len(placements) > 1 {
				masks := prev
				if p.steer {
					masks = []string{cpuMask(cpus[0]), cpuMask(cpus[1])}
				}
				if err := writeSteering(ctx, f.l, masks); err != nil {
					return err
				}
			}
			u, o, err := throughputRound(ctx, f, cfg.Seconds, cpus, r)
			if err != nil {
				return err
			}
			p.under, p.over, p.ratio = append(p.under, u), append(p.over, o), append(p.ratio, o/u)
			cfg.Progress("throughput round %d, %s: underlay %.2f Gbit/s, overlay %.2f Gbit/s", r+1, p.name, u/1e9, o/1e9)
		}
	}
	for _, p := range placements {
		// Medians, and the ratio taken within each round (both paths measured back to back), so
		// that one round disturbed by other work on the machine moves the figure little.
		note := fmt.Sprintf("median of %d rounds of one %d s iperf3 TCP run per path, the order alternating; the rounds' ratios ranged %.2f-%.2f",
			cfg.Rounds, cfg.Seconds, slices.Min(p.ratio), slices.Max(p.ratio))
		switch {
		case cpus == nil:
			note += "; one CPU: both hosts share it"
		case p.steer:
			note += fmt.Sprintf("; h1's iperf3 and the receive work of its uplink (RPS) on CPU %d, h2's on CPU %d", cpus[0], cpus[1])
		default:
			note += fmt.Sprintf("; h1's iperf3 on CPU %d, h2's on CPU %d, receive work where the kernel runs it (no RPS)", cpus[0], cpus[1])
		}
		ms := []Metric{
			InfoMetric("underlay TCP h1 -> h2, "+p.name, median(p.under)/1e9, "Gbit/s"),
			InfoMetric("overlay TCP v1 (h1) -> v2 (h2), "+p.name, median(p.over)/1e9, "Gbit/s"),
			NewMetric("overlay / underlay, "+p.name, median(p.ratio), "", AtLeast, 0.9),
		}
		for i := range ms {
			ms[i].Note = note
		}
		out.Metrics = append(out.Metrics, ms...)
	}
	out.Notes = append(out.Notes, fmt.Sprintf("lab %q: hosts are namespaces on a veth underlay (MTU 1500), VMs are namespaces on the overlay (network MTU 1450); br_netfilter off in the hosts' namespaces (lab default: plain hosts, not Docker hosts)", LabName))
	return nil
}

// placement is where the kernel's receive work runs during some rounds, and what they measured.
type placement struct {
	name               string
	steer              bool // each host's uplink steered to its CPU
	under, over, ratio []float64
}

// throughputRound measures the underlay (h1 -> h2) and the overlay (v1 -> v2) once each, in an
// order that alternates with r, and returns their rates in bit/s.
func throughputRound(ctx context.Context, f *labFabric, seconds int, cpus []int, r int) (under, over float64, err error) {
	for k := range 2 {
		if (k+r)%2 == 0 {
			under, err = iperf3(ctx, f.l, "h2", "h1", lab.HostAddr(2), seconds, cpus)
			err = wrapIf(err, "underlay")
		} else {
			over, err = iperf3(ctx, f.l, f.vms[1].Name, f.vms[0].Name, f.vms[1].IP(0), seconds, cpus)
			err = wrapIf(err, "overlay")
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return under, over, nil
}

// usableCPUs are the CPUs this process may run on, in order.
func usableCPUs() []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil
	}
	var cpus []int
	for i := 0; len(cpus) < set.Count(); i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// cpuMask is the rps_cpus mask of one CPU: hexadecimal, in comma-separated groups of 32 bits.
func cpuMask(cpu int) string {
	words := make([]string, cpu/32+1)
	for i := range words {
		words[i] = "00000000"
	}
	words[0] = fmt.Sprintf("%08x", uint32(1)<<(cpu%32))
	return strings.Join(words, ",")
}

// steeringScript is the shell that reads (no mask) or writes the receive steering of every receive
// queue of a host's uplink.
func steeringScript(mask string) string {
	files := "/sys/class/net/" + lab.UnderlayIface + "/queues/rx-*/rps_cpus"
	if mask == "" {
		return "cat " + files
	}
	return "for q in " + files + "; do echo " + mask + " > $q || exit 1; done"
}

// readSteering returns the receive steering mask of h1's and h2's uplinks (their first queue's);
// it fails where the kernel has no RPS.
func readSteering(ctx context.Context, l *lab.Lab) ([]string, error) {
	var masks []string
	for _, h := range []string{lab.HostName(1), lab.HostName(2)} {
		out, err := l.Output(ctx, h, "sh", "-c", steeringScript(""))
		fields := strings.Fields(out)
		if err != nil || len(fields) == 0 {
			return nil, fmt.Errorf("read the receive steering of %s's uplink: %v", h, err)
		}
		masks = append(masks, fields[0])
	}
	return masks, nil
}

// writeSteering sets the receive steering of h1's and h2's uplinks to masks[0] and masks[1].
func writeSteering(ctx context.Context, l *lab.Lab, masks []string) error {
	for i, h := range []string{lab.HostName(1), lab.HostName(2)} {
		if _, err := l.Output(ctx, h, "sh", "-c", steeringScript(masks[i])); err != nil {
			return fmt.Errorf("receive steering on %s's uplink: %w", h, err)
		}
	}
	return nil
}

func wrapIf(err error, what string) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// median of xs (the mean of the two middle values for an even count); xs is left as it is.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// entriesTo counts, on every host but target, the FDB entries pointing at target's VTEP.
func (f *labFabric) entriesTo(target int) (min int, err error) {
	vtep := lab.HostAddr(target)
	min = -1
	for i := range f.vms {
		h := i + 1
		if h == target {
			continue
		}
		es, err := f.l.FDB(lab.HostName(h), f.vni)
		if err != nil {
			return 0, err
		}
		n := 0
		for _, e := range es {
			if e.Dst == vtep {
				n++
			}
		}
		if min < 0 || n < min {
			min = n
		}
	}
	return min, nil
}

// waitEntries polls until every other host holds at least want entries to target (want > 0) or
// none (want == 0), and returns how long that took.
func (f *labFabric) waitEntries(ctx context.Context, target, want int, poll, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		n, err := f.entriesToAtMost(target, want)
		if err != nil {
			return 0, err
		}
		if n {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("entries to h%d on every other host: want %d, not after %s", target, want, timeout)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

func (f *labFabric) entriesToAtMost(target, want int) (bool, error) {
	if want > 0 {
		n, err := f.entriesTo(target)
		return n >= want, err
	}
	vtep := lab.HostAddr(target)
	for i := range f.vms {
		h := i + 1
		if h == target {
			continue
		}
		es, err := f.l.FDB(lab.HostName(h), f.vni)
		if err != nil {
			return false, err
		}
		for _, e := range es {
			if e.Dst == vtep {
				return false, nil
			}
		}
	}
	return true, nil
}

func failover(ctx context.Context, f *labFabric, cfg LabConfig, out *Outcome) error {
	// A host's VM is one unicast entry plus the flood entry on every other host.
	const healthy = 2
	var took []time.Duration
	for i := range cfg.Trials {
		target := 2 + i%(cfg.Hosts-1) // h2..hN in turn; h1 stays up
		host := lab.HostName(target)
		if _, err := f.waitEntries(ctx, target, healthy, cfg.Poll, 2*time.Minute); err != nil {
			return fmt.Errorf("trial %d, before cutting %s: %w", i+1, host, err)
		}
		if err := f.l.CutHost(host); err != nil {
			return err
		}
		d, err := f.waitEntries(ctx, target, 0, cfg.Poll, cfg.Timeout)
		if rerr := f.l.RestoreHost(host); rerr != nil {
			return errors.Join(err, rerr)
		}
		if err != nil {
			return fmt.Errorf("trial %d: %w", i+1, err)
		}
		cfg.Progress("failover trial %d: %s withdrawn everywhere after %s", i+1, host, d.Round(time.Millisecond))
		took = append(took, d)
	}
	note := fmt.Sprintf("%d trials, FDB read through netlink in each host's namespace every %s", cfg.Trials, cfg.Poll)
	p50 := InfoMetric("cut host's entries withdrawn everywhere p50", Millis(Percentile(took, 50)), "ms")
	p99 := NewMetric("cut host's entries withdrawn everywhere p99", Millis(Percentile(took, 99)), "ms", AtMost, 2000)
	p50.Note, p99.Note = note, note
	out.Metrics = append(out.Metrics, p50, p99)

	// The last host cut finds its peers again after its restore: its ARP entries for them resolve
	// again (a dial sent meanwhile waits for them) and its gossip learns who is alive. In about one
	// run of four it withdrew one peer for 0.2-0.3 s meanwhile. The pause check starts once every
	// host has had every other host's entries for settleFor, so that what it counts comes from the
	// pause.
	if err := f.settle(ctx, healthy, cfg.Poll, settleFor, 2*time.Minute); err != nil {
		return fmt.Errorf("before the pause check: %w", err)
	}
	falseW, err := pauseCheck(ctx, f, cfg, 2, healthy)
	if err != nil {
		return fmt.Errorf("pause check: %w", err)
	}
	m := NewMetric(fmt.Sprintf("false withdrawals, h2's agent stopped %s", cfg.Pause), float64(falseW), "", Equal, 0)
	m.Note = "polls (during the pause and 2 s after) that found an entry to h2 missing on another host"
	out.Metrics = append(out.Metrics, m)
	out.Notes = append(out.Notes, fmt.Sprintf("lab %q with %d hosts, one VM per host on one network; a cut takes the host's underlay cable down (lab.CutHost)", LabName, cfg.Hosts))
	return nil
}

// settleFor is how long every host must have held every other host's entries before the pause check.
const settleFor = 2 * time.Second

// settle polls until every host has held at least want entries to every other host for stable.
func (f *labFabric) settle(ctx context.Context, want int, poll, stable, timeout time.Duration) error {
	start, since := time.Now(), time.Now()
	t := time.NewTicker(poll)
	defer t.Stop()
	for time.Since(since) < stable {
		for target := 1; target <= len(f.vms); target++ {
			n, err := f.entriesTo(target)
			if err != nil {
				return err
			}
			if n < want {
				since = time.Now()
			}
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("the fabric did not hold every host's entries for %s within %s", stable, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// pauseCheck stops target's agent (SIGSTOP) for cfg.Pause and counts the polls, during the pause
// and 2 s after it, that found fewer than want entries to target on some other host.
func pauseCheck(ctx context.Context, f *labFabric, cfg LabConfig, target, want int) (int, error) {
	host := lab.HostName(target)
	if _, err := f.waitEntries(ctx, target, want, cfg.Poll, 2*time.Minute); err != nil {
		return 0, err
	}
	pid := f.l.AgentPID(host)
	if pid == 0 {
		return 0, fmt.Errorf("agent of %s is not running", host)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return 0, fmt.Errorf("stop agent %s (pid %d): %w", host, pid, err)
	}
	stopped := true
	cont := func() error {
		if !stopped {
			return nil
		}
		stopped = false
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			return fmt.Errorf("continue agent %s (pid %d): %w", host, pid, err)
		}
		return nil
	}
	defer cont()
	misses := 0
	start := time.Now()
	t := time.NewTicker(cfg.Poll)
	defer t.Stop()
	for time.Since(start) < cfg.Pause+2*time.Second {
		if stopped && time.Since(start) >= cfg.Pause {
			if err := cont(); err != nil {
				return 0, err
			}
		}
		n, err := f.entriesTo(target)
		if err != nil {
			return 0, err
		}
		if n < want {
			misses++
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
		}
	}
	cfg.Progress("pause check: %s's agent stopped %s, %d polls found an entry missing", host, cfg.Pause, misses)
	return misses, cont()
}
