package auth

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

// responsive fails the test unless an admin call completes within a second.
func responsive(t *testing.T, s *testServer, what string) time.Duration {
	t.Helper()
	return responsiveOn(t, s.dial(t, client{token: s.admin}), what)
}

// responsiveOn is responsive over an existing connection.
func responsiveOn(t *testing.T, conn *grpc.ClientConn, what string) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := vxfabricv1.NewNodeServiceClient(conn).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	if err != nil {
		t.Fatalf("server unresponsive %s: %v", what, err)
	}
	return time.Since(start)
}

func TestOversizedRequestRefused(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx := ctxT(t)
	for _, c := range []client{{token: s.admin}, {}} { // before authentication, too
		conn := s.dial(t, c)
		_, err := vxfabricv1.NewNetworkServiceClient(conn).CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
			Tenant: "a", Name: strings.Repeat("n", 2<<20), Cidr: "10.0.0.0/24",
		})
		wantCode(t, "2 MiB request", err, codes.ResourceExhausted)
		// The same connection still serves a request of normal size.
		_, err = vxfabricv1.NewNetworkServiceClient(conn).ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{Tenant: "a"})
		if c.token != "" {
			wantCode(t, "normal request after an oversized one", err, codes.OK)
		}
	}
	if n := len(s.nets.byTenant["a"]); n != 0 {
		t.Errorf("%d networks created by oversized requests", n)
	}
	// Oversized metadata (a 1 MiB "token") is refused too.
	_, err := vxfabricv1.NewNodeServiceClient(s.dial(t, client{token: strings.Repeat("t", 1<<20)})).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	if err == nil {
		t.Error("1 MiB authorization header accepted")
	}
	responsive(t, s, "after oversized requests")
}

// rawCodec sends bytes as they are, to put malformed protobuf on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

var _ encoding.Codec = rawCodec{}

func TestMalformedInputRefusedCleanly(t *testing.T) {
	cli := startEtcd(t)
	s := startServer(t, cli)
	ctx := ctxT(t)
	for _, c := range []client{{token: s.admin}, {}} {
		conn := s.dial(t, c)
		for _, garbage := range [][]byte{
			{0xff, 0xff, 0xff, 0xff, 0x0f},       // a varint that never ends
			{0x0a, 0xff, 0xff, 0xff, 0xff, 0x07}, // a length prefix of 2 GiB
			{0x12, 0x03, 0xc3, 0x28, 0x41},       // invalid UTF-8 in a string field
			{0x07},                               // wire type 7 does not exist
		} {
			var out []byte
			err := conn.Invoke(ctx, vxfabricv1.NetworkService_CreateNetwork_FullMethodName, garbage, &out, grpc.ForceCodec(rawCodec{}))
			if err == nil {
				t.Errorf("malformed request %x accepted", garbage)
			}
			if code := grpcCode(err); code != codes.Internal {
				t.Errorf("malformed request %x: %v", garbage, err)
			}
		}
	}
	if n := len(s.nets.byTenant); n != 0 {
		t.Errorf("malformed requests created networks: %v", s.nets.byTenant)
	}

	// Not even TLS: bytes of nothing on the TCP port, then a TLS client that sends HTTP/1.
	raw, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("\x00", 4096)))
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, raw); err != nil && !isConnReset(err) {
		t.Errorf("server did not close a non-TLS connection: %v", err)
	}
	raw.Close()

	trust, err := pki.NewTrust(filepath.Join(s.pkiDir, pki.CACertFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ClientTLSConfig(trust, "", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"h2"}
	tc, err := tls.Dial("tcp", s.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + strings.Repeat("\xff", 64<<10)))
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, tc); err != nil && !isConnReset(err) {
		t.Errorf("server did not close a connection of garbage frames: %v", err)
	}
	tc.Close()
	responsive(t, s, "after malformed input")
}

func isConnReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// TestStreamsNeverReadDoNotStarveOthers: clients that open many Sync streams and never read them
// leave every other caller served promptly, and the server's memory bounded by the per-stream flow
// control windows, not by what the handlers try to send.
func TestStreamsNeverReadDoNotStarveOthers(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the server for a second")
	}
	cli := startEtcd(t)
	s := startServer(t, cli)
	other := s.dial(t, client{token: s.admin})
	responsiveOn(t, other, "before the flood")

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	const conns, perConn = 2, 100
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var opened atomic.Int32
	for range conns {
		// A static 64 KiB window: the test's own client buffers stay small, so what is measured
		// is the server.
		conn := s.dial(t, client{token: s.admin, dialOpts: []grpc.DialOption{grpc.WithStaticStreamWindowSize(64 << 10), grpc.WithStaticConnWindowSize(64 << 10)}})
		for range perConn {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stream, err := vxfabricv1.NewAgentServiceClient(conn).Sync(ctx, &vxfabricv1.SyncRequest{Node: "flood"})
				if err != nil {
					return
				}
				opened.Add(1)
				<-ctx.Done() // never Recv
				_ = stream
			}()
		}
	}
	defer func() {
		cancel()
		wg.Wait()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for opened.Load() < conns*perConn {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d streams opened", opened.Load(), conns*perConn)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The handlers fill every window and write quota, then block in Send: wait for the count of
	// messages sent to stop moving.
	for last, stable := int64(-1), 0; stable < 5; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("flood handlers never blocked: nothing bounds what they send")
		}
		if n := floodSent.Load(); n == last {
			stable++
		} else {
			last, stable = n, 0
		}
	}
	heapGrowth := func() int64 {
		runtime.GC()
		var now runtime.MemStats
		runtime.ReadMemStats(&now)
		return int64(now.HeapInuse) - int64(before.HeapInuse)
	}
	// While the handlers push into full windows, others are served, and the heap does not grow
	// with time: what the handlers keep trying to send waits in them, not in buffers.
	var worst time.Duration
	for range 10 {
		worst = max(worst, responsiveOn(t, other, "during the flood"))
	}
	first := heapGrowth()
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
		worst = max(worst, responsiveOn(t, other, "during the flood"))
	}
	last := heapGrowth()
	n := int64(conns * perConn)
	t.Logf("%d unread streams: heap +%d MiB, then +%d MiB (%d KiB a stream, both ends); slowest other call %s",
		n, first>>20, last>>20, last/n>>10, worst.Round(time.Millisecond))
	if last-first > 8<<20 {
		t.Errorf("heap kept growing under unread streams: +%d MiB, then +%d MiB", first>>20, last>>20)
	}
	// Both ends of each stream: the server's 64 KiB write quota, the client's 64 KiB window and the
	// pooled buffers behind them.
	if last/n > 512<<10 {
		t.Errorf("%d KiB of heap per unread stream", last/n>>10)
	}
	if worst > 500*time.Millisecond {
		t.Errorf("another caller waited %s during the flood", worst)
	}
}

func grpcCode(err error) codes.Code { return status.Code(err) }
