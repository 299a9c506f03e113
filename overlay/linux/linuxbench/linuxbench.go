//go:build linux

// Package linuxbench measures the Linux datapath in a throwaway network namespace: programming
// 10,000 remote ports into one network in one Apply, a no-op Apply over them, and the repair of one
// FDB entry deleted by hand. The Go benchmarks in overlay/linux and the `make bench` harness both
// call it. It needs root; it never touches the namespace it runs in.
package linuxbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vxfabric/vxfabric/overlay"
	"github.com/vxfabric/vxfabric/overlay/internal/nstest"
	"github.com/vxfabric/vxfabric/overlay/linux"
)

// Targets are the goals for the three measurements on this kind of machine.
var Targets = Results{Program: 500 * time.Millisecond, Noop: 50 * time.Millisecond, Repair: 50 * time.Millisecond}

// Options sizes a run.
type Options struct {
	// Remotes is the number of remote ports in the one network (10,000 by default).
	Remotes int
	// VTEPs is the number of remote hosts they are spread over (100 by default).
	VTEPs int
	// Logger receives the datapath's logs; nil discards them.
	Logger *slog.Logger
}

// Default returns the benchmark sizes.
func Default() Options { return Options{Remotes: 10000, VTEPs: 100} }

// Validate checks the options.
func (o Options) Validate() error {
	if o.Remotes < 1 || o.Remotes > 1<<20 {
		return fmt.Errorf("linuxbench: remotes %d out of range 1..%d", o.Remotes, 1<<20)
	}
	if o.VTEPs < 1 || o.VTEPs > 60000 {
		return fmt.Errorf("linuxbench: vteps %d out of range 1..60000", o.VTEPs)
	}
	return nil
}

// Results are the measured durations.
type Results struct {
	Remotes int
	// Program is one Apply that writes every FDB and neighbour entry into an existing network.
	Program time.Duration
	// Noop is an Apply with the same state: it reads and compares, and writes nothing.
	Noop time.Duration
	// Repair is an Apply after one FDB entry was deleted by hand: it writes that one entry back.
	Repair time.Duration
}

// Env is a namespace with a datapath and a desired state of Remotes remote ports.
type Env struct {
	NS *nstest.NS
	DP *linux.Datapath
	// Empty is the network without remote ports; Full has all of them.
	Empty, Full overlay.DesiredState
}

// VNI is the benchmark network's VNI.
const VNI = 4242

// NewEnv creates the namespace (a VTEP address on lo) and a datapath on it.
func NewEnv(opts Options) (*Env, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ns, err := nstest.Create("bench")
	if err != nil {
		return nil, err
	}
	e := &Env{NS: ns}
	if _, err := ns.Run("ip", "addr", "add", "198.18.0.1/32", "dev", "lo"); err != nil {
		_ = ns.Delete()
		return nil, err
	}
	if e.DP, err = linux.New(linux.Config{NetNS: ns.Path(), Logger: log}); err != nil {
		_ = ns.Delete()
		return nil, err
	}
	e.Empty, e.Full = states(opts)
	return e, nil
}

// Close closes the datapath and deletes the namespace with everything in it.
func (e *Env) Close() error {
	return errors.Join(e.DP.Close(), e.NS.Delete())
}

func states(opts Options) (empty, full overlay.DesiredState) {
	nw := overlay.Network{VNI: VNI, Mode: overlay.ModeIsolated, MTU: 1450}
	empty = overlay.DesiredState{Underlay: overlay.Underlay{VTEP: netip.MustParseAddr("198.18.0.1")},
		Networks: []overlay.Network{nw}}
	vteps := make([]netip.Addr, opts.VTEPs)
	for i := range vteps {
		vteps[i] = netip.AddrFrom4([4]byte{198, 19, byte((i + 1) >> 8), byte(i + 1)})
	}
	nw.Flood = vteps
	for i := range opts.Remotes {
		nw.Remotes = append(nw.Remotes, overlay.RemotePort{
			MAC:  net.HardwareAddr{0x0e, 0x42, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)},
			IP:   netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
			VTEP: vteps[i%len(vteps)],
		})
	}
	full = empty
	full.Networks = []overlay.Network{nw}
	return empty, full
}

// Apply runs one Apply and returns its duration and number of changes.
func (e *Env) Apply(ctx context.Context, s overlay.DesiredState) (time.Duration, int, error) {
	start := time.Now()
	res, err := e.DP.Apply(ctx, s)
	return time.Since(start), len(res.Changes), err
}

// DeleteOneFDB deletes one remote port's FDB entry by hand, as an operator's mistake would.
func (e *Env) DeleteOneFDB(i int) error {
	r := e.Full.Networks[0].Remotes[i%len(e.Full.Networks[0].Remotes)]
	_, err := e.NS.Run("bridge", "fdb", "del", r.MAC.String(), "dev", overlay.VxlanName(VNI), "dst", r.VTEP.String())
	return err
}

// Run performs the three measurements once in a fresh namespace and checks that each Apply did
// exactly what it should (all entries, nothing, one entry).
func Run(ctx context.Context, opts Options) (Results, error) {
	e, err := NewEnv(opts)
	if err != nil {
		return Results{}, err
	}
	res, err := measure(ctx, e, opts)
	return res, errors.Join(err, e.Close())
}

func measure(ctx context.Context, e *Env, opts Options) (Results, error) {
	res := Results{Remotes: opts.Remotes}
	if _, _, err := e.Apply(ctx, e.Empty); err != nil {
		return res, fmt.Errorf("create the network: %w", err)
	}
	var n int
	var err error
	if res.Program, n, err = e.Apply(ctx, e.Full); err != nil {
		return res, fmt.Errorf("program %d remote ports: %w", opts.Remotes, err)
	}
	// One FDB and one neighbour entry per remote, one flood entry and one set element per VTEP.
	if want := 2*opts.Remotes + 2*opts.VTEPs; n != want {
		return res, fmt.Errorf("program: %d changes, want %d", n, want)
	}
	if res.Noop, n, err = e.Apply(ctx, e.Full); err != nil || n != 0 {
		return res, fmt.Errorf("no-op apply: %d changes, err %v", n, err)
	}
	if err := e.DeleteOneFDB(opts.Remotes / 2); err != nil {
		return res, err
	}
	if res.Repair, n, err = e.Apply(ctx, e.Full); err != nil || n != 1 {
		return res, fmt.Errorf("repair: %d changes (want 1), err %v", n, err)
	}
	return res, nil
}
