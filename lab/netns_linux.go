package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 (and therefore `ip netns exec`) keeps named namespaces.
const netnsDir = "/run/netns"

func namespaceExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// listNamespaces returns the named namespaces whose name starts with prefix, sorted.
func listNamespaces(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", netnsDir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// runIP runs the ip(8) command and returns its error with its stderr.
func runIP(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// ensureNamespace creates a named namespace (as `ip netns add` does, so that `ip netns exec` and
// every other tool see it) unless it exists, and brings its loopback up.
func ensureNamespace(ctx context.Context, name string) error {
	if path := filepath.Join(netnsDir, name); namespaceExists(name) && !isNamespaceMount(path) {
		// A name without its namespace: `ip netns add` cut short between creating the file and
		// mounting the namespace on it, or a /run kept without its mounts. It is made anew.
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("namespace %q: remove the stale %s: %w", name, path, err)
		}
	}
	if !namespaceExists(name) {
		if err := runIP(ctx, "netns", "add", name); err != nil {
			return fmt.Errorf("create namespace %q: %w", name, err)
		}
	}
	h, err := handleAt(name)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("namespace %q: loopback: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("namespace %q: set loopback up: %w", name, err)
	}
	return nil
}

// isNamespaceMount reports whether path has a network namespace mounted on it.
func isNamespaceMount(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// deleteNamespace removes a named namespace; one that is already gone is success. Links inside it
// go with it (a veth's peer in another namespace too) once no process holds the namespace.
func deleteNamespace(ctx context.Context, name string) error {
	if !namespaceExists(name) {
		return nil
	}
	if err := runIP(ctx, "netns", "delete", name); err != nil {
		if !namespaceExists(name) {
			return nil
		}
		return fmt.Errorf("delete namespace %q: %w", name, err)
	}
	return nil
}

// handleAt opens a netlink handle bound to a named namespace: every request made through it acts
// in that namespace, whichever thread sends it.
func handleAt(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open namespace %q: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in namespace %q: %w", name, err)
	}
	return h, nil
}

// Handle opens a netlink handle in one of the lab's namespaces (a role, host or VM as `lab exec`
// names them), for reading kernel state such as FDB entries. The caller closes it.
func (l *Lab) Handle(target string) (*netlink.Handle, error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return nil, err
	}
	return handleAt(ns)
}

// inNamespace runs fn on a dedicated OS thread that has entered the named namespace, so that the
// sockets fn opens belong to it. The thread is discarded if it cannot return to its namespace.
// fn must not start goroutines that open sockets: they would run in the caller's namespace.
func inNamespace(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open namespace %q: %w", name, err)
	}
	done := make(chan error, 1)
	go func() {
		defer target.Close()
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open own namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter namespace %q: %w", name, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with this goroutine rather than serve others in the
			// wrong namespace.
			done <- errors.Join(fnErr, fmt.Errorf("leave namespace %q: %w", name, err))
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// nsID identifies a network namespace by the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, false
	}
	return nsID{dev: st.Dev, ino: st.Ino}, true
}

// writeSysctls sets sysctls (paths under /proc/sys/, values) inside the named namespace.
func writeSysctls(ns string, values [][2]string) error {
	return inNamespace(ns, func() error {
		for _, v := range values {
			if err := os.WriteFile(filepath.Join("/proc/sys", v[0]), []byte(v[1]), 0o644); err != nil {
				return fmt.Errorf("namespace %q: set %s to %s: %w", ns, v[0], v[1], err)
			}
		}
		return nil
	})
}
