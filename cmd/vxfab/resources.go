package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/vxfabric/vxfabric/controlplane/alloc"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func init() {
	register(newTenantCmd)
	register(newNetworkCmd)
	register(newPortCmd)
	register(newNodeCmd)
}

// apiCall dials the server, bounds fn by --timeout and closes the connection afterwards.
func apiCall(cmd *cobra.Command, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	conn, err := dialServer()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := callContext(cmd.Context())
	defer cancel()
	return fn(ctx, conn)
}

// createCall runs a create with an idempotency key (--request-id, or one made up here) and repeats
// it while the server is unavailable, a few times within --timeout. A create whose answer was lost
// (the server crashed after committing it) is then answered by the retry with what it made,
// instead of failing although it succeeded.
func createCall(ctx context.Context, requestID string, call func(ctx context.Context, requestID string) error) error {
	if requestID == "" {
		b := make([]byte, 12)
		_, _ = rand.Read(b)
		requestID = "cli-" + hex.EncodeToString(b)
	}
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := call(ctx, requestID)
		if status.Code(err) != codes.Unavailable || attempt == createAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// createAttempts bounds createCall: with a server that is down, the command still fails in about
// 1.4 s, not after its whole --timeout.
const createAttempts = 4

// mtuWant is what a network's --mtu wants. The server checks the range: its upper bound follows
// the server's --underlay-mtu, which the CLI does not know.
const mtuWant = "an MTU in bytes: 576-9000, and at most the server's underlay MTU less 50 (1450 on a 1500-byte underlay)"

// revisionFlag defines --revision, the expected revision of an update or delete (0: any).
func revisionFlag(fs *pflag.FlagSet, rev *int64, usage string) {
	newNumber(fs, rev, "revision", 0, math.MaxInt64, "a revision as list and show print it (0: any)", usage)
}

// tenantOwning starts the help of a --tenant flag that names the tenant of a resource.
const tenantOwning = "tenant (required; with a tenant token, its own by default) owning the "

// mustRequire marks flags the command cannot do without, so a missing one is reported by name
// before anything is sent.
func mustRequire(cmd *cobra.Command, flags ...string) {
	for _, f := range flags {
		if err := cmd.MarkFlagRequired(f); err != nil {
			panic(fmt.Sprintf("%s: %v", cmd.CommandPath(), err)) // a typo in this file
		}
	}
}

// render prints msg as JSON with -o json, else as the table that table writes.
func render(cmd *cobra.Command, msg proto.Message, table func(w io.Writer)) error {
	out := cmd.OutOrStdout()
	if cliOpts.output == "json" {
		// Every field, empty lists included, and a stable layout (protojson's own spacing is
		// deliberately unstable), so scripts can rely on the shape.
		b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		var buf bytes.Buffer
		if err := json.Indent(&buf, b, "", "  "); err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		buf.WriteByte('\n')
		_, err = out.Write(buf.Bytes())
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func row(w io.Writer, cols ...any) {
	s := make([]string, len(cols))
	for i, c := range cols {
		s[i] = fmt.Sprint(c)
		if s[i] == "" {
			s[i] = "-"
		}
	}
	fmt.Fprintln(w, strings.Join(s, "\t"))
}

func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

func modeName(m vxfabricv1.NetworkMode) string {
	return strings.ToLower(strings.TrimPrefix(m.String(), "NETWORK_MODE_"))
}

func parseMode(s string) (vxfabricv1.NetworkMode, error) {
	if s == "" {
		return vxfabricv1.NetworkMode_NETWORK_MODE_UNSPECIFIED, nil // the server says it is required
	}
	v, ok := vxfabricv1.NetworkMode_value["NETWORK_MODE_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, fmt.Errorf("--mode %q: want isolated, nat, routed or bridged", s)
	}
	return vxfabricv1.NetworkMode(v), nil
}

func statusName(s vxfabricv1.NodeStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STATUS_"))
}

// hostState tells the node's host apart from its agent: a suspect or dead agent on a host that still
// answers on the underlay keeps its entries (its kernel forwards); an unreachable one is withdrawn.
func hostState(n *vxfabricv1.Node) string {
	switch {
	case n.GetUnreachable():
		return "unreachable"
	case n.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_LEFT || n.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_UNSPECIFIED:
		return "-"
	}
	return "up"
}

// Mutations (create, update, move) print the resource as the list command's table does, with one
// row; show prints the detail view; delete prints one line.

// ---- tenant ----

func newTenantCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tenant", Short: "manage tenants"}
	var requestID string
	create := &cobra.Command{
		Use: "create NAME", Short: "create a tenant", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				var resp *vxfabricv1.CreateTenantResponse
				err := createCall(ctx, requestID, func(ctx context.Context, rid string) (err error) {
					resp, err = vxfabricv1.NewTenantServiceClient(conn).CreateTenant(ctx,
						&vxfabricv1.CreateTenantRequest{Name: args[0], RequestId: rid})
					return err
				})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { tenantTable(w, resp.Tenant) })
			})
		},
	}
	create.Flags().StringVar(&requestID, "request-id", "", "idempotency key: repeating it returns the same tenant (default: a new one, reused by the command's own retries)")
	list := &cobra.Command{
		Use: "list", Short: "list tenants", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewTenantServiceClient(conn).ListTenants(ctx, &vxfabricv1.ListTenantsRequest{})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { tenantTable(w, resp.Tenants...) })
			})
		},
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "show a tenant", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewTenantServiceClient(conn).GetTenant(ctx, &vxfabricv1.GetTenantRequest{Name: args[0]})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { tenantTable(w, resp.Tenant) })
			})
		},
	}
	var rev int64
	del := &cobra.Command{
		Use: "delete NAME", Short: "delete a tenant without networks", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewTenantServiceClient(conn).DeleteTenant(ctx,
					&vxfabricv1.DeleteTenantRequest{Name: args[0], ExpectedRevision: rev})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { fmt.Fprintf(w, "tenant %s deleted\n", args[0]) })
			})
		},
	}
	revisionFlag(del.Flags(), &rev, "delete only if the tenant is still at this revision")
	cmd.AddCommand(create, list, show, del)
	return cmd
}

func tenantTable(w io.Writer, ts ...*vxfabricv1.Tenant) {
	row(w, "NAME", "REVISION", "CREATED")
	for _, t := range ts {
		row(w, t.Name, t.Revision, fmtTime(t.CreateTime))
	}
}

// listPage is the page size the list commands read with (every page is read).
const listPage = 1000

// allPages reads a paged list to its end: fetch gets the page of a token ("" first), of at most
// listPage items, and returns its items and the next token ("" after the last page). A page larger
// than asked for is a server of a version before paging, which answered with the whole list.
func allPages[T any](fetch func(token string) ([]T, string, error)) ([]T, error) {
	var all []T
	token := ""
	for {
		items, next, err := fetch(token)
		if err != nil {
			return nil, err
		}
		if len(items) > listPage {
			return items, nil
		}
		all = append(all, items...)
		if next == "" {
			return all, nil
		}
		token = next
	}
}

// ---- network ----

func newNetworkCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "manage networks"}
	var (
		tenant, cidr, mode, gateway, uplink, pool, requestID string
		vni, mtu                                             uint32
		rev                                                  int64
	)
	create := &cobra.Command{
		Use: "create NAME", Short: "create a network", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := parseMode(mode)
			if err != nil {
				return err
			}
			req := &vxfabricv1.CreateNetworkRequest{Tenant: tenant, Name: args[0], Cidr: cidr, Mode: m, Vni: vni,
				Mtu: mtu, Gateway: gateway, AllocationPool: pool, RequestId: requestID}
			if uplink != "" {
				node, iface, ok := strings.Cut(uplink, ":")
				if !ok {
					return fmt.Errorf("--uplink %q: want NODE:IFACE", uplink)
				}
				req.Uplink = &vxfabricv1.Uplink{Node: node, Interface: iface}
			}
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				var resp *vxfabricv1.CreateNetworkResponse
				err := createCall(ctx, requestID, func(ctx context.Context, rid string) (err error) {
					req.RequestId = rid
					resp, err = vxfabricv1.NewNetworkServiceClient(conn).CreateNetwork(ctx, req)
					return err
				})
				if err != nil {
					return err
				}
				if u := resp.GetNetwork().GetUplink(); u != nil {
					noteUnknownNode(ctx, cmd, conn, u.GetNode(), "its uplink "+u.GetInterface()+" joins the network once the node's agent joins")
				}
				return render(cmd, resp, func(w io.Writer) { networkTable(w, resp.Network) })
			})
		},
	}
	cf := create.Flags()
	cf.StringVar(&tenant, "tenant", "", tenantOwning+"network")
	cf.StringVar(&cidr, "cidr", "", "IPv4 network, /8 to /29, e.g. 10.0.0.0/24")
	cf.StringVar(&mode, "mode", "", "isolated, nat, routed or bridged")
	// 0 on the wire means "allocate one" and "the default": an explicit 0 is a mistake, refused.
	newNumber(cf, &vni, "vni", 1, alloc.MaxVNI, fmt.Sprintf("a VNI, 1-%d (leave --vni out to have one allocated)", alloc.MaxVNI),
		"VNI to use (default: allocated)")
	newNumber(cf, &mtu, "mtu", 1, math.MaxUint32, mtuWant+"; leave --mtu out for the default", "MTU (default: the underlay MTU minus 50)")
	cf.StringVar(&gateway, "gateway", "", "gateway address, nat and routed only (default: first host address)")
	cf.StringVar(&uplink, "uplink", "", "NODE:IFACE, bridged only")
	cf.StringVar(&pool, "pool", "", "FIRST-LAST: the addresses ports are given (default: every host address); on a bridged network, keep the LAN's router and hosts out of it")
	cf.StringVar(&requestID, "request-id", "", "idempotency key: repeating it returns the same network (default: a new one, reused by the command's own retries)")
	mustRequire(create, "cidr", "mode")

	list := &cobra.Command{
		Use: "list", Short: "list networks", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				nets, err := allPages(func(token string) ([]*vxfabricv1.Network, string, error) {
					resp, err := vxfabricv1.NewNetworkServiceClient(conn).ListNetworks(ctx,
						&vxfabricv1.ListNetworksRequest{Tenant: tenant, PageSize: listPage, PageToken: token})
					return resp.GetNetworks(), resp.GetNextPageToken(), err
				})
				if err != nil {
					return err
				}
				all := &vxfabricv1.ListNetworksResponse{Networks: nets}
				return render(cmd, all, func(w io.Writer) { networkTable(w, nets...) })
			})
		},
	}
	list.Flags().StringVar(&tenant, "tenant", "", "only this tenant's networks")
	show := &cobra.Command{
		Use: "show NAME", Short: "show a network", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewNetworkServiceClient(conn).GetNetwork(ctx, &vxfabricv1.GetNetworkRequest{Tenant: tenant, Name: args[0]})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { networkDetail(w, resp.Network) })
			})
		},
	}
	show.Flags().StringVar(&tenant, "tenant", "", tenantOwning+"network")
	update := &cobra.Command{
		Use: "update NAME", Short: "change a network's MTU", Args: cobra.ExactArgs(1),
		Long: `Changes a network's MTU on every host: its bridge, vxlan device and ports' host ends. A VM
keeps the MTU its NIC has until it is given the new one (by whatever configures the guest, or by
hand: in the lab, vxfab lab exec VM -- ip link set ethN mtu MTU).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewNetworkServiceClient(conn).UpdateNetwork(ctx,
					&vxfabricv1.UpdateNetworkRequest{Tenant: tenant, Name: args[0], Mtu: mtu, ExpectedRevision: rev})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { networkTable(w, resp.Network) })
			})
		},
	}
	update.Flags().StringVar(&tenant, "tenant", "", tenantOwning+"network")
	newNumber(update.Flags(), &mtu, "mtu", 1, math.MaxUint32, mtuWant, "new MTU")
	mustRequire(update, "mtu")
	revisionFlag(update.Flags(), &rev, "update only if the network is still at this revision")
	del := &cobra.Command{
		Use: "delete NAME", Short: "delete a network without ports", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewNetworkServiceClient(conn).DeleteNetwork(ctx,
					&vxfabricv1.DeleteNetworkRequest{Tenant: tenant, Name: args[0], ExpectedRevision: rev})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { fmt.Fprintf(w, "network %s deleted\n", args[0]) })
			})
		},
	}
	del.Flags().StringVar(&tenant, "tenant", "", tenantOwning+"network")
	revisionFlag(del.Flags(), &rev, "delete only if the network is still at this revision")
	cmd.AddCommand(create, list, show, update, del)
	return cmd
}

func uplinkText(u *vxfabricv1.Uplink) string {
	if u == nil {
		return ""
	}
	return u.Node + ":" + u.Interface
}

func networkTable(w io.Writer, ns ...*vxfabricv1.Network) {
	row(w, "TENANT", "NAME", "ID", "CIDR", "MODE", "VNI", "MTU", "GATEWAY", "UPLINK", "REVISION")
	for _, n := range ns {
		row(w, n.Tenant, n.Name, n.Id, n.Cidr, modeName(n.Mode), n.Vni, n.Mtu, n.Gateway, uplinkText(n.Uplink), n.Revision)
	}
}

// poolText shows a network's allocation pool; empty is the whole CIDR.
func poolText(pool string) string {
	if pool == "" {
		return "every host address"
	}
	return pool
}

func networkDetail(w io.Writer, n *vxfabricv1.Network) {
	for _, kv := range [][2]any{
		{"Name:", n.Name}, {"Tenant:", n.Tenant}, {"ID:", n.Id}, {"CIDR:", n.Cidr}, {"Mode:", modeName(n.Mode)},
		{"VNI:", n.Vni}, {"MTU:", n.Mtu}, {"Gateway:", n.Gateway}, {"Gateway MAC:", n.GatewayMac},
		{"Uplink:", uplinkText(n.Uplink)}, {"Allocation pool:", poolText(n.AllocationPool)}, {"Revision:", n.Revision},
		{"Created:", fmtTime(n.CreateTime)},
	} {
		row(w, kv[0], kv[1])
	}
}

// ---- port ----

func newPortCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "port", Short: "manage ports (VM NICs)"}
	var (
		tenant, network, node, mac, ip, vm, requestID string
		rev                                           int64
	)
	create := &cobra.Command{
		Use: "create NAME", Short: "create a port", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				var resp *vxfabricv1.CreatePortResponse
				err := createCall(ctx, requestID, func(ctx context.Context, rid string) (err error) {
					resp, err = vxfabricv1.NewPortServiceClient(conn).CreatePort(ctx, &vxfabricv1.CreatePortRequest{
						Tenant: tenant, Network: network, Name: args[0], Node: node, Mac: mac, Ip: ip, Vm: vm, RequestId: rid})
					return err
				})
				if err != nil {
					return err
				}
				noteUnknownNode(ctx, cmd, conn, node, "the port is plugged once its agent joins")
				return render(cmd, resp, func(w io.Writer) { portTable(w, resp.Port) })
			})
		},
	}
	cf := create.Flags()
	cf.StringVar(&tenant, "tenant", "", tenantOwning+"network")
	cf.StringVar(&network, "network", "", "network the port is on")
	cf.StringVar(&node, "node", "", "host the port is bound to")
	cf.StringVar(&mac, "mac", "", "MAC address (default: generated)")
	cf.StringVar(&ip, "ip", "", "IPv4 address (default: allocated)")
	cf.StringVar(&vm, "vm", "", "VM name (ports sharing it are one multi-homed VM)")
	cf.StringVar(&requestID, "request-id", "", "idempotency key: repeating it returns the same port (default: a new one, reused by the command's own retries)")
	mustRequire(create, "network", "node")
	list := &cobra.Command{
		Use: "list", Short: "list ports", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				ports, err := allPages(func(token string) ([]*vxfabricv1.Port, string, error) {
					resp, err := vxfabricv1.NewPortServiceClient(conn).ListPorts(ctx, &vxfabricv1.ListPortsRequest{
						Tenant: tenant, Network: network, Node: node, Vm: vm, PageSize: listPage, PageToken: token})
					return resp.GetPorts(), resp.GetNextPageToken(), err
				})
				if err != nil {
					return err
				}
				all := &vxfabricv1.ListPortsResponse{Ports: ports}
				return render(cmd, all, func(w io.Writer) { portTable(w, ports...) })
			})
		},
	}
	lf := list.Flags()
	lf.StringVar(&tenant, "tenant", "", "only this tenant's ports")
	lf.StringVar(&network, "network", "", "only ports on networks of this name")
	lf.StringVar(&node, "node", "", "only ports bound to this host")
	lf.StringVar(&vm, "vm", "", "only this VM's ports")
	show := &cobra.Command{
		Use: "show NAME", Short: "show a port", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewPortServiceClient(conn).GetPort(ctx, &vxfabricv1.GetPortRequest{Tenant: tenant, Name: args[0]})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { portDetail(w, resp.Port) })
			})
		},
	}
	show.Flags().StringVar(&tenant, "tenant", "", tenantOwning+"port")
	move := &cobra.Command{
		Use: "move NAME", Short: "bind a port to another host (MAC, IP and interface name stay)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewPortServiceClient(conn).UpdatePort(ctx,
					&vxfabricv1.UpdatePortRequest{Tenant: tenant, Name: args[0], Node: node, ExpectedRevision: rev})
				if err != nil {
					return err
				}
				noteUnknownNode(ctx, cmd, conn, node, "the port is plugged once its agent joins")
				return render(cmd, resp, func(w io.Writer) { portTable(w, resp.Port) })
			})
		},
	}
	move.Flags().StringVar(&tenant, "tenant", "", tenantOwning+"port")
	move.Flags().StringVar(&node, "node", "", "the new host")
	mustRequire(move, "node")
	revisionFlag(move.Flags(), &rev, "move only if the port is still at this revision")
	del := &cobra.Command{
		Use: "delete NAME", Short: "delete a port", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewPortServiceClient(conn).DeletePort(ctx,
					&vxfabricv1.DeletePortRequest{Tenant: tenant, Name: args[0], ExpectedRevision: rev})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { fmt.Fprintf(w, "port %s deleted\n", args[0]) })
			})
		},
	}
	del.Flags().StringVar(&tenant, "tenant", "", tenantOwning+"port")
	revisionFlag(del.Flags(), &rev, "delete only if the port is still at this revision")
	cmd.AddCommand(create, list, show, move, del)
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func portTable(w io.Writer, ps ...*vxfabricv1.Port) {
	row(w, "TENANT", "NAME", "NETWORK", "NODE", "IP", "MAC", "VM", "INTERFACE", "PLUGGED", "REVISION")
	for _, p := range ps {
		row(w, p.Tenant, p.Name, p.Network, p.Node, p.Ip, p.Mac, p.Vm, p.InterfaceName, yesNo(p.Plugged), p.Revision)
	}
}

func portDetail(w io.Writer, p *vxfabricv1.Port) {
	for _, kv := range [][2]any{
		{"Name:", p.Name}, {"Tenant:", p.Tenant}, {"ID:", p.Id}, {"Network:", p.Network}, {"Network ID:", p.NetworkId},
		{"Node:", p.Node}, {"IP:", p.Ip}, {"MAC:", p.Mac}, {"VM:", p.Vm}, {"Interface:", p.InterfaceName},
		{"Plugged:", yesNo(p.Plugged)}, {"Revision:", p.Revision}, {"Created:", fmtTime(p.CreateTime)},
	} {
		row(w, kv[0], kv[1])
	}
}

// noteUnknownNode says on stderr when node is not (yet) a node of the fabric: a port may be bound to a
// host before its agent first joins (it is plugged then), but a mistyped name looks the same. Only
// callers that may read nodes (admins) learn it; for the others it stays silent.
func noteUnknownNode(ctx context.Context, cmd *cobra.Command, conn *grpc.ClientConn, node, then string) {
	_, err := vxfabricv1.NewNodeServiceClient(conn).GetNode(ctx, &vxfabricv1.GetNodeRequest{Name: node})
	if status.Code(err) == codes.NotFound {
		fmt.Fprintf(cmd.ErrOrStderr(), "note: node %s is not known to the fabric yet: %s\n", node, then)
	}
}

// ---- node ----

func newNodeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "show the fabric's hosts, forget decommissioned ones"}
	list := &cobra.Command{
		Use: "list", Short: "list nodes with their status and convergence", Args: cobra.NoArgs,
		Long: "Lists the nodes: their gossip STATUS, whether their HOST answers on the underlay, and how far their\n" +
			"agent has converged.\n\n" + revisionColumnsHelp,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewNodeServiceClient(conn).ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { nodeTable(w, resp.Revision, resp.Nodes...) })
			})
		},
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "show a node", Args: cobra.ExactArgs(1), Long: "Shows a node as node list does.\n\n" + revisionColumnsHelp,
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewNodeServiceClient(conn).GetNode(ctx, &vxfabricv1.GetNodeRequest{Name: args[0]})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { nodeTable(w, 0, resp.Node) })
			})
		},
	}
	var (
		rev   int64
		force bool
	)
	del := &cobra.Command{
		Use: "delete NAME", Short: "forget a host that has left the fabric", Args: cobra.ExactArgs(1),
		Long: "Forgets a decommissioned host: its record and its convergence figures. Refused while the node is\n" +
			"ALIVE or SUSPECT (stop its agent first: it leaves gossip and shows LEFT), while ports are bound to it,\n" +
			"or while it is the uplink host of a bridged network. --force forgets an ALIVE node whose agent runs\n" +
			"without gossip (registered with --server only): nothing ever marks such a node dead.",
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewNodeServiceClient(conn).DeleteNode(ctx,
					&vxfabricv1.DeleteNodeRequest{Name: args[0], ExpectedRevision: rev, Force: force})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { fmt.Fprintf(w, "node %s deleted\n", args[0]) })
			})
		},
	}
	revisionFlag(del.Flags(), &rev, "delete only if the node is still at this revision")
	del.Flags().BoolVar(&force, "force", false, "forget the node even while it is ALIVE or SUSPECT (not while it holds ports)")
	cmd.AddCommand(list, show, del)
	return cmd
}

// revisionColumnsHelp explains the convergence columns of node list and lab status.
const revisionColumnsHelp = `Revisions are the store's (etcd's) revisions:
  DESIRED  the newest revision that changed this node's view (its ports, and the networks and remote
           ports they need); "-" while no change has concerned the node
  APPLIED  the newest revision the node's agent reported having applied; "-" until it reports to this
           server (for a few seconds after a server restart; an agent reports to the replica it
           streams from, so another replica shows "-"). It is often above DESIRED: the agent
           reports every revision it has caught up to, also those that changed nothing it needs
  IN-SYNC  (node list) yes when APPLIED >= DESIRED and the agent reported nothing it could not
           apply; "-" while APPLIED is unknown
Below the table come the kernel objects an agent reported it could not apply: one it retries (a
bridged network's uplink interface missing on the host, say), or one the host refuses until it or
the network changes (a gateway over the host's underlay, an uplink that must stay out, a VTEP that
no interface of the host has), past which the agent applies the rest. Either way the node is not in
sync. Last come the VTEPs that more than one live node claims: other hosts send the ports' frames
of all of them to the one that holds the address.`

// revisionText shows a revision, and 0 (not known) as "-".
func revisionText(r int64) string {
	if r == 0 {
		return "-"
	}
	return strconv.FormatInt(r, 10)
}

// nodeTable shows each node's applied revision against the newest revision of its desired state, and
// (when latest is non-zero) the store's current revision.
func nodeTable(w io.Writer, latest int64, ns ...*vxfabricv1.Node) {
	row(w, "NAME", "VTEP", "STATUS", "HOST", "VERSION", "APPLIED", "DESIRED", "IN-SYNC", "LAST-CHANGE")
	for _, n := range ns {
		inSync := "-"
		if n.AppliedRevision != 0 {
			inSync = yesNo(n.AppliedRevision >= n.DesiredRevision && len(n.ApplyErrors) == 0)
		}
		row(w, n.Name, n.Vtep, statusName(n.Status), hostState(n), n.Version, revisionText(n.AppliedRevision),
			revisionText(n.DesiredRevision), inSync, fmtTime(n.LastChange))
	}
	if latest != 0 {
		fmt.Fprintf(w, "\nlatest store revision: %d\n", latest)
	}
	header := false
	for _, n := range ns {
		for _, e := range n.GetApplyErrors() {
			if !header {
				fmt.Fprintf(w, "\nwhat agents could not apply (their last report):\n")
				header = true
			}
			fmt.Fprintf(w, "  %s: %s\n", n.Name, e)
		}
	}
	for i, c := range sharedVTEPs(ns) {
		if i == 0 {
			fmt.Fprintf(w, "\nVTEPs that more than one live node claims (other hosts send all their ports' frames to the one that holds the address):\n")
		}
		fmt.Fprintf(w, "  %s: %s\n", c.vtep, strings.Join(c.nodes, ", "))
	}
}

// sharedVTEP is a VTEP address and the live nodes that claim it.
type sharedVTEP struct {
	vtep  string
	nodes []string
}

// sharedVTEPs finds the VTEPs claimed by more than one node that is not DEAD or LEFT (a host
// reinstalled under a new name leaves its old, dead record with the same address: that is no
// conflict), in the order of their first node.
func sharedVTEPs(ns []*vxfabricv1.Node) []sharedVTEP {
	var out []sharedVTEP
	at := map[string]int{}
	for _, n := range ns {
		if n.GetVtep() == "" || n.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_DEAD || n.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_LEFT {
			continue
		}
		i, seen := at[n.GetVtep()]
		if !seen {
			i = len(out)
			at[n.GetVtep()] = i
			out = append(out, sharedVTEP{vtep: n.GetVtep()})
		}
		out[i].nodes = append(out[i].nodes, n.GetName())
	}
	return slices.DeleteFunc(out, func(c sharedVTEP) bool { return len(c.nodes) < 2 })
}
