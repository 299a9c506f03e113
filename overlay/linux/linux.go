//go:build linux

// Package linux is the kernel datapath: it converges one network namespace to an overlay.DesiredState
// through netlink (vishvananda/netlink) and nftables (google/nftables) handles bound to that
// namespace. It reads the kernel on every Apply, diffs, and writes only the difference, adding
// before deleting; it never flushes a table and never touches a device, entry or nftables object
// that is not ours (devices named "vx*", entries on those devices, tables named "vxfabric").
//
// It must never switch the namespace of a shared goroutine: the only thread that enters the target
// namespace is a dedicated, locked one that writes sysctls and then exits with its goroutine.
package linux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"

	"github.com/vxfabric/vxfabric/overlay"
)

// Config selects the namespace a Datapath programs.
type Config struct {
	// NetNS is a namespace path such as /var/run/netns/X or /proc/PID/ns/net; empty means the
	// namespace of the calling process.
	NetNS string
	// Logger receives one line per Apply that changed something, and per failed object.
	Logger *slog.Logger
}

// Default returns a Config for the current namespace with slog's default logger.
func Default() Config { return Config{Logger: slog.Default()} }

// Validate checks the Config.
func (c Config) Validate() error {
	if c.Logger == nil {
		return errors.New("linux datapath config: logger is nil")
	}
	if c.NetNS != "" {
		if _, err := os.Stat(c.NetNS); err != nil {
			return fmt.Errorf("linux datapath config: netns %q: %w", c.NetNS, err)
		}
	}
	return nil
}

// Datapath is the Linux overlay.Datapath. Apply and Close are serialised by the caller (see
// overlay.Datapath); mu only guards against a Close racing a misbehaving caller.
type Datapath struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	ns netns.NsHandle // the target namespace, or netns.None() for the current one
	// h and h2 are netlink handles in the target namespace; h2 lets FDB and neighbour tables be
	// dumped and written in parallel (a handle's socket serves one request at a time).
	h, h2 *netlink.Handle
	// dump1 and dump2 are raw sockets for the streamed FDB and neighbour dumps (see dump.go).
	dump1, dump2 *nl.SocketHandle
	nft          *nftables.Conn
	closed       bool

	// nftRead serves PortDrops under readMu, so that reading the counters never waits for an Apply;
	// nil once closed.
	readMu  sync.Mutex
	nftRead *nftables.Conn

	// failSysctlWrite, set by tests before an Apply, makes sysctl writes fail (when it returns an
	// error) as a read-only /proc/sys would.
	failSysctlWrite func(path, value string) error
}

var _ overlay.Datapath = (*Datapath)(nil)

// New opens handles in the configured namespace. It reads nothing and changes nothing.
func New(cfg Config) (*Datapath, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg, log: cfg.Logger, ns: netns.None()}
	var err error
	if cfg.NetNS != "" {
		if d.ns, err = netns.GetFromPath(cfg.NetNS); err != nil {
			return nil, fmt.Errorf("open netns %q: %w", cfg.NetNS, err)
		}
	}
	fail := func(err error) (*Datapath, error) {
		d.closeHandles()
		return nil, err
	}
	// Every socket is opened on a dedicated thread inside the namespace and stays bound to it.
	err = d.inNetns(func() error {
		var err error
		if d.h, err = netlink.NewHandle(); err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		if d.h2, err = netlink.NewHandle(); err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		if d.dump1, err = openDumpSocket(); err != nil {
			return fmt.Errorf("netlink dump socket: %w", err)
		}
		if d.dump2, err = openDumpSocket(); err != nil {
			return fmt.Errorf("netlink dump socket: %w", err)
		}
		if d.nft, err = nftables.New(nftables.AsLasting()); err != nil {
			return fmt.Errorf("nftables connection: %w", err)
		}
		if d.nftRead, err = nftables.New(nftables.AsLasting()); err != nil {
			return fmt.Errorf("nftables connection: %w", err)
		}
		return nil
	})
	if err != nil {
		return fail(fmt.Errorf("open handles in %q: %w", cfg.NetNS, err))
	}
	return d, nil
}

func (d *Datapath) closeHandles() {
	if d.nft != nil {
		_ = d.nft.CloseLasting()
	}
	d.readMu.Lock()
	if d.nftRead != nil {
		_ = d.nftRead.CloseLasting()
		d.nftRead = nil
	}
	d.readMu.Unlock()
	if d.h != nil {
		d.h.Close()
	}
	if d.h2 != nil {
		d.h2.Close()
	}
	for _, s := range []*nl.SocketHandle{d.dump1, d.dump2} {
		if s != nil {
			s.Close()
		}
	}
	if d.ns.IsOpen() {
		_ = d.ns.Close()
	}
}

// Close releases the handles; the kernel state stays as it is, for the next process to adopt.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.closeHandles()
	return nil
}

// ErrClosed is returned by Apply after Close.
var ErrClosed = errors.New("linux datapath closed")

// Apply implements overlay.Datapath.
func (d *Datapath) Apply(ctx context.Context, desired overlay.DesiredState) (overlay.Result, error) {
	if err := desired.Validate(); err != nil {
		return overlay.Result{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return overlay.Result{}, ErrClosed
	}
	r := &run{d: d, ctx: ctx, desired: desired, res: overlay.Result{Plugged: make(map[string]bool)}}
	if err := r.apply(); err != nil {
		// Cut short: which ports are plugged is not known (an empty map would say none).
		r.res.Plugged = nil
		return r.res, err
	}
	errs := make([]error, len(r.res.Errors))
	for i, e := range r.res.Errors {
		errs[i] = e
		d.log.Warn("datapath object not converged", "object", e.Object, "err", e.Err)
	}
	if len(r.res.Changes) > 0 {
		d.log.Info("datapath applied", "changes", len(r.res.Changes), "networks", len(desired.Networks))
	}
	return r.res, errors.Join(errs...)
}
