//go:build linux

package tests

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/lab"
)

// TestPrivilegedDemo builds the demo of `make lab` and runs each row of its table as a subtest with
// real traffic: within a tenant across hosts, across tenants with the same CIDR, nat to and from
// outside, routed from outside, host to isolated VM, VM to the LAN through a bridged network.
func TestPrivilegedDemo(t *testing.T) {
	l := requireLab(t)
	ctx := context.Background()
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, tenant := range []string{"red", "blue"} {
			if err := removeTenant(ctx, l, c, tenant); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		for _, cidr := range []string{"10.1.0.0/24", "10.2.0.0/24"} {
			if err := l.RouteDelete(lab.RoleOutside, netip.MustParsePrefix(cidr)); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		c.Conn.Close()
	})
	d, err := l.BuildDemo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, check := range d.Checks() {
		t.Run(check.Name, func(t *testing.T) {
			observed, pass := check.Run(ctx)
			if !pass {
				t.Errorf("%s: expected %s, observed %s", check.Path, check.Expected, observed)
			}
		})
	}
}

// TestPrivilegedLabCLI checks the lab's own commands: exec passes the exit status through and runs
// inside the namespace, status shows every host's agent ALIVE, a second `lab up` changes nothing.
func TestPrivilegedLabCLI(t *testing.T) {
	l := requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := vxfab(ctx, "lab", "exec", "h2", "--", "sh", "-c", "exit 7")
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 7 {
		t.Fatalf("lab exec exit 7: %v, want exit status 7", err)
	}
	out := mustVxfab(t, "lab", "exec", "h2", "--", "ip", "-4", "-o", "addr", "show", "dev", lab.UnderlayIface)
	if !strings.Contains(out, lab.HostAddr(2).String()+"/24") {
		t.Fatalf("h2's %s: %q, want %s", lab.UnderlayIface, out, lab.HostAddr(2))
	}
	pids := map[string]int{"server": l.ServerPID()}
	for _, h := range l.Hosts() {
		pids[h] = l.AgentPID(h)
	}
	began := time.Now()
	mustVxfab(t, "lab", "up", "--default-profile=false")
	t.Logf("lab up on a running lab: %s", time.Since(began).Round(time.Millisecond))
	if got := l.ServerPID(); got != pids["server"] {
		t.Errorf("second lab up restarted the server: pid %d -> %d", pids["server"], got)
	}
	for _, h := range l.Hosts() {
		if got := l.AgentPID(h); got != pids[h] {
			t.Errorf("second lab up restarted agent %s: pid %d -> %d", h, pids[h], got)
		}
	}
	st := l.Status(ctx)
	if len(st.Errors) > 0 || !st.Server.Healthy {
		t.Fatalf("status: healthy=%t errors %v", st.Server.Healthy, st.Errors)
	}
	for _, h := range st.Hosts {
		if h.Node != "ALIVE" || h.AgentPID == 0 || h.Cut {
			t.Errorf("status of %s: %+v", h.Name, h)
		}
	}
	mustVxfab(t, "lab", "status")
}
