package bench

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed"
	"github.com/vxfabric/vxfabric/controlplane/server"
	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// AllocationConfig is benchmark 3.
type AllocationConfig struct {
	// Clients are the concurrency levels measured.
	Clients []int
	// Duration of each measurement.
	Duration time.Duration
	// ProfileDir, when set, receives CPU profiles of the network creates at each concurrency
	// (allocation-<clients>-slice<i>.cpu.pprof; the raw transactions' slices are not profiled).
	ProfileDir string
	Logger     *slog.Logger
	Progress   func(format string, args ...any)
}

// rawPrefix holds the keys of the bare create-if-absent transactions (outside the fabric's prefix).
const rawPrefix = "/vxbench/raw/"

// RunAllocation runs benchmark 3: one embedded etcd, two API server replicas on it; network creates
// per second at each concurrency (clients alternate between the replicas) and bare etcd
// create-if-absent transactions at the same concurrency on the same etcd, measured in alternating
// slices; then a count of duplicate VNIs.
func RunAllocation(ctx context.Context, cfg AllocationConfig) Outcome {
	out := Outcome{Benchmark: "3 allocation"}
	if err := allocation(ctx, cfg, &out); err != nil {
		out.Error = err.Error()
	}
	return out
}

func allocation(ctx context.Context, cfg AllocationConfig, out *Outcome) error {
	dir, cleanup, err := TempDir("alloc")
	if err != nil {
		return err
	}
	defer cleanup()
	ecfg := etcdembed.Default(filepath.Join(dir, "etcd"))
	etcd, err := etcdembed.Start(ctx, ecfg)
	if err != nil {
		return err
	}
	defer etcd.Close()

	var conns []*grpc.ClientConn
	for i := range 2 {
		scfg := server.Default()
		scfg.Listen = "127.0.0.1:0"
		scfg.DataDir = ""
		scfg.Etcd.Endpoints = []string{etcd.Endpoint()}
		scfg.Logger = cfg.Logger
		srv, err := server.New(ctx, scfg)
		if err != nil {
			return fmt.Errorf("start server replica %d: %w", i+1, err)
		}
		go srv.Serve()
		defer srv.Close()
		conn, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("dial server replica %d: %w", i+1, err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	tenants := vxfabricv1.NewTenantServiceClient(conns[0])
	if _, err := tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "alloc"}); err != nil {
		return fmt.Errorf("create tenant %q: %w", "alloc", err)
	}
	var rawClients []*clientv3.Client
	for range 2 {
		c, err := etcd.Client()
		if err != nil {
			return fmt.Errorf("etcd client: %w", err)
		}
		defer c.Close()
		rawClients = append(rawClients, c)
	}

	var seq atomic.Int64
	created := 0
	createNetwork := networkCreator(&seq, func(worker int) *grpc.ClientConn { return conns[worker%2] })
	rawTxn := rawCreator(&seq, func(worker int) *clientv3.Client { return rawClients[worker%2] })
	for _, n := range cfg.Clients {
		var profile func(slice int) string
		if cfg.ProfileDir != "" {
			profile = func(slice int) string {
				return filepath.Join(cfg.ProfileDir, fmt.Sprintf("allocation-%d-slice%d.cpu.pprof", n, slice))
			}
		}
		rate, raw, err := alternate(ctx, n, cfg.Duration, createNetwork, rawTxn, profile)
		if err != nil {
			return err
		}
		created += rate.ops
		cfg.Progress("allocation, %d clients: %.0f networks/s, raw etcd %.0f txn/s (process CPU per op %.0f and %.0f µs)",
			n, rate.perSec, raw.perSec, rate.cpuPerOp(), raw.cpuPerOp())
		out.Metrics = append(out.Metrics,
			InfoMetric(fmt.Sprintf("%d client(s): raw etcd create-if-absent", n), raw.perSec, "txn/s"),
			InfoMetric(fmt.Sprintf("%d client(s): network creates", n), rate.perSec, "/s"),
			NewMetric(fmt.Sprintf("%d client(s): network creates / raw txns", n), rate.perSec/raw.perSec, "", AtLeast, 0.5),
		)
		if rate.cpu > 0 && raw.cpu > 0 {
			out.Metrics = append(out.Metrics,
				InfoMetric(fmt.Sprintf("%d client(s): process CPU per raw txn", n), raw.cpuPerOp(), "µs"),
				InfoMetric(fmt.Sprintf("%d client(s): process CPU per network create", n), rate.cpuPerOp(), "µs"),
			)
		}
	}
	dups, total, err := duplicateVNIs(ctx, rawClients[0])
	if err != nil {
		return err
	}
	if total != created {
		return fmt.Errorf("%d networks in etcd, %d created", total, created)
	}
	m := NewMetric("duplicate VNIs", float64(dups), "", Equal, 0)
	m.Note = fmt.Sprintf("over %d networks created by 2 replicas", total)
	out.Metrics = append(out.Metrics, m)
	out.Notes = append(out.Notes, "two API server replicas (controlplane/server) on one embedded etcd, which they reach over its socket as they would an external etcd; clients alternate between them, one gRPC connection per replica")
	return singleServer(ctx, cfg, out)
}

// singleServer measures the default deployment beside the replicas: one server with its own
// embedded etcd, which it reaches in-process (etcdembed.InProcessClient), and one client. Its raw
// transactions take the same in-process path. Figures only, no target: the targets are
// the replicas'.
func singleServer(ctx context.Context, cfg AllocationConfig, out *Outcome) error {
	dir, cleanup, err := TempDir("alloc1")
	if err != nil {
		return err
	}
	defer cleanup()
	scfg := server.Default()
	scfg.Listen = "127.0.0.1:0"
	scfg.DataDir = dir
	scfg.Logger = cfg.Logger
	srv, err := server.New(ctx, scfg)
	if err != nil {
		return fmt.Errorf("start a server with its embedded etcd: %w", err)
	}
	go srv.Serve()
	defer srv.Close()
	conn, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial the server: %w", err)
	}
	defer conn.Close()
	if _, err := vxfabricv1.NewTenantServiceClient(conn).CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "alloc"}); err != nil {
		return fmt.Errorf("create tenant %q: %w", "alloc", err)
	}
	var seq atomic.Int64
	createNetwork := networkCreator(&seq, func(int) *grpc.ClientConn { return conn })
	rawTxn := rawCreator(&seq, func(int) *clientv3.Client { return srv.Etcd() })
	rate, raw, err := alternate(ctx, 1, cfg.Duration, createNetwork, rawTxn, nil)
	if err != nil {
		return err
	}
	cfg.Progress("allocation, one server with its embedded etcd, 1 client: %.0f networks/s, raw in-process etcd %.0f txn/s", rate.perSec, raw.perSec)
	const what = "in-process etcd, 1 client"
	out.Metrics = append(out.Metrics,
		InfoMetric(what+": raw etcd create-if-absent", raw.perSec, "txn/s"),
		InfoMetric(what+": network creates", rate.perSec, "/s"),
		InfoMetric(what+": network creates / raw txns", rate.perSec/raw.perSec, ""),
	)
	return nil
}

// alternate measures op and raw from n clients for d each, in alternating slices (N R R N N R R N
// ...) so that load from elsewhere on the machine hits both alike. profile, when set, names the CPU
// profile of each of op's slices (go tool pprof merges them).
func alternate(ctx context.Context, n int, d time.Duration, op, raw func(ctx context.Context, worker int) error, profile func(slice int) string) (opRate, rawRate rateResult, err error) {
	slice := d / allocSlices
	for i := range 2 * allocSlices {
		r, f := &opRate, op
		if (i+i/2)%2 == 1 {
			r, f = &rawRate, raw
		}
		var stopProfile func()
		if profile != nil && r == &opRate {
			if stopProfile, err = startCPUProfile(profile(i)); err != nil {
				return opRate, rawRate, err
			}
		}
		res, err := measureRate(ctx, n, slice, f)
		if stopProfile != nil {
			stopProfile()
		}
		if err != nil {
			return opRate, rawRate, err
		}
		r.ops += res.ops
		r.took += res.took
		r.cpu += res.cpu
	}
	opRate.perSec = float64(opRate.ops) / opRate.took.Seconds()
	rawRate.perSec = float64(rawRate.ops) / rawRate.took.Seconds()
	return opRate, rawRate, nil
}

// networkCreator returns an op that creates network n<seq> of tenant "alloc" through conn(worker).
func networkCreator(seq *atomic.Int64, conn func(worker int) *grpc.ClientConn) func(ctx context.Context, worker int) error {
	return func(ctx context.Context, worker int) error {
		i := seq.Add(1)
		_, err := vxfabricv1.NewNetworkServiceClient(conn(worker)).CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
			Tenant: "alloc", Name: fmt.Sprintf("n%d", i), Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED,
		})
		if err != nil {
			return fmt.Errorf("create network n%d: %w", i, err)
		}
		return nil
	}
}

// rawCreator returns an op that runs one bare create-if-absent transaction through cli(worker).
func rawCreator(seq *atomic.Int64, cli func(worker int) *clientv3.Client) func(ctx context.Context, worker int) error {
	return func(ctx context.Context, worker int) error {
		key := fmt.Sprintf("%s%d", rawPrefix, seq.Add(1))
		resp, err := cli(worker).Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, "x")).
			Commit()
		if err != nil {
			return fmt.Errorf("txn on %s: %w", key, err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("txn on %s: key already present", key)
		}
		return nil
	}
}

// allocSlices is how many alternating slices each rate is measured in.
const allocSlices = 4

type rateResult struct {
	ops    int
	took   time.Duration
	perSec float64
	// cpu is the CPU time the whole process (etcd, servers and clients) used meanwhile; 0 when unknown.
	cpu time.Duration
}

// cpuPerOp is the process's CPU time per operation in µs: what the rate comes to when the process has
// the cores to itself (the machine is shared, so rates swing with others' load; this does less).
func (r rateResult) cpuPerOp() float64 {
	if r.ops == 0 {
		return 0
	}
	return float64(r.cpu.Microseconds()) / float64(r.ops)
}

// processCPU reads the user and system CPU time of this process from /proc/self/stat (10 ms
// resolution); 0 where there is no /proc.
func processCPU() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count fields after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * (time.Second / clockTicks)
}

// clockTicks is USER_HZ, the unit of /proc's CPU times (100 on every Linux architecture Go supports).
const clockTicks = 100

// measureRate runs op from n goroutines for d and returns the completed operations per second.
func measureRate(ctx context.Context, n int, d time.Duration, op func(ctx context.Context, worker int) error) (rateResult, error) {
	var ops atomic.Int64
	var firstErr error
	var once sync.Once
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deadline := time.Now().Add(d)
	cpu0 := processCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && rctx.Err() == nil {
				if err := op(rctx, w); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	cpu := processCPU() - cpu0
	if firstErr != nil {
		return rateResult{}, firstErr
	}
	if err := ctx.Err(); err != nil {
		return rateResult{}, err
	}
	if cpu0 == 0 {
		cpu = 0
	}
	return rateResult{ops: int(ops.Load()), took: took, perSec: float64(ops.Load()) / took.Seconds(), cpu: cpu}, nil
}

// duplicateVNIs reads every network from etcd and counts networks sharing a VNI with an earlier one.
func duplicateVNIs(ctx context.Context, cli *clientv3.Client) (dups, total int, err error) {
	resp, err := cli.Get(ctx, store.Prefix+"networks/", clientv3.WithPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("read networks: %w", err)
	}
	seen := map[uint32]bool{}
	for _, kv := range resp.Kvs {
		n := &vxfabricv1.Network{}
		if err := proto.Unmarshal(kv.Value, n); err != nil {
			return 0, 0, fmt.Errorf("decode network %s: %w", kv.Key, err)
		}
		if seen[n.GetVni()] {
			dups++
		}
		seen[n.GetVni()] = true
	}
	return dups, len(resp.Kvs), nil
}
