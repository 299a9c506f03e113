package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
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
	// Progress receives one line per phase.
	Progress func(format string, args ...any)
}

// Fill creates perHost ports on every host, with workers concurrent clients, and waits until every
// host has programmed all of them.
func (s *Sim) Fill(ctx context.Context, prefix string, perHost, workers int) error {
	var ports []portSpec
	for k := range perHost {
		for i := range s.Hosts() {
			ports = append(ports, portSpec{name: fmt.Sprintf("%s-%d-%d", prefix, i, k), host: i})
		}
	}
	_, _, err := s.createPorts(ctx, ports, workers)
	return err
}

type portSpec struct {
	name string
	host int
}

// createPorts creates the ports with workers concurrent clients and waits until every host has
// programmed every one of them; it returns when the last create returned and when the last host
// programmed the last port.
func (s *Sim) createPorts(ctx context.Context, ports []portSpec, workers int) (created, applied time.Time, err error) {
	exps := make([]*Expectation, len(ports))
	reqs := make([]*vxfabricv1.CreatePortRequest, len(ports))
	for i, p := range ports {
		mac := s.NextMAC()
		exps[i] = s.Expect(mac, p.host)
		reqs[i] = &vxfabricv1.CreatePortRequest{Tenant: simTenant, Network: simNetwork, Name: p.name, Node: HostName(p.host), Mac: mac.String()}
	}
	next := make(chan *vxfabricv1.CreatePortRequest)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := range next {
				if _, err := s.Ports.CreatePort(ctx, req); err != nil {
					errc <- fmt.Errorf("create port %q on %s: %w", req.Name, req.Node, err)
					return
				}
			}
		}()
	}
feed:
	for _, r := range reqs {
		select {
		case next <- r:
		case err := <-errc:
			close(next)
			wg.Wait()
			return time.Time{}, time.Time{}, err
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	created = time.Now()
	select {
	case err := <-errc:
		return time.Time{}, time.Time{}, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return time.Time{}, time.Time{}, err
	}
	for _, e := range exps {
		t, err := e.Wait(ctx)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		if t.After(applied) {
			applied = t
		}
	}
	return created, applied, nil
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
	return s.Fill(ctx, "base", 1, 16)
}

// Sample is one port created alone.
type Sample struct {
	// Create is the CreatePort call's latency (the etcd commit happens within it).
	Create time.Duration
	// Converge is from the create response (the commit, as the client sees it) to the last host's
	// Apply returning with the port programmed.
	Converge time.Duration
}

// MeasureOne creates one port bound to host and measures its convergence; it then waits for every
// agent to report the revision to the hub, so the next sample starts on a quiet fabric.
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
	last, err := e.Wait(wctx)
	if err != nil {
		return Sample{}, fmt.Errorf("port %q (rev %d): %w", name, rev, err)
	}
	if err := s.WaitReported(wctx, rev); err != nil {
		return Sample{}, fmt.Errorf("port %q (rev %d) reported: %w", name, rev, err)
	}
	// An agent may apply before the create response reaches the client: that is convergence 0.
	return Sample{Create: t1.Sub(t0), Converge: max(last.Sub(t1), 0)}, nil
}

// RunConvergence runs benchmark 1 for every size.
func RunConvergence(ctx context.Context, cfg ConvergenceConfig) Outcome {
	out := Outcome{Benchmark: "1 convergence"}
	out.Notes = append(out.Notes, "simulated hosts run the real nodeagent over overlay/fake, one gRPC connection each, "+
		"with static membership (RegisterNode, no gossip); one server with embedded etcd and the fan-out hub in this process")
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
	sim, err := StartSim(ctx, SimConfig{Hosts: n, Dir: dir, Logger: cfg.Logger})
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
	var conv, create []time.Duration
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
	// Progress receives one line per phase.
	Progress func(format string, args ...any)
}

// RunBurst runs benchmark 2: Ports ports created by Clients concurrent clients on a fabric of Hosts
// simulated hosts; the figure is from the first create to the last host programming the last port.
func RunBurst(ctx context.Context, cfg BurstConfig) Outcome {
	out := Outcome{Benchmark: "2 burst"}
	dir, cleanup, err := TempDir("burst")
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer cleanup()
	cfg.Progress("burst: starting server and %d agents", cfg.Hosts)
	sim, err := StartSim(ctx, SimConfig{Hosts: cfg.Hosts, Dir: dir, Logger: cfg.Logger})
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer sim.Close()
	if err := sim.SetUpSpan(ctx); err != nil {
		out.Error = err.Error()
		return out
	}
	ports := make([]portSpec, cfg.Ports)
	for i := range ports {
		ports[i] = portSpec{name: fmt.Sprintf("burst-%d", i), host: i % cfg.Hosts}
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
	start := time.Now()
	created, last, err := sim.createPorts(wctx, ports, cfg.Clients)
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
