package membership

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/memberlist"
)

// ParseKey decodes one base64 gossip key (standard or URL alphabet, padding optional) and checks
// its length (16, 24 or 32 bytes: AES-128, -192 or -256 in GCM mode).
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var k []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("gossip key is not base64: %w", err)
	}
	if err := validKey(k); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return k, nil
}

// ReadKeyringFile reads base64 keys, one per line (blank lines and lines starting with # are
// skipped). The first key is the primary one.
func ReadKeyringFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read gossip keyring %s: %w", path, err)
	}
	var keys [][]byte
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParseKey(line)
		if err != nil {
			return nil, fmt.Errorf("gossip keyring %s line %d: %w", path, i+1, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("gossip keyring %s holds no key", path)
	}
	return keys, nil
}

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
