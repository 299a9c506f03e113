// Package api implements the vxfabric.v1 TenantService, NetworkService, PortService and NodeService
// on controlplane/store and controlplane/alloc.
//
// It owns request validation (the API's validation table: refused requests are InvalidArgument and
// write nothing) and the one mapping of store's sentinel errors to gRPC codes (toStatus). It must
// never keep resources in memory between calls: every answer comes from etcd. The one copy it keeps,
// the node VTEPs for CreateNetwork's check, is a hint that each create's transaction verifies (see
// nodeView).
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/vxfabric/vxfabric/controlplane/alloc"
	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ConvergenceSource tells NodeService how far each node's agent has come: the newest revision it
// reports applied, and the newest revision that changed its desired state. The fan-out (the Sync hub)
// implements it. NodeRevisions is called on every ListNodes/GetNode for each node: it must not block
// and must be safe for concurrent use. Unknown nodes give (0, 0).
type ConvergenceSource interface {
	NodeRevisions(node string) (applied, desired int64)
}

// Config is what the services need.
type Config struct {
	Store *store.Store
	Alloc *alloc.Allocator
	// UnderlayMTU gives the default network MTU (UnderlayMTU - 50).
	UnderlayMTU uint32
	// Convergence fills nodes' applied and desired revisions; nil leaves them 0.
	Convergence ConvergenceSource
	Logger      *slog.Logger
}

// Validate reports a Config the services cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("api: store is required")
	case c.Alloc == nil:
		return errors.New("api: allocator is required")
	case c.UnderlayMTU < minMTU+50 || c.UnderlayMTU > 65535:
		return fmt.Errorf("api: underlay mtu %d: must be %d-65535", c.UnderlayMTU, minMTU+50)
	case c.Logger == nil:
		return errors.New("api: logger is required")
	}
	return nil
}

// Services are the four API servers.
type Services struct {
	Tenants  *TenantServer
	Networks *NetworkServer
	Ports    *PortServer
	Nodes    *NodeServer
}

// New builds the services.
func New(cfg Config) (*Services, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &core{cfg: cfg, store: cfg.Store, log: cfg.Logger}
	return &Services{
		Tenants:  &TenantServer{core: c},
		Networks: &NetworkServer{core: c, nodes: &nodeView{store: cfg.Store}},
		Ports:    &PortServer{core: c},
		Nodes:    &NodeServer{core: c},
	}, nil
}

// Register adds the four services to a gRPC server.
func (s *Services) Register(g grpc.ServiceRegistrar) {
	vxfabricv1.RegisterTenantServiceServer(g, s.Tenants)
	vxfabricv1.RegisterNetworkServiceServer(g, s.Networks)
	vxfabricv1.RegisterPortServiceServer(g, s.Ports)
	vxfabricv1.RegisterNodeServiceServer(g, s.Nodes)
}

// ServiceNames are the full names of the services Register adds (for health reporting).
var ServiceNames = []string{
	vxfabricv1.TenantService_ServiceDesc.ServiceName,
	vxfabricv1.NetworkService_ServiceDesc.ServiceName,
	vxfabricv1.PortService_ServiceDesc.ServiceName,
	vxfabricv1.NodeService_ServiceDesc.ServiceName,
}

type core struct {
	cfg   Config
	store *store.Store
	log   *slog.Logger
}

// toStatus is the one place where errors become gRPC codes.
func (c *core) toStatus(err error) error {
	if err == nil {
		return nil
	}
	code, msg := codes.Internal, err.Error()
	for _, m := range sentinelCodes {
		if errors.Is(err, m.err) {
			// The code says what the sentinel said: keep the message about the object.
			return status.Error(m.code, strings.TrimSuffix(msg, ": "+m.err.Error()))
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	default:
		// etcd's client errors are gRPC statuses (Unavailable while etcd is unreachable, ...).
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			code = st.Code()
		}
	}
	if code == codes.Internal {
		c.log.Error("request failed", "err", err)
	}
	return status.Error(code, msg)
}

// sentinelCodes maps store's sentinel errors to gRPC codes, first match wins.
var sentinelCodes = []struct {
	err  error
	code codes.Code
}{
	{store.ErrInvalidArgument, codes.InvalidArgument},
	{store.ErrNotFound, codes.NotFound},
	{store.ErrAlreadyExists, codes.AlreadyExists},
	{store.ErrFailedPrecondition, codes.FailedPrecondition}, // ErrStale and ErrRequestMismatch included
	{store.ErrExhausted, codes.ResourceExhausted},
	{store.ErrContention, codes.Aborted},
}
