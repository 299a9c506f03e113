package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// KernelEvent is one link or neighbour change (FDB entries included) that the kernel announced in
// a lab namespace.
type KernelEvent struct {
	At     time.Time
	Target string // the host, VM or role whose namespace it happened in
	// Link is true for a link event, false for a neighbour (or FDB) event.
	Link    bool
	Deleted bool // RTM_DELLINK or RTM_DELNEIGH
	// Device is the link itself, or the device a neighbour entry belongs to ("if<index>" when the
	// watch never learnt its name).
	Device string
	// Links: administratively up (IFF_UP), and the operational state.
	Up        bool
	OperState netlink.LinkOperState
	// Neighbours: the address family (unix.AF_BRIDGE for FDB entries), the MAC address, and the
	// IP (the remote VTEP of a vxlan FDB entry, the neighbour's own address for ARP entries).
	Family int
	MAC    net.HardwareAddr
	IP     netip.Addr
}

func (e KernelEvent) String() string {
	op := "new"
	if e.Deleted {
		op = "del"
	}
	at := e.At.UTC().Format("15:04:05.000")
	if e.Link {
		return fmt.Sprintf("%s %s: link %s %s up=%t oper=%s", at, e.Target, op, e.Device, e.Up, e.OperState)
	}
	kind := "neigh"
	if e.Family == unix.AF_BRIDGE {
		kind = "fdb"
	}
	return fmt.Sprintf("%s %s: %s %s %s %s dst %s", at, e.Target, kind, op, e.Device, e.MAC, e.IP)
}

// KernelWatch records every link and neighbour event of some lab namespaces, from one netlink
// subscription per namespace: what an observer outside the fabric sees the agents do to the kernel.
type KernelWatch struct {
	watchers []*nsWatch
}

type nsWatch struct {
	target string
	sock   *nl.NetlinkSocket
	done   chan struct{}

	mu      sync.Mutex // guards the fields below, written by the reading goroutine
	names   map[int]string
	events  []KernelEvent
	errs    []error
	stopped bool
}

// WatchKernel starts recording link and neighbour events in the namespaces of targets (hosts, VMs
// or roles). Stop it to get the events. A lost event (the socket overflowed) is reported by Stop
// as an error: the record is then incomplete.
func (l *Lab) WatchKernel(targets ...string) (*KernelWatch, error) {
	w := &KernelWatch{}
	for _, target := range targets {
		nw, err := l.watchNamespace(target)
		if err != nil {
			w.Stop()
			return nil, err
		}
		w.watchers = append(w.watchers, nw)
	}
	return w, nil
}

func (l *Lab) watchNamespace(target string) (*nsWatch, error) {
	ns, err := l.TargetNamespace(target)
	if err != nil {
		return nil, err
	}
	var sock *nl.NetlinkSocket
	err = inNamespace(ns, func() error {
		var err error
		sock, err = nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("watch %s: subscribe: %w", target, err)
	}
	// Room for a burst of thousands of FDB events; the forced size needs CAP_NET_ADMIN, which the
	// lab has anyway.
	if err := sock.SetReceiveBufferSize(8<<20, true); err != nil {
		sock.Close()
		return nil, fmt.Errorf("watch %s: receive buffer: %w", target, err)
	}
	// Names of the links that exist now; links created later are named by their own events. The
	// list comes after the subscription, so that no link falls between the two.
	h, err := handleAt(ns)
	if err != nil {
		sock.Close()
		return nil, err
	}
	links, err := h.LinkList()
	h.Close()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		sock.Close()
		return nil, fmt.Errorf("watch %s: list links: %w", target, err)
	}
	w := &nsWatch{target: target, sock: sock, done: make(chan struct{}), names: map[int]string{}}
	for _, link := range links {
		w.names[link.Attrs().Index] = link.Attrs().Name
	}
	go w.read()
	return w, nil
}

func (w *nsWatch) read() {
	defer close(w.done)
	for {
		msgs, from, err := w.sock.Receive()
		w.mu.Lock()
		if w.stopped {
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		if err != nil {
			w.fail(fmt.Errorf("watch %s: receive: %w", w.target, err))
			if errors.Is(err, unix.ENOBUFS) {
				continue // events were lost; later ones still count
			}
			return
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		at := time.Now()
		for _, m := range msgs {
			w.handle(at, unix.NlMsghdr(m.Header), m.Data)
		}
	}
}

func (w *nsWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs = append(w.errs, err)
}

func (w *nsWatch) handle(at time.Time, hdr unix.NlMsghdr, data []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch hdr.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		link, err := netlink.LinkDeserialize(&hdr, data)
		if err != nil {
			w.errs = append(w.errs, fmt.Errorf("watch %s: parse link event: %w", w.target, err))
			return
		}
		a := link.Attrs()
		// A deleted link keeps its name here: neighbour deletions that follow still name it.
		w.names[a.Index] = a.Name
		w.events = append(w.events, KernelEvent{At: at, Target: w.target, Link: true,
			Deleted: hdr.Type == unix.RTM_DELLINK, Device: a.Name, Up: a.RawFlags&unix.IFF_UP != 0, OperState: a.OperState})
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		n, err := netlink.NeighDeserialize(data)
		if err != nil {
			w.errs = append(w.errs, fmt.Errorf("watch %s: parse neighbour event: %w", w.target, err))
			return
		}
		dev, ok := w.names[n.LinkIndex]
		if !ok {
			dev = "if" + strconv.Itoa(n.LinkIndex)
		}
		e := KernelEvent{At: at, Target: w.target, Deleted: hdr.Type == unix.RTM_DELNEIGH, Device: dev,
			Family: n.Family, MAC: n.HardwareAddr}
		if ip, ok := netip.AddrFromSlice(n.IP); ok {
			e.IP = ip.Unmap()
		}
		w.events = append(w.events, e)
	}
}

// Events returns the events recorded so far, by time of arrival (within one namespace, in the order
// the kernel sent them).
func (w *KernelWatch) Events() []KernelEvent {
	var all []KernelEvent
	for _, nw := range w.watchers {
		nw.mu.Lock()
		all = append(all, nw.events...)
		nw.mu.Unlock()
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].At.Before(all[j].At) })
	return all
}

// Stop ends the watch and returns every event recorded, with an error if any was lost or could not
// be read. Safe to call more than once.
func (w *KernelWatch) Stop() ([]KernelEvent, error) {
	var errs []error
	for _, nw := range w.watchers {
		nw.mu.Lock()
		already := nw.stopped
		nw.stopped = true
		nw.mu.Unlock()
		if !already {
			nw.sock.Close()
		}
		<-nw.done
		nw.mu.Lock()
		for _, err := range nw.errs {
			if !errors.Is(err, os.ErrClosed) {
				errs = append(errs, err)
			}
		}
		nw.mu.Unlock()
	}
	return w.Events(), errors.Join(errs...)
}
