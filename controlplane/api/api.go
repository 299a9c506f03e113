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
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ConvergenceSource tells NodeService how far each node's agent has come: the newest revision it
// reports applied, and the newest revision that changed its desired state. The fan-out (the Sync hub)
// implements it, and also keeps what each agent said it could not apply. Both are called on every
// ListNodes/GetNode for each node: they must not block and must be safe for concurrent use. Unknown
// nodes give (0, 0) and no errors.
type ConvergenceSource interface {
	NodeRevisions(node string) (applied, desired int64)
	NodeErrors(node string) []string
}

// Config is what the services need.
type Config struct {
	Store *store.Store
	Alloc *alloc.Allocator
	// VNIs is the pool Alloc draws from: a requested VNI outside it is refused. Nil checks requested
	// VNIs against 1-16777214 only.
	VNIs *alloc.VNIPool
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

type adminKey struct{}

// WithAdmin marks ctx as the call of a caller who may see the whole fabric (controlplane/auth sets it
// for admin callers). Refusals then name what they are about even when it is not the caller's own
// (nodes, their underlay addresses); without the mark they name only the caller's own resources.
func WithAdmin(ctx context.Context) context.Context { return context.WithValue(ctx, adminKey{}, true) }

// isAdmin reports whether ctx was marked by WithAdmin.
func isAdmin(ctx context.Context) bool {
	admin, _ := ctx.Value(adminKey{}).(bool)
	return admin
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
			if m.code == codes.Aborted {
				// "too much contention, retry" says more than the code: the caller may retry.
				return status.Error(m.code, msg)
			}
			// The code says what the sentinel said: keep the message about the object.
			return status.Error(m.code, dropSentinel(msg, m.err.Error()))
		}
	}
	var etcdErr rpctypes.EtcdError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.As(err, &etcdErr):
		code = etcdCode(etcdErr)
	default:
		// etcd's client errors are gRPC statuses (Unavailable while etcd is unreachable, ...).
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			code = st.Code()
		}
	}
	switch code {
	case codes.Internal:
		c.log.Error("request failed", "err", err)
	case codes.Unavailable:
		c.log.Warn("etcd unavailable", "err", err)
	}
	return status.Error(code, msg)
}

// etcdCode is the code of an error the etcd server answered with. The etcd client turns those into
// rpctypes.EtcdError, which carries its code but no gRPC status. Every answer that says the cluster
// cannot serve now (no leader, an election, a timed-out proposal, a stopped or unhealthy member, a
// member that is not or cannot yet be leader, a database over its quota) is Unavailable: the caller
// may retry, with its request_id. Any other (a compacted revision, a request too large, a corrupt
// cluster) is a fault of ours or of the cluster that a retry does not mend: Internal.
func etcdCode(err rpctypes.EtcdError) codes.Code {
	switch err.Code() {
	case codes.Unavailable, codes.FailedPrecondition, codes.ResourceExhausted:
		return codes.Unavailable
	}
	return codes.Internal
}

// dropSentinel removes the sentinel's own text from an error message (the gRPC code says it), both
// at the end ("network x: not found") and before a more specific reason ("vni 5: already exists: vni
// taken" becomes "vni 5: vni taken").
func dropSentinel(msg, sentinel string) string {
	s := ": " + sentinel
	for i := strings.LastIndex(msg, s); i >= 0; i = strings.LastIndex(msg[:i], s) {
		if rest := msg[i+len(s):]; rest == "" || strings.HasPrefix(rest, ": ") {
			return msg[:i] + rest
		}
	}
	return msg
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
	{errAdminOnly, codes.PermissionDenied},
}

// errAdminOnly: a change that only an admin may make, decided on the stored resource (what the auth
// policy decides on the request alone, it refuses before the call gets here).
var errAdminOnly = errors.New("needs an admin")
