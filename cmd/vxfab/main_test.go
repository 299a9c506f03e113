package main

import (
	"io"
	"strings"
	"testing"
)

// A typo in a script must fail, not print help and succeed; a missing required flag is named
// before anything is sent; an explicit --vni 0 is refused, not taken as "allocate".
func TestCLIRefusesBadInvocations(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tenant", "bogus"}, `unknown command "bogus" for "vxfab tenant"`},
		{[]string{"lab", "agent", "frob", "h1"}, `unknown command "frob" for "vxfab lab agent"`},
		{[]string{"agent"}, `required flag(s) "node", "vtep" not set`},
		{[]string{"port", "show", "p1"}, `required flag(s) "tenant" not set`},
		{[]string{"network", "create", "n", "--tenant", "t", "--cidr", "10.0.0.0/24", "--mode", "nat", "--vni", "0"}, "--vni 0"},
	} {
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(append([]string{"--server", "127.0.0.1:1"}, tc.args...))
		err := root.Execute()
		if err == nil || !strings.Contains(errorLine(err), tc.want) {
			t.Errorf("vxfab %s: error %v, want one containing %q", strings.Join(tc.args, " "), err, tc.want)
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
