package nodeagent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/vxfabric/vxfabric/overlay"
	"golang.org/x/sys/unix"
)

// NetlinkLinks watches RTM_NEWLINK/RTM_DELLINK in one network namespace, RTM_DELNEIGH on our
// vxlan devices, and IPv4 addresses: an interface that appears, goes, is renamed, goes down or
// changes master is reported, and so is a vxlan device that lost an FDB or neighbour entry (as
// changed(its name)), so that drift of our own objects is repaired at once, not at the next periodic
// pass; an IPv4 address that comes or goes on an interface not of ours asks for a full pass (resync):
// the VTEP address may have come, or the host's underlay subnets changed.
type NetlinkLinks struct {
	// Namespace to watch; nil: the namespace of the calling process.
	Namespace *netns.NsHandle
	Logger    *slog.Logger
}

// Run subscribes (listing existing links first), reports appearances and disappearances, and
// resubscribes with a resync after any receive error: ENOBUFS means events were dropped.
func (w NetlinkLinks) Run(ctx context.Context, changed func(string), resync func()) error {
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	retry := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := w.runOnce(ctx, changed, resync, first)
		if ctx.Err() != nil {
			return nil
		}
		first = false
		log.Warn("link watch lost, resubscribing with a full resync", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retry):
		}
		retry = min(2*retry, 5*time.Second)
	}
	return nil
}

var errLinkStream = errors.New("link event stream ended")

func (w NetlinkLinks) runOnce(ctx context.Context, changed func(string), resync func(), first bool) error {
	updates := make(chan netlink.LinkUpdate, 1024)
	done := make(chan struct{})
	errs := make(chan error, 1)
	opts := netlink.LinkSubscribeOptions{
		Namespace:    w.Namespace,
		ListExisting: true,
		// Room for bursts (a hypervisor creating many taps) before ENOBUFS.
		ReceiveBufferSize: 4 << 20,
		ErrorCallback: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		close(done)
		return err
	}
	neighs := make(chan netlink.NeighUpdate, 1024)
	neighDone := make(chan struct{})
	nopts := netlink.NeighSubscribeOptions{Namespace: w.Namespace, ErrorCallback: opts.ErrorCallback, ReceiveBufferSize: 4 << 20}
	if err := netlink.NeighSubscribeWithOptions(neighs, neighDone, nopts); err != nil {
		close(neighDone)
		neighs = nil // links alone: drift of entries waits for the periodic pass
		w.logger().Warn("neighbour watch unavailable: FDB drift is repaired by the periodic pass only", "err", err)
	}
	addrs := make(chan netlink.AddrUpdate, 256)
	addrDone := make(chan struct{})
	aopts := netlink.AddrSubscribeOptions{Namespace: w.Namespace, ErrorCallback: opts.ErrorCallback, ReceiveBufferSize: 1 << 20,
		ListExisting: true} // so that a lifetime update (a DHCP renewal) is known as one
	if err := netlink.AddrSubscribeWithOptions(addrs, addrDone, aopts); err != nil {
		close(addrDone)
		addrs = nil // a VTEP address that comes or goes waits for the periodic pass
		w.logger().Warn("address watch unavailable: a VTEP address that comes or goes is seen by the periodic pass only", "err", err)
	}
	defer func() {
		close(done)
		for range updates { // the subscription closes it once its socket is closed
		}
		if neighs != nil {
			close(neighDone)
			for range neighs {
			}
		}
		if addrs != nil {
			close(addrDone)
			for range addrs {
			}
		}
	}()
	if !first {
		resync()
	}
	links := map[int]linkState{} // ifindex -> what the last event said
	addrSeen := map[addrKey]bool{}
	var addrDue <-chan time.Time // a resync for address changes is due (nil: none pending)
	var lastAddrResync time.Time
	var lastErr error
	// ended is Run's error once a subscription closed its channel: the receive error that closed it,
	// if one was reported.
	ended := func() error {
		if lastErr != nil {
			return lastErr
		}
		return errLinkStream
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			// A receive error (ENOBUFS: events were dropped) also closes the stream, handled below;
			// the others concern one message.
			lastErr = err
			if errors.Is(err, netlink.ErrDumpInterrupted) {
				resync()
			}
		case u, ok := <-addrs:
			if !ok {
				return ended()
			}
			// An IPv4 address of the host came or went: the VTEP may be there now (or gone), and the
			// subnets the agent reports as the host's underlay changed. Our devices' own addresses
			// (a gateway on a bridge) are ours to set, not news; nor is a new lifetime of an address
			// (a DHCP renewal). A burst of changes costs one pass, and passes for addresses come at
			// most once per addrResyncGap.
			st, known := links[u.LinkIndex]
			k := addrKey{u.LinkIndex, u.LinkAddress.String()}
			if u.LinkAddress.IP.To4() == nil || known && overlay.IsDeviceName(st.name) || addrSeen[k] == u.NewAddr {
				continue
			}
			if u.NewAddr {
				addrSeen[k] = true
			} else {
				delete(addrSeen, k)
			}
			if addrDue == nil {
				addrDue = time.After(max(addrSettle, addrResyncGap-time.Since(lastAddrResync)))
			}
		case <-addrDue:
			addrDue, lastAddrResync = nil, time.Now()
			resync()
		case u, ok := <-neighs:
			if !ok {
				return ended()
			}
			// Only the deletion of an entry like ours (permanent, on the device itself, not one
			// the bridge learned and ages out) is drift: nobody else should remove them.
			st, known := links[u.LinkIndex]
			if u.Type == unix.RTM_DELNEIGH && known && strings.HasPrefix(st.name, overlay.VxlanPrefix) &&
				u.State&netlink.NUD_PERMANENT != 0 && u.MasterIndex == 0 && u.Flags&netlink.NTF_MASTER == 0 {
				changed(st.name)
			}
		case u, ok := <-updates:
			if !ok {
				return ended()
			}
			idx := u.Attrs().Index
			now := linkState{name: u.Attrs().Name, up: u.Attrs().Flags&net.FlagUp != 0, master: u.Attrs().MasterIndex}
			old, known := links[idx]
			switch u.Header.Type {
			case unix.RTM_NEWLINK:
				if known && old == now {
					continue
				}
				links[idx] = now
				if known && old.name != now.name {
					changed(old.name)
				}
				changed(now.name)
			case unix.RTM_DELLINK:
				delete(links, idx)
				if known {
					changed(old.name)
				} else {
					changed(now.name)
				}
			}
		}
	}
}

// addrKey is an IPv4 address of the host as NetlinkLinks remembers it: its link and its prefix.
type addrKey struct {
	link   int
	prefix string
}

// addrSettle is how long an address change waits for others before it asks for a pass;
// addrResyncGap is the least time between two such passes.
const (
	addrSettle    = 100 * time.Millisecond
	addrResyncGap = time.Second
)

// linkState is what NetlinkLinks remembers of a link: a change of any of it is reported.
type linkState struct {
	name   string
	up     bool
	master int
}

func (w NetlinkLinks) logger() *slog.Logger {
	if w.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return w.Logger
}
