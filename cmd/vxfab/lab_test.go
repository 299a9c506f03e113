//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/vxfabric/vxfabric/controlplane/client"
	"github.com/vxfabric/vxfabric/lab"
)

// Commands other than `lab up` find the one lab that is up without --name; with several up they
// ask for one, unless the default lab is among them.
func TestLabNameDefaultsToTheLabThatIsUp(t *testing.T) {
	root := t.TempDir()
	up := func(name string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	resolve := func(args ...string) (string, error) {
		t.Helper()
		f := &labFlags{}
		fs := pflag.NewFlagSet("lab", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(append(args, "--state-root", root)); err != nil {
			t.Fatal(err)
		}
		return f.labName()
	}
	// The rows run in order and the labs they bring up add up: tp, then tp and zz, then all three.
	for _, tc := range []struct {
		up   []string
		args []string
		want string // the name, or an error containing it
	}{
		{nil, nil, "lab"},
		{[]string{"tp"}, nil, "tp"},
		{[]string{"tp"}, []string{"--name", "other"}, "other"},
		{[]string{"zz"}, nil, "labs tp, zz are up: name one with --name"},
		{[]string{"lab"}, nil, "lab"},
	} {
		for _, n := range tc.up {
			up(n)
		}
		got, err := resolve(tc.args...)
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("labs up %v, args %v: got %q, want %q", tc.up, tc.args, got, tc.want)
		}
	}
}

// `lab vm delete` of a VM that does not exist prints NotFound, as the API's commands do.
func TestLabErrorNoSuchVM(t *testing.T) {
	err := labError(fmt.Errorf("vm %q: %w", "nosuch", lab.ErrNoSuchVM))
	if got, want := errorLine(err), `NotFound: vm "nosuch": no such vm`; got != want {
		t.Errorf("errorLine = %q, want %q", got, want)
	}
	if err := labError(nil); err != nil {
		t.Errorf("labError(nil) = %v", err)
	}
}

// `lab exec` passes a failed command's status through without a line of its own (the command spoke
// on its own stderr, as under ssh); an interrupted run says so in one line and exits 130; vxfab's
// own failures print their line and exit 1.
func TestLabExecResult(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   int
		stderr string
	}{
		{nil, 0, ""},
		{&lab.ExitError{Code: 1, Err: errors.New("false in h1: exit status 1")}, 1, ""},
		{&lab.ExitError{Code: 137, Err: errors.New("sleep in h1: signal: killed")}, 137, ""},
		{&lab.ExitError{Code: 130, Err: fmt.Errorf("ping in h1: stopped (%w)", context.Canceled)}, 130, "vxfab: ping in h1: interrupted\n"},
		{&lab.ExitError{Code: 127, Err: fmt.Errorf("nosuchcmd in h1: %w", lab.ErrCommandNotFound)}, 127, "vxfab: nosuchcmd in h1: command not found\n"},
		{&lab.ExitError{Code: 127, Err: errors.New("sh in h1: exit status 127")}, 127, ""}, // the command's own 127: it said why
		{errors.New(`exec in h9: namespace vxl-lab-h9 does not exist (is the lab up?)`), 1,
			"vxfab: exec in h9: namespace vxl-lab-h9 does not exist (is the lab up?)\n"},
	} {
		var stderr strings.Builder
		if code := report(execResult(tc.err, "h1", "ping"), &stderr); code != tc.code || stderr.String() != tc.stderr {
			t.Errorf("lab exec ending in %v: exit %d, stderr %q; want %d, %q", tc.err, code, stderr.String(), tc.code, tc.stderr)
		}
	}
}

// `lab vm delete` says what it deleted: a VM without ports is not said to have gone with them.
func TestVMDeleted(t *testing.T) {
	for r, want := range map[lab.RemovedVM]string{
		{Ports: 2, Namespace: true}: "vm vt deleted, with its 2 ports",
		{Ports: 1, Namespace: true}: "vm vt deleted, with its port",
		{Namespace: true}:           "vm vt deleted (it had no ports)",
		{Ports: 3}:                  "vm vt deleted: its 3 ports (it had no namespace)",
	} {
		if got := vmDeleted("vt", r); got != want {
			t.Errorf("vmDeleted(%+v) = %q, want %q", r, got, want)
		}
	}
}

// `lab up` of a lab the default profile does not point at (--default-profile=false) says how to
// reach it; the default lab's says the CLI talks to it.
func TestLabUpSaysHowToReachTheLab(t *testing.T) {
	root := t.TempDir()
	shared := filepath.Join(root, "client.json")
	open := func(name string) *lab.Lab {
		t.Helper()
		cfg := lab.Default()
		cfg.Name, cfg.StateRoot, cfg.ProfilePath, cfg.Bin = name, root, shared, "/bin/true"
		l, err := lab.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	def, rv := open("lab"), open("rv")
	data, err := def.Profile().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shared, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := client.ReadProfile(shared); err != nil || p.Server != def.Profile().Server {
		t.Fatalf("shared profile: %+v %v", p, err)
	}
	if got, want := labUpNext(def, "vxfab"), "the CLI now talks to it: try `vxfab node list`, `vxfab lab status`"; got != want {
		t.Errorf("lab up (default profile):\n%s\nwant\n%s", got, want)
	}
	want := "the CLI reaches it through its own profile: `export VXFAB_PROFILE=" + filepath.Join(root, "rv", "client.json") +
		"`, then try `vxfab node list`, `vxfab lab status --name rv`"
	if got := labUpNext(rv, "vxfab"); got != want {
		t.Errorf("lab up --name rv --default-profile=false:\n%s\nwant\n%s", got, want)
	}
}
