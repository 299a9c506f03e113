package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// CreatePortsCommand is the argument that makes vxbench run CreatePorts instead of the benchmarks.
const CreatePortsCommand = "create-ports"

// PortBatch is a batch of ports for CreatePorts: port i is named Prefix-i, bound to simulated host
// (First+i) mod Hosts, with the MAC of sequence number MACBase+i.
type PortBatch struct {
	Addr    string
	Prefix  string
	First   int
	Count   int
	Hosts   int
	MACBase uint64
	Clients int
}

func (b PortBatch) args() []string {
	return []string{
		"-addr", b.Addr, "-prefix", b.Prefix, "-first", strconv.Itoa(b.First), "-count", strconv.Itoa(b.Count),
		"-hosts", strconv.Itoa(b.Hosts), "-mac-base", strconv.FormatUint(b.MACBase, 10), "-clients", strconv.Itoa(b.Clients),
	}
}

// ParsePortBatch reads the arguments CreatePortsCommand is run with.
func ParsePortBatch(args []string) (PortBatch, error) {
	var b PortBatch
	for i := 0; i+1 < len(args); i += 2 {
		v := args[i+1]
		var err error
		switch args[i] {
		case "-addr":
			b.Addr = v
		case "-prefix":
			b.Prefix = v
		case "-first":
			b.First, err = strconv.Atoi(v)
		case "-count":
			b.Count, err = strconv.Atoi(v)
		case "-hosts":
			b.Hosts, err = strconv.Atoi(v)
		case "-mac-base":
			b.MACBase, err = strconv.ParseUint(v, 10, 64)
		case "-clients":
			b.Clients, err = strconv.Atoi(v)
		default:
			return b, fmt.Errorf("unknown argument %q", args[i])
		}
		if err != nil {
			return b, fmt.Errorf("%s %q: %w", args[i], v, err)
		}
	}
	if b.Addr == "" || b.Prefix == "" || b.Count < 1 || b.Hosts < 1 || b.Clients < 1 {
		return b, fmt.Errorf("create-ports: want -addr, -prefix, -count, -hosts and -clients")
	}
	return b, nil
}

func seqMAC(n uint64) net.HardwareAddr {
	return net.HardwareAddr{0x0e, 0xb0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

// CreatePorts creates the batch with b.Clients concurrent clients (one gRPC connection each) and
// writes "done <unix ns of the first request> <unix ns of the last response>" to w.
//
// It runs as a process of its own, like any API client would: in the process that simulates the
// agents, client goroutines would queue behind a hundred agents' reconcile passes.
func CreatePorts(ctx context.Context, b PortBatch, w io.Writer) error {
	next := make(chan int)
	errc := make(chan error, b.Clients)
	var wg sync.WaitGroup
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range b.Clients {
		conn, err := grpc.NewClient(b.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("dial %s: %w", b.Addr, err)
		}
		conns = append(conns, conn)
		conn.Connect()
	}
	start := time.Now()
	for _, conn := range conns {
		ports := vxfabricv1.NewPortServiceClient(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				req := &vxfabricv1.CreatePortRequest{
					Tenant: simTenant, Network: simNetwork, Name: fmt.Sprintf("%s-%d", b.Prefix, i),
					Node: HostName((b.First + i) % b.Hosts), Mac: seqMAC(b.MACBase + uint64(i)).String(),
				}
				if _, err := ports.CreatePort(ctx, req); err != nil {
					errc <- fmt.Errorf("create port %q on %s: %w", req.Name, req.Node, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range b.Count {
		select {
		case next <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	end := time.Now()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "done %d %d\n", start.UnixNano(), end.UnixNano())
	return err
}

// runCreatePorts runs CreatePorts in a child process and returns its first request and last
// response times.
func runCreatePorts(ctx context.Context, b PortBatch) (start, end time.Time, err error) {
	self, err := os.Executable()
	if err != nil {
		return start, end, fmt.Errorf("find vxbench executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, self, append([]string{CreatePortsCommand}, b.args()...)...)
	prioritise(cmd)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return start, end, fmt.Errorf("create-ports stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return start, end, fmt.Errorf("start create-ports: %w", err)
	}
	sc := bufio.NewScanner(out)
	var line string
	if sc.Scan() {
		line = sc.Text()
	}
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return start, end, fmt.Errorf("create-ports: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "done" {
		return start, end, fmt.Errorf("create-ports said %q", line)
	}
	s, err1 := strconv.ParseInt(f[1], 10, 64)
	e, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return start, end, fmt.Errorf("create-ports said %q", line)
	}
	return time.Unix(0, s), time.Unix(0, e), nil
}
