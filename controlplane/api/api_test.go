package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestToStatus(t *testing.T) {
	logs := &logBuffer{}
	c := &core{log: slog.New(slog.NewTextHandler(logs, nil))}
	// What the etcd client returns when the server answers with one of its errors: an
	// rpctypes.EtcdError, which has no GRPCStatus.
	etcdSays := func(answer error) error { return clientv3.ContextError(context.Background(), answer) }
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("cidr: %w", store.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("tenant %q: %w", "x", store.ErrNotFound), codes.NotFound},
		{fmt.Errorf("vni 5: %w", store.ErrVNITaken), codes.AlreadyExists},
		{fmt.Errorf("net: %w", store.ErrStale), codes.FailedPrecondition},
		{fmt.Errorf("net: %w", store.ErrRequestMismatch), codes.FailedPrecondition},
		{fmt.Errorf("pool: %w", store.ErrExhausted), codes.ResourceExhausted},
		{fmt.Errorf("create: %w", store.ErrContention), codes.Aborted},
		{fmt.Errorf("get: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("get: %w", status.Error(codes.Unavailable, "connection refused")), codes.Unavailable},
		{fmt.Errorf("get: %w", etcdSays(rpctypes.ErrGRPCNoLeader)), codes.Unavailable},
		{fmt.Errorf("get: %w", etcdSays(rpctypes.ErrGRPCLeaderChanged)), codes.Unavailable},
		{fmt.Errorf("get: %w", etcdSays(rpctypes.ErrGRPCTimeout)), codes.Unavailable},
		{fmt.Errorf("get: %w", etcdSays(rpctypes.ErrGRPCTimeoutDueToLeaderFail)), codes.Unavailable},
		{fmt.Errorf("get: %w", etcdSays(rpctypes.ErrGRPCStopped)), codes.Unavailable},
		{fmt.Errorf("get: %w", etcdSays(rpctypes.ErrGRPCNotLeader)), codes.Unavailable},
		{fmt.Errorf("put: %w", etcdSays(rpctypes.ErrGRPCNoSpace)), codes.Unavailable},
		{fmt.Errorf("get: %w", etcdSays(rpctypes.ErrGRPCCompacted)), codes.Internal},
		{errors.New("disk on fire"), codes.Internal},
	} {
		before := strings.Count(logs.String(), "level=ERROR")
		if got := status.Code(c.toStatus(tc.err)); got != tc.code {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.code)
		}
		if logged := strings.Count(logs.String(), "level=ERROR") > before; logged != (tc.code == codes.Internal) {
			t.Errorf("%v: logged as an error: %v, want only Internal ones", tc.err, logged)
		}
	}
	// The message does not repeat what the code says, also when a more specific reason follows.
	for err, want := range map[error]string{
		fmt.Errorf("cidr %q: bad: %w", "x", store.ErrInvalidArgument):                         `cidr "x": bad`,
		fmt.Errorf("vni 5000: %w", store.ErrVNITaken):                                         `vni 5000: vni taken`,
		fmt.Errorf("network %q is at revision 5, not 4: %w", "web", store.ErrStale):           `network "web" is at revision 5, not 4: revision changed`,
		fmt.Errorf("get network: %w", fmt.Errorf("network %q: %w", "web", store.ErrNotFound)): `get network: network "web"`,
		fmt.Errorf("tenant %q: not foundling: %w", "x", store.ErrNotFound):                    `tenant "x": not foundling`,
	} {
		if msg := status.Convert(c.toStatus(err)).Message(); msg != want {
			t.Errorf("%v: message %q, want %q", err, msg, want)
		}
	}
}

// etcd without a leader, as the real client reports it, is Unavailable through the services, and is
// not logged as a failure of ours (it used to be Internal: the client's rpctypes.EtcdError carries
// no gRPC status).
func TestEtcdWithoutLeaderIsUnavailable(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	noLeader := func(ctx context.Context, _ string) error { return clientv3.ContextError(ctx, rpctypes.ErrGRPCNoLeader) }
	f.kv.onGet.Store(&noLeader)
	_, err := f.svcs.Tenants.GetTenant(ctx, &vxfabricv1.GetTenantRequest{Name: "acme"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no leader") {
		t.Errorf("get tenant without an etcd leader: %v, want Unavailable saying no leader", err)
	}
	_, err = f.createNetwork(ctx, "web", "10.0.0.0/24", "")
	if status.Code(err) != codes.Unavailable {
		t.Errorf("create network without an etcd leader: %v, want Unavailable", err)
	}
	if logs := f.logs.String(); strings.Contains(logs, "level=ERROR") {
		t.Errorf("an unavailable etcd was logged as an error of ours:\n%s", logs)
	}
}

// Requests refused for what they ask: InvalidArgument naming the field, nothing written.
func TestCreateNetworkRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	routed, bridged := vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED
	for i, tc := range []struct {
		req  *vxfabricv1.CreateNetworkRequest
		want string
	}{
		{&vxfabricv1.CreateNetworkRequest{Cidr: "10.0.0.0/24", Mode: routed, Gateway: "banana"}, `gateway "banana": want an IPv4 address`},
		{&vxfabricv1.CreateNetworkRequest{Cidr: "10.0.0.0/24", Mode: routed, Vni: 7}, `vni 7: outside this fabric's VNI range 4096-16777214`},
		{&vxfabricv1.CreateNetworkRequest{Cidr: "10.0.0.0/24", Mode: routed, Vni: 4095}, `vni 4095: outside this fabric's VNI range 4096-16777214`},
		{&vxfabricv1.CreateNetworkRequest{Cidr: "10.0.0.0/24", Mode: bridged, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "lo"}}, `interface "lo": the loopback interface cannot be an uplink`},
	} {
		tc.req.Tenant, tc.req.Name = "acme", fmt.Sprintf("web-%d", i)
		_, err := f.svcs.Networks.CreateNetwork(WithAdmin(ctx), tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Errorf("%v: %v, want InvalidArgument %q", tc.req, err, tc.want)
		}
	}
	if n := f.networkCount(ctx, t); n != 0 {
		t.Errorf("%d networks in etcd after refusals, want 0", n)
	}
	// The pool's bounds are in it.
	for _, vni := range []uint32{4096, alloc.MaxVNI} {
		n, err := f.svcs.Networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: fmt.Sprintf("vni-%d", vni), Cidr: "10.0.0.0/24", Mode: routed, Vni: vni})
		if err != nil || n.GetNetwork().GetVni() != vni {
			t.Errorf("create with vni %d: %v, %v", vni, n, err)
		}
	}
	// A pool of several ranges is named in full.
	pool, err := alloc.NewVNIPool([]alloc.Range{{First: 100, Last: 199}, {First: 5000, Last: 5999}})
	if err != nil {
		t.Fatal(err)
	}
	if err := validVNI(7, pool); err == nil || !strings.Contains(err.Error(), "vni 7: outside this fabric's VNI ranges 100-199, 5000-5999") {
		t.Errorf("vni 7 in pool 100-199, 5000-5999: %v", err)
	}
}

// What the store says is AlreadyExists, FailedPrecondition or NotFound reaches the user with the
// code, and the message does not say it again ("...: already exists: vni taken").
func TestStoreRefusalsDoNotRepeatTheirCode(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	routed := vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED
	web, err := f.svcs.Networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "web", Cidr: "10.0.0.0/24", Mode: routed, Vni: 5000})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.svcs.Networks.CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{Tenant: "acme", Name: "db", Cidr: "10.1.0.0/24", Mode: routed, Vni: 5000})
	wantCodeOnce(t, "vni taken", err, codes.AlreadyExists, "already exists")
	_, err = f.svcs.Networks.UpdateNetwork(ctx, &vxfabricv1.UpdateNetworkRequest{Tenant: "acme", Name: "web", Mtu: 1400, ExpectedRevision: web.Network.Revision + 100})
	wantCodeOnce(t, "stale update", err, codes.FailedPrecondition, "failed precondition")
	_, err = f.svcs.Networks.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: "acme", Name: "nosuch"})
	wantCodeOnce(t, "get missing network", err, codes.NotFound, "not found")
}

// wantCodeOnce checks err's code, and that its message does not spell the code out again.
func wantCodeOnce(t *testing.T, what string, err error, code codes.Code, codeText string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %v", what, err, code)
	}
	if msg := status.Convert(err).Message(); strings.Contains(msg, codeText) {
		t.Errorf("%s: message %q repeats the code", what, msg)
	}
}

func TestCheckCreateNetworkDefaults(t *testing.T) {
	for _, tc := range []struct {
		req          *vxfabricv1.CreateNetworkRequest
		mtu          uint32
		gateway      string
		uplinkIfName string
	}{
		{&vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT}, 1450, "10.0.0.1", ""},
		{&vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/8", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, Gateway: "10.255.255.254", Mtu: 1400}, 1400, "10.255.255.254", ""},
		{&vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/29", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}, 1450, "", ""},
		{&vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/29", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "enp0s3"}}, 1450, "", "enp0s3"},
	} {
		n, err := checkCreateNetwork(tc.req, 1500, nil)
		if err != nil {
			t.Fatalf("%v: %v", tc.req, err)
		}
		if n.Mtu != tc.mtu || n.Gateway != tc.gateway || n.Uplink.GetInterface() != tc.uplinkIfName {
			t.Errorf("%v: got mtu %d gateway %q uplink %v", tc.req, n.Mtu, n.Gateway, n.Uplink)
		}
	}
	for _, name := range []string{"a", "a-1", "abc-def-0"} {
		if err := validName("x", name); err != nil {
			t.Errorf("%q refused: %v", name, err)
		}
	}
	for _, mac := range []string{"0E:00:00:00:00:01", "02:fb:00:00:01:01"} {
		if _, err := validMAC(mac); err != nil {
			t.Errorf("%q refused: %v", mac, err)
		}
	}
}

// TestMTUAtMostTheUnderlayAllows: a network MTU whose frames would not fit the underlay with
// VXLAN's 50 bytes is refused, and says which flag raises the ceiling.
func TestMTUAtMostTheUnderlayAllows(t *testing.T) {
	req := func(mtu uint32) *vxfabricv1.CreateNetworkRequest {
		return &vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, Mtu: mtu}
	}
	if _, err := checkCreateNetwork(req(1450), 1500, nil); err != nil {
		t.Errorf("1450 on a 1500 underlay: %v", err)
	}
	_, err := checkCreateNetwork(req(9000), 1500, nil)
	if want := "mtu 9000: at most 1450, the underlay's 1500 less VXLAN's 50 bytes (server --underlay-mtu)"; !errors.Is(err, store.ErrInvalidArgument) || !strings.Contains(err.Error(), want) {
		t.Errorf("9000 on a 1500 underlay: %v, want InvalidArgument %q", err, want)
	}
	if n, err := checkCreateNetwork(req(9000), 9050, nil); err != nil || n.Mtu != 9000 {
		t.Errorf("9000 on a 9050 underlay: %v, %v", n.GetMtu(), err)
	}
}

func TestCIDRSpecialRangesRefused(t *testing.T) {
	for _, cidr := range []string{
		"0.0.0.0/8", "0.0.0.0/24", "127.0.0.0/8", "127.0.1.0/24", "169.254.0.0/16", "169.254.3.0/24",
		"169.0.0.0/8", // contains 169.254.0.0/16
		"224.0.0.0/24", "239.1.0.0/16", "240.0.0.0/8", "255.255.255.0/24", "224.0.0.0/8",
	} {
		_, err := validCIDR(cidr)
		if !errors.Is(err, store.ErrInvalidArgument) {
			t.Errorf("cidr %s: %v, want invalid argument", cidr, err)
		}
	}
	for _, cidr := range []string{"1.0.0.0/8", "126.255.255.0/24", "128.0.0.0/8", "169.253.0.0/16", "169.255.0.0/16", "223.255.255.0/24", "10.0.0.0/8"} {
		if _, err := validCIDR(cidr); err != nil {
			t.Errorf("cidr %s refused: %v", cidr, err)
		}
	}
}

func TestCheckVTEPs(t *testing.T) {
	nodes := []*vxfabricv1.Node{{Name: "h0"}, {Name: "h1", Vtep: "198.18.0.1"}, {Name: "h2", Vtep: "198.18.1.7"}}
	err := checkVTEPs("198.18.1.0/24", vtepsOf(nodes), true)
	if !errors.Is(err, store.ErrFailedPrecondition) {
		t.Fatalf("network over a vtep: %v, want failed precondition", err)
	}
	if !strings.Contains(err.Error(), "node h2") || !strings.Contains(err.Error(), "198.18.1.7") {
		t.Errorf("admin's message %q does not name node h2 and its vtep", err)
	}
	err = checkVTEPs("198.18.1.0/24", vtepsOf(nodes), false)
	if !errors.Is(err, store.ErrFailedPrecondition) {
		t.Fatalf("network over a vtep: %v, want failed precondition", err)
	}
	if strings.Contains(err.Error(), "h2") || strings.Contains(err.Error(), "198.18.1.7") {
		t.Errorf("tenant's message %q names node h2 or its vtep", err)
	}
	for _, admin := range []bool{false, true} {
		if err := checkVTEPs("198.18.2.0/24", vtepsOf(nodes), admin); err != nil {
			t.Errorf("network beside the vteps refused: %v", err)
		}
	}
}

// A refusal repeats at most store's 64 bytes of the input it refuses: a 1 MiB name does not come
// back as a 1 MiB message (which a client capping its headers would see as an Internal error).
func TestRefusalsDoNotEchoHugeInput(t *testing.T) {
	huge := strings.Repeat("é", 512*1024)
	for _, err := range []error{validName("network", huge), validRequestID(huge)} {
		if err == nil || len(err.Error()) > 300 || !strings.Contains(err.Error(), "(1048576 bytes)") {
			t.Errorf("refusal of a 1 MiB input: %d bytes: %.200q", len(err.Error()), err)
		}
	}
	if _, err := checkCreateNetwork(&vxfabricv1.CreateNetworkRequest{Tenant: "t", Name: "n", Cidr: huge}, 1500, nil); err == nil || len(err.Error()) > 300 {
		t.Errorf("refusal of a 1 MiB CIDR: %.200v", err)
	}
}
