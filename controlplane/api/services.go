package api

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TenantServer implements vxfabric.v1.TenantService.
type TenantServer struct {
	vxfabricv1.UnimplementedTenantServiceServer
	*core
}

func (s *TenantServer) CreateTenant(ctx context.Context, req *vxfabricv1.CreateTenantRequest) (*vxfabricv1.CreateTenantResponse, error) {
	if err := validName("tenant", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validRequestID(req.RequestId); err != nil {
		return nil, s.toStatus(err)
	}
	t, err := s.store.CreateTenant(ctx, &vxfabricv1.Tenant{Name: req.Name, CreateTime: timestamppb.Now()}, req.RequestId)
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("tenant created", "tenant", t.Name, "rev", t.Revision)
	return &vxfabricv1.CreateTenantResponse{Tenant: t}, nil
}

func (s *TenantServer) GetTenant(ctx context.Context, req *vxfabricv1.GetTenantRequest) (*vxfabricv1.GetTenantResponse, error) {
	if err := validName("tenant", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	t, err := s.store.GetTenant(ctx, req.Name)
	if err != nil {
		return nil, s.toStatus(err)
	}
	return &vxfabricv1.GetTenantResponse{Tenant: t}, nil
}

func (s *TenantServer) ListTenants(ctx context.Context, _ *vxfabricv1.ListTenantsRequest) (*vxfabricv1.ListTenantsResponse, error) {
	ts, err := s.store.ListTenants(ctx)
	if err != nil {
		return nil, s.toStatus(err)
	}
	return &vxfabricv1.ListTenantsResponse{Tenants: ts}, nil
}

func (s *TenantServer) DeleteTenant(ctx context.Context, req *vxfabricv1.DeleteTenantRequest) (*vxfabricv1.DeleteTenantResponse, error) {
	if err := validName("tenant", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validExpected(req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	if err := s.store.DeleteTenant(ctx, req.Name, req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("tenant deleted", "tenant", req.Name)
	return &vxfabricv1.DeleteTenantResponse{}, nil
}

// NetworkServer implements vxfabric.v1.NetworkService.
type NetworkServer struct {
	vxfabricv1.UnimplementedNetworkServiceServer
	*core
	nodes *nodeView
}

func (s *NetworkServer) CreateNetwork(ctx context.Context, req *vxfabricv1.CreateNetworkRequest) (*vxfabricv1.CreateNetworkResponse, error) {
	n, err := checkCreateNetwork(req, s.cfg.UnderlayMTU, s.cfg.VNIs)
	if err != nil {
		return nil, s.toStatus(err)
	}
	n.CreateTime = timestamppb.Now()
	out, err := s.createNetwork(ctx, n, req.RequestId)
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("network created", "tenant", out.Tenant, "network", out.Name, "vni", out.Vni, "rev", out.Revision)
	return &vxfabricv1.CreateNetworkResponse{Network: out}, nil
}

// maxNodeRefreshes bounds how often one create reads the nodes again because one was written
// between its check and its transaction.
const maxNodeRefreshes = 8

// createNetwork checks n's CIDR against the nodes' VTEPs (see nodeView) and creates it in one
// transaction that also holds only while the nodes are as checked.
func (s *NetworkServer) createNetwork(ctx context.Context, n *vxfabricv1.Network, requestID string) (*vxfabricv1.Network, error) {
	var stale int64
	for range maxNodeRefreshes {
		rev, vteps, err := s.nodes.get(ctx, stale)
		if err != nil {
			return nil, err
		}
		if err := checkVTEPs(n.Cidr, vteps, isAdmin(ctx)); err != nil {
			if stale == 0 {
				stale = rev // refuse only on a view read during this create (any after the first)
				continue
			}
			// A retry of a create that succeeded returns its network even if a node with a VTEP in
			// the CIDR has registered since: only new networks are checked.
			if prev, err := s.cfg.Alloc.NetworkForRequest(ctx, requestID, n); prev != nil || err != nil {
				return prev, err
			}
			return nil, err
		}
		out, err := s.cfg.Alloc.CreateNetwork(ctx, n, requestID, rev)
		if errors.Is(err, store.ErrNodesChanged) {
			s.log.Debug("nodes changed during network create", "tenant", n.Tenant, "network", n.Name, "rev", rev)
			stale = rev
			continue
		}
		return out, err
	}
	return nil, fmt.Errorf("create network %q in tenant %q: nodes changed %d times: %w", n.Name, n.Tenant, maxNodeRefreshes, store.ErrContention)
}

func (s *NetworkServer) GetNetwork(ctx context.Context, req *vxfabricv1.GetNetworkRequest) (*vxfabricv1.GetNetworkResponse, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validName("network", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	n, err := s.store.GetNetwork(ctx, req.Tenant, req.Name)
	if err != nil {
		return nil, s.toStatus(err)
	}
	return &vxfabricv1.GetNetworkResponse{Network: n}, nil
}

func (s *NetworkServer) ListNetworks(ctx context.Context, req *vxfabricv1.ListNetworksRequest) (*vxfabricv1.ListNetworksResponse, error) {
	if err := validOptionalName("tenant", req.Tenant); err != nil {
		return nil, s.toStatus(err)
	}
	ns, err := s.store.ListNetworks(ctx, req.Tenant)
	if err != nil {
		return nil, s.toStatus(err)
	}
	ns, next, err := page(ns, req.PageSize, req.PageToken, "networks\x00"+req.Tenant, func(n *vxfabricv1.Network) string {
		return nameKey(n.Tenant, n.Name)
	})
	if err != nil {
		return nil, s.toStatus(err)
	}
	return &vxfabricv1.ListNetworksResponse{Networks: ns, NextPageToken: next}, nil
}

func (s *NetworkServer) UpdateNetwork(ctx context.Context, req *vxfabricv1.UpdateNetworkRequest) (*vxfabricv1.UpdateNetworkResponse, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validName("network", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	if req.Mtu == 0 {
		return nil, s.toStatus(invalid("nothing to change: give the network's new mtu"))
	}
	if err := validMTU(req.Mtu, s.cfg.UnderlayMTU); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validExpected(req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	n, err := s.store.UpdateNetwork(ctx, req.Tenant, req.Name, req.ExpectedRevision, func(n *vxfabricv1.Network) error {
		// A bridged network's bridge carries its uplink host's own LAN address: its MTU is that
		// host's, which is a decision about the host, as making the network was.
		if n.Mode == vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED && n.Mtu != req.Mtu && !isAdmin(ctx) {
			return fmt.Errorf("network %s/%s: changing the MTU of a bridged network (the MTU of host %s's LAN address) %w",
				n.Tenant, n.Name, n.GetUplink().GetNode(), errAdminOnly)
		}
		n.Mtu = req.Mtu
		return nil
	})
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("network updated", "tenant", n.Tenant, "network", n.Name, "vni", n.Vni, "rev", n.Revision)
	return &vxfabricv1.UpdateNetworkResponse{Network: n}, nil
}

func (s *NetworkServer) DeleteNetwork(ctx context.Context, req *vxfabricv1.DeleteNetworkRequest) (*vxfabricv1.DeleteNetworkResponse, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validName("network", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validExpected(req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	if err := s.store.DeleteNetwork(ctx, req.Tenant, req.Name, req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("network deleted", "tenant", req.Tenant, "network", req.Name)
	return &vxfabricv1.DeleteNetworkResponse{}, nil
}

// PortServer implements vxfabric.v1.PortService.
type PortServer struct {
	vxfabricv1.UnimplementedPortServiceServer
	*core
}

func (s *PortServer) CreatePort(ctx context.Context, req *vxfabricv1.CreatePortRequest) (*vxfabricv1.CreatePortResponse, error) {
	p, err := checkCreatePort(req)
	if err != nil {
		return nil, s.toStatus(err)
	}
	n, err := s.store.GetNetwork(ctx, req.Tenant, req.Network)
	if err != nil {
		return nil, s.toStatus(err)
	}
	if err := checkPortInNetwork(p, n, isAdmin(ctx)); err != nil {
		return nil, s.toStatus(err)
	}
	p.CreateTime = timestamppb.Now()
	out, err := s.cfg.Alloc.CreatePort(ctx, n, p, req.RequestId)
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("port created", "tenant", out.Tenant, "network", out.Network, "port", out.Name, "node", out.Node,
		"mac", out.Mac, "ip", out.Ip, "rev", out.Revision)
	return &vxfabricv1.CreatePortResponse{Port: out}, nil
}

func (s *PortServer) GetPort(ctx context.Context, req *vxfabricv1.GetPortRequest) (*vxfabricv1.GetPortResponse, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validName("port", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	p, err := s.store.GetPort(ctx, req.Tenant, req.Name)
	if err != nil {
		return nil, s.toStatus(err)
	}
	return &vxfabricv1.GetPortResponse{Port: p}, nil
}

func (s *PortServer) ListPorts(ctx context.Context, req *vxfabricv1.ListPortsRequest) (*vxfabricv1.ListPortsResponse, error) {
	for _, f := range []struct{ field, v string }{{"tenant", req.Tenant}, {"network", req.Network}, {"node", req.Node}, {"vm", req.Vm}} {
		if err := validOptionalName(f.field, f.v); err != nil {
			return nil, s.toStatus(err)
		}
	}
	ps, err := s.store.ListPorts(ctx, store.PortFilter{Tenant: req.Tenant, Network: req.Network, Node: req.Node, VM: req.Vm})
	if err != nil {
		return nil, s.toStatus(err)
	}
	filter := strings.Join([]string{"ports", req.Tenant, req.Network, req.Node, req.Vm}, "\x00")
	ps, next, err := page(ps, req.PageSize, req.PageToken, filter, func(p *vxfabricv1.Port) string {
		return nameKey(p.Tenant, p.Name)
	})
	if err != nil {
		return nil, s.toStatus(err)
	}
	return &vxfabricv1.ListPortsResponse{Ports: ps, NextPageToken: next}, nil
}

func (s *PortServer) UpdatePort(ctx context.Context, req *vxfabricv1.UpdatePortRequest) (*vxfabricv1.UpdatePortResponse, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validName("port", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	if req.Node == "" {
		return nil, s.toStatus(invalid("nothing to change: give the node to move the port to"))
	}
	if err := validName("node", req.Node); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validExpected(req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	p, err := s.store.UpdatePort(ctx, req.Tenant, req.Name, req.ExpectedRevision, func(p *vxfabricv1.Port) error {
		p.Node = req.Node
		return nil
	})
	if err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("port updated", "tenant", p.Tenant, "port", p.Name, "node", p.Node, "rev", p.Revision)
	return &vxfabricv1.UpdatePortResponse{Port: p}, nil
}

func (s *PortServer) DeletePort(ctx context.Context, req *vxfabricv1.DeletePortRequest) (*vxfabricv1.DeletePortResponse, error) {
	if err := validName("tenant", req.Tenant); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validName("port", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validExpected(req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	if err := s.store.DeletePort(ctx, req.Tenant, req.Name, req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("port deleted", "tenant", req.Tenant, "port", req.Name)
	return &vxfabricv1.DeletePortResponse{}, nil
}

// NodeServer implements vxfabric.v1.NodeService.
type NodeServer struct {
	vxfabricv1.UnimplementedNodeServiceServer
	*core
}

func (s *NodeServer) withRevisions(n *vxfabricv1.Node) *vxfabricv1.Node {
	if s.cfg.Convergence != nil {
		n.AppliedRevision, n.DesiredRevision = s.cfg.Convergence.NodeRevisions(n.Name)
		n.ApplyErrors = s.cfg.Convergence.NodeErrors(n.Name)
	}
	return n
}

func (s *NodeServer) ListNodes(ctx context.Context, _ *vxfabricv1.ListNodesRequest) (*vxfabricv1.ListNodesResponse, error) {
	nodes, rev, err := s.store.ListNodes(ctx)
	if err != nil {
		return nil, s.toStatus(err)
	}
	for _, n := range nodes {
		s.withRevisions(n)
	}
	return &vxfabricv1.ListNodesResponse{Nodes: nodes, Revision: rev}, nil
}

func (s *NodeServer) GetNode(ctx context.Context, req *vxfabricv1.GetNodeRequest) (*vxfabricv1.GetNodeResponse, error) {
	if err := validName("node", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	n, err := s.store.GetNode(ctx, req.Name)
	if err != nil {
		return nil, s.toStatus(err)
	}
	return &vxfabricv1.GetNodeResponse{Node: s.withRevisions(n)}, nil
}

func (s *NodeServer) DeleteNode(ctx context.Context, req *vxfabricv1.DeleteNodeRequest) (*vxfabricv1.DeleteNodeResponse, error) {
	if err := validName("node", req.Name); err != nil {
		return nil, s.toStatus(err)
	}
	if err := validExpected(req.ExpectedRevision); err != nil {
		return nil, s.toStatus(err)
	}
	if err := s.store.DeleteNode(ctx, req.Name, req.ExpectedRevision, req.Force); err != nil {
		return nil, s.toStatus(err)
	}
	s.log.Info("node deleted", "node", req.Name, "forced", req.Force)
	return &vxfabricv1.DeleteNodeResponse{}, nil
}
