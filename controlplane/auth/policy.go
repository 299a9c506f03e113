package auth

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Role is the kind of caller an Identity is.
type Role int

const (
	// RoleNone: no credentials. Only open methods (health, reflection) answer.
	RoleNone Role = iota
	// RoleAdmin: the admin token or the admin client certificate; allowed everything.
	RoleAdmin
	// RoleNode: a node agent's client certificate; AgentService for its own node only.
	RoleNode
	// RoleTenant: a tenant token; its own tenant's networks and ports only.
	RoleTenant
)

func (r Role) String() string {
	switch r {
	case RoleAdmin:
		return "admin"
	case RoleNode:
		return "node"
	case RoleTenant:
		return "tenant"
	default:
		return "anonymous"
	}
}

// Identity is who is calling, as established once per call by the interceptors.
type Identity struct {
	Role Role
	// Node is the node name of a RoleNode caller.
	Node string
	// Tenant and TokenID describe a RoleTenant caller.
	Tenant  string
	TokenID string
	// Via says which credential established it: "token", "certificate" or "" (none).
	Via string
}

func (id Identity) String() string {
	switch id.Role {
	case RoleNode:
		return "node " + id.Node
	case RoleTenant:
		return "tenant " + id.Tenant + " (token " + id.TokenID + ")"
	}
	return id.Role.String()
}

// class is how a method is authorised.
type class int

const (
	// classAdmin: admin only. The default for every method not listed below, so that a method
	// added to the API is closed until someone decides otherwise.
	classAdmin class = iota
	// classOpen: anyone, even without credentials (health, reflection).
	classOpen
	// classAgent: admin, or the node agent whose node the request names.
	classAgent
	// classTenant: admin, or a tenant token whose tenant the request names (or leaves empty: then it
	// is filled in with the token's tenant).
	classTenant
	// classOwnTenant: admin, or a tenant token asking about its own tenant (GetTenant).
	classOwnTenant
)

var openServices = []string{
	"/grpc.health.v1.Health/",
	"/grpc.reflection.v1.ServerReflection/",
	"/grpc.reflection.v1alpha.ServerReflection/",
}

var methodClasses = map[string]class{
	vxfabricv1.AgentService_Sync_FullMethodName:          classAgent,
	vxfabricv1.AgentService_ReportApplied_FullMethodName: classAgent,
	vxfabricv1.AgentService_RegisterNode_FullMethodName:  classAgent,

	vxfabricv1.NetworkService_CreateNetwork_FullMethodName: classTenant,
	vxfabricv1.NetworkService_GetNetwork_FullMethodName:    classTenant,
	vxfabricv1.NetworkService_ListNetworks_FullMethodName:  classTenant,
	vxfabricv1.NetworkService_UpdateNetwork_FullMethodName: classTenant,
	vxfabricv1.NetworkService_DeleteNetwork_FullMethodName: classTenant,

	vxfabricv1.PortService_CreatePort_FullMethodName: classTenant,
	vxfabricv1.PortService_GetPort_FullMethodName:    classTenant,
	vxfabricv1.PortService_ListPorts_FullMethodName:  classTenant,
	vxfabricv1.PortService_UpdatePort_FullMethodName: classTenant,
	vxfabricv1.PortService_DeletePort_FullMethodName: classTenant,

	vxfabricv1.TenantService_GetTenant_FullMethodName: classOwnTenant,
	// Everything else of TenantService, NodeService and TokenService is classAdmin by default.
}

func classOf(fullMethod string) class {
	if c, ok := methodClasses[fullMethod]; ok {
		return c
	}
	for _, p := range openServices {
		if strings.HasPrefix(fullMethod, p) {
			return classOpen
		}
	}
	return classAdmin
}

// tenantScoped is every request of a tenant-scoped method (generated getters).
type tenantScoped interface{ GetTenant() string }

// nodeNamed requests name the node they are about in a "node" field (Sync, ReportApplied)...
type nodeNamed interface{ GetNode() string }

// ...or, for RegisterNode, in its "name" field.
type nameNamed interface{ GetName() string }

func denied(format string, args ...any) error {
	return status.Errorf(codes.PermissionDenied, format, args...)
}

// authorizeCall decides what needs no request message: anonymous callers, admin, and the
// classes that admit a role whatever the request says.
func authorizeCall(id Identity, c class, fullMethod string) error {
	if c == classOpen || id.Role == RoleAdmin {
		return nil
	}
	if id.Role == RoleNone {
		return status.Error(codes.Unauthenticated, "credentials required: a bearer token or a client certificate")
	}
	switch {
	case c == classAgent && id.Role == RoleNode,
		c == classTenant && id.Role == RoleTenant,
		c == classOwnTenant && id.Role == RoleTenant:
		return nil
	}
	return denied("%s may not call %s", id, fullMethod)
}

// authorizeRequest checks a request message against the caller (after authorizeCall allowed the
// call) and, for a tenant token, fills an empty tenant field with the token's tenant. It is the
// one place where request contents decide access.
func authorizeRequest(id Identity, c class, fullMethod string, req any) error {
	if c == classOpen || id.Role == RoleAdmin {
		return nil
	}
	switch c {
	case classAgent:
		var node string
		switch r := req.(type) {
		case *vxfabricv1.RegisterNodeRequest:
			node = r.GetName()
		case nodeNamed:
			node = r.GetNode()
		case nameNamed:
			node = r.GetName()
		default:
			return status.Errorf(codes.Internal, "%s: request %T names no node", fullMethod, req)
		}
		if node != id.Node {
			return denied("the certificate of node %q may not act for node %s", id.Node, vxfabricv1.Quote(node))
		}
		return nil
	case classTenant:
		r, ok := req.(tenantScoped)
		if !ok {
			return status.Errorf(codes.Internal, "%s: request %T names no tenant", fullMethod, req)
		}
		switch t := r.GetTenant(); t {
		case id.Tenant:
		case "":
			if err := setTenant(req, id.Tenant); err != nil {
				return status.Errorf(codes.Internal, "%s: %v", fullMethod, err)
			}
		default:
			return denied("a token of tenant %q may not act on tenant %s", id.Tenant, vxfabricv1.Quote(t))
		}
		// A BRIDGED network enslaves a host's physical NIC into the segment: that is a decision
		// about the hosts, not about one tenant's networks.
		if cr, ok := req.(*vxfabricv1.CreateNetworkRequest); ok && (cr.GetUplink() != nil || cr.GetMode() == vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED) {
			return denied("bridged networks (host uplinks) need an admin")
		}
		// The VNI space is shared by every tenant: a tenant choosing one would learn, from the
		// refusal, which VNIs other tenants' networks hold.
		if cr, ok := req.(*vxfabricv1.CreateNetworkRequest); ok && cr.GetVni() != 0 {
			return denied("choosing a VNI needs an admin: leave it to the allocator")
		}
		return nil
	case classOwnTenant:
		r, ok := req.(nameNamed)
		if !ok {
			return status.Errorf(codes.Internal, "%s: request %T names no tenant", fullMethod, req)
		}
		if r.GetName() != id.Tenant {
			return denied("a token of tenant %q may not read tenant %s", id.Tenant, vxfabricv1.Quote(r.GetName()))
		}
		return nil
	}
	return denied("%s may not call %s", id, fullMethod)
}

// setTenant writes the "tenant" string field of a request message.
func setTenant(req any, tenant string) error {
	m, ok := req.(proto.Message)
	if !ok {
		return fmt.Errorf("request %T is not a protobuf message", req)
	}
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("tenant")
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated {
		return fmt.Errorf("request %T has no tenant field", req)
	}
	r.Set(fd, protoreflect.ValueOfString(tenant))
	return nil
}

// tenantWrite reports whether a tenant token may change state with method: a tenant-class method
// (methodClasses) not named Get* or List*. Such a call looks its token up afresh (identifyToken).
// TestTenantWrites pins the list, so a tenant method added later gets decided.
func tenantWrite(fullMethod string) bool {
	if c := classOf(fullMethod); c != classTenant && c != classOwnTenant {
		return false
	}
	name := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	return !strings.HasPrefix(name, "Get") && !strings.HasPrefix(name, "List")
}
