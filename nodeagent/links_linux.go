package nodeagent

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkLinks watches RTM_NEWLINK/RTM_DELLINK in one network namespace.
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
	defer func() {
		close(done)
		for range updates { // the subscription closes it once its socket is closed
		}
	}()
	if !first {
		resync()
	}
	names := map[int]string{} // ifindex -> name
	var lastErr error
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
		case u, ok := <-updates:
			if !ok {
				if lastErr != nil {
					return lastErr
				}
				return errLinkStream
			}
			idx := u.Attrs().Index
			name := u.Attrs().Name
			old, known := names[idx]
			switch u.Header.Type {
			case unix.RTM_NEWLINK:
				if known && old == name {
					continue
				}
				names[idx] = name
				if known {
					changed(old)
				}
				changed(name)
			case unix.RTM_DELLINK:
				delete(names, idx)
				if known {
					changed(old)
				} else {
					changed(name)
				}
			}
		}
	}
}
