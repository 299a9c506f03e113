package membership

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/memberlist"

	"github.com/vxfabric/vxfabric/security/pki"
)

// dedupKeys keeps the first occurrence of each key, in order.
func dedupKeys(keys [][]byte) [][]byte {
	var out [][]byte
	for _, k := range keys {
		dup := false
		for _, o := range out {
			if bytes.Equal(o, k) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, k)
		}
	}
	return out
}

// installKeys makes the keyring hold exactly keys, keys[0] primary: add first, switch the primary,
// then remove, so the member can decrypt both old and new traffic at every step.
func installKeys(kr *memberlist.Keyring, keys [][]byte) error {
	keys = dedupKeys(keys)
	if len(keys) == 0 {
		return errors.New("an encrypted member cannot drop its last gossip key")
	}
	for _, k := range keys {
		if err := kr.AddKey(k); err != nil {
			return fmt.Errorf("add gossip key: %w", err)
		}
	}
	if err := kr.UseKey(keys[0]); err != nil {
		return fmt.Errorf("use gossip key: %w", err)
	}
	for _, old := range kr.GetKeys() {
		keep := false
		for _, k := range keys {
			if bytes.Equal(old, k) {
				keep = true
				break
			}
		}
		if !keep {
			if err := kr.RemoveKey(old); err != nil {
				return fmt.Errorf("remove gossip key: %w", err)
			}
		}
	}
	return nil
}

// Encrypted reports whether gossip is encrypted (the member has a keyring).
func (m *Member) Encrypted() bool { return m.keyring != nil }

// Keys returns the keyring's keys, the primary one first (nil without encryption).
func (m *Member) Keys() [][]byte {
	if m.keyring == nil {
		return nil
	}
	primary := m.keyring.GetPrimaryKey()
	keys := [][]byte{primary}
	for _, k := range m.keyring.GetKeys() {
		if !bytes.Equal(k, primary) {
			keys = append(keys, k)
		}
	}
	return keys
}

// ErrKeyringNotRecorded: InstallKeys installed the keys but could not rewrite the keyring file.
var ErrKeyringNotRecorded = errors.New("gossip keyring installed but not recorded in its file")

// InstallKeys makes the keyring hold exactly keys, keys[0] primary, as the control plane's rotation
// (GossipService) hands them out; from then on SIGHUP no longer reloads the keyring file. With a
// KeyringFile, the file is rewritten to hold them (when they differ), so that a restart starts with
// the current keys; when that fails, the keys are in use all the same and the error wraps
// ErrKeyringNotRecorded. An unencrypted member refuses: encryption cannot be switched on in a
// running cluster.
func (m *Member) InstallKeys(keys [][]byte) error {
	if m.keyring == nil {
		return errors.New("gossip is not encrypted: start every member with a gossip key first")
	}
	for _, k := range keys {
		if err := pki.ValidGossipKey(k); err != nil {
			return fmt.Errorf("gossip key: %w", err)
		}
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	primary, held := m.keyring.GetPrimaryKey(), m.keyring.GetKeys()
	if err := installKeys(m.keyring, keys); err != nil {
		return err
	}
	if skippedStep(primary, held, keys) {
		// This member missed a step of a rotation (paused, restarted, cut off): the others may
		// have been unable to read it, and declared it dead. A member that followed every step
		// does not exchange, so a rotation costs no burst of exchanges.
		m.requestExchange()
	}
	if !m.managed {
		m.log.Info("gossip keyring now managed by the control plane", "keys", len(keys))
	}
	m.managed = true
	if m.cfg.KeyringFile == "" {
		return nil
	}
	if cur, err := pki.ReadGossipKeyring(m.cfg.KeyringFile); err == nil && slices.EqualFunc(cur, dedupKeys(keys), bytes.Equal) {
		return nil
	}
	if err := writeKeyringFile(m.cfg.KeyringFile, dedupKeys(keys)); err != nil {
		return fmt.Errorf("%w: %w", ErrKeyringNotRecorded, err)
	}
	return nil
}

// writeKeyringFile replaces path with keys, one base64 line each, through a rename, so a reader never
// sees half a file.
func writeKeyringFile(path string, keys [][]byte) error {
	var b strings.Builder
	b.WriteString("# gossip keyring written by vxfabric (GossipService); the first key encrypts\n")
	for _, k := range keys {
		b.WriteString(base64.StdEncoding.EncodeToString(k))
		b.WriteByte('\n')
	}
	if err := pki.WriteFileAtomic(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("record gossip keyring: %w", err)
	}
	return nil
}

// skippedStep reports whether moving from a keyring holding held, encrypting with primary, to keys
// skips a step of a rotation: the new encrypting key was not held yet, or the old encrypting key is
// dropped at once. The steps of a rotation (add a key; encrypt with it; drop the old one) do neither.
func skippedStep(primary []byte, held, keys [][]byte) bool {
	if len(keys) == 0 {
		return false
	}
	knew := slices.ContainsFunc(held, func(k []byte) bool { return bytes.Equal(k, keys[0]) })
	kept := slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, primary) })
	return !knew || !kept
}
