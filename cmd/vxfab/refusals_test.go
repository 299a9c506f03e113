package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/vxfabric/vxfabric/controlplane/auth"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// TestNoRefusalRepeatsAHugeInput runs `vxfab server` as a user starts it and calls every RPC of every
// vxfabric.v1 service, once per string field of its request (also in the messages it holds), with
// 64 KiB of text in that field and plausible values in the others (once per value of its first
// enum, the others at their first value), as an admin and as a tenant: a
// refusal repeats an excerpt of what it refuses, never the whole. A client that caps its headers
// (16 KiB is common) would otherwise see a transport error instead of the refusal.
func TestNoRefusalRepeatsAHugeInput(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newServerCmd()
	cmd.SetArgs([]string{"--listen", "unix://" + sock, "--data-dir", filepath.Join(dir, "data"), "--log-level", "error"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("server: %v", err)
		}
	})
	var token []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if token, err = os.ReadFile(filepath.Join(dir, "data", "admin.token")); err == nil {
			if _, err = os.Stat(sock); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not up: %v", err)
		}
	}
	admin := dialToken(t, sock, strings.TrimSpace(string(token)))
	call := func(conn *grpc.ClientConn, method string, req, resp any) error {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		return conn.Invoke(cctx, method, req, resp)
	}

	// What the plausible values name exists: a tenant, a network of it and a node.
	tenants := vxfabricv1.NewTenantServiceClient(admin)
	if _, err := tenants.CreateTenant(ctx, &vxfabricv1.CreateTenantRequest{Name: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := vxfabricv1.NewNetworkServiceClient(admin).CreateNetwork(ctx, &vxfabricv1.CreateNetworkRequest{
		Tenant: "acme", Name: "web", Cidr: "10.9.0.0/24", Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}); err != nil {
		t.Fatal(err)
	}
	if _, err := vxfabricv1.NewAgentServiceClient(admin).RegisterNode(ctx, &vxfabricv1.RegisterNodeRequest{Name: "h1", Vtep: "198.18.0.9"}); err != nil {
		t.Fatal(err)
	}
	tok, err := vxfabricv1.NewTokenServiceClient(admin).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	callers := map[string]*grpc.ClientConn{"admin": admin, "tenant": dialToken(t, sock, tok.GetSecret())}

	huge := strings.Repeat("a", 64<<10)
	plausible := map[string]string{"tenant": "acme", "network": "web", "name": "x1", "cidr": "10.8.0.0/24",
		"node": "h1", "vtep": "198.18.0.9", "vm": "vm1", "interface": "eth9"}
	calls := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("vxfabric.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				method := "/" + string(sd.FullName()) + "/" + string(md.Name())
				for _, path := range stringFields(md.Input(), 2) {
					for _, variant := range enumVariants(md.Input()) {
						req := dynamicpb.NewMessage(md.Input())
						fill(req, plausible, 2)
						variant(req)
						setPath(req, path, huge)
						for who, conn := range callers {
							calls++
							var err error
							if md.IsStreamingServer() {
								err = firstReceive(conn, method, md, req)
							} else {
								err = call(conn, method, req, dynamicpb.NewMessage(md.Output()))
							}
							if msg := status.Convert(err).Message(); len(msg) > 1024 {
								t.Errorf("%s as %s with 64 KiB in %s (%v): %s, a message of %d bytes: %.160s...",
									method, who, strings.Join(path, "."), req, status.Code(err), len(msg), msg)
							}
						}
					}
				}
			}
		}
		return true
	})
	if calls < 100 {
		t.Fatalf("only %d calls: the services' descriptors were not found", calls)
	}
	t.Logf("%d calls", calls)
}

func dialToken(t *testing.T, sock, token string) *grpc.ClientConn {
	t.Helper()
	opts, err := auth.ClientConfig{Token: token, Unix: true}.DialOptions()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// firstReceive opens a server stream, sends req and returns the error of its first message (nil
// when one arrives).
func firstReceive(conn *grpc.ClientConn, method string, md protoreflect.MethodDescriptor, req protoreflect.ProtoMessage) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: md.IsStreamingClient()}, method)
	if err != nil {
		return err
	}
	if err := s.SendMsg(req); err != nil {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	return s.RecvMsg(dynamicpb.NewMessage(md.Output()))
}

// stringFields lists the paths (field names) of md's string fields, those of its singular message
// fields down to depth levels included.
func stringFields(md protoreflect.MessageDescriptor, depth int) [][]string {
	var out [][]string
	for i := range md.Fields().Len() {
		f := md.Fields().Get(i)
		switch {
		case f.Kind() == protoreflect.StringKind && !f.IsMap():
			out = append(out, []string{string(f.Name())})
		case f.Kind() == protoreflect.MessageKind && !f.IsList() && !f.IsMap() && depth > 1:
			for _, p := range stringFields(f.Message(), depth-1) {
				out = append(out, append([]string{string(f.Name())}, p...))
			}
		}
	}
	return out
}

// fill sets the singular string fields named in plausible, and enums to their first value after
// the unspecified one, in m and in its singular messages.
func fill(m protoreflect.Message, plausible map[string]string, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		switch {
		case f.Kind() == protoreflect.StringKind && !f.IsList() && !f.IsMap():
			if v, ok := plausible[string(f.Name())]; ok {
				m.Set(f, protoreflect.ValueOfString(v))
			}
		case f.Kind() == protoreflect.EnumKind && !f.IsList() && f.Enum().Values().Len() > 1:
			m.Set(f, protoreflect.ValueOfEnum(f.Enum().Values().Get(1).Number()))
		case f.Kind() == protoreflect.MessageKind && !f.IsList() && !f.IsMap() && depth > 1:
			fill(m.Mutable(f).Message(), plausible, depth-1)
		}
	}
}

// enumVariants returns one change of a request per value (other than the unspecified one) of its
// first enum field, so that each mode's own checks are reached (a bridged network's uplink is
// checked only for a bridged network); one that changes nothing when it has none.
func enumVariants(md protoreflect.MessageDescriptor) []func(protoreflect.Message) {
	for i := range md.Fields().Len() {
		f := md.Fields().Get(i)
		if f.Kind() != protoreflect.EnumKind || f.IsList() || f.Enum().Values().Len() < 2 {
			continue
		}
		var out []func(protoreflect.Message)
		for j := 1; j < f.Enum().Values().Len(); j++ {
			n := f.Enum().Values().Get(j).Number()
			out = append(out, func(m protoreflect.Message) { m.Set(f, protoreflect.ValueOfEnum(n)) })
		}
		return out
	}
	return []func(protoreflect.Message){func(protoreflect.Message) {}}
}

// setPath sets the string field at path to v (a list field gets v as its one element).
func setPath(m protoreflect.Message, path []string, v string) {
	f := m.Descriptor().Fields().ByName(protoreflect.Name(path[0]))
	if len(path) > 1 {
		setPath(m.Mutable(f).Message(), path[1:], v)
		return
	}
	if f.IsList() {
		l := m.NewField(f).List()
		l.Append(protoreflect.ValueOfString(v))
		m.Set(f, protoreflect.ValueOfList(l))
		return
	}
	m.Set(f, protoreflect.ValueOfString(v))
}
