package lab

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Status is the lab at a glance, as `lab status` prints it.
type Status struct {
	Name     string          `json:"name"`
	Dir      string          `json:"dir"`
	Server   ServerStatus    `json:"server"`
	Hosts    []HostStatus    `json:"hosts"`
	Networks []NetworkStatus `json:"networks"`
	VMs      []VMStatus      `json:"vms"`
	// Errors are what could not be read (for example the API while the server is stopped).
	Errors []string `json:"errors,omitempty"`
}

// ServerStatus is the server process and its health.
type ServerStatus struct {
	PID     int    `json:"pid"`
	Healthy bool   `json:"healthy"`
	Address string `json:"address"`
	Socket  string `json:"socket"`
}

// HostStatus is one host: its cable, its agent process and the fabric's view of its node.
type HostStatus struct {
	Name     string `json:"name"`
	VTEP     string `json:"vtep"`
	Cut      bool   `json:"cut"`
	AgentPID int    `json:"agent_pid"`
	Node     string `json:"node"`
	// Applied and Desired are the node's revisions as node list shows them; 0 is not known.
	Applied int64 `json:"applied_revision"`
	Desired int64 `json:"desired_revision"`
}

// NetworkStatus is one network of the fabric.
type NetworkStatus struct {
	Tenant  string `json:"tenant"`
	Name    string `json:"name"`
	Mode    string `json:"mode"`
	CIDR    string `json:"cidr"`
	VNI     uint32 `json:"vni"`
	Gateway string `json:"gateway,omitempty"`
	Uplink  string `json:"uplink,omitempty"`
}

// VMStatus is one VM: its namespace and its NICs (ports with its vm name).
type VMStatus struct {
	Name      string      `json:"name"`
	Host      string      `json:"host"`
	Namespace bool        `json:"namespace"`
	NICs      []NICStatus `json:"nics"`
	// PortsUnknown: the server did not answer, so the VM's ports (its NICs and its host) are not
	// known; NICs is empty then, which does not mean the VM has none.
	PortsUnknown bool `json:"ports_unknown,omitempty"`
}

// NICStatus is one NIC of a VM.
type NICStatus struct {
	// Index is N of the VM's ethN, from the port name <vm>-<network>-<N>; -1 for a port not named so.
	Index     int    `json:"index"`
	Port      string `json:"port"`
	Tenant    string `json:"tenant"`
	Network   string `json:"network"`
	IP        string `json:"ip"`
	MAC       string `json:"mac"`
	Interface string `json:"interface"`
	Plugged   bool   `json:"plugged"`
}

func modeName(m vxfabricv1.NetworkMode) string {
	return strings.ToLower(strings.TrimPrefix(m.String(), "NETWORK_MODE_"))
}

// Status reads the lab from the kernel, its processes and the API. It does not fail: what cannot
// be read is listed in Errors. While the API answers, it also brings the outside's routes to routed
// networks up to date (SyncOutsideRoutes), for ports created, moved or deleted through the API
// rather than the lab's vm commands.
func (l *Lab) Status(ctx context.Context) Status {
	st := Status{Name: l.cfg.Name, Dir: l.Dir()}
	st.Server = ServerStatus{
		PID:     l.ServerPID(),
		Address: fmt.Sprintf("%s:%d", ControlAddr, ServerPort),
		Socket:  l.SocketPath(),
	}
	for i, h := range l.Hosts() {
		hs := HostStatus{Name: h, VTEP: HostAddr(i + 1).String(), AgentPID: l.AgentPID(h)}
		cut, err := l.HostCut(h)
		if err != nil {
			st.Errors = append(st.Errors, err.Error())
		}
		hs.Cut = cut
		st.Hosts = append(st.Hosts, hs)
	}
	vmNS, err := listNamespaces(l.Namespace("vm-"))
	if err != nil {
		st.Errors = append(st.Errors, err.Error())
	}
	vms := map[string]*VMStatus{}
	for _, ns := range vmNS {
		name := strings.TrimPrefix(ns, l.Namespace("vm-"))
		vms[name] = &VMStatus{Name: name, Namespace: true}
	}
	portsKnown := false
	if st.Server.PID != 0 {
		if err := l.apiStatus(ctx, &st, vms); err != nil {
			st.Errors = append(st.Errors, err.Error())
		} else {
			portsKnown = true
		}
	} else {
		st.Errors = append(st.Errors, "server is not running: networks and ports unknown")
	}
	for _, vm := range vms {
		vm.PortsUnknown = !portsKnown
		st.VMs = append(st.VMs, *vm)
	}
	sort.Slice(st.VMs, func(i, j int) bool { return st.VMs[i].Name < st.VMs[j].Name })
	return st
}

func (l *Lab) apiStatus(ctx context.Context, st *Status, vms map[string]*VMStatus) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := l.Client()
	if err != nil {
		return err
	}
	defer c.Conn.Close()
	if err := serverHealthy(ctx, c); err != nil {
		return fmt.Errorf("server health: %w", err)
	}
	st.Server.Healthy = true
	nodes, err := c.Nodes.ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	for i := range st.Hosts {
		for _, n := range nodes.GetNodes() {
			if n.GetName() == st.Hosts[i].Name {
				st.Hosts[i].Node = strings.TrimPrefix(n.GetStatus().String(), "NODE_STATUS_")
				st.Hosts[i].Applied = n.GetAppliedRevision()
				st.Hosts[i].Desired = n.GetDesiredRevision()
			}
		}
	}
	nets, err := c.Networks.ListNetworks(ctx, &vxfabricv1.ListNetworksRequest{})
	if err != nil {
		return fmt.Errorf("list networks: %w", err)
	}
	for _, n := range nets.GetNetworks() {
		ns := NetworkStatus{Tenant: n.GetTenant(), Name: n.GetName(), Mode: modeName(n.GetMode()),
			CIDR: n.GetCidr(), VNI: n.GetVni(), Gateway: n.GetGateway()}
		if u := n.GetUplink(); u != nil && u.GetNode() != "" {
			ns.Uplink = u.GetNode() + ":" + u.GetInterface()
		}
		st.Networks = append(st.Networks, ns)
	}
	sort.Slice(st.Networks, func(i, j int) bool {
		a, b := st.Networks[i], st.Networks[j]
		return a.Tenant < b.Tenant || a.Tenant == b.Tenant && a.Name < b.Name
	})
	ports, err := c.Ports.ListPorts(ctx, &vxfabricv1.ListPortsRequest{})
	if err != nil {
		return fmt.Errorf("list ports: %w", err)
	}
	for _, p := range ports.GetPorts() {
		if p.GetVm() == "" {
			continue
		}
		vm := vms[p.GetVm()]
		if vm == nil {
			vm = &VMStatus{Name: p.GetVm()}
			vms[p.GetVm()] = vm
		}
		vm.Host = p.GetNode()
		vm.NICs = append(vm.NICs, NICStatus{Index: nicIndex(p.GetVm(), p.GetNetwork(), p.GetName()), Port: p.GetName(), Tenant: p.GetTenant(), Network: p.GetNetwork(),
			IP: p.GetIp(), MAC: p.GetMac(), Interface: p.GetInterfaceName(), Plugged: p.GetPlugged()})
	}
	for _, vm := range vms {
		sort.Slice(vm.NICs, func(i, j int) bool { return vm.NICs[i].Index < vm.NICs[j].Index })
	}
	if err := l.SyncOutsideRoutes(ctx, c, ""); err != nil {
		// Not a failure to read the lab: what Status is for still holds.
		l.log.Warn("lab: the outside's routes to routed networks", "err", err)
	}
	return nil
}

// Print writes the status as one screen of tables.
func (st Status) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	health := "not running"
	if st.Server.PID != 0 {
		health = fmt.Sprintf("pid %d, not healthy", st.Server.PID)
		if st.Server.Healthy {
			health = fmt.Sprintf("pid %d, healthy", st.Server.PID)
		}
	}
	fmt.Fprintf(tw, "lab %q (state %s)\nserver\t%s and %s\t%s\n\n", st.Name, st.Dir, st.Server.Address, st.Server.Socket, health)
	fmt.Fprintln(tw, "HOST\tVTEP\tUNDERLAY\tAGENT\tNODE\tAPPLIED/DESIRED")
	for _, h := range st.Hosts {
		link, agent, node := "up", "stopped", h.Node
		if h.Cut {
			link = "CUT"
		}
		if h.AgentPID != 0 {
			agent = fmt.Sprintf("pid %d", h.AgentPID)
		}
		if node == "" {
			node = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s/%s\n", h.Name, h.VTEP, link, agent, node, revisionText(h.Applied), revisionText(h.Desired))
	}
	if len(st.Networks) > 0 {
		fmt.Fprintln(tw, "\nTENANT\tNETWORK\tMODE\tCIDR\tVNI\tGATEWAY/UPLINK")
		for _, n := range st.Networks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", n.Tenant, n.Name, n.Mode, n.CIDR, n.VNI, n.Gateway+n.Uplink)
		}
	}
	if len(st.VMs) > 0 {
		fmt.Fprintln(tw)
		printVMs(tw, st.VMs)
	}
	for _, e := range st.Errors {
		fmt.Fprintf(tw, "\n! %s", e)
	}
	if len(st.Errors) > 0 {
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// PrintVMs writes the VMs as lab status shows them: one line per NIC.
func PrintVMs(w io.Writer, vms []VMStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printVMs(tw, vms)
	tw.Flush()
}

func printVMs(tw *tabwriter.Writer, vms []VMStatus) {
	fmt.Fprintln(tw, "VM\tHOST\tNIC\tTENANT/NETWORK\tIP\tMAC\tPLUGGED")
	for _, vm := range vms {
		switch {
		case len(vm.NICs) == 0 && vm.PortsUnknown:
			fmt.Fprintf(tw, "%s\t?\t?\t(server unreachable: ports unknown)\t\t\t\n", vm.Name)
		case len(vm.NICs) == 0:
			fmt.Fprintf(tw, "%s\t%s\t-\t(no ports)\t\t\t\n", vm.Name, vm.Host)
		}
		for i, n := range vm.NICs {
			name, host := vm.Name, vm.Host
			if !vm.Namespace {
				name += " (no namespace)"
			}
			if i > 0 {
				name, host = "", ""
			}
			nic := "-"
			if n.Index >= 0 {
				nic = fmt.Sprintf("eth%d", n.Index)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\t%s\t%s\t%t\n", name, host, nic, n.Tenant, n.Network, n.IP, n.MAC, n.Plugged)
		}
	}
}

// revisionText shows a revision, and 0 (not known) as "-".
func revisionText(r int64) string {
	if r == 0 {
		return "-"
	}
	return strconv.FormatInt(r, 10)
}

// nicIndex parses N from the name lab vm create gives the VM's N-th port (see portName); -1 for a
// port named otherwise (one made with port create --vm), which no ethN of a lab VM stands for.
func nicIndex(vm, network, port string) int {
	i := strings.LastIndexByte(port, '-')
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(port[i+1:])
	if err != nil || n < 0 || port != portName(vm, network, n) {
		return -1
	}
	return n
}
