package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/vxfabric/vxfabric/controlplane/server"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A typo in a script must fail, not print help and succeed; a missing required flag is named
// before anything is sent; an explicit --vni 0 is refused, not taken as "allocate"; a --timeout that
// leaves no time is refused before any call fails with DeadlineExceeded.
func TestCLIRefusesBadInvocations(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tenant", "bogus"}, `unknown command "bogus" for "vxfab tenant"`},
		{[]string{"lab", "agent", "frob", "h1"}, `unknown command "frob" for "vxfab lab agent"`},
		{[]string{"agent"}, `required flag(s) "node", "vtep" not set`},
		{[]string{"port", "move", "p1", "--tenant", "t"}, `required flag(s) "node" not set`},
		{[]string{"network", "create", "n", "--tenant", "t", "--cidr", "10.0.0.0/24", "--mode", "nat", "--vni", "0"}, "--vni 0: want a VNI, 1-16777214"},
		{[]string{"--timeout", "0s", "tenant", "list"}, `--timeout 0s: want a positive duration`},
		{[]string{"tenant", "list", "--timeout=-1s"}, `--timeout -1s: want a positive duration`},
		{[]string{"node", "list", "-o", "yaml"}, `--output "yaml": want table or json`},
		{[]string{"lab", "status", "-o", "xml"}, `--output "xml": want table or json`},
		// Help and completion refuse an unknown word as every other command group does.
		{[]string{"completion", "bogus"}, `unknown command "bogus" for "vxfab completion"`},
		{[]string{"help", "bogus"}, `help: unknown command "bogus"`},
		// Half a client certificate is refused before anything is read.
		{[]string{"--tls-cert", "/nonexistent/c.crt", "tenant", "list"}, "--tls-cert and --tls-key go together: a certificate is given (--tls-cert) without its key"},
		{[]string{"--tls-key", "/nonexistent/c.key", "tenant", "list"}, "--tls-cert and --tls-key go together: a key is given (--tls-key) without its certificate"},
		{[]string{"agent", "--node", "h1", "--vtep", "198.18.0.11", "--tls-ca", "/nonexistent/ca.crt", "--tls-cert", "/nonexistent/c.crt"}, "--tls-cert and --tls-key go together"},
		// Gossip timers given explicitly as zero or less are refused, not taken for "the default".
		{[]string{"server", "--gossip-probe-interval", "-5s"}, "--gossip-probe-interval -5s: want a positive duration"},
		{[]string{"server", "--gossip-suspicion-mult", "0"}, "--gossip-suspicion-mult 0: want a whole number of probe intervals, 1 or more"},
		{[]string{"agent", "--node", "h1", "--vtep", "198.18.0.11", "--gossip-probe-interval", "0s"}, "--gossip-probe-interval 0s: want a positive duration"},
		{[]string{"agent", "--node", "h1", "--vtep", "198.18.0.11", "--gossip-suspicion-mult=-1"}, "--gossip-suspicion-mult -1: want a whole number"},
		// Numbers say what they want, not what strconv said.
		{[]string{"network", "create", "n", "--tenant", "t", "--cidr", "10.0.0.0/24", "--mode", "nat", "--mtu", "-5"},
			"--mtu -5: want an MTU in bytes: 576-9000, and at most the server's underlay MTU less 50"},
		{[]string{"network", "create", "n", "--tenant", "t", "--cidr", "10.0.0.0/24", "--mode", "nat", "--mtu", "0"}, "--mtu 0: want an MTU in bytes"},
		{[]string{"network", "update", "n", "--tenant", "t", "--mtu", "abc"}, `--mtu "abc": want an MTU in bytes`},
		{[]string{"network", "create", "n", "--tenant", "t", "--cidr", "10.0.0.0/24", "--mode", "nat", "--vni", "16777215"}, "--vni 16777215: want a VNI, 1-16777214"},
		{[]string{"port", "delete", "p", "--tenant", "t", "--revision", "-1"}, "--revision -1: want a revision"},
		{[]string{"server", "--vni-range", "abc"}, `--vni-range "abc": want FIRST-LAST`},
		{[]string{"server", "--vni-range", "5-1"}, `--vni-range 5-1: want FIRST-LAST, VNIs of 1-16777214 with FIRST <= LAST`},
		{[]string{"server", "--underlay-mtu", "x"}, `--underlay-mtu "x": want the MTU of the hosts' underlay in bytes`},
		{[]string{"server", "--max-request-bytes", "1e6"}, `--max-request-bytes 1e6: want a whole number`},
		{[]string{"certs", "init", "--dir", "/nonexistent", "--days", "x"}, `--days "x": want a number of days, 1-36500`},
		{[]string{"agent", "--node", "h1", "--vtep", "198.18.0"}, "--vtep 198.18.0: want this host's underlay IP address"},
	} {
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(append([]string{"--server", "127.0.0.1:1"}, tc.args...))
		err := root.Execute()
		if err == nil || !strings.Contains(errorLine(err), tc.want) {
			t.Errorf("vxfab %s: error %v, want one containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
		if err != nil && strings.Contains(errorLine(err), "strconv") {
			t.Errorf("vxfab %s: %s: the parser's text, not what the flag wants", strings.Join(tc.args, " "), errorLine(err))
		}
	}
	// A group without a word still shows its help and succeeds.
	root := newRootCmd()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"tenant"})
	if err := root.Execute(); err != nil {
		t.Errorf("vxfab tenant: %v, want its help", err)
	}
}

func TestLocalAdminTokenOnlyForLocalServers(t *testing.T) {
	for addr, local := range map[string]bool{
		"unix:///run/x.sock": true, "127.0.0.1:7400": true, "localhost:7400": true, "[::1]:7400": true,
		"198.18.0.2:7400": false, "api.example:7400": false, "garbage": false,
	} {
		if got := isLocalServer(addr); got != local {
			t.Errorf("isLocalServer(%q) = %v, want %v", addr, got, local)
		}
	}
}

// vxfab certs revoke puts node and admin certificates on the CA's list, says which were revoked
// before, refuses a name with no certificate, and certs init then issues the revoked ones anew.
func TestCertsRevoke(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		var out strings.Builder
		root := newRootCmd()
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs(args)
		err := root.Execute()
		return out.String(), err
	}
	if _, err := run("certs", "init", "--dir", dir, "--node", "h1", "--node", "h2"); err != nil {
		t.Fatal(err)
	}
	// An admin certificate holds no gossip key: no advice about one.
	out, err := run("certs", "revoke", "--dir", dir, "admin")
	if err != nil || strings.Count(out, " revoked\n") != 1 || strings.Contains(out, "gossip key") || !strings.Contains(out, "--tls-crl") {
		t.Fatalf("revoke admin: %v\n%s", err, out)
	}
	out, err = run("certs", "revoke", "--dir", dir, "h1", "admin")
	if err != nil || strings.Count(out, " revoked\n") != 2 || strings.Count(out, "already revoked\n") != 1 || !strings.Contains(out, "gossip key") {
		t.Fatalf("revoke h1 admin: %v\n%s", err, out)
	}
	if out, err := run("certs", "revoke", "--dir", dir, "h1"); err != nil || !strings.Contains(out, "already revoked") ||
		!strings.Contains(out, "nothing newly revoked") || strings.Contains(out, "gossip key") {
		t.Fatalf("revoke h1 again: %v\n%s", err, out)
	}
	if _, err := run("certs", "init", "--dir", t.TempDir(), "--days", "0"); err == nil || !strings.Contains(errorLine(err), "--days 0") {
		t.Fatalf("init --days 0: %v", err)
	}
	if _, err := run("certs", "revoke", "--dir", dir, "h9"); err == nil || !strings.Contains(errorLine(err), "node-h9.crt") {
		t.Fatalf("revoke h9 (no certificate): %v", err)
	}
	out, err = run("certs", "init", "--dir", dir, "--node", "h1", "--node", "h2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"node-h1.crt  created", "admin.crt    created", "node-h2.crt  kept"} {
		if !strings.Contains(out, want) {
			t.Errorf("init after revoking h1 and admin lacks %q:\n%s", want, out)
		}
	}
	// h1 now has two certificates (the revoked one and the one just issued): a row each
	// (regression: a name with several certificates indexed past the arguments and panicked).
	out, err = run("certs", "revoke", "--dir", dir, "h1")
	if err != nil || strings.Count(out, "\nh1 ") != 2 || !strings.Contains(out, "already revoked") || strings.Count(out, " revoked\n") != 2 {
		t.Fatalf("revoke h1 after its renewal: %v\n%s", err, out)
	}
}

// An error that wraps a gRPC status (as the lab's do) prints its code once and the status's message
// without grpc's "rpc error: code = ... desc =" text.
func TestErrorLineUnwrapsStatus(t *testing.T) {
	taken := status.Error(codes.AlreadyExists, "address 10.5.0.6 in network web: already exists")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{taken, "AlreadyExists: address 10.5.0.6 in network web: already exists"},
		{fmt.Errorf(`vm "v2" nic acme/web2=10.5.0.6: create port: %w`, taken),
			`AlreadyExists: vm "v2" nic acme/web2=10.5.0.6: create port: address 10.5.0.6 in network web: already exists`},
		{fmt.Errorf("vm %q: %w", "v2", errors.Join(fmt.Errorf("create: %w", taken), fmt.Errorf("undo: %w", status.Error(codes.Unavailable, "gone")))),
			`AlreadyExists: vm "v2": create: address 10.5.0.6 in network web: already exists undo: gone`},
		{errors.New("plain\nerror"), "plain error"},
		// A server going away under a unix socket client is no TLS matter.
		{status.Error(codes.Unavailable, "write unix @->/run/vxfabric/lab/fi/server.sock: write: broken pipe"),
			"Unavailable: write unix @->/run/vxfabric/lab/fi/server.sock: write: broken pipe"},
		{status.Error(codes.Unavailable, "connection error: desc = \"error reading server preface: read unix @->/s.sock: connection reset by peer\""),
			`Unavailable: connection error: desc = "error reading server preface: read unix @->/s.sock: connection reset by peer"`},
		{status.Error(codes.Unavailable, "connection error: desc = \"error reading server preface: remote error: tls: bad certificate\""),
			`Unavailable: connection error: desc = "error reading server preface: remote error: tls: bad certificate" (the server refused the client certificate: not signed by its CA, or revoked?)`},
		{status.Error(codes.Unimplemented, "unknown service vxfabric.v1.GossipService"),
			"Unimplemented: unknown service vxfabric.v1.GossipService (this server runs without gossip: it serves GossipService when started with --gossip-bind or --join)"},
		{status.Error(codes.Unavailable, "connection error: desc = \"error reading server preface: EOF\""),
			`Unavailable: connection error: desc = "error reading server preface: EOF" (unless the server just went away: it speaks TLS, give --tls-ca, or use its unix socket)`},
	} {
		if got := errorLine(tc.err); got != tc.want {
			t.Errorf("errorLine(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// A gossip address the server cannot have says so in the user's terms, before anything starts.
func TestServerGossipBindErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for bind, want := range map[string]string{
		"198.51.100.7:7946":  "gossip: listen on 198.51.100.7:7946: cannot assign requested address",
		busy.Addr().String(): "gossip: listen on " + busy.Addr().String() + ": address already in use",
	} {
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs([]string{"server", "--gossip-bind", bind, "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--log-level", "error"})
		if err := root.Execute(); err == nil || errorLine(err) != want {
			t.Errorf("server --gossip-bind %s: %v, want %q", bind, err, want)
		}
	}
}

// pflag takes backticked text in a flag's usage as the name of its value (`--tls-crl vxfab certs
// revoke`), so no usage may hold a backtick: quote with "" instead.
func TestFlagUsagesHaveNoBackticks(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if strings.Contains(f.Usage, "`") {
					t.Errorf("%s --%s: usage has a backtick: %q", c.CommandPath(), f.Name, f.Usage)
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
}

// A server announcing a loopback API address to a gossip fabric beyond this machine says so.
func TestServerWarnsOfALoopbackAnnouncement(t *testing.T) {
	var logs strings.Builder
	for _, tc := range []struct {
		listen string
		warn   bool
	}{{"127.0.0.1:7400", true}, {"0.0.0.0:7400", false}} {
		logs.Reset()
		cfg := server.Default()
		cfg.Listen = tc.listen
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		f := serverFlags{gossip: gossipFlags{bind: "0.0.0.0:0", join: []string{"198.51.100.1:7946"}}}
		if _, err := serverGossip(f, cfg); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(logs.String(), "loopback address"); got != tc.warn {
			t.Errorf("--listen %s: warned %v, want %v:\n%s", tc.listen, got, tc.warn, logs.String())
		}
	}
}

// No flag of any command answers a bad value with the parser's text (strconv's, time's): each says
// `--NAME VALUE: want ...`, whether the flag is the CLI's own or defined elsewhere (auth's
// --max-request-bytes).
func TestEveryFlagSaysWhatItWants(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalNonPersistentFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				switch f.Value.Type() {
				case "string", "stringSlice", "stringArray":
					return // every string is a value
				}
				for _, bad := range []string{"-5x", "abc", "99999999999999999999999"} {
					err := fs.Set(f.Name, bad)
					if err == nil {
						continue
					}
					line := errorLine(flagError(c, err))
					if !strings.HasPrefix(line, "--"+f.Name+" ") || !strings.Contains(line, ": want ") || strings.Contains(line, "strconv") || strings.Contains(line, "time:") {
						t.Errorf("%s --%s %s: %q, want `--%s VALUE: want ...`", c.CommandPath(), f.Name, bad, line, f.Name)
					}
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
}

// A failed command prints one line, "vxfab: ...", and exits 1 or with the status it carries; a
// command run by `lab exec` that failed on its own says so itself, and vxfab adds nothing.
func TestReport(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   int
		stderr string
	}{
		{nil, 0, ""},
		{errors.New("lab \"x\": lab is not up"), 1, "vxfab: lab \"x\": lab is not up\n"},
		{exitCodeError{code: 1, err: errors.New("false in h1: exit status 1"), quiet: true}, 1, ""},
		{exitCodeError{code: 130, err: errors.New("ping in h1: interrupted")}, 130, "vxfab: ping in h1: interrupted\n"},
	} {
		var stderr strings.Builder
		if code := report(tc.err, &stderr); code != tc.code || stderr.String() != tc.stderr {
			t.Errorf("report(%v): exit %d, stderr %q; want %d, %q", tc.err, code, stderr.String(), tc.code, tc.stderr)
		}
	}
}
