//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

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
