package nodeagent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vxfabric/vxfabric/security/pki"
)

// appliedRevisionFile is the file in Config.StateDir holding the newest revision applied to the kernel.
const appliedRevisionFile = "applied-revision"

// loadAppliedRevision returns the revision saved in dir, 0 when there is none.
func loadAppliedRevision(dir string) (int64, error) {
	if dir == "" {
		return 0, nil
	}
	path := filepath.Join(dir, appliedRevisionFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read applied revision %s: %w", path, err)
	}
	rev, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || rev < 0 {
		return 0, fmt.Errorf("applied revision file %s holds %q, not a revision", path, strings.TrimSpace(string(b)))
	}
	return rev, nil
}

// saveAppliedRevision writes rev to dir atomically, so a crash leaves either the old or the new
// revision.
func saveAppliedRevision(dir string, rev int64) error {
	return writeStateFile(dir, appliedRevisionFile, strconv.FormatInt(rev, 10)+"\n")
}

// serversFile is the file in Config.StateDir holding the API servers gossip last listed, one per
// line: the agent's way to the control plane when gossip lists none (a restart with stale gossip
// keys, say), since the Sync stream is what brings the current keys.
const serversFile = "servers"

// loadServers returns the servers saved in dir (none when there is no file).
func loadServers(dir string) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	path := filepath.Join(dir, serversFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read remembered servers %s: %w", path, err)
	}
	return strings.Fields(string(b)), nil
}

// saveServers replaces the servers saved in dir.
func saveServers(dir string, servers []string) error {
	return writeStateFile(dir, serversFile, strings.Join(servers, "\n")+"\n")
}

// writeStateFile replaces dir/name with data through a temporary file, fsync and rename (and an fsync
// of dir), so a crash leaves either the old or the new content. No dir: nothing is kept.
func writeStateFile(dir, name, data string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", dir, err)
	}
	if err := pki.WriteFileAtomic(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
