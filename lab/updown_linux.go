package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Up builds the lab and starts the fabric in it. It is idempotent: on an existing lab it checks
// every part and completes what is missing (a dead agent is restarted, a missing cable made), and
// it never rebuilds what exists. It returns once the server is healthy and every agent is ALIVE
// (but for hosts cut with CutHost, which stay cut).
// A lab can grow (more hosts), not shrink: that takes Down first.
func (l *Lab) Up(ctx context.Context) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock(false)
	began := time.Now()
	created := began.UTC()
	if m, err := l.readMeta(); err == nil {
		if m.Hosts > l.cfg.Hosts {
			return fmt.Errorf("lab %q has %d hosts; run `vxfab lab down --name %s` before building it with %d",
				l.cfg.Name, m.Hosts, l.cfg.Name, l.cfg.Hosts)
		}
		created = m.Created
	} else if !errors.Is(err, ErrNoLab) {
		return err
	}
	for _, dir := range []string{l.Dir(), l.logDir(), l.runDir(), l.SecurityDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("lab %q: state directory: %w", l.cfg.Name, err)
		}
	}
	if err := l.writeMeta(created); err != nil {
		return fmt.Errorf("lab %q: %w", l.cfg.Name, err)
	}
	if err := l.ensureTopology(ctx); err != nil {
		return fmt.Errorf("lab %q: %w", l.cfg.Name, err)
	}
	if err := l.ensurePKI(); err != nil {
		return err
	}
	l.log.Info("lab topology ready", "hosts", l.cfg.Hosts, "elapsed", time.Since(began))
	if err := l.StartServer(ctx); err != nil {
		return err
	}
	for _, h := range l.Hosts() {
		if err := l.StartAgent(ctx, h); err != nil {
			return fmt.Errorf("lab %q: %w", l.cfg.Name, err)
		}
	}
	if err := l.writeProfiles(); err != nil {
		return fmt.Errorf("lab %q: %w", l.cfg.Name, err)
	}
	// A host cut on purpose stays cut (RestoreHost brings it back); its agent cannot be ALIVE.
	var wait []string
	for _, h := range l.Hosts() {
		if _, err := os.Stat(l.cutMarker(h)); err != nil {
			wait = append(wait, h)
		}
	}
	if len(wait) > 0 {
		if err := l.WaitAgents(ctx, wait...); err != nil {
			return err
		}
	}
	l.log.Info("lab up", "hosts", l.cfg.Hosts, "elapsed", time.Since(began))
	return nil
}

// Down removes everything the lab made: its processes (found through the pid files and by scanning
// for processes in the lab's namespaces or naming its state directory, so that it also works after
// a crash), its namespaces with every link and nftables rule inside them, its state directory and
// the client profile if it points at this lab. Taking down a lab that is not there is success.
//
// An interrupt (^C, ctx cancelled) does not stop it halfway, which would leave namespaces behind a
// lab that no command lists any more: it runs to its end, within downTimeout. The state directory,
// which names the lab, goes last, and only once the lab's namespaces are gone.
func (l *Lab) Down(ctx context.Context) (err error) {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer func() { unlock(err == nil) }()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), downTimeout)
	defer cancel()
	l.adoptRecordedPrefix()
	var errs []error
	if err := l.killAll(ctx); err != nil {
		errs = append(errs, err)
	}
	nss, err := listNamespaces(l.NamespacePrefix())
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range nss {
		if err := deleteNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab %q down: %w", l.Name(), errors.Join(errs...))
	}
	if err := l.removeProfile(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(l.Dir()); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", l.Dir(), err))
	}
	// The state root goes with the lock file (unlock), once the last lab and the shared profile
	// are gone.
	if len(errs) > 0 {
		return fmt.Errorf("lab %q down: %w", l.cfg.Name, errors.Join(errs...))
	}
	l.log.Info("lab down", "namespaces", len(nss))
	return nil
}

// lock makes Up and Down of one lab take turns (two `lab up` at once would start two servers, and
// the pid file would name the one that lost): an exclusive flock of <state root>/.<name>.lock,
// waited for until ctx ends. unlock(remove) releases it, removing the file first when the lab is
// gone (so that the state root can go too).
func (l *Lab) lock(ctx context.Context) (unlock func(remove bool), err error) {
	path := filepath.Join(l.cfg.StateRoot, "."+l.cfg.Name+".lock")
	told := false
	var f *os.File
	for {
		if f == nil {
			if err := os.MkdirAll(l.cfg.StateRoot, 0o755); err != nil {
				return nil, fmt.Errorf("lab %q: %w", l.cfg.Name, err)
			}
			if f, err = os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600); err != nil {
				return nil, fmt.Errorf("lab %q: %w", l.cfg.Name, err)
			}
		}
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			if sameFile(f, path) {
				break
			}
			// The holder before removed the file (its lab went down): this lock is on a file no
			// one else opens any more. Lock the one the path names now.
			f.Close()
			f = nil
			continue
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lab %q: lock %s: %w", l.cfg.Name, path, err)
		}
		if !told {
			l.log.Warn("another command is bringing the lab up or down: waiting for it", "lab", l.cfg.Name)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lab %q: waiting for another command on it: %w", l.cfg.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return func(remove bool) {
		if remove {
			_ = os.Remove(path)
			// The state root is ours too: it goes when the last lab and the shared profile are gone.
			_ = os.Remove(l.cfg.StateRoot)
			_ = os.Remove(filepath.Dir(l.cfg.StateRoot))
		}
		f.Close()
	}, nil
}

// sameFile reports whether path still names the file f has open.
func sameFile(f *os.File, path string) bool {
	held, err := f.Stat()
	if err != nil {
		return false
	}
	named, err := os.Stat(path)
	return err == nil && os.SameFile(held, named)
}

// downTimeout bounds a Down, which no cancellation stops.
const downTimeout = 2 * time.Minute

// killAll kills every process of the lab with SIGKILL (the lab's state goes with it, so there is
// nothing to stop gracefully) and waits until they are gone.
func (l *Lab) killAll(ctx context.Context) error {
	pids, err := l.labProcesses()
	if err != nil {
		return err
	}
	// The pid files should name a subset of what the scan found; their union costs nothing.
	for _, name := range l.pidFileNames() {
		if pid := l.running(name); pid != 0 && !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		l.log.Info("killing lab process", "pid", pid, "cmd", processCmdline(pid))
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill pid %d: %w", pid, err)
		}
	}
	return poll(ctx, 10*time.Second, func() (bool, error) {
		for _, pid := range pids {
			if processAlive(pid) {
				return false, nil
			}
		}
		return true, nil
	})
}

// Leftovers lists what of the lab still exists on the machine: namespaces, processes, the state
// directory. Empty after Down.
func (l *Lab) Leftovers() ([]string, error) {
	var left []string
	nss, err := listNamespaces(l.NamespacePrefix())
	if err != nil {
		return nil, err
	}
	for _, ns := range nss {
		left = append(left, "namespace "+ns)
	}
	pids, err := l.labProcesses()
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		left = append(left, fmt.Sprintf("process %d %v", pid, processCmdline(pid)))
	}
	if _, err := os.Stat(l.Dir()); err == nil {
		left = append(left, "directory "+l.Dir())
	}
	return left, nil
}

// pidFileNames lists the processes with a pid file in the state directory.
func (l *Lab) pidFileNames() []string {
	entries, err := os.ReadDir(l.runDir())
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".pid"); ok {
			names = append(names, name)
		}
	}
	return names
}
