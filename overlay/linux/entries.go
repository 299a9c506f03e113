//go:build linux

package linux

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/overlay"
)

// entryResult is what one table's reconcile did; the FDB and neighbour tables are reconciled
// concurrently and merged in a fixed order afterwards.
type entryResult struct {
	changes []overlay.Change
	errs    []overlay.ObjectError
}

func (e *entryResult) change(op overlay.Op, obj string) {
	e.changes = append(e.changes, overlay.Change{Op: op, Object: obj})
}

func (e *entryResult) fail(obj string, err error) {
	e.errs = append(e.errs, overlay.ObjectError{Object: obj, Err: err})
}

type macKey [6]byte

func keyOf(m net.HardwareAddr) macKey {
	var k macKey
	copy(k[:], m)
	return k
}

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// The entries of a vxlan device (index vx), one constructor each, so that Apply and ApplyDelta write
// exactly the same objects (a difference would read as drift on the next full pass).

// fdbEntry sends frames for mac to vtep.
func fdbEntry(vx int, mac net.HardwareAddr, vtep netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: vx, Family: unix.AF_BRIDGE, State: unix.NUD_PERMANENT | unix.NUD_NOARP,
		Flags: unix.NTF_SELF, HardwareAddr: mac, IP: vtep.AsSlice()}
}

// learnedEntry is the bridge's entry for mac on the vxlan port (what it learned there).
func learnedEntry(vx int, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: vx, Family: unix.AF_BRIDGE, Flags: unix.NTF_MASTER, HardwareAddr: mac}
}

// portEntry pins a local port's MAC to its interface in the bridge: static (it never ages out, so
// frames for a quiet VM are not flooded) and sticky (a frame with that source MAC arriving on
// another port, the tunnel or a bridged network's LAN, does not move it there).
func portEntry(port int, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: port, Family: unix.AF_BRIDGE, State: unix.NUD_NOARP,
		Flags: unix.NTF_MASTER | netlink.NTF_STICKY, HardwareAddr: mac}
}

// portPins reads the bridge's entries on a port (ifindex): whether mac is pinned there as portEntry
// makes it, and the other MACs pinned there (stale: the port's interface carried another port).
func portPins(dump *nl.SocketHandle, port int, mac net.HardwareAddr) (pinned bool, stale []net.HardwareAddr, err error) {
	err = dumpNeigh(dump, unix.AF_BRIDGE, port, func() { pinned, stale = false, stale[:0] }, func(e *neighMsg) {
		if e.flags&unix.NTF_SELF != 0 || e.flags&netlink.NTF_STICKY == 0 || e.state != unix.NUD_NOARP || len(e.lladdr) != 6 {
			return
		}
		if bytes.Equal(e.lladdr, mac) {
			pinned = true
		} else {
			stale = append(stale, slices.Clone(net.HardwareAddr(e.lladdr)))
		}
	})
	return pinned, stale, err
}

// floodEntry adds vtep to the head-end replication list (the all-zero MAC).
func floodEntry(vx int, vtep netip.Addr) *netlink.Neigh { return fdbEntry(vx, zeroMAC, vtep) }

// arpEntry answers ARP requests for ip with mac (ARP suppression through the vxlan proxy flag).
func arpEntry(vx int, ip netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: vx, Family: unix.AF_INET, State: unix.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
}

// deleteEntry removes an entry and records it; one already gone is success and no change.
func deleteEntry(h *netlink.Handle, res *entryResult, obj string, n *netlink.Neigh) {
	err := h.NeighDel(n)
	switch {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		res.fail(obj, fmt.Errorf("delete: %w", err))
	default:
		res.change(overlay.OpDelete, obj)
	}
}

// syncFDB reads the vxlan device's FDB with one per-device dump, indexes it by MAC, writes the
// missing or wrong unicast entries (NeighSet replaces in place: no delete and re-add), appends the
// missing flood entries, and only then deletes what is stale.
//
// The dump also holds the bridge's own entries for the vxlan port: the MACs it learned
// from frames that came through the tunnel. Those are the bridge's, except one for a local port's
// MAC: the VM was behind the tunnel before it came to this host (a migration), and until it sends a
// frame itself, or the entry ages out (300 s), the bridge would keep sending its frames into the
// tunnel, where nobody has it any more. Such an entry is deleted, for the MACs in local: the local
// ports whose interfaces exist (the VM is here); the bridge then floods the VM's frames to its
// ports, the VM's among them, until it learns the VM's port.
func syncFDB(h *netlink.Handle, dump *nl.SocketHandle, n overlay.Network, vxIndex int, local map[macKey]bool) entryResult {
	var res entryResult
	dev := overlay.VxlanName(n.VNI)
	type fdbState struct {
		vtep netip.Addr
		perm bool
	}
	var have map[macKey]fdbState
	var haveFlood map[netip.Addr]bool
	var stale []macKey // learned on the vxlan port, of a local port
	err := dumpNeigh(dump, unix.AF_BRIDGE, vxIndex, func() {
		have = make(map[macKey]fdbState, len(n.Remotes))
		haveFlood = make(map[netip.Addr]bool)
		stale = stale[:0]
	}, func(e *neighMsg) {
		if len(e.lladdr) != 6 {
			return
		}
		if e.flags&unix.NTF_SELF == 0 {
			// The bridge's entry for the port (the kernel names its bridge in NDA_MASTER and sets
			// no NTF_SELF). Only what it learned (reachable or stale) is stale here: not the port's
			// own address (permanent), nor an entry someone added (static, or learned by another
			// controller).
			learned := e.state&(unix.NUD_REACHABLE|unix.NUD_STALE) != 0 && e.flags&unix.NTF_EXT_LEARNED == 0
			if k := macKey(e.lladdr); local[k] && learned {
				stale = append(stale, k)
			}
			return
		}
		if e.dst == nil {
			return
		}
		ip, ok := netip.AddrFromSlice(e.dst)
		if !ok {
			return
		}
		ip = ip.Unmap()
		k := macKey(e.lladdr)
		if k == (macKey{}) {
			haveFlood[ip] = true
			return
		}
		have[k] = fdbState{vtep: ip, perm: e.state&unix.NUD_PERMANENT != 0}
	})
	if err != nil {
		res.fail("fdb "+dev, err)
		return res
	}
	want := make(map[macKey]bool, len(n.Remotes))
	for _, rp := range n.Remotes {
		k := keyOf(rp.MAC)
		if want[k] {
			continue // the first listing of a MAC wins, as in the fake
		}
		want[k] = true
		vtep := rp.VTEP.Unmap()
		cur, ok := have[k]
		if ok && cur.vtep == vtep && cur.perm {
			continue
		}
		obj := overlay.FDBObject(n.VNI, rp.MAC, vtep)
		err := h.NeighSet(fdbEntry(vxIndex, rp.MAC, vtep))
		if err != nil {
			res.fail(obj, fmt.Errorf("set: %w", err))
			continue
		}
		if ok {
			res.change(overlay.OpUpdate, obj)
		} else {
			res.change(overlay.OpAdd, obj)
		}
	}
	wantFlood := make(map[netip.Addr]bool, len(n.Flood))
	for _, v := range n.Flood {
		v = v.Unmap()
		if wantFlood[v] {
			continue
		}
		wantFlood[v] = true
		if haveFlood[v] {
			continue
		}
		err := h.NeighAppend(floodEntry(vxIndex, v))
		if err != nil && !errors.Is(err, unix.EEXIST) {
			res.fail(overlay.FloodObject(n.VNI, v), fmt.Errorf("append: %w", err))
			continue
		}
		res.change(overlay.OpAdd, overlay.FloodObject(n.VNI, v))
	}
	for _, k := range stale {
		mac := net.HardwareAddr(k[:])
		deleteEntry(h, &res, overlay.LearnedObject(n.VNI, mac), learnedEntry(vxIndex, mac))
	}
	for _, k := range sortedKeys(have, func(a, b macKey) int { return bytes.Compare(a[:], b[:]) }) {
		if want[k] {
			continue
		}
		cur := have[k]
		mac := net.HardwareAddr(k[:])
		deleteEntry(h, &res, overlay.FDBObject(n.VNI, mac, cur.vtep), fdbEntry(vxIndex, mac, cur.vtep))
	}
	for _, v := range sortedKeys(haveFlood, netip.Addr.Compare) {
		if wantFlood[v] {
			continue
		}
		deleteEntry(h, &res, overlay.FloodObject(n.VNI, v), floodEntry(vxIndex, v))
	}
	return res
}

// syncNeigh keeps one permanent IPv4 neighbour entry per remote port on the vxlan device, which
// the vxlan proxy flag answers ARP requests from (ARP suppression). Every entry on our vxlan device
// is ours. Bridged networks have no proxy flag and so no entries.
func syncNeigh(h *netlink.Handle, dump *nl.SocketHandle, n overlay.Network, vxIndex int) entryResult {
	var res entryResult
	dev := overlay.VxlanName(n.VNI)
	type neighState struct {
		mac  macKey
		perm bool
	}
	var have map[netip.Addr]neighState
	err := dumpNeigh(dump, unix.AF_INET, vxIndex, func() {
		have = make(map[netip.Addr]neighState, len(n.Remotes))
	}, func(e *neighMsg) {
		ip, ok := netip.AddrFromSlice(e.dst)
		if !ok || len(e.lladdr) != 6 {
			return
		}
		have[ip.Unmap()] = neighState{mac: macKey(e.lladdr), perm: e.state&unix.NUD_PERMANENT != 0}
	})
	if err != nil {
		res.fail("neigh "+dev, err)
		return res
	}
	want := make(map[netip.Addr]bool, len(n.Remotes))
	if n.Proxy() {
		for _, rp := range n.Remotes {
			ip := rp.IP.Unmap()
			if !ip.Is4() || want[ip] {
				continue
			}
			want[ip] = true
			cur, ok := have[ip]
			if ok && cur.mac == keyOf(rp.MAC) && cur.perm {
				continue
			}
			obj := overlay.NeighObject(n.VNI, ip, rp.MAC)
			err := h.NeighSet(arpEntry(vxIndex, ip, rp.MAC))
			if err != nil {
				res.fail(obj, fmt.Errorf("set: %w", err))
				continue
			}
			if ok {
				res.change(overlay.OpUpdate, obj)
			} else {
				res.change(overlay.OpAdd, obj)
			}
		}
	}
	for _, ip := range sortedKeys(have, netip.Addr.Compare) {
		if want[ip] {
			continue
		}
		cur := have[ip]
		mac := net.HardwareAddr(cur.mac[:])
		deleteEntry(h, &res, overlay.NeighObject(n.VNI, ip, mac), arpEntry(vxIndex, ip, mac))
	}
	return res
}

// sortedKeys returns a map's keys in order, so that deletions are reported deterministically.
func sortedKeys[K comparable, V any](m map[K]V, cmp func(a, b K) int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmp)
	return keys
}
