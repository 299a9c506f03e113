package alloc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed/etcdtest"

	"github.com/vxfabric/vxfabric/controlplane/store"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"pgregory.net/rapid"
)

func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t)
}

// allocModel is what the allocator's state must be after a sequence of creates and deletes.
type allocModel struct {
	networks map[string]*vxfabricv1.Network // by name
	ports    map[string]*vxfabricv1.Port    // by name
	requests map[string]string              // network request id -> network id
}

// TestAllocatorNeverDuplicatesProperty runs random sequences of network and port creates (allocated
// or requested VNIs and addresses, repeated request ids) and deletes against a real etcd, with pools
// small enough to run dry, and checks after every step that etcd holds exactly one allocation per
// live resource: no VNI or address is ever held twice, none leaks, and exhaustion is reported exactly
// when the pool is full.
func TestAllocatorNeverDuplicatesProperty(t *testing.T) {
	cli := startEtcd(t)
	st := store.New(cli)
	pool, err := NewVNIPool([]Range{{10, 13}, {20, 21}})
	if err != nil {
		t.Fatal(err)
	}
	al := New(st, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	rapid.Check(t, func(rt *rapid.T) {
		if _, err := cli.Delete(ctx, store.Prefix, clientv3.WithPrefix()); err != nil {
			rt.Fatal(err)
		}
		if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "t1"}, ""); err != nil {
			rt.Fatal(err)
		}
		m := &allocModel{networks: map[string]*vxfabricv1.Network{}, ports: map[string]*vxfabricv1.Port{}, requests: map[string]string{}}
		usedVNIs := func() map[uint32]bool {
			u := map[uint32]bool{}
			for _, n := range m.networks {
				u[n.Vni] = true
			}
			return u
		}
		rt.Repeat(map[string]func(*rapid.T){
			"createNetwork": func(rt *rapid.T) {
				name := fmt.Sprintf("n%d", rapid.IntRange(0, 7).Draw(rt, "net"))
				vni := uint32(0)
				if rapid.Bool().Draw(rt, "requestVNI") {
					vni = uint32(rapid.IntRange(8, 23).Draw(rt, "vni"))
				}
				reqID := fmt.Sprintf("r%d", rapid.IntRange(0, 9).Draw(rt, "req"))
				mode := vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED
				gw := ""
				if rapid.Bool().Draw(rt, "nat") {
					mode, gw = vxfabricv1.NetworkMode_NETWORK_MODE_NAT, "10.0.0.1"
				}
				got, err := al.CreateNetwork(ctx, &vxfabricv1.Network{Tenant: "t1", Name: name, Cidr: "10.0.0.0/29", Mode: mode, Vni: vni, Mtu: 1450, Gateway: gw}, reqID, 0)
				if prevID, ok := m.requests[reqID]; ok {
					var prev *vxfabricv1.Network
					for _, n := range m.networks {
						if n.Id == prevID {
							prev = n
						}
					}
					switch {
					case prev == nil: // the network of that request was deleted: the record is stale
					case prev.Name == name && prev.Mode == mode && (vni == 0 || vni == prev.Vni): // the same request again
						if err != nil || got.Id != prev.Id || got.Vni != prev.Vni {
							rt.Fatalf("retry of request %s: got %v, %v; want network %s", reqID, got, err, prev.Id)
						}
						return
					default:
						if !errors.Is(err, store.ErrRequestMismatch) {
							rt.Fatalf("request %s reused for %s: err %v, want ErrRequestMismatch", reqID, name, err)
						}
						return
					}
				}
				switch {
				case m.networks[name] != nil:
					// A full pool may be found before the duplicate name: either refusal writes nothing.
					full := vni == 0 && allInPool(pool, usedVNIs())
					if !(errors.Is(err, store.ErrAlreadyExists) && !errors.Is(err, store.ErrVNITaken) || full && errors.Is(err, store.ErrExhausted)) {
						rt.Fatalf("duplicate name %s: err %v", name, err)
					}
				case vni != 0 && usedVNIs()[vni]:
					if !errors.Is(err, store.ErrVNITaken) {
						rt.Fatalf("requested taken vni %d: err %v", vni, err)
					}
				case vni == 0 && len(usedVNIs()) >= 6 && allInPool(pool, usedVNIs()):
					if !errors.Is(err, store.ErrExhausted) {
						rt.Fatalf("full pool: err %v", err)
					}
				default:
					if err != nil {
						rt.Fatalf("create network %s vni %d: %v", name, vni, err)
					}
					if vni == 0 && !pool.Contains(got.Vni) || usedVNIs()[got.Vni] {
						rt.Fatalf("allocated vni %d (in use %v)", got.Vni, usedVNIs())
					}
					if gw != "" && got.GatewayMac != GatewayMAC(got.Vni) {
						rt.Fatalf("gateway mac %s", got.GatewayMac)
					}
					m.networks[name] = got
					m.requests[reqID] = got.Id
				}
			},
			"deleteNetwork": func(rt *rapid.T) {
				name := fmt.Sprintf("n%d", rapid.IntRange(0, 7).Draw(rt, "net"))
				err := st.DeleteNetwork(ctx, "t1", name, 0)
				n := m.networks[name]
				hasPorts := false
				for _, p := range m.ports {
					hasPorts = hasPorts || n != nil && p.NetworkId == n.Id
				}
				switch {
				case n == nil:
					if !errors.Is(err, store.ErrNotFound) {
						rt.Fatalf("delete missing network: %v", err)
					}
				case hasPorts:
					if !errors.Is(err, store.ErrFailedPrecondition) {
						rt.Fatalf("delete network with ports: %v", err)
					}
				default:
					if err != nil {
						rt.Fatal(err)
					}
					delete(m.networks, name)
				}
			},
			"createPort": func(rt *rapid.T) {
				netName := fmt.Sprintf("n%d", rapid.IntRange(0, 7).Draw(rt, "net"))
				n := m.networks[netName]
				if n == nil {
					rt.Skip("no such network")
				}
				name := fmt.Sprintf("p%d", rapid.IntRange(0, 11).Draw(rt, "port"))
				ip := ""
				if rapid.Bool().Draw(rt, "requestIP") {
					ip = fmt.Sprintf("10.0.0.%d", rapid.IntRange(2, 6).Draw(rt, "host"))
				}
				// One node per network: the nat networks here all share 10.0.0.0/29, which two of
				// them may not have on one node (store's gateway check, tested in the server package).
				got, err := al.CreatePort(ctx, n, &vxfabricv1.Port{Tenant: "t1", Name: name, Node: "h" + n.Id, Ip: ip}, "")
				inNet := map[string]bool{}
				for _, p := range m.ports {
					if p.NetworkId == n.Id {
						inNet[p.Ip] = true
					}
				}
				capacity := 6
				if n.Gateway != "" {
					capacity = 5
				}
				switch {
				case m.ports[name] != nil:
					full := ip == "" && len(inNet) >= capacity
					if !(errors.Is(err, store.ErrAlreadyExists) && !errors.Is(err, store.ErrIPTaken) || full && errors.Is(err, store.ErrExhausted)) {
						rt.Fatalf("duplicate port name: %v", err)
					}
				case ip != "" && inNet[ip]:
					if !errors.Is(err, store.ErrIPTaken) {
						rt.Fatalf("requested taken ip %s: %v", ip, err)
					}
				case ip == "" && len(inNet) >= capacity:
					if !errors.Is(err, store.ErrExhausted) {
						rt.Fatalf("full network: %v", err)
					}
				default:
					if err != nil {
						rt.Fatalf("create port %s ip %q: %v", name, ip, err)
					}
					if inNet[got.Ip] || got.Ip == n.Gateway || got.Ip == "10.0.0.0" || got.Ip == "10.0.0.7" {
						rt.Fatalf("allocated %s (taken %v, gateway %s)", got.Ip, inNet, n.Gateway)
					}
					m.ports[name] = got
				}
			},
			"deletePort": func(rt *rapid.T) {
				name := fmt.Sprintf("p%d", rapid.IntRange(0, 11).Draw(rt, "port"))
				err := st.DeletePort(ctx, "t1", name, 0)
				if m.ports[name] == nil {
					if !errors.Is(err, store.ErrNotFound) {
						rt.Fatalf("delete missing port: %v", err)
					}
					return
				}
				if err != nil {
					rt.Fatal(err)
				}
				delete(m.ports, name)
			},
			"": func(rt *rapid.T) { checkAllocations(ctx, rt, cli, m) },
		})
	})
}

func allInPool(p *VNIPool, used map[uint32]bool) bool {
	n := uint64(0)
	for v := range used {
		if p.Contains(v) {
			n++
		}
	}
	return n == p.Size()
}

// checkAllocations compares every allocation key in etcd with the model: exactly one per live
// resource, pointing at it.
func checkAllocations(ctx context.Context, rt *rapid.T, cli *clientv3.Client, m *allocModel) {
	resp, err := cli.Get(ctx, store.Prefix+"alloc/", clientv3.WithPrefix())
	if err != nil {
		rt.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	want := map[string]string{}
	for _, n := range m.networks {
		want[store.VNIKey(n.Vni)] = n.Id
	}
	for _, p := range m.ports {
		want[store.IPKey(p.NetworkId, netip.MustParseAddr(p.Ip))] = p.Id
		want[store.MACKey(p.NetworkId, p.Mac)] = p.Id
	}
	if len(got) != len(want) {
		rt.Fatalf("etcd holds %d allocations, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	for k, v := range want {
		if got[k] != v {
			rt.Fatalf("allocation %s = %q, want %q", strings.TrimPrefix(k, store.Prefix), got[k], v)
		}
	}
}

// A full address pool or VNI pool is ResourceExhausted naming the network as tenant/name (never its
// id) and what ran out.
func TestExhaustedMessages(t *testing.T) {
	al, ctx := acme(t, []Range{{10, 10}, {20, 21}})
	network := func(name string) (*vxfabricv1.Network, error) {
		return al.CreateNetwork(ctx, &vxfabricv1.Network{Tenant: "acme", Name: name, Cidr: "10.5.0.0/29",
			Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED}, "", 0)
	}
	web, err := network("web")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"db", "app"} {
		if _, err := network(name); err != nil {
			t.Fatal(err)
		}
	}
	_, err = network("full")
	if want := "network acme/full: no free vni in the pool 10-10, 20-21: resource exhausted"; !errors.Is(err, store.ErrExhausted) || err.Error() != want {
		t.Errorf("create in a full vni pool: %v, want %q", err, want)
	}
	for i := range 7 { // a /29 without a gateway: .1 to .6 (.0 and .7 reserved)
		_, err = al.CreatePort(ctx, web, &vxfabricv1.Port{Tenant: "acme", Name: fmt.Sprintf("p%d", i), Node: "h1"}, "")
	}
	want := "network acme/web is full: no free address in 10.5.0.0/29: resource exhausted"
	if !errors.Is(err, store.ErrExhausted) || err.Error() != want {
		t.Errorf("port create in a full network: %v, want %q", err, want)
	}
	if strings.Contains(fmt.Sprint(err), web.Id) {
		t.Errorf("message %q names the network's id %s", err, web.Id)
	}
}

// A request id reused with another VNI, address or MAC asked for is another request
// (ErrRequestMismatch), although store cannot compare what the allocator may pick; the same values
// again, or none asked for, are its retry.
func TestRequestIDWithOtherRequestedValues(t *testing.T) {
	al, ctx := acme(t, []Range{{10, 20}})
	network := func(vni uint32) (*vxfabricv1.Network, error) {
		return al.CreateNetwork(ctx, &vxfabricv1.Network{Tenant: "acme", Name: "web", Cidr: "10.5.0.0/24",
			Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, Vni: vni}, "net-1", 0)
	}
	web, err := network(12)
	if err != nil {
		t.Fatal(err)
	}
	for _, vni := range []uint32{12, 0} {
		if got, err := network(vni); err != nil || got.Id != web.Id {
			t.Errorf("retry asking for vni %d: %v, %v; want network %s", vni, got, err, web.Id)
		}
	}
	if got, err := network(13); !errors.Is(err, store.ErrRequestMismatch) {
		t.Errorf("request id reused asking for vni 13: %v, %v; want ErrRequestMismatch", got, err)
	}
	if got, err := al.NetworkForRequest(ctx, "net-1", &vxfabricv1.Network{Tenant: "acme", Name: "web", Cidr: "10.5.0.0/24",
		Mode: vxfabricv1.NetworkMode_NETWORK_MODE_ISOLATED, Vni: 13}); !errors.Is(err, store.ErrRequestMismatch) {
		t.Errorf("network of the request asking for vni 13: %v, %v; want ErrRequestMismatch", got, err)
	}

	port := func(ip, mac string) (*vxfabricv1.Port, error) {
		return al.CreatePort(ctx, web, &vxfabricv1.Port{Tenant: "acme", Network: "web", Name: "p1", Node: "h1", Ip: ip, Mac: mac}, "port-1")
	}
	p1, err := port("10.5.0.7", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, retry := range [][2]string{{"10.5.0.7", ""}, {"", ""}, {"", p1.Mac}, {"10.5.0.7", p1.Mac}} {
		if got, err := port(retry[0], retry[1]); err != nil || got.Id != p1.Id {
			t.Errorf("retry asking for ip %q mac %q: %v, %v; want port %s", retry[0], retry[1], got, err, p1.Id)
		}
	}
	for _, other := range [][2]string{{"10.5.0.8", ""}, {"", "0e:00:00:00:00:99"}} {
		if got, err := port(other[0], other[1]); !errors.Is(err, store.ErrRequestMismatch) {
			t.Errorf("request id reused asking for ip %q mac %q: %v, %v; want ErrRequestMismatch", other[0], other[1], got, err)
		}
	}
}

// acme returns an allocator over a fresh etcd with a VNI pool of ranges and tenant acme, and a
// context for the test.
func acme(t *testing.T, ranges []Range) (*Allocator, context.Context) {
	t.Helper()
	st := store.New(startEtcd(t))
	pool, err := NewVNIPool(ranges)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if _, err := st.CreateTenant(ctx, &vxfabricv1.Tenant{Name: "acme"}, ""); err != nil {
		t.Fatal(err)
	}
	return New(st, pool), ctx
}
