//go:build linux

package linux

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A no-op Apply over 10,000 remote ports is dominated by reading two tables of 10,000 entries back.
// netlink.NeighList collects every message, then builds a Neigh (with its own slices) per entry;
// dumpNeigh instead streams the messages through a callback that reads the three fields we compare,
// on a socket of our own per table, so the two dumps run in parallel without allocating per entry.

// neighMsg is one neighbour or FDB entry as the kernel reports it; the slices alias the receive
// buffer and are valid only during the callback.
type neighMsg struct {
	ifindex int32
	state   uint16
	flags   uint8
	lladdr  []byte
	dst     []byte
}

// openDumpSocket opens a NETLINK_ROUTE socket in the current thread's namespace (called on the
// dedicated namespace thread) with a receive buffer large enough for a burst of dump messages.
var netnsNone = netns.None()

func openDumpSocket() (*nl.SocketHandle, error) {
	s, err := nl.GetNetlinkSocketAt(netnsNone, netnsNone, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	_ = s.SetReceiveBufferSize(1<<20, false)
	return &nl.SocketHandle{Socket: s}, nil
}

// neighDumpRequest asks for the entries of one device and family. The kernel filters a neighbour
// dump by its NDA_IFINDEX attribute. An FDB dump it filters by bridge port only when the request's
// header is a struct ifinfomsg naming the port (as iproute2's `bridge fdb show dev` sends): a bare
// struct ndmsg takes the kernel's legacy path, which dumps the FDB of every device of the host.
func neighDumpRequest(sh *nl.SocketHandle, family, ifindex int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, unix.NLM_F_DUMP)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: sh}
	if family == unix.AF_BRIDGE {
		msg := nl.NewIfInfomsg(unix.AF_BRIDGE)
		msg.Index = int32(ifindex)
		req.AddData(msg)
		return req
	}
	req.AddData(&netlink.Ndmsg{Family: uint8(family), Index: uint32(ifindex)})
	req.AddData(nl.NewRtAttr(unix.NDA_IFINDEX, nl.Uint32Attr(uint32(ifindex))))
	return req
}

// dumpNeigh dumps the entries of one device and family (AF_BRIDGE for the FDB, AF_INET for the
// neighbour table). reset is called before each attempt: an interrupted dump (the table changed
// while it was read) is retried from scratch, a bounded number of times.
func dumpNeigh(sh *nl.SocketHandle, family, ifindex int, reset func(), fn func(m *neighMsg)) error {
	var err error
	for range 10 {
		reset()
		req := neighDumpRequest(sh, family, ifindex)
		var m neighMsg
		err = req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEIGH, func(b []byte) bool {
			if parseNeigh(b, &m) && int(m.ifindex) == ifindex {
				fn(&m)
			}
			return true
		})
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("dump family %d of link %d: %w", family, ifindex, err)
	}
	return nil
}

// parseNeigh reads struct ndmsg and the NDA_DST and NDA_LLADDR attributes.
func parseNeigh(b []byte, m *neighMsg) bool {
	const ndmsgLen = 12
	if len(b) < ndmsgLen {
		return false
	}
	ne := nl.NativeEndian()
	m.ifindex = int32(ne.Uint32(b[4:8]))
	m.state = ne.Uint16(b[8:10])
	m.flags = b[10]
	m.lladdr, m.dst = nil, nil
	for a := b[ndmsgLen:]; len(a) >= 4; {
		l := int(binary.NativeEndian.Uint16(a[0:2]))
		typ := binary.NativeEndian.Uint16(a[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(a) {
			return false
		}
		switch typ {
		case unix.NDA_DST:
			m.dst = a[4:l]
		case unix.NDA_LLADDR:
			m.lladdr = a[4:l]
		}
		next := (l + 3) &^ 3
		if next > len(a) {
			break
		}
		a = a[next:]
	}
	return true
}
