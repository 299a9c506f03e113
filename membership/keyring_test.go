package membership

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vxfabric/vxfabric/security/pki"
)

// InstallKeys sets the keyring exactly, primary first, records it in the keyring file (rewritten only
// when it differs), and from then on a SIGHUP reload of the file is refused: the control plane owns
// the keyring. An unencrypted member and a key of a wrong size are refused.
func TestInstallKeys(t *testing.T) {
	k1, k2, k3 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 16), bytes.Repeat([]byte{3}, 32)
	file := filepath.Join(t.TempDir(), "gossip.key")
	writeKeyring(t, file, k1)
	m := startMember(t, "inst", memberOpts{keyringFile: file})
	if got := m.Keys(); !slices.EqualFunc(got, [][]byte{k1}, bytes.Equal) {
		t.Fatalf("keys at start: %x", got)
	}
	if err := m.ReloadKeyring(); err != nil {
		t.Fatalf("reload before the control plane manages the keyring: %v", err)
	}

	if err := m.InstallKeys([][]byte{k2, k1, k3}); err != nil {
		t.Fatal(err)
	}
	if got := m.Keys(); !slices.EqualFunc(got, [][]byte{k2, k1, k3}, bytes.Equal) {
		t.Errorf("keys after install: %x, want k2 (primary), k1, k3", got)
	}
	if got, err := pki.ReadGossipKeyring(file); err != nil || !slices.EqualFunc(got, [][]byte{k2, k1, k3}, bytes.Equal) {
		t.Errorf("keyring file after install: %x, %v", got, err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("keyring file mode: %v, %v; want 0600", fi.Mode(), err)
	}
	before, _ := os.Stat(file)
	if err := m.InstallKeys([][]byte{k2, k1, k3}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(file); !after.ModTime().Equal(before.ModTime()) {
		t.Error("the same keyring installed again rewrote the file")
	}
	if err := m.InstallKeys([][]byte{k3}); err != nil {
		t.Fatal(err)
	}
	if got := m.Keys(); !slices.EqualFunc(got, [][]byte{k3}, bytes.Equal) {
		t.Errorf("keys after the old ones were dropped: %x", got)
	}

	writeKeyring(t, file, k1) // someone edits the file by hand
	if err := m.ReloadKeyring(); err == nil || !strings.Contains(err.Error(), "managed by the control plane") {
		t.Errorf("reload of a managed keyring: %v, want it refused", err)
	}
	if got := m.Keys(); !slices.EqualFunc(got, [][]byte{k3}, bytes.Equal) {
		t.Errorf("keys after a refused reload: %x", got)
	}
	if err := m.InstallKeys([][]byte{{1, 2, 3}}); err == nil {
		t.Error("a 3-byte key was installed")
	}
	if err := m.InstallKeys(nil); err == nil {
		t.Error("an empty keyring was installed")
	}

	plain := startMember(t, "plain", memberOpts{})
	if err := plain.InstallKeys([][]byte{k1}); err == nil || plain.Encrypted() {
		t.Errorf("install on an unencrypted member: %v", err)
	}
}

// The steps of a rotation skip nothing; jumping over one (a member paused through a step) does.
func TestSkippedStep(t *testing.T) {
	old, next := []byte("old-key-old-key-"), []byte("new-key-new-key-")
	for _, tc := range []struct {
		what    string
		primary []byte
		held    [][]byte
		keys    [][]byte
		want    bool
	}{
		{"install", old, [][]byte{old}, [][]byte{old, next}, false},
		{"use", old, [][]byte{old, next}, [][]byte{next, old}, false},
		{"done", next, [][]byte{next, old}, [][]byte{next}, false},
		{"the same keyring again", next, [][]byte{next}, [][]byte{next}, false},
		{"install to done", old, [][]byte{old, next}, [][]byte{next}, true},
		{"before install to use", old, [][]byte{old}, [][]byte{next, old}, true},
		{"before install to done", old, [][]byte{old}, [][]byte{next}, true},
	} {
		if got := skippedStep(tc.primary, tc.held, tc.keys); got != tc.want {
			t.Errorf("%s: skipped %v, want %v", tc.what, got, tc.want)
		}
	}
}
