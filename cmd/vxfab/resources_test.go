package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/server"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCLIHelperProcess is the vxfab binary when the CLI tests run this test binary as a child.
func TestCLIHelperProcess(t *testing.T) {
	if os.Getenv("VXFAB_CLI_HELPER") != "1" {
		t.Skip("runs only as the child of the CLI tests")
	}
	i := slices.Index(os.Args, "--")
	os.Args = append([]string{"vxfab"}, os.Args[i+1:]...)
	main()
	os.Exit(0)
}

// vxfab runs the CLI as a separate process, as a user would, against addr.
func vxfab(t *testing.T, addr string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"-test.run=^TestCLIHelperProcess$", "--", "--server", addr}, args...)...)
	cmd.Env = append(os.Environ(), "VXFAB_CLI_HELPER=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run vxfab %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

func TestCLIResources(t *testing.T) {
	cfg := server.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.EmbeddedFast = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := server.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	defer func() {
		srv.Close()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	addr := srv.Addr().String()

	// Successful commands run in-process (the command tree as main builds it); the error cases below
	// run as a child process to see stderr and the exit status.
	ok := func(args ...string) string {
		t.Helper()
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append([]string{"--server", addr}, args...))
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("vxfab %v: %s", args, errorLine(err))
		}
		return out.String()
	}
	ok("tenant", "create", "acme")
	if out := ok("tenant", "list"); !strings.Contains(out, "NAME") || !strings.Contains(out, "acme") {
		t.Fatalf("tenant list:\n%s", out)
	}
	ok("network", "create", "web", "--tenant", "acme", "--cidr", "10.0.0.0/24", "--mode", "nat")
	ok("network", "create", "lan", "--tenant", "acme", "--cidr", "10.1.0.0/29", "--mode", "bridged", "--uplink", "h1:eth1", "--vni", "5000")
	if out := ok("network", "list", "--tenant", "acme"); !strings.Contains(out, "bridged") || !strings.Contains(out, "5000") || !strings.Contains(out, "h1:eth1") {
		t.Fatalf("network list:\n%s", out)
	}
	ok("port", "create", "vm1", "--tenant", "acme", "--network", "web", "--node", "h1", "--ip", "10.0.0.10", "--vm", "vm1")
	var js map[string]any
	out := ok("-o", "json", "port", "show", "vm1", "--tenant", "acme")
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("port show -o json is not JSON: %v\n%s", err, out)
	}
	port := js["port"].(map[string]any)
	if port["ip"] != "10.0.0.10" || port["node"] != "h1" {
		t.Fatalf("port json %v", port)
	}
	if err := srv.Store().SetPortPlugged(ctx, port["id"].(string), true); err != nil {
		t.Fatal(err)
	}
	if out := ok("port", "show", "vm1", "--tenant", "acme"); !strings.Contains(out, "Plugged:") || !strings.Contains(out, "yes") {
		t.Fatalf("port show does not show plugged:\n%s", out)
	}
	if out := ok("port", "list", "--node", "h1"); !strings.Contains(out, "PLUGGED") || !strings.Contains(out, "vxp") {
		t.Fatalf("port list:\n%s", out)
	}
	// A mutation prints the table its create and list print, not show's detail view.
	header := func(out string) string { return strings.Join(strings.Fields(strings.SplitN(out, "\n", 2)[0]), " ") }
	created := ok("port", "create", "vm9", "--tenant", "acme", "--network", "web", "--node", "h1")
	if moved := ok("port", "move", "vm1", "--tenant", "acme", "--node", "h2"); header(moved) != header(created) || !strings.Contains(moved, "h2") {
		t.Fatalf("port move prints\n%s\nwant the table port create prints:\n%s", moved, created)
	}
	ok("port", "delete", "vm9", "--tenant", "acme")

	// A port bound to a node the fabric does not know (yet) is accepted, with a note on stderr.
	stderrOf := func(args ...string) string {
		t.Helper()
		root := newRootCmd()
		var out, errOut bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errOut)
		root.SetArgs(append([]string{"--server", addr}, args...))
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("vxfab %v: %s", args, errorLine(err))
		}
		return errOut.String()
	}
	if got := stderrOf("port", "create", "vm8", "--tenant", "acme", "--network", "web", "--node", "h9"); !strings.Contains(got, "node h9 is not known to the fabric yet") {
		t.Errorf("port create on an unknown node: stderr %q, want the note", got)
	}
	if _, err := srv.Store().PutNode(ctx, &vxfabricv1.Node{Name: "h7", Vtep: "198.18.0.17", Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE}); err != nil {
		t.Fatal(err)
	}
	if got := stderrOf("port", "move", "vm8", "--tenant", "acme", "--node", "h7"); got != "" {
		t.Errorf("port move to a known node: stderr %q, want nothing", got)
	}
	ok("port", "delete", "vm8", "--tenant", "acme")
	if got := stderrOf("network", "create", "lanx", "--tenant", "acme", "--cidr", "192.168.70.0/24", "--mode", "bridged", "--uplink", "h9:eth1"); !strings.Contains(got, "node h9 is not known to the fabric yet: its uplink eth1") {
		t.Errorf("bridged network with its uplink on an unknown node: stderr %q, want the note", got)
	}
	ok("network", "delete", "lanx", "--tenant", "acme")
	if updated := ok("network", "update", "web", "--tenant", "acme", "--mtu", "1400"); !strings.HasPrefix(header(updated), "TENANT NAME ID CIDR MODE") || !strings.Contains(updated, "1400") {
		t.Fatalf("network update prints\n%s\nwant the table network create prints", updated)
	}
	if out := ok("port", "list", "--node", "h2"); !strings.Contains(out, "vm1") {
		t.Fatalf("moved port not on h2:\n%s", out)
	}
	if _, err := srv.Store().PutNode(ctx, &vxfabricv1.Node{Name: "h1", Vtep: "198.18.0.1", Status: vxfabricv1.NodeStatus_NODE_STATUS_ALIVE}); err != nil {
		t.Fatal(err)
	}
	if out := ok("node", "list"); !strings.Contains(out, "198.18.0.1") || !strings.Contains(out, "alive") || !strings.Contains(out, "APPLIED") || !strings.Contains(out, "latest store revision") {
		t.Fatalf("node list:\n%s", out)
	}

	// Errors: one line on stderr, nothing on stdout, non-zero exit.
	for _, args := range [][]string{
		{"network", "create", "bad", "--tenant", "acme", "--cidr", "10.0.0.1/24", "--mode", "nat"},
		{"network", "delete", "web", "--tenant", "acme"},
		{"tenant", "show", "nobody"},
		{"network", "create", "x", "--tenant", "acme", "--cidr", "10.2.0.0/24", "--mode", "mesh"},
		{"-o", "yaml", "tenant", "list"},
	} {
		out, errOut, code := vxfab(t, addr, args...)
		lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
		if code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "vxfab: ") || out != "" {
			t.Errorf("vxfab %v: exit %d, stdout %q, stderr %q: want one error line and a non-zero exit", args, code, out, errOut)
		}
	}
	_, errOut, _ := vxfab(t, addr, "network", "create", "bad", "--tenant", "acme", "--cidr", "10.0.0.1/24", "--mode", "nat")
	if !strings.HasPrefix(errOut, "vxfab: InvalidArgument: ") {
		t.Errorf("invalid cidr: stderr %q", errOut)
	}
	// An admin names the tenant (a tenant token's own is the default; controlplane/auth tests it).
	if _, errOut, code := vxfab(t, addr, "port", "show", "vm1"); code == 0 || errOut != "vxfab: InvalidArgument: tenant is required\n" {
		t.Errorf("port show without --tenant: exit %d, stderr %q", code, errOut)
	}
	ok("port", "delete", "vm1", "--tenant", "acme")
	ok("network", "delete", "web", "--tenant", "acme")
}

// A revision not known (0) shows as "-", not as a number that puts APPLIED above or below DESIRED;
// a node whose applied revision is unknown is neither in sync nor out of it.
func TestNodeTableUnknownRevisions(t *testing.T) {
	var out strings.Builder
	nodeTable(&out, 0,
		&vxfabricv1.Node{Name: "noports", AppliedRevision: 98},
		&vxfabricv1.Node{Name: "restarted", DesiredRevision: 87},
		&vxfabricv1.Node{Name: "behind", AppliedRevision: 80, DesiredRevision: 87},
		&vxfabricv1.Node{Name: "synced", AppliedRevision: 90, DesiredRevision: 87},
	)
	want := map[string][]string{
		"noports":   {"98", "-", "yes"},
		"restarted": {"-", "87", "-"},
		"behind":    {"80", "87", "no"},
		"synced":    {"90", "87", "yes"},
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n")[1:] {
		f := strings.Fields(line)
		// NAME VTEP STATUS HOST VERSION APPLIED DESIRED IN-SYNC LAST-CHANGE
		if got := f[5:8]; !slices.Equal(got, want[f[0]]) {
			t.Errorf("node %s: APPLIED DESIRED IN-SYNC = %v, want %v\n%s", f[0], got, want[f[0]], out.String())
		}
	}
}

func TestNodeTableApplyErrors(t *testing.T) {
	var out strings.Builder
	nodeTable(&out, 0,
		&vxfabricv1.Node{Name: "h1", AppliedRevision: 18, DesiredRevision: 35,
			ApplyErrors: []string{"uplink eth1 master vxbr7: uplink interface not found"}},
		&vxfabricv1.Node{Name: "h2", AppliedRevision: 35, DesiredRevision: 35},
	)
	want := "\nwhat agents could not apply (their last report):\n  h1: uplink eth1 master vxbr7: uplink interface not found\n"
	if !strings.HasSuffix(out.String(), want) {
		t.Errorf("table:\n%s\nwant it to end with%s", out.String(), want)
	}
	out.Reset()
	nodeTable(&out, 0, &vxfabricv1.Node{Name: "h2", AppliedRevision: 35, DesiredRevision: 35})
	if strings.Contains(out.String(), "could not apply") {
		t.Errorf("errors shown for a node without any:\n%s", out.String())
	}
}

// TestNodeTableSharedVTEPs: two live nodes with one VTEP are named below the table; a dead record
// with the address of a live node (a host reinstalled under a new name) is not a conflict.
func TestNodeTableSharedVTEPs(t *testing.T) {
	alive, dead := vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, vxfabricv1.NodeStatus_NODE_STATUS_DEAD
	var out strings.Builder
	nodeTable(&out, 0,
		&vxfabricv1.Node{Name: "h1", Vtep: "198.18.0.11", Status: alive},
		&vxfabricv1.Node{Name: "h2", Vtep: "198.18.0.12", Status: alive},
		&vxfabricv1.Node{Name: "h3", Vtep: "198.18.0.13", Status: dead},
		&vxfabricv1.Node{Name: "h4", Vtep: "198.18.0.11", Status: vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT},
		&vxfabricv1.Node{Name: "h5", Vtep: "198.18.0.13", Status: alive},
	)
	want := "\nVTEPs that more than one live node claims (other hosts send all their ports' frames to the one that holds the address):\n  198.18.0.11: h1, h4\n"
	if !strings.HasSuffix(out.String(), want) {
		t.Errorf("table:\n%s\nwant it to end with%s", out.String(), want)
	}
	out.Reset()
	nodeTable(&out, 0, &vxfabricv1.Node{Name: "h3", Vtep: "198.18.0.13", Status: dead}, &vxfabricv1.Node{Name: "h5", Vtep: "198.18.0.13", Status: alive})
	if strings.Contains(out.String(), "VTEPs that") {
		t.Errorf("a dead record and a live one share a VTEP, shown as a conflict:\n%s", out.String())
	}
}

// TestCreateCallRetriesWithTheSameKey: a create whose answer is lost (Unavailable) is sent again with
// the same idempotency key, so the server answers with what the first one made; other errors and
// a server that stays away end it.
func TestCreateCallRetriesWithTheSameKey(t *testing.T) {
	var keys []string
	err := createCall(context.Background(), "", func(_ context.Context, rid string) error {
		keys = append(keys, rid)
		if len(keys) == 1 {
			return status.Error(codes.Unavailable, "error reading from server: EOF")
		}
		return nil
	})
	if err != nil || len(keys) != 2 || keys[0] != keys[1] || !strings.HasPrefix(keys[0], "cli-") {
		t.Errorf("err %v, keys %q; want success on the second call, with one made-up key", err, keys)
	}
	keys = nil
	err = createCall(context.Background(), "mine", func(_ context.Context, rid string) error {
		keys = append(keys, rid)
		return status.Error(codes.AlreadyExists, "network acme/web")
	})
	if status.Code(err) != codes.AlreadyExists || !slices.Equal(keys, []string{"mine"}) {
		t.Errorf("err %v, keys %q; want AlreadyExists after one call with the given key", err, keys)
	}
	keys = nil
	err = createCall(context.Background(), "", func(_ context.Context, rid string) error {
		keys = append(keys, rid)
		return status.Error(codes.Unavailable, "connection refused")
	})
	if status.Code(err) != codes.Unavailable || len(keys) != createAttempts {
		t.Errorf("err %v after %d calls; want Unavailable after %d", err, len(keys), createAttempts)
	}
}
