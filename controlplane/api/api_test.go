package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestToStatus(t *testing.T) {
	c := &core{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
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
		{fmt.Errorf("get: %w", status.Error(codes.Unavailable, "etcdserver: no leader")), codes.Unavailable},
		{errors.New("disk on fire"), codes.Internal},
	} {
		if got := status.Code(c.toStatus(tc.err)); got != tc.code {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.code)
		}
	}
	if msg := status.Convert(c.toStatus(fmt.Errorf("cidr %q: bad: %w", "x", store.ErrInvalidArgument))).Message(); msg != `cidr "x": bad` {
		t.Errorf("message %q", msg)
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
		{&vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/8", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED, Gateway: "10.255.255.254", Mtu: 9000}, 9000, "10.255.255.254", ""},
		{&vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/29", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}, 1450, "", ""},
		{&vxfabricv1.CreateNetworkRequest{Tenant: "a", Name: "n", Cidr: "10.0.0.0/29", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "enp0s3"}}, 1450, "", "enp0s3"},
	} {
		n, err := checkCreateNetwork(tc.req, 1500)
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
	err := checkVTEPs("198.18.1.0/24", vtepsOf(nodes))
	if !errors.Is(err, store.ErrFailedPrecondition) {
		t.Fatalf("network over a vtep: %v, want failed precondition", err)
	}
	if !strings.Contains(err.Error(), "node h2") || !strings.Contains(err.Error(), "198.18.1.7") {
		t.Errorf("message %q does not name node h2 and its vtep", err)
	}
	if err := checkVTEPs("198.18.2.0/24", vtepsOf(nodes)); err != nil {
		t.Errorf("network beside the vteps refused: %v", err)
	}
}
