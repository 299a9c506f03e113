package main

// Fuzz targets for the CLI's parsing of address, CIDR, MAC, uplink, mode, VNI range and NIC
// arguments (issue 7): whatever a user types, the CLI either refuses it with a one-line error before
// calling the server, or sends exactly what was typed (it never guesses, truncates or panics).
// Seed corpora run as ordinary tests; `go test -fuzz FuzzX -fuzztime 60s ./cmd/vxfab` explores.

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/lab"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// captureServer records the last create request it received and answers it with success.
type captureServer struct {
	vxfabricv1.UnimplementedNetworkServiceServer
	vxfabricv1.UnimplementedPortServiceServer
	mu   sync.Mutex
	last proto.Message
}

func (c *captureServer) take() proto.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.last
	c.last = nil
	return m
}

func (c *captureServer) CreateNetwork(_ context.Context, r *vxfabricv1.CreateNetworkRequest) (*vxfabricv1.CreateNetworkResponse, error) {
	c.mu.Lock()
	c.last = r
	c.mu.Unlock()
	return &vxfabricv1.CreateNetworkResponse{Network: &vxfabricv1.Network{Tenant: r.Tenant, Name: r.Name, Cidr: r.Cidr, Mode: r.Mode}}, nil
}

func (c *captureServer) CreatePort(_ context.Context, r *vxfabricv1.CreatePortRequest) (*vxfabricv1.CreatePortResponse, error) {
	c.mu.Lock()
	c.last = r
	c.mu.Unlock()
	return &vxfabricv1.CreatePortResponse{Port: &vxfabricv1.Port{Tenant: r.Tenant, Name: r.Name, Mac: r.Mac, Ip: r.Ip}}, nil
}

// startCapture serves a captureServer on a unix socket for the life of the fuzz target.
func startCapture(f testing.TB) (*captureServer, string) {
	f.Helper()
	sock := filepath.Join(f.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	c := &captureServer{}
	s := grpc.NewServer()
	vxfabricv1.RegisterNetworkServiceServer(s, c)
	vxfabricv1.RegisterPortServiceServer(s, c)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ln) }()
	f.Cleanup(func() { s.Stop(); <-done })
	return c, "unix://" + sock
}

// runCLI runs the command tree in-process, as main builds it.
func runCLI(t *testing.T, server string, args ...string) error {
	t.Helper()
	t.Setenv("VXFAB_TOKEN", "")
	t.Setenv("VXFAB_PROFILE", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--server", server, "--insecure", "--timeout", "5s"}, args...))
	return root.ExecuteContext(ctx)
}

func oneLine(t *testing.T, err error) {
	t.Helper()
	if line := errorLine(err); strings.ContainsAny(line, "\n\r") || line == "" {
		t.Fatalf("error is not one line: %q", line)
	}
}

// TestFuzzHarnessReachesServer keeps the fuzz targets honest: a well-formed command does reach the
// capture server, so the refusal path is not all they ever see.
func TestFuzzHarnessReachesServer(t *testing.T) {
	c, server := startCapture(t)
	if err := runCLI(t, server, "network", "create", "--tenant=t", "--cidr=10.0.0.0/24", "--mode=nat", "--uplink=h1:eth1", "--vni=0x1000", "--", "web"); err != nil {
		t.Fatalf("network create: %v", err)
	}
	want := &vxfabricv1.CreateNetworkRequest{Tenant: "t", Name: "web", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT, Vni: 4096, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth1"}}
	got, _ := c.take().(*vxfabricv1.CreateNetworkRequest)
	if !strings.HasPrefix(got.GetRequestId(), "cli-") {
		t.Errorf("sent request_id %q, want one the CLI made up", got.GetRequestId())
	}
	if got != nil {
		got.RequestId = ""
	}
	if !proto.Equal(got, want) {
		t.Errorf("sent %v, want %v", got, want)
	}
	if err := runCLI(t, server, "port", "create", "--tenant=t", "--network=n", "--node=h1", "--mac=0E-00-00-00-00-01", "--ip=10.0.0.5", "--", "p1"); err != nil {
		t.Fatalf("port create: %v", err)
	}
	if got, ok := c.take().(*vxfabricv1.CreatePortRequest); !ok || got.Mac != "0E-00-00-00-00-01" || got.Ip != "10.0.0.5" {
		t.Errorf("sent %v", got)
	}
	if err := runCLI(t, server, "network", "create", "--tenant=t", "--cidr=10.0.0.0/24", "--mode=mesh", "--", "web"); err == nil || c.take() != nil {
		t.Errorf("--mode=mesh: err %v", err)
	}
}

func FuzzNetworkCreateArgs(f *testing.F) {
	for _, s := range [][6]string{
		{"web", "10.0.0.0/24", "isolated", "", "", ""},
		{"web", "10.0.0.0/24", "NAT", "10.0.0.1", "", "4096"},
		{"web", "10.0.0.0/24", "routed", "10.0.0.254", "", "0x1000"},
		{"lan", "192.168.0.0/16", "bridged", "", "h1:eth1", "16777214"},
		{"lan", "192.168.0.0/16", "bridged", "", "h1:eth1:0", ""},
		{"lan", "192.168.0.0/16", "bridged", "", "h1", ""},
		{"web", "10.0.0.0/24", "", "", "", "-1"},
		{"web", "10.0.0.0/24", "mesh", "", "", "4294967296"},
		{"-x", "--cidr=1", "nat=1", "a b", ":", "1_000"},
		{"web", "10.0.0.0/24\n", "nat", "10.0.0.1\x00", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5])
	}
	c, server := startCapture(f)
	f.Fuzz(func(t *testing.T, name, cidr, mode, gateway, uplink, vni string) {
		args := []string{"network", "create", "--tenant=t", "--cidr=" + cidr, "--mode=" + mode, "--gateway=" + gateway}
		if uplink != "" {
			args = append(args, "--uplink="+uplink)
		}
		if vni != "" {
			args = append(args, "--vni="+vni)
		}
		err := runCLI(t, server, append(args, "--", name)...)
		got := c.take()
		if err != nil {
			oneLine(t, err)
			if got != nil {
				t.Fatalf("refused (%v) but sent %v", err, got)
			}
			return
		}
		req, ok := got.(*vxfabricv1.CreateNetworkRequest)
		if !ok {
			t.Fatalf("accepted but sent %v", got)
		}
		if req.Name != name || req.Cidr != cidr || req.Gateway != gateway || req.Tenant != "t" {
			t.Fatalf("sent name %q cidr %q gateway %q, typed %q %q %q", req.Name, req.Cidr, req.Gateway, name, cidr, gateway)
		}
		wantMode := vxfabricv1.NetworkMode(vxfabricv1.NetworkMode_value["NETWORK_MODE_"+strings.ToUpper(mode)])
		if mode == "" {
			wantMode = vxfabricv1.NetworkMode_NETWORK_MODE_UNSPECIFIED
		} else if wantMode == vxfabricv1.NetworkMode_NETWORK_MODE_UNSPECIFIED {
			t.Fatalf("mode %q accepted as %v", mode, req.Mode)
		}
		if req.Mode != wantMode {
			t.Fatalf("mode %q sent as %v", mode, req.Mode)
		}
		if uplink == "" {
			if req.Uplink != nil {
				t.Fatalf("uplink %v sent, none typed", req.Uplink)
			}
		} else if req.Uplink == nil || req.Uplink.Node+":"+req.Uplink.Interface != uplink || strings.Contains(req.Uplink.Node, ":") {
			t.Fatalf("uplink %q sent as %v", uplink, req.Uplink)
		}
		if vni != "" {
			want, perr := strconv.ParseUint(vni, 0, 32) // pflag's own reading of a uint32
			if perr != nil || uint64(req.Vni) != want {
				t.Fatalf("vni %q sent as %d (%v)", vni, req.Vni, perr)
			}
		} else if req.Vni != 0 {
			t.Fatalf("vni %d sent, none typed", req.Vni)
		}
	})
}

func FuzzPortCreateArgs(f *testing.F) {
	for _, s := range [][3]string{
		{"p1", "0e:00:00:00:00:01", "10.0.0.5"},
		{"p1", "0E-00-00-00-00-01", ""},
		{"p1", "", "::1"},
		{"p1", "zz", "10.0.0.5/24"},
		{"p1", "0e:00:00:00:00:01,0e:00:00:00:00:02", "10.0.0.5 "},
		{"p1", "=", "--ip=1.1.1.1"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	c, server := startCapture(f)
	f.Fuzz(func(t *testing.T, name, mac, ip string) {
		err := runCLI(t, server, "port", "create", "--tenant=t", "--network=n", "--node=h1", "--mac="+mac, "--ip="+ip, "--", name)
		got := c.take()
		if err != nil {
			oneLine(t, err)
			if got != nil {
				t.Fatalf("refused (%v) but sent %v", err, got)
			}
			return
		}
		req, ok := got.(*vxfabricv1.CreatePortRequest)
		if !ok {
			t.Fatalf("accepted but sent %v", got)
		}
		if req.Name != name || req.Mac != mac || req.Ip != ip || req.Network != "n" || req.Node != "h1" {
			t.Fatalf("sent %v, typed name %q mac %q ip %q", req, name, mac, ip)
		}
	})
}

// FuzzParseNIC: `lab vm create --nic TENANT/NETWORK[=IP]`.
func FuzzParseNIC(f *testing.F) {
	for _, s := range []string{"acme/web", "acme/web=10.0.0.5", "acme/web=", "acme/", "/web", "acme/web/x", "a/b=::1", "a/b=1.2.3.4%eth0", "a=b/c", "a/b=c=d", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		nic, err := lab.ParseNIC(s)
		if err != nil {
			oneLine(t, err)
			return
		}
		if nic.Tenant == "" || nic.Network == "" || strings.ContainsAny(nic.Tenant, "/=") || strings.ContainsAny(nic.Network, "/=") {
			t.Fatalf("ParseNIC(%q) = %+v", s, nic)
		}
		if nic.IP != "" {
			if _, err := netip.ParseAddr(nic.IP); err != nil {
				t.Fatalf("ParseNIC(%q) accepted ip %q: %v", s, nic.IP, err)
			}
		}
		again, err := lab.ParseNIC(nic.String())
		if err != nil || again != nic {
			t.Fatalf("ParseNIC(%q) = %+v, but its String %q parses as %+v (%v)", s, nic, nic.String(), again, err)
		}
	})
}

// FuzzVNIRange: `vxfab server --vni-range FIRST-LAST`.
func FuzzVNIRange(f *testing.F) {
	for _, s := range []string{"4096-16777214", "1-1", "100", "0-10", "10-5", "1-16777215", " 7 - 9 ", "-", "1--2", "+1-2", "0x10-0x20", "4294967297-4294967298"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := serverConfig(serverFlags{listen: []string{"127.0.0.1:0"}, dataDir: "/nonexistent", vniRanges: []string{s}, underlayMTU: 1500, logLevel: "error"}, prometheus.NewRegistry())
		if err != nil {
			oneLine(t, err)
			return
		}
		if len(cfg.VNIRanges) != 1 {
			t.Fatalf("--vni-range %q gave %v", s, cfg.VNIRanges)
		}
		r := cfg.VNIRanges[0]
		if r.First < 1 || r.Last > alloc.MaxVNI || r.First > r.Last {
			t.Fatalf("--vni-range %q accepted as %d-%d", s, r.First, r.Last)
		}
		lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
		if !found {
			hi = lo
		}
		a, errA := strconv.ParseUint(strings.TrimSpace(lo), 10, 32)
		b, errB := strconv.ParseUint(strings.TrimSpace(hi), 10, 32)
		if errA != nil || errB != nil || uint64(r.First) != a || uint64(r.Last) != b {
			t.Fatalf("--vni-range %q accepted as %d-%d", s, r.First, r.Last)
		}
	})
}
