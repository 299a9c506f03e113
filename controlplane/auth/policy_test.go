package auth

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// decide runs both authorisation steps as the interceptors do.
func decide(id Identity, method string, req any) codes.Code {
	c := classOf(method)
	if err := authorizeCall(id, c, method); err != nil {
		return status.Code(err)
	}
	return status.Code(authorizeRequest(id, c, method, req))
}

var (
	anon   = Identity{}
	admin  = Identity{Role: RoleAdmin, Via: "token"}
	nodeH1 = Identity{Role: RoleNode, Node: "h1", Via: "certificate"}
	tenA   = Identity{Role: RoleTenant, Tenant: "a", TokenID: "0123456789abcdef", Via: "token"}
)

const (
	ok     = codes.OK
	unauth = codes.Unauthenticated
	deny   = codes.PermissionDenied
)

// TestPolicyCoversEveryMethod: every RPC of vxfabric.v1 has a row here, so a new method cannot
// ship without someone deciding who may call it (and until then it is admin-only).
func TestPolicyCoversEveryMethod(t *testing.T) {
	covered := map[string]bool{}
	for _, tc := range policyCases {
		covered[tc.method] = true
	}
	n := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("vxfabric.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				full := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(j).Name())
				n++
				if !covered[full] {
					t.Errorf("no policy case for %s", full)
				}
			}
		}
		return true
	})
	if n < 20 {
		t.Fatalf("found only %d methods in vxfabric.v1: proto registry not loaded?", n)
	}
}

// newReq builds an empty request message of a method, through the registry.
func newReq(t *testing.T, method string) proto.Message {
	t.Helper()
	svc, m, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(m))
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		return dynamicpb.NewMessage(md.Input())
	}
	return mt.New().Interface()
}

type policyCase struct {
	method                  string
	anon, admin, node, tenA codes.Code
	nodeOther, tenantOther  codes.Code // request naming node h2 / tenant b
	nodeField, tenantField  string     // which field names the node / tenant
}

var policyCases = []policyCase{
	// AgentService: the node's own certificate, for its own node only.
	{method: vxfabricv1.AgentService_Sync_FullMethodName, anon: unauth, admin: ok, node: ok, tenA: deny, nodeOther: deny, nodeField: "node"},
	{method: vxfabricv1.AgentService_ReportApplied_FullMethodName, anon: unauth, admin: ok, node: ok, tenA: deny, nodeOther: deny, nodeField: "node"},
	{method: vxfabricv1.AgentService_RegisterNode_FullMethodName, anon: unauth, admin: ok, node: ok, tenA: deny, nodeOther: deny, nodeField: "name"},
	// Networks and ports: tenants on their own tenant.
	{method: vxfabricv1.NetworkService_CreateNetwork_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.NetworkService_GetNetwork_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.NetworkService_ListNetworks_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.NetworkService_UpdateNetwork_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.NetworkService_DeleteNetwork_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.PortService_CreatePort_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.PortService_GetPort_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.PortService_ListPorts_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.PortService_UpdatePort_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.PortService_DeletePort_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "tenant"},
	// Tenants: admin, except reading one's own.
	{method: vxfabricv1.TenantService_GetTenant_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: ok, tenantOther: deny, tenantField: "name"},
	{method: vxfabricv1.TenantService_CreateTenant_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny, tenantOther: deny, tenantField: "name"},
	{method: vxfabricv1.TenantService_ListTenants_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny},
	{method: vxfabricv1.TenantService_DeleteTenant_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny, tenantOther: deny, tenantField: "name"},
	// Nodes and tokens: admin only.
	{method: vxfabricv1.NodeService_ListNodes_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny},
	{method: vxfabricv1.NodeService_GetNode_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny},
	{method: vxfabricv1.NodeService_DeleteNode_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny},
	{method: vxfabricv1.GossipService_RotateGossipKey_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny},
	{method: vxfabricv1.GossipService_GetGossipKeyring_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny},
	{method: vxfabricv1.TokenService_CreateToken_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.TokenService_ListTokens_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny, tenantOther: deny, tenantField: "tenant"},
	{method: vxfabricv1.TokenService_RevokeToken_FullMethodName, anon: unauth, admin: ok, node: deny, tenA: deny},
}

func setField(t *testing.T, m proto.Message, field, value string) {
	t.Helper()
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName(protoreflect.Name(field))
	if fd == nil {
		t.Fatalf("%s has no field %q", r.Descriptor().FullName(), field)
	}
	r.Set(fd, protoreflect.ValueOfString(value))
}

func TestPolicyMatrix(t *testing.T) {
	for _, tc := range policyCases {
		// A request about the caller's own node / tenant.
		own := func() proto.Message {
			m := newReq(t, tc.method)
			if tc.nodeField != "" {
				setField(t, m, tc.nodeField, "h1")
			}
			if tc.tenantField != "" {
				setField(t, m, tc.tenantField, "a")
			}
			return m
		}
		for _, c := range []struct {
			who  string
			id   Identity
			want codes.Code
		}{{"anonymous", anon, tc.anon}, {"admin", admin, tc.admin}, {"node h1", nodeH1, tc.node}, {"tenant a", tenA, tc.tenA}} {
			if got := decide(c.id, tc.method, own()); got != c.want {
				t.Errorf("%s by %s: %v, want %v", tc.method, c.who, got, c.want)
			}
		}
		if tc.nodeField != "" {
			m := own()
			setField(t, m, tc.nodeField, "h2")
			if got := decide(nodeH1, tc.method, m); got != tc.nodeOther {
				t.Errorf("%s for node h2 by node h1: %v, want %v", tc.method, got, tc.nodeOther)
			}
			if got := decide(admin, tc.method, m); got != ok {
				t.Errorf("%s for node h2 by admin: %v, want OK", tc.method, got)
			}
			setField(t, m, tc.nodeField, "")
			if got := decide(nodeH1, tc.method, m); got != deny {
				t.Errorf("%s for no node by node h1: %v, want PermissionDenied", tc.method, got)
			}
		}
		if tc.tenantField != "" {
			m := own()
			setField(t, m, tc.tenantField, "b")
			if got := decide(tenA, tc.method, m); got != tc.tenantOther {
				t.Errorf("%s on tenant b by tenant a: %v, want %v", tc.method, got, tc.tenantOther)
			}
		}
	}
}

func TestTenantFieldFilledIn(t *testing.T) {
	for _, method := range []string{vxfabricv1.NetworkService_ListNetworks_FullMethodName, vxfabricv1.PortService_ListPorts_FullMethodName, vxfabricv1.PortService_CreatePort_FullMethodName} {
		m := newReq(t, method)
		if got := decide(tenA, method, m); got != ok {
			t.Fatalf("%s with empty tenant by tenant a: %v", method, got)
		}
		if got := m.(tenantScoped).GetTenant(); got != "a" {
			t.Errorf("%s: tenant field %q after authorisation, want a", method, got)
		}
		// An admin's empty tenant means "all tenants" and stays empty.
		m = newReq(t, method)
		decide(admin, method, m)
		if got := m.(tenantScoped).GetTenant(); got != "" {
			t.Errorf("%s: admin request rewritten to tenant %q", method, got)
		}
	}
}

// A tenant may neither bridge a host's NIC nor choose a VNI (the refusal of a taken one would tell
// which VNIs other tenants hold); an admin may.
func TestTenantCannotBridgeOrChooseVNI(t *testing.T) {
	for _, req := range []*vxfabricv1.CreateNetworkRequest{
		{Tenant: "a", Name: "n", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth0"}},
		{Tenant: "a", Name: "n", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_NAT, Uplink: &vxfabricv1.Uplink{Node: "h1", Interface: "eth0"}},
		{Tenant: "a", Name: "n", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_BRIDGED},
		{Tenant: "a", Name: "n", Cidr: "10.0.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, Vni: 5000},
	} {
		if got := decide(tenA, vxfabricv1.NetworkService_CreateNetwork_FullMethodName, req); got != deny {
			t.Errorf("tenant create %v: %v, want PermissionDenied", req, got)
		}
		if got := decide(admin, vxfabricv1.NetworkService_CreateNetwork_FullMethodName, req); got != ok {
			t.Errorf("admin create %v: %v, want OK", req, got)
		}
	}
}

func TestOpenAndUnknownMethods(t *testing.T) {
	for _, m := range []string{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"} {
		for _, id := range []Identity{anon, nodeH1, tenA, admin} {
			if got := decide(id, m, nil); got != ok {
				t.Errorf("%s by %s: %v, want OK", m, id, got)
			}
		}
	}
	for _, m := range []string{"/vxfabric.v1.NetworkService/Future", "/vxfabric.v2.X/Y", "/grpc.health.v1.HealthX/Check", "", "/"} {
		if got := decide(tenA, m, &vxfabricv1.ListNetworksRequest{Tenant: "a"}); got != deny {
			t.Errorf("unknown method %q by tenant: %v, want PermissionDenied", m, got)
		}
		if got := decide(anon, m, nil); got != unauth {
			t.Errorf("unknown method %q anonymously: %v, want Unauthenticated", m, got)
		}
	}
}

// TestTenantWrites pins which methods a tenant token changes state with (each looks the token up
// afresh): a tenant method added later fails here until someone decides.
func TestTenantWrites(t *testing.T) {
	want := map[string]bool{
		vxfabricv1.NetworkService_CreateNetwork_FullMethodName: true,
		vxfabricv1.NetworkService_UpdateNetwork_FullMethodName: true,
		vxfabricv1.NetworkService_DeleteNetwork_FullMethodName: true,
		vxfabricv1.PortService_CreatePort_FullMethodName:       true,
		vxfabricv1.PortService_UpdatePort_FullMethodName:       true,
		vxfabricv1.PortService_DeletePort_FullMethodName:       true,
	}
	protoregistry.GlobalFiles.RangeFilesByPackage("vxfabric.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				full := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(j).Name())
				if got := tenantWrite(full); got != want[full] {
					t.Errorf("tenantWrite(%s) = %v, want %v", full, got, want[full])
				}
			}
		}
		return true
	})
}

// A denial repeats at most an excerpt of the name it refuses: a node certificate acting for a
// node named by 64 KiB, or a tenant token for such a tenant, gets a short PermissionDenied.
func TestDenialsDoNotEchoHugeNames(t *testing.T) {
	huge := strings.Repeat("a", 64<<10)
	for _, tc := range []struct {
		id     Identity
		method string
		req    any
	}{
		{nodeH1, vxfabricv1.AgentService_RegisterNode_FullMethodName, &vxfabricv1.RegisterNodeRequest{Name: huge}},
		{nodeH1, vxfabricv1.AgentService_ReportApplied_FullMethodName, &vxfabricv1.ReportAppliedRequest{Node: huge}},
		{tenA, vxfabricv1.NetworkService_ListNetworks_FullMethodName, &vxfabricv1.ListNetworksRequest{Tenant: huge}},
		{tenA, vxfabricv1.TenantService_GetTenant_FullMethodName, &vxfabricv1.GetTenantRequest{Name: huge}},
	} {
		c := classOf(tc.method)
		err := authorizeRequest(tc.id, c, tc.method, tc.req)
		if status.Code(err) != codes.PermissionDenied || len(status.Convert(err).Message()) > 300 {
			t.Errorf("%s by %s with a 64 KiB name: %s, a message of %d bytes", tc.method, tc.id, status.Code(err), len(status.Convert(err).Message()))
		}
	}
}
