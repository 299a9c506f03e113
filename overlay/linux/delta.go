//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/overlay"
)

// ApplyDelta implements overlay.Datapath. It dumps nothing: one request per vxlan device to find it,
// then one request per entry (two for an entry that is replaced: the exclusive create that tells an
// add from an update, then the replace). The periodic Apply stays the repair of drift.
func (d *Datapath) ApplyDelta(ctx context.Context, delta overlay.Delta) (overlay.Result, error) {
	if err := delta.Validate(); err != nil {
		return overlay.Result{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return overlay.Result{}, ErrClosed
	}
	idx := make([]int, len(delta.Networks))
	for i, n := range delta.Networks {
		if err := ctx.Err(); err != nil {
			return overlay.Result{}, err
		}
		name := overlay.VxlanName(n.VNI)
		l, err := d.h.LinkByName(name)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			return overlay.Result{}, fmt.Errorf("vxlan %q: %w", name, overlay.ErrNotProgrammed)
		case err != nil:
			return overlay.Result{}, fmt.Errorf("find vxlan %q: %w", name, err)
		case l.Type() != "vxlan":
			return overlay.Result{}, fmt.Errorf("%q is a %s device: %w", name, l.Type(), overlay.ErrNotProgrammed)
		}
		idx[i] = l.Attrs().Index
	}
	var res entryResult
	for i, n := range delta.Networks {
		for _, e := range n.SetFDB {
			vtep := e.VTEP.Unmap()
			d.setEntry(&res, overlay.FDBObject(n.VNI, e.MAC, vtep), &netlink.Neigh{LinkIndex: idx[i], Family: unix.AF_BRIDGE,
				State: unix.NUD_PERMANENT | unix.NUD_NOARP, Flags: unix.NTF_SELF, HardwareAddr: e.MAC, IP: vtep.AsSlice()})
		}
		for _, v := range n.AddFlood {
			v = v.Unmap()
			err := d.h.NeighAppend(&netlink.Neigh{LinkIndex: idx[i], Family: unix.AF_BRIDGE,
				State: unix.NUD_PERMANENT | unix.NUD_NOARP, Flags: unix.NTF_SELF, HardwareAddr: zeroMAC, IP: v.AsSlice()})
			if err != nil && !errors.Is(err, unix.EEXIST) {
				res.fail(overlay.FloodObject(n.VNI, v), fmt.Errorf("append: %w", err))
				continue
			}
			res.change(overlay.OpAdd, overlay.FloodObject(n.VNI, v))
		}
		for _, e := range n.SetNeigh {
			ip := e.IP.Unmap()
			d.setEntry(&res, overlay.NeighObject(n.VNI, ip, e.MAC), &netlink.Neigh{LinkIndex: idx[i], Family: unix.AF_INET,
				State: unix.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: e.MAC})
		}
	}
	for i, n := range delta.Networks {
		for _, e := range n.DelFDB {
			vtep := e.VTEP.Unmap()
			d.delEntry(&res, overlay.FDBObject(n.VNI, e.MAC, vtep), &netlink.Neigh{LinkIndex: idx[i], Family: unix.AF_BRIDGE,
				Flags: unix.NTF_SELF, HardwareAddr: e.MAC, IP: vtep.AsSlice()})
		}
		for _, v := range n.DelFlood {
			v = v.Unmap()
			d.delEntry(&res, overlay.FloodObject(n.VNI, v), &netlink.Neigh{LinkIndex: idx[i], Family: unix.AF_BRIDGE,
				Flags: unix.NTF_SELF, HardwareAddr: zeroMAC, IP: v.AsSlice()})
		}
		for _, e := range n.DelNeigh {
			ip := e.IP.Unmap()
			d.delEntry(&res, overlay.NeighObject(n.VNI, ip, e.MAC), &netlink.Neigh{LinkIndex: idx[i], Family: unix.AF_INET, IP: ip.AsSlice()})
		}
	}
	out := overlay.Result{Changes: res.changes, Errors: res.errs}
	errs := make([]error, len(res.errs))
	for i, e := range res.errs {
		errs[i] = e
		d.log.Warn("datapath object not converged", "object", e.Object, "err", e.Err)
	}
	return out, errors.Join(errs...)
}

// setEntry creates an FDB or neighbour entry, or replaces it when one with its key exists: an
// exclusive create first, so that the change reports an add or an update as Apply does.
func (d *Datapath) setEntry(res *entryResult, obj string, n *netlink.Neigh) {
	err := d.h.NeighAdd(n)
	if err == nil {
		res.change(overlay.OpAdd, obj)
		return
	}
	if !errors.Is(err, unix.EEXIST) {
		res.fail(obj, fmt.Errorf("add: %w", err))
		return
	}
	if err := d.h.NeighSet(n); err != nil {
		res.fail(obj, fmt.Errorf("set: %w", err))
		return
	}
	res.change(overlay.OpUpdate, obj)
}

// delEntry removes an entry; one already gone is success and no change.
func (d *Datapath) delEntry(res *entryResult, obj string, n *netlink.Neigh) {
	err := d.h.NeighDel(n)
	switch {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		res.fail(obj, fmt.Errorf("delete: %w", err))
	default:
		res.change(overlay.OpDelete, obj)
	}
}
