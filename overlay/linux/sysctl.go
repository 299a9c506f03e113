//go:build linux

package linux

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/overlay"
)

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// inNetns runs f on a fresh OS thread that has entered the target namespace. The thread stays
// locked and is never switched back: when the goroutine ends, the runtime discards it, so no other
// goroutine ever runs in a namespace it did not ask for.
func (d *Datapath) inNetns(f func() error) error {
	if !d.ns.IsOpen() {
		return f()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := unix.Setns(int(d.ns), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("enter netns %q: %w", d.cfg.NetNS, err)
			return
		}
		done <- f()
	}()
	return <-done
}

// readSysctl and writeSysctl work on /proc/sys in the target namespace.
func (d *Datapath) readSysctl(path string) (string, error) {
	var v string
	err := d.inNetns(func() error {
		b, err := os.ReadFile(path)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

func (d *Datapath) writeSysctl(path, value string) error {
	if d.failSysctlWrite != nil {
		if err := d.failSysctlWrite(path, value); err != nil {
			return err
		}
	}
	return d.inNetns(func() error { return os.WriteFile(path, []byte(value), 0o644) })
}

// bridgeARP is the ARP behaviour of every bridge of ours, whatever conf/default says: the host
// answers only for addresses on the bridge itself (an isolated network's bridge has none, so its
// VMs get no answer at all; a nat or routed one answers for its gateway), and its own requests name
// one of those as their sender, not the source address of the packet that needs the answer (an
// underlay address, when the host itself sends). Linux's defaults answer on any interface for any
// address of the host (unless reverse-path filtering happens to refuse the asker).
var bridgeARP = []sysctlValue{{"arp_ignore", "1"}, {"arp_announce", "2"}}

// sysctlValue is one setting under a device's /proc/sys/net/ipv4/conf directory.
type sysctlValue struct{ name, value string }

// syncDeviceSysctls sets device's IPv4 settings to values where they differ, in one visit of the
// target namespace, and reports whether it changed any.
func (d *Datapath) syncDeviceSysctls(device string, values []sysctlValue) (changed bool, err error) {
	dir := "/proc/sys/net/ipv4/conf/" + device + "/"
	err = d.inNetns(func() error {
		for _, v := range values {
			path := dir + v.name
			b, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("read %s: %w", v.name, err)
			}
			if strings.TrimSpace(string(b)) == v.value {
				continue
			}
			if d.failSysctlWrite != nil {
				err = d.failSysctlWrite(path, v.value)
			}
			if err == nil {
				err = os.WriteFile(path, []byte(v.value), 0o644)
			}
			if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				err = fmt.Errorf("%w: %w", overlay.ErrSettingRefused, err)
			}
			if err != nil {
				return fmt.Errorf("set %s to %s: %w", v.name, v.value, err)
			}
			changed = true
		}
		return nil
	})
	return changed, err
}

// forwardingOn turns IPv4 forwarding on when a nat or routed network exists and records, as a
// marker chain in our table, that we did; if it is on already we leave it and record nothing.
func (r *run) forwardingOn() {
	if !r.desired.NeedsForwarding() {
		return
	}
	v, err := r.d.readSysctl(ipForwardPath)
	if err != nil {
		r.fail(overlay.ForwardingObject, fmt.Errorf("read: %w", err))
		return
	}
	if v == "1" {
		return
	}
	if r.unguarded != nil {
		// The forward rules that keep networks apart may be missing: routing without them
		// would join them.
		r.fail(overlay.ForwardingObject, fmt.Errorf("not turned on until the forward rules are in place: %w", r.unguarded))
		return
	}
	// Marker first: if we crash between the two writes, the next process still turns it off.
	if err := r.nftSetForwardingMark(true); err != nil {
		r.fail(overlay.ForwardingObject, fmt.Errorf("record: %w", err))
		return
	}
	if err := r.d.writeSysctl(ipForwardPath, "1"); err != nil {
		r.fail(overlay.ForwardingObject, fmt.Errorf("write: %w", err))
		return
	}
	r.change(overlay.OpUpdate, overlay.ForwardingObject+"=1")
}

// forwardingOff turns forwarding off when no network routes any more, but only if our marker says
// we turned it on.
func (r *run) forwardingOff() {
	if r.desired.NeedsForwarding() || !r.nft.forwardingMark {
		return
	}
	v, err := r.d.readSysctl(ipForwardPath)
	if err != nil {
		r.fail(overlay.ForwardingObject, fmt.Errorf("read: %w", err))
		r.keepForwardingMark = true
		return
	}
	if v != "0" {
		if err := r.d.writeSysctl(ipForwardPath, "0"); err != nil {
			r.fail(overlay.ForwardingObject, fmt.Errorf("write: %w", err))
			r.keepForwardingMark = true
			return
		}
		r.change(overlay.OpUpdate, overlay.ForwardingObject+"=0")
	}
	if err := r.nftSetForwardingMark(false); err != nil {
		r.fail(overlay.ForwardingObject, fmt.Errorf("clear record: %w", err))
	}
}

// deleteLinkGroup deletes every link of a group with one RTM_DELLINK (`ip link delete group N`);
// netlink's Handle has no call for it, so the request goes over a socket of our own in the target
// namespace.
func (d *Datapath) deleteLinkGroup(group uint32) error {
	var s *nl.NetlinkSocket
	err := d.inNetns(func() error {
		var err error
		s, err = nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer s.Close()
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
	if err := s.Send(req); err != nil {
		return fmt.Errorf("send delete group %d: %w", group, err)
	}
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return fmt.Errorf("receive ack for group %d: %w", group, err)
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("short netlink ack")
			}
			if code := int32(nl.NativeEndian().Uint32(m.Data[:4])); code != 0 {
				return fmt.Errorf("delete group %d: %w", group, unix.Errno(-code))
			}
			return nil
		}
	}
}
