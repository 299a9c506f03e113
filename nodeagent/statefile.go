package nodeagent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// saveAppliedRevision writes rev to dir atomically (temporary file, fsync, rename, fsync of dir), so
// a crash leaves either the old or the new revision.
func saveAppliedRevision(dir string, rev int64) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, appliedRevisionFile)
	tmp, err := os.CreateTemp(dir, appliedRevisionFile+".tmp*")
	if err != nil {
		return fmt.Errorf("write applied revision %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(strconv.FormatInt(rev, 10) + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("write applied revision %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync applied revision %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write applied revision %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace applied revision %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
