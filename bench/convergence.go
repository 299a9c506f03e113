package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Names of the simulated fabric's objects.
const (
	simTenant  = "bench"
	simNetwork = "span"
	simCIDR    = "10.64.0.0/14"
)

// ConvergenceConfig is benchmark 1 (and 2, which reuses its fabric at one size).
type ConvergenceConfig struct {
	// Sizes are the numbers of simulated hosts.
	Sizes []int
	// Targets are the p99 targets per size.
	Targets map[int]time.Duration
	// Samples is the number of ports created one at a time per size (SamplesBySize overrides).
	Samples       int
	SamplesBySize map[int]int
	// ProfileDir, when set, receives a CPU profile of each size's measurement.
	ProfileDir string
	Logger     *slog.Logger
	LogLevel   slog.Level
	// Progress receives one line per phase.
	Progress func(format string, args ...any)
}

// Fill creates one port on every host, with workers concurrent clients (in a process of their own),
// and waits until every host has programmed all of them.
func (s *Sim) Fill(ctx context.Context, prefix string, workers int) error {
	_, _, _, err := s.createPorts(ctx, prefix, s.Hosts(), workers)
	return err
}

// createPorts creates count ports (port i on host i mod Hosts) with workers concurrent clients in a
// child process, and waits until every host has programmed every one of them. It returns when the
// first create was sent, when the last one returned, and when the last host programmed the last port.
func (s *Sim) createPorts(ctx context.Context, prefix string, count, workers int) (start, created, applied time.Time, err error) {
	base := s.macSeq.Add(uint64(count)) - uint64(count) + 1
	exps := make([]*Expectation, count)
	for i := range count {
		exps[i] = s.Expect(seqMAC(base+uint64(i)), i%s.Hosts())
	}
	start, created, err = runCreatePorts(ctx, PortBatch{Addr: s.srv.addr, Prefix: prefix, Count: count, Hosts: s.Hosts(), MACBase: base, Clients: workers})
	if err != nil {
		return start, created, applied, err
	}
	for _, e := range exps {
		t, err := e.Wait(ctx)
		if err != nil {
			return start, created, applied, err
		}
		if t.After(applied) {
			applied = t
		}
	}
	return start, created, applied, nil
}

// SetUpSpan creates the tenant and the network that spans every host, and one port per host.
func (s *Sim) SetUpSpan(ctx context.Context) error {
	if _, err := s.Tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: simTenant}); err != nil {
		return fmt.Errorf("create tenant %q: %w", simTenant, err)
	}
	if _, err := s.Networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
		Tenant: simTenant, Name: simNetwork, Cidr: simCIDR, Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED,
	}); err != nil {
		return fmt.Errorf("create network %q: %w", simNetwork, err)
	}
	return s.Fill(ctx, "base", 16)
}

// Sample is one port created alone.
type Sample struct {
	// Create is the CreatePort call's latency (the etcd commit happens within it).
	Create time.Duration
	// Converge is from the commit (the earlier of the port's watch event reaching the server process
	// and the create response) to the last host's Apply returning with the port programmed.
	Converge time.Duration
	// First is from the commit to the first host's Apply returning with it: delivery plus one
	// reconcile, without the queueing of N agents on the machine's cores.
	First time.Duration
}

// MeasureOne creates one port bound to host and measures its convergence; it then waits for every
// agent to have applied the revision, so the next sample starts on a quiet fabric.
func (s *Sim) MeasureOne(ctx context.Context, name string, host int) (Sample, error) {
	mac := s.NextMAC()
	e := s.Expect(mac, host)
	t0 := time.Now()
	resp, err := s.Ports.CreatePort(ctx, &vxfabricv1.CreatePortRequest{Tenant: simTenant, Network: simNetwork, Name: name, Node: HostName(host), Mac: mac.String()})
	t1 := time.Now()
	if err != nil {
		return Sample{}, fmt.Errorf("create port %q on %s: %w", name, HostName(host), err)
	}
	rev := resp.GetPort().GetRevision()
	if rev == 0 {
		return Sample{}, fmt.Errorf("port %q: %w", name, errNoRevision)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	committed, err := s.commits.at(wctx, rev)
	if err != nil {
		return Sample{}, fmt.Errorf("port %q: %w", name, err)
	}
	if t1.Before(committed) {
		committed = t1
	}
	last, err := e.Wait(wctx)
	if err != nil {
		return Sample{}, fmt.Errorf("port %q (rev %d): %w", name, rev, err)
	}
	first, err := e.First(wctx)
	if err != nil {
		return Sample{}, fmt.Errorf("port %q (rev %d): %w", name, rev, err)
	}
	if err := s.WaitApplied(wctx, rev); err != nil {
		return Sample{}, fmt.Errorf("port %q: %w", name, err)
	}
	return Sample{Create: t1.Sub(t0), Converge: max(last.Sub(committed), 0), First: max(first.Sub(committed), 0)}, nil
}

// RunConvergence runs benchmark 1 for every size.
func RunConvergence(ctx context.Context, cfg ConvergenceConfig) Outcome {
	out := Outcome{Benchmark: "1 convergence"}
	out.Notes = append(out.Notes, "simulated hosts run the real nodeagent over overlay/fake, one gRPC connection each, "+
		"with static membership (RegisterNode, no gossip); the API server (controlplane/server with embedded etcd and the fan-out hub) "+
		"and the API clients run in processes of their own (nice -10 as root, so that 1,000 agents sharing 2 cores do not starve them); "+
		"commit time = the port's etcd watch event reaching the server process (as the hub's does), or the create response if earlier; "+
		"a port's own host is not awaited (it plugs the port only once its interface exists)")
	for _, n := range cfg.Sizes {
		ms, note, err := convergenceAt(ctx, cfg, n)
		out.Metrics = append(out.Metrics, ms...)
		if note != "" {
			out.Notes = append(out.Notes, note)
		}
		if err != nil {
			out.Error = fmt.Sprintf("N=%d: %v", n, err)
			return out
		}
	}
	return out
}

func convergenceAt(ctx context.Context, cfg ConvergenceConfig, n int) ([]Metric, string, error) {
	dir, cleanup, err := TempDir(fmt.Sprintf("conv%d", n))
	if err != nil {
		return nil, "", err
	}
	defer cleanup()
	start := time.Now()
	cfg.Progress("convergence N=%d: starting server and %d agents", n, n)
	scfg := SimConfig{Hosts: n, Dir: dir, Logger: cfg.Logger, LogLevel: cfg.LogLevel}
	if cfg.ProfileDir != "" {
		scfg.ServerProfile = filepath.Join(cfg.ProfileDir, fmt.Sprintf("convergence-%d-server.cpu.pprof", n))
	}
	sim, err := StartSim(ctx, scfg)
	if err != nil {
		return nil, "", err
	}
	defer sim.Close()
	if err := sim.SetUpSpan(ctx); err != nil {
		return nil, "", err
	}
	cfg.Progress("convergence N=%d: fabric up with %d ports in %s", n, n, time.Since(start).Round(time.Millisecond))
	samples := cfg.Samples
	if v, ok := cfg.SamplesBySize[n]; ok {
		samples = v
	}
	var stopProfile func()
	if cfg.ProfileDir != "" {
		if stopProfile, err = startCPUProfile(filepath.Join(cfg.ProfileDir, fmt.Sprintf("convergence-%d.cpu.pprof", n))); err != nil {
			return nil, "", err
		}
	}
	var conv, create, first []time.Duration
	for i := range samples {
		s, err := sim.MeasureOne(ctx, fmt.Sprintf("one-%d", i), i%n)
		if err != nil {
			if stopProfile != nil {
				stopProfile()
			}
			return nil, "", err
		}
		conv = append(conv, s.Converge)
		create = append(create, s.Create)
		first = append(first, s.First)
	}
	if stopProfile != nil {
		stopProfile()
	}
	p99 := Percentile(conv, 99)
	target := cfg.Targets[n]
	cfg.Progress("convergence N=%d: %d samples, p50 %s p99 %s", n, samples, Percentile(conv, 50), p99)
	ms := []Metric{
		InfoMetric(fmt.Sprintf("N=%d convergence p50", n), Millis(Percentile(conv, 50)), "ms"),
		NewMetric(fmt.Sprintf("N=%d convergence p99", n), Millis(p99), "ms", AtMost, Millis(target)),
		InfoMetric(fmt.Sprintf("N=%d first host applied p50", n), Millis(Percentile(first, 50)), "ms"),
		InfoMetric(fmt.Sprintf("N=%d CreatePort latency p50", n), Millis(Percentile(create, 50)), "ms"),
	}
	for i := range ms {
		ms[i].Note = fmt.Sprintf("%d ports created one at a time", samples)
	}
	return ms, "", nil
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// BurstConfig is benchmark 2.
type BurstConfig struct {
	Hosts   int
	Ports   int
	Clients int
	Target  time.Duration
	// ProfileDir, when set, receives a CPU profile of the burst.
	ProfileDir string
	Logger     *slog.Logger
	LogLevel   slog.Level
	// Progress receives one line per phase.
	Progress func(format string, args ...any)
}

// RunBurst runs benchmark 2: Ports ports created by Clients concurrent clients on a fabric of Hosts
// simulated hosts; the figure is from the first create to the last host programming the last port.
func RunBurst(ctx context.Context, cfg BurstConfig) Outcome {
	out := Outcome{Benchmark: "2 burst"}
	out.Notes = append(out.Notes, "same simulated fabric as benchmark 1; the 16 clients run in one process of their own, one gRPC connection each")
	dir, cleanup, err := TempDir("burst")
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer cleanup()
	cfg.Progress("burst: starting server and %d agents", cfg.Hosts)
	scfg := SimConfig{Hosts: cfg.Hosts, Dir: dir, Logger: cfg.Logger, LogLevel: cfg.LogLevel}
	if cfg.ProfileDir != "" {
		scfg.ServerProfile = filepath.Join(cfg.ProfileDir, "burst-server.cpu.pprof")
	}
	sim, err := StartSim(ctx, scfg)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer sim.Close()
	if err := sim.SetUpSpan(ctx); err != nil {
		out.Error = err.Error()
		return out
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if cfg.ProfileDir != "" {
		stop, err := startCPUProfile(filepath.Join(cfg.ProfileDir, "burst.cpu.pprof"))
		if err != nil {
			out.Error = err.Error()
			return out
		}
		defer stop()
	}
	start, created, last, err := sim.createPorts(wctx, "burst", cfg.Ports, cfg.Clients)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	took := last.Sub(start)
	cfg.Progress("burst: %d ports on %d hosts everywhere in %s", cfg.Ports, cfg.Hosts, took.Round(time.Millisecond))
	m := NewMetric(fmt.Sprintf("N=%d, %d ports by %d clients: all applied", cfg.Hosts, cfg.Ports, cfg.Clients), took.Seconds(), "s", AtMost, cfg.Target.Seconds())
	m.Note = "from the first create to the last host's Apply"
	out.Metrics = append(out.Metrics, m,
		InfoMetric("burst: last create returned after", created.Sub(start).Seconds(), "s"))
	return out
}
