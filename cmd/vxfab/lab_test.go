//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
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
