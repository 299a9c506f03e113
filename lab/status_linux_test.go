package lab

import (
	"context"
	"os"
	"strings"
	"testing"
)

// lab status shows a revision not known (0) as "-": a host without ports has no desired revision,
// and right after a server restart no host has an applied one.
func TestStatusPrintUnknownRevisions(t *testing.T) {
	st := Status{Name: "t", Hosts: []HostStatus{
		{Name: "h1", Node: "ALIVE", Applied: 98},
		{Name: "h2", Node: "ALIVE", Desired: 87},
		{Name: "h3", Node: "ALIVE", Applied: 90, Desired: 87},
	}}
	var out strings.Builder
	st.Print(&out)
	want := map[string]string{"h1": "98/-", "h2": "-/87", "h3": "90/87"}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || want[f[0]] == "" {
			continue
		}
		if got := f[len(f)-1]; got != want[f[0]] {
			t.Errorf("host %s: APPLIED/DESIRED %q, want %q\n%s", f[0], got, want[f[0]], out.String())
		}
		delete(want, f[0])
	}
	if len(want) > 0 {
		t.Errorf("hosts missing from the status: %v\n%s", want, out.String())
	}
}

// lab vm list prints the VM table of lab status: one line per NIC, the VM's name and host on its
// first, and a VM without ports or without a namespace marked so; while the server does not answer,
// a VM's ports are unknown, which is not the same as none.
func TestPrintVMs(t *testing.T) {
	var out strings.Builder
	PrintVMs(&out, []VMStatus{
		{Name: "web", Host: "h1", Namespace: true, NICs: []NICStatus{
			{Index: 0, Tenant: "acme", Network: "web", IP: "10.10.0.2", MAC: "0e:00:00:00:00:01", Plugged: true},
			{Index: 1, Tenant: "acme", Network: "db", IP: "10.11.0.2", MAC: "0e:00:00:00:00:02"},
		}},
		{Name: "empty", Namespace: true},
		{Name: "unknown", Namespace: true, PortsUnknown: true},
		{Name: "orphan", Host: "h2", NICs: []NICStatus{{Index: 0, Tenant: "acme", Network: "web", IP: "10.10.0.3", MAC: "0e:00:00:00:00:03"}}},
		{Name: "api", Host: "h3", NICs: []NICStatus{{Index: -1, Tenant: "acme", Network: "web", IP: "10.10.0.4", MAC: "0e:00:00:00:00:04"}}},
	})
	want := [][]string{
		{"VM", "HOST", "NIC", "TENANT/NETWORK", "IP", "MAC", "PLUGGED"},
		{"web", "h1", "eth0", "acme/web", "10.10.0.2", "0e:00:00:00:00:01", "true"},
		{"eth1", "acme/db", "10.11.0.2", "0e:00:00:00:00:02", "false"},
		{"empty", "-", "(no", "ports)"},
		{"unknown", "?", "?", "(server", "unreachable:", "ports", "unknown)"},
		{"orphan", "(no", "namespace)", "h2", "eth0", "acme/web", "10.10.0.3", "0e:00:00:00:00:03", "false"},

		{"api", "(no", "namespace)", "h3", "-", "acme/web", "10.10.0.4", "0e:00:00:00:00:04", "false"},
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, line := range lines {
		if got := strings.Fields(line); strings.Join(got, " ") != strings.Join(want[i], " ") {
			t.Errorf("line %d: %q, want %q", i, got, want[i])
		}
	}
}

// Only the names lab vm create gives (<vm>-<network>-<N>) stand for a VM's ethN: a port "web-1"
// made with port create --vm vm1 is no eth1.
func TestNICIndex(t *testing.T) {
	for _, tc := range []struct {
		vm, network, port string
		want              int
	}{
		{"red-a", "web", "red-a-web-0", 0},
		{"red-a", "ext", "red-a-ext-1", 1},
		{"vm1", "web", "web-1", -1},
		{"vm1", "web", "vm1-web-01", -1},
		{"vm1", "web", "vm1-web-x", -1},
		{"vm1", "web", "vm1", -1},
	} {
		if got := nicIndex(tc.vm, tc.network, tc.port); got != tc.want {
			t.Errorf("nicIndex(%q, %q, %q) = %d, want %d", tc.vm, tc.network, tc.port, got, tc.want)
		}
	}
}

// With the server stopped, lab status and lab vm list know the VMs from their namespaces only: their
// ports are unknown, not absent.
func TestPrivilegedStatusServerStopped(t *testing.T) {
	privileged(t)
	l := testLab(t, 1)
	if err := os.MkdirAll(l.runDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	ns := l.VMNamespace("vt")
	if err := ensureNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(context.Background(), ns) })
	st := l.Status(context.Background())
	if len(st.VMs) != 1 || st.VMs[0].Name != "vt" || !st.VMs[0].PortsUnknown || len(st.Errors) == 0 {
		t.Fatalf("status with the server stopped: VMs %+v, errors %q; want vt with its ports unknown, and why", st.VMs, st.Errors)
	}
	var out strings.Builder
	st.Print(&out)
	if !strings.Contains(out.String(), "(server unreachable: ports unknown)") || strings.Contains(out.String(), "(no ports)") {
		t.Errorf("status with the server stopped:\n%s\nwant vt's ports shown as unknown", out.String())
	}
}
