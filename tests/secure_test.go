//go:build linux

package tests

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vxfabric/vxfabric/lab"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"github.com/vxfabric/vxfabric/security/pki"
)

// agentConn is a gRPC connection to the server's underlay address made from a host's namespace
// with that host's node certificate: what the host's agent presents.
func agentConn(t *testing.T, l *lab.Lab, host string) *grpc.ClientConn {
	t.Helper()
	dial, err := l.DialerIn(host)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := pki.NewTrust(l.PKIFile(pki.CACertFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ClientTLSConfig(trust, l.PKIFile(pki.NodeCertFile(host)), l.PKIFile(pki.NodeKeyFile(host)), "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+netip.AddrPortFrom(lab.ControlAddr, lab.ServerPort).String(),
		grpc.WithContextDialer(dial), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// firstSync opens AgentService.Sync for node and returns the first message's error.
func firstSync(conn *grpc.ClientConn, node string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := vxfabricv1.NewAgentServiceClient(conn).Sync(ctx, &vxfabricv1.SyncRequest{Node: node})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

// TestPrivilegedAgentCertScopedToNode: h1's node certificate, presented from h1 over the underlay,
// syncs h1's state but is refused h2's and the admin API.
func TestPrivilegedAgentCertScopedToNode(t *testing.T) {
	l := requireLab(t)
	conn := agentConn(t, l, "h1")
	if err := firstSync(conn, "h1"); err != nil {
		t.Fatalf("control: h1's certificate cannot sync h1: %v", err)
	}
	if err := firstSync(conn, "h2"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("h1's certificate syncing h2: %v, want PermissionDenied", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := vxfabricv1.NewTenantServiceClient(conn).ListTenants(ctx, &vxfabricv1.ListTenantsRequest{})
	if code := status.Code(err); code != codes.PermissionDenied && code != codes.Unauthenticated {
		t.Errorf("h1's certificate listing tenants: %v, want PermissionDenied", err)
	}
}

// bearer attaches a tenant token over the lab's unix socket.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

// TestPrivilegedTenantToken: a tenant token sees and changes only its own tenant's networks.
func TestPrivilegedTenantToken(t *testing.T) {
	own := newFixture(t, "e2e-tok-a")
	other := newFixture(t, "e2e-tok-b")
	own.network("net", "10.58.0.0/24", isolated)
	other.network("secret", "10.58.0.0/24", isolated)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tokens := vxfabricv1.NewTokenServiceClient(own.c.Conn)
	tok, err := tokens.CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: own.tenant})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := tokens.RevokeToken(context.Background(), &vxfabricv1.RevokeTokenRequest{Id: tok.GetToken().GetId()}); err != nil {
			t.Errorf("cleanup: revoke token: %v", err)
		}
	})
	conn, err := grpc.NewClient(own.l.Profile().Server, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(tok.GetSecret())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nets := vxfabricv1.NewNetworkServiceClient(conn)
	list, err := nets.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	if err != nil {
		t.Fatalf("control: tenant token lists its networks: %v", err)
	}
	for _, n := range list.GetNetworks() {
		if n.GetTenant() != own.tenant {
			t.Errorf("tenant token lists %s/%s", n.GetTenant(), n.GetName())
		}
	}
	if len(list.GetNetworks()) != 1 {
		t.Errorf("tenant token lists %d networks, want its own 1", len(list.GetNetworks()))
	}
	_, err = nets.GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: other.tenant, Name: "secret"})
	if code := status.Code(err); code != codes.PermissionDenied && code != codes.NotFound {
		t.Errorf("tenant token reading another tenant's network: %v, want PermissionDenied or NotFound", err)
	}
	_, err = vxfabricv1.NewPortServiceClient(conn).CreatePort(ctx, &vxfabricv1.CreatePortRequest{
		Tenant: other.tenant, Network: "secret", Name: "intruder", Node: "h1"})
	if code := status.Code(err); code != codes.PermissionDenied && code != codes.NotFound {
		t.Errorf("tenant token creating a port in another tenant's network: %v, want PermissionDenied or NotFound", err)
	}
	ports, err := other.c.Ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{Tenant: other.tenant})
	if err != nil {
		t.Fatal(err)
	}
	if len(ports.GetPorts()) != 0 {
		t.Errorf("the other tenant has ports after the refused create: %v", ports.GetPorts())
	}
}

// cpTarget is one control-plane endpoint a VM tries to reach.
type cpTarget struct {
	name string
	dst  netip.AddrPort
}

// controlPlaneTargets lists what no VM may connect to over TCP: the server's API and gossip, and
// every host's gossip and metrics ports (the embedded etcd has no TCP port: noEtcdPort).
func controlPlaneTargets(l *lab.Lab) []cpTarget {
	targets := []cpTarget{
		{"server API", netip.AddrPortFrom(lab.ControlAddr, lab.ServerPort)},
		{"server gossip", netip.AddrPortFrom(lab.ControlAddr, lab.GossipPort)},
	}
	for i, h := range l.Hosts() {
		targets = append(targets,
			cpTarget{h + " gossip", netip.AddrPortFrom(lab.HostAddr(i+1), lab.GossipPort)},
			cpTarget{h + " metrics", netip.AddrPortFrom(lab.HostAddr(i+1), lab.MetricsPort)})
	}
	return targets
}

// noEtcdPort checks that the control namespace has no TCP listener beyond the server's own API and
// gossip ports: the embedded etcd listens on unix sockets in its data directory only.
func noEtcdPort(t *testing.T, l *lab.Lab) {
	t.Helper()
	listeners, err := l.TCPListeners(lab.RoleControl)
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range listeners {
		if ln.Port() != lab.ServerPort && ln.Port() != lab.GossipPort {
			t.Errorf("the control namespace listens on %s: the embedded etcd should have no TCP port", ln)
		}
	}
}

// hostileDefaultRoute gives a VM of an isolated network (which has no gateway) a default route
// through its host's bridge, as a VM that wants out would: every packet it routes goes to the
// host's own IP stack.
func hostileDefaultRoute(t *testing.T, f *fixture, vm lab.VM) {
	t.Helper()
	h, err := f.l.Handle(vm.Host)
	if err != nil {
		t.Fatal(err)
	}
	br, err := h.LinkByName(overlay.BridgeName(vm.Networks[0].GetVni()))
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	const fakeGW = "169.254.0.1"
	mustVxfab(t, "lab", "exec", vm.Name, "--", "ip", "neigh", "replace", fakeGW,
		"lladdr", br.Attrs().HardwareAddr.String(), "dev", "eth0", "nud", "permanent")
	mustVxfab(t, "lab", "exec", vm.Name, "--", "ip", "route", "replace", "default", "via", fakeGW, "dev", "eth0", "onlink")
}

// TestPrivilegedVMCannotReachControlPlane: VMs on an isolated (given a hostile default route through
// its host), a nat and a routed network, one per host, connect over TCP to none of the server's API
// and gossip ports (its embedded etcd has none) nor any host's gossip and metrics ports (nor their own gateway's gossip
// port), and their UDP datagrams reach neither the gossip port of the server and the other hosts
// (watched on the receiver's wire) nor their own host (a listener there). Each attempt is seen
// leaving the VM, and the nat and routed VMs do reach the outside, so a refusal is the fabric's.
// Bridged networks are left out: they share the physical LAN at layer 2 by design (lab/README.md).
func TestPrivilegedVMCannotReachControlPlane(t *testing.T) {
	f := newFixture(t, "e2e-cp")
	f.network("iso", "10.59.0.0/24", isolated)
	f.network("ext", "10.60.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_NAT)
	f.network("rt", "10.61.0.0/24", vxfabricv1.NetworkMode_NETWORK_MODE_ROUTED)
	iso := f.vm("cp-iso", "h1", "iso")
	nat := f.vm("cp-nat", "h2", "ext")
	rt := f.vm("cp-rt", "h3", "rt")
	hostileDefaultRoute(t, f, iso)
	rtCIDR := netip.MustParsePrefix("10.61.0.0/24")
	if err := f.l.RouteReplace(lab.RoleOutside, rtCIDR, lab.HostAddr(3)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.l.RouteDelete(lab.RoleOutside, rtCIDR); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ln, err := f.l.ListenTCP(lab.RoleOutside, netip.AddrPortFrom(lab.OutsideAddr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, vm := range []lab.VM{nat, rt} {
		if _, err := f.l.DialTCP(vm.Name, ln.Addr(), 2*time.Second); err != nil {
			t.Fatalf("control: the %s VM does not reach outside: %v", vm.Networks[0].GetName(), err)
		}
	}
	if _, err := f.l.DialTCP(iso.Name, ln.Addr(), time.Second); err == nil {
		t.Errorf("the isolated VM reaches outside through its hostile route")
	}
	noEtcdPort(t, f.l)
	targets := controlPlaneTargets(f.l)
	began := time.Now()
	for _, vm := range []lab.VM{iso, nat, rt} {
		t.Run(vm.Networks[0].GetName(), func(t *testing.T) {
			t.Parallel()
			vmTargets := targets
			if gw, err := netip.ParseAddr(vm.Networks[0].GetGateway()); err == nil {
				vmTargets = append(slices.Clip(vmTargets), cpTarget{"own gateway gossip", netip.AddrPortFrom(gw, lab.GossipPort)})
			}
			vmCannotConnect(t, f.l, vm, vmTargets)
			vmCannotSendGossip(t, f.l, vm)
		})
	}
	t.Cleanup(func() {
		t.Logf("3 VMs probed %d TCP targets each and the gossip UDP ports in %s", len(targets), time.Since(began).Round(time.Millisecond))
	})
}

// vmCannotConnect tries every target at once from vm over TCP (1 s each) and fails the test for each
// connection opened, or for an attempt that never left the VM.
func vmCannotConnect(t *testing.T, l *lab.Lab, vm lab.VM, targets []cpTarget) {
	dial, err := l.DialerIn(vm.Name)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, tc := range targets {
		sent, err := l.Capture(vm.Name, "eth0", lab.IPv4To(unix.IPPROTO_TCP, tc.dst))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer sent.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn, err := dial(ctx, tc.dst.String())
			cancel()
			if err == nil {
				conn.Close()
				t.Errorf("%s opened a connection to the %s at %s", vm.Name, tc.name, tc.dst)
				return
			}
			// A refusal can come back before the capture has read the SYN: give it a moment.
			left := func() (bool, error) { return sent.Count() > 0, nil }
			if _, werr := lab.WaitFor(context.Background(), time.Second, left); werr != nil {
				t.Errorf("control: %s's connection to the %s at %s never left the VM (%v)", vm.Name, tc.name, tc.dst, err)
			}
		})
	}
	wg.Wait()
}

// vmCannotSendGossip sends a UDP datagram from vm to the gossip port of the server and of every
// host but its own, and watches each receiver's underlay NIC: none may arrive there, while the same
// datagram from outside does. To its own host (which it would reach without crossing a wire) it
// sends to a listener on a spare port of the host's underlay address.
func vmCannotSendGossip(t *testing.T, l *lab.Lab, vm lab.VM) {
	probe := []byte("vxt-probe-" + vm.Name)
	control := []byte("vxt-control-" + vm.Name)
	receivers := map[string]netip.Addr{lab.RoleControl: lab.ControlAddr}
	for i, h := range l.Hosts() {
		if h != vm.Host {
			receivers[h] = lab.HostAddr(i + 1)
		}
	}
	var wg sync.WaitGroup
	for ns, addr := range receivers {
		dst := netip.AddrPortFrom(addr, lab.GossipPort)
		got, err := l.Capture(ns, lab.UnderlayIface, lab.UDPPayload(lab.GossipPort, probe))
		if err != nil {
			t.Fatal(err)
		}
		ctl, err := l.Capture(ns, lab.UnderlayIface, lab.UDPPayload(lab.GossipPort, control))
		if err != nil {
			got.Close()
			t.Fatal(err)
		}
		wg.Go(func() {
			defer got.Close()
			defer ctl.Close()
			if err := l.SendUDP(vm.Name, netip.AddrPort{}, dst, probe); err != nil {
				t.Errorf("send from %s to %s: %v", vm.Name, dst, err)
				return
			}
			if err := l.SendUDP(lab.RoleOutside, netip.AddrPort{}, dst, control); err != nil {
				t.Errorf("send from outside to %s: %v", dst, err)
				return
			}
			if _, err := lab.WaitFor(context.Background(), 2*time.Second, func() (bool, error) { return ctl.Count() > 0, nil }); err != nil {
				t.Errorf("control: a datagram from outside to %s was not seen on %s's %s", dst, ns, lab.UnderlayIface)
				return
			}
			if n := got.Count(); n > 0 {
				t.Errorf("a UDP datagram from %s to the gossip port %s arrived on %s's %s", vm.Name, dst, ns, lab.UnderlayIface)
			}
		})
	}
	wg.Wait()

	i, _ := lab.HostIndex(vm.Host)
	own, err := l.ListenUDP(vm.Host, netip.AddrPortFrom(lab.HostAddr(i), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if err := l.SendUDP(vm.Name, netip.AddrPort{}, own.Addr(), probe); err != nil {
		t.Fatal(err)
	}
	if _, ok := own.Receive(probe, time.Second); ok {
		t.Errorf("a UDP datagram from %s reached its own host %s at %s", vm.Name, vm.Host, own.Addr())
	}
	if err := l.SendUDP(lab.RoleOutside, netip.AddrPort{}, own.Addr(), control); err != nil {
		t.Fatal(err)
	}
	if _, ok := own.Receive(control, 2*time.Second); !ok {
		t.Errorf("control: a datagram from outside did not reach the listener %s on %s", own.Addr(), vm.Host)
	}
}

// TestPrivilegedGossipKeyRotation rotates the gossip key while h3's agent is away, as a revoked host's
// would be (it cannot open a Sync stream, so it never gets the new key): the rotation completes
// without waiting for h3 and without interrupting traffic between VMs on h1 and h2; a member holding
// only the old key, with no other way to a server, then cannot get back into gossip; h3's own agent
// with the old key but the servers it remembers can (it fetches the keyring through Sync), and so
// can the one the lab starts (h3's own keyring file, stale since its agent was away).
func TestPrivilegedGossipKeyRotation(t *testing.T) {
	f := newFixture(t, "e2e-gkey")
	f.network("net", "10.58.0.0/24", isolated)
	f.vm("gkey-a", "h1", "net")
	b := f.vm("gkey-b", "h2", "net")
	f.reach("gkey-a", b.IP(0), 5*time.Second)
	keyFile := f.l.PKIFile(pki.GossipKeyFile)
	oldKeys, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	restoreOnCleanup(t, "agent", "start", "h3")
	mustVxfab(t, "lab", "agent", "stop", "h3")
	f.waitNode("h3", vxfabricv1.NodeStatus_NODE_STATUS_LEFT, 10*time.Second, "agent stopped")

	gossip := vxfabricv1.NewGossipServiceClient(f.c.Conn)
	const count = 400 // 4 s at 10 ms
	pings := backgroundPing(f, "gkey-a", b, count, 10*time.Millisecond)
	began := time.Now()
	rot, err := gossip.RotateGossipKey(f.ctx, &vxfabricv1.RotateGossipKeyRequest{StepTimeoutMs: 20000})
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if _, err := gossip.RotateGossipKey(f.ctx, &vxfabricv1.RotateGossipKeyRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a second rotation while one runs: %v, want FailedPrecondition", err)
	}
	var st *vxfabricv1.GossipKeyringStatus
	if _, err := lab.WaitFor(f.ctx, 15*time.Second, func() (bool, error) {
		resp, err := gossip.GetGossipKeyring(f.ctx, &vxfabricv1.GetGossipKeyringRequest{})
		st = resp.GetKeyring()
		return st.GetStep() == vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE, err
	}); err != nil {
		t.Fatalf("rotation not done: %v (%v)", err, st)
	}
	took := time.Since(began)
	res := <-pings
	t.Logf("rotation done in %s, waiting for no away node; ping %d sent, %d received", took.Round(time.Millisecond), res.Sent, res.Received)
	if took > 10*time.Second {
		t.Errorf("the rotation took %s: it waited for h3, which is LEFT", took)
	}
	if res.Sent-res.Received > 1 {
		t.Errorf("ping during the rotation: %d sent, %d received", res.Sent, res.Received)
	}
	if len(st.GetKeyIds()) != 1 || !slices.Contains(rot.GetKeyring().GetKeyIds(), st.GetKeyIds()[0]) || st.GetKeyIds()[0] == rot.GetKeyring().GetKeyIds()[0] {
		t.Errorf("keys: started as %v, done as %v; want only the key the rotation added", rot.GetKeyring().GetKeyIds(), st.GetKeyIds())
	}
	// h1 and h2 confirm the last step too (the rotation does not wait for that one); h3 never does.
	if _, err := lab.WaitFor(f.ctx, 5*time.Second, func() (bool, error) {
		resp, err := gossip.GetGossipKeyring(f.ctx, &vxfabricv1.GetGossipKeyringRequest{})
		for _, n := range resp.GetKeyring().GetNodes() {
			if current := n.GetKeyringRevision() >= st.GetRevision(); current != (n.GetNode() != "h3") {
				return false, err
			}
		}
		return true, err
	}); err != nil {
		t.Errorf("nodes' keyrings after the rotation: %v (%v)", err, st.GetNodes())
	}
	newKeys, err := os.ReadFile(keyFile)
	if err != nil || string(newKeys) == string(oldKeys) {
		t.Fatalf("the server did not rewrite the lab's keyring file %s: %v", keyFile, err)
	}
	for _, h := range []string{"h1", "h2"} {
		if own, err := os.ReadFile(f.l.AgentKeyringPath(h)); err != nil || string(own) != string(newKeys) {
			t.Errorf("%s's agent did not rewrite its keyring file: %v", h, err)
		}
	}
	if own, _ := os.ReadFile(f.l.AgentKeyringPath("h3")); string(own) != string(oldKeys) {
		t.Error("h3's keyring file changed while its agent was away")
	}

	// A member with the old key only, on h3's address, with h3's certificate and no server address:
	// it finds no server, because gossip refuses it.
	dir := t.TempDir()
	stale := filepath.Join(dir, "old.key")
	if err := os.WriteFile(stale, oldKeys, 0o600); err != nil {
		t.Fatal(err)
	}
	rogue := runAgentOutsideLab(t, f, "h3", stale, dir)
	time.Sleep(3 * time.Second)
	if s := f.node("h3").GetStatus(); s == vxfabricv1.NodeStatus_NODE_STATUS_ALIVE {
		t.Errorf("a member with the old gossip key only got h3 back to %s:\n%s", s, rogue())
	}
	rogue()
	if cur, _ := os.ReadFile(stale); string(cur) != string(oldKeys) {
		t.Error("the member that never got the new keyring rewrote its keyring file")
	}

	// h3's own agent, from its own state directory (the servers it remembers) but with the stale
	// keyring file, as after a crash in the middle of a rotation: it streams from a remembered
	// server, gets the keyring there, and is back in gossip.
	back := runAgentOutsideLab(t, f, "h3", stale, f.l.AgentStateDir("h3"))
	started := time.Now()
	_, err = lab.WaitFor(f.ctx, 10*time.Second, func() (bool, error) {
		return f.node("h3").GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, nil
	})
	if out := back(); err != nil {
		t.Fatalf("h3's agent with stale keys and its remembered servers is %s:\n%s", f.node("h3").GetStatus(), out)
	}
	t.Logf("h3's agent with stale keys was back in gossip %s after it started", time.Since(started).Round(time.Millisecond))
	if cur, _ := os.ReadFile(stale); string(cur) != string(newKeys) {
		t.Error("h3's agent did not record the current keyring in its file")
	}

	mustVxfab(t, "lab", "agent", "start", "h3")
	f.waitNode("h3", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 10*time.Second, "started by the lab (its own stale keyring file, its remembered servers)")
	c := f.vm("gkey-c", "h3", "net")
	f.reach("gkey-a", c.IP(0), 5*time.Second)
}

// TestPrivilegedRevokeShutsTheHostOut is the documented flow for a host that must go: revoke its
// certificate, and the server, seeing the newer revocation list, rotates the gossip key by itself.
// h3's agent is refused by the API and, once the rotation is done, by gossip: DEAD, named as left
// behind, while VMs on h1 and h2 keep talking. Then `lab up` issues h3 a certificate anew (as `certs
// init` does), and h3's agent, never restarted, comes back by itself: it presents the new
// certificate to a server it remembers, which hands it the keyring.
func TestPrivilegedRevokeShutsTheHostOut(t *testing.T) {
	f := newFixture(t, "e2e-revoke")
	f.network("net", "10.59.0.0/24", isolated)
	f.vm("rev-a", "h1", "net")
	b := f.vm("rev-b", "h2", "net")
	f.reach("rev-a", b.IP(0), 5*time.Second)
	// Whatever happens below, the lab ends with h3's certificate issued anew and its agent up.
	// (Cleanups run last first: lab up, which issues the certificate, then the agent start.)
	restoreOnCleanup(t, "agent", "start", "h3")
	restoreOnCleanup(t, "up", "--hosts=3", "--default-profile=false")

	gossip := vxfabricv1.NewGossipServiceClient(f.c.Conn)
	before, err := gossip.GetGossipKeyring(f.ctx, &vxfabricv1.GetGossipKeyringRequest{})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	mustVxfab(t, "certs", "revoke", "--dir", filepath.Dir(f.l.PKIFile(pki.CACertFile)), "h3")
	var st *vxfabricv1.GossipKeyringStatus
	if _, err := lab.WaitFor(f.ctx, 40*time.Second, func() (bool, error) {
		resp, err := gossip.GetGossipKeyring(f.ctx, &vxfabricv1.GetGossipKeyringRequest{})
		st = resp.GetKeyring()
		return st.GetRevision() != before.GetKeyring().GetRevision() && st.GetStep() == vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE, err
	}); err != nil {
		t.Fatalf("no rotation done after the revocation: %v (%v)", err, st)
	}
	if slices.Equal(st.GetKeyIds(), before.GetKeyring().GetKeyIds()) {
		t.Errorf("the keyring's keys did not change: %v", st.GetKeyIds())
	}
	if l := st.GetRevocationRotatedFor(); l.GetRevoked() < 1 || len(st.GetServerRevocationLists()) != 1 ||
		st.GetServerRevocationLists()[0].GetList().GetCrlNumber() != l.GetCrlNumber() {
		t.Errorf("status: rotated for %v, the server's list %v; want the list revoking h3 in both", l, st.GetServerRevocationLists())
	}
	t.Logf("rotation started by the revocation of h3, done in %s, left behind: %v", time.Since(began).Round(time.Millisecond), st.GetLaggingNodes())
	if !slices.Contains(st.GetLaggingNodes(), "h3") {
		t.Errorf("h3 not named as left behind: %v", st.GetLaggingNodes())
	}
	f.waitNode("h3", vxfabricv1.NodeStatus_NODE_STATUS_DEAD, 10*time.Second, "revoked, after the rotation (outside gossip)")
	time.Sleep(2 * time.Second) // h3's agent keeps trying; it must stay out
	if s := f.node("h3").GetStatus(); s != vxfabricv1.NodeStatus_NODE_STATUS_DEAD {
		t.Errorf("revoked h3 came back to %s", s)
	}
	f.reach("rev-a", b.IP(0), 5*time.Second)

	pid := f.l.AgentPID("h3")
	back := time.Now()
	mustVxfab(t, "lab", "up", "--hosts=3", "--default-profile=false") // issues h3 a certificate anew
	f.waitNode("h3", vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, 20*time.Second, "with a certificate issued anew")
	t.Logf("h3 back in gossip %s after lab up began", time.Since(back).Round(time.Millisecond))
	if got := f.l.AgentPID("h3"); pid == 0 || got != pid {
		t.Errorf("h3's agent was restarted (pid %d, then %d): it should have come back by itself", pid, got)
	}
	c := f.vm("rev-c", "h3", "net")
	f.reach("rev-a", c.IP(0), 5*time.Second)
}

// runAgentOutsideLab runs `vxfab agent` for host in its namespace as the lab would, but with the
// keyring file and state directory given and outside the lab's control; the returned stop ends it
// (SIGTERM, then SIGKILL after 10 s; once, also at the test's end) and returns its output.
func runAgentOutsideLab(t *testing.T, f *fixture, host, keyring, stateDir string) (stop func() string) {
	t.Helper()
	i, _ := lab.HostIndex(host)
	addr := lab.HostAddr(i).String()
	cmd := exec.Command("ip", "netns", "exec", f.l.Namespace(host), os.Getenv("VXFAB_BIN"), "agent", "--node", host, "--vtep", addr,
		"--underlay-iface", lab.UnderlayIface, "--join", lab.ControlAddr.String()+":7946", "--gossip-bind", addr+":7946",
		"--gossip-keyring", keyring, "--tls-ca", f.l.PKIFile(pki.CACertFile), "--tls-cert", f.l.PKIFile(pki.NodeCertFile(host)),
		"--tls-key", f.l.PKIFile(pki.NodeKeyFile(host)), "--state-dir", stateDir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stop = sync.OnceValue(func() string {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		return out.String()
	})
	t.Cleanup(func() { stop() })
	return stop
}
