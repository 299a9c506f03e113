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
		case notOurs(l, n.VNI) != nil:
			return overlay.Result{}, fmt.Errorf("%w: %w", notOurs(l, n.VNI), overlay.ErrNotProgrammed)
		}
		idx[i] = l.Attrs().Index
	}
	var res entryResult
	for i, n := range delta.Networks {
		for _, e := range n.SetFDB {
			vtep := e.VTEP.Unmap()
			d.setEntry(&res, overlay.FDBObject(n.VNI, e.MAC, vtep), fdbEntry(idx[i], e.MAC, vtep))
		}
		for _, v := range n.AddFlood {
			v = v.Unmap()
			err := d.h.NeighAppend(floodEntry(idx[i], v))
			if err != nil && !errors.Is(err, unix.EEXIST) {
				res.fail(overlay.FloodObject(n.VNI, v), fmt.Errorf("append: %w", err))
				continue
			}
			res.change(overlay.OpAdd, overlay.FloodObject(n.VNI, v))
		}
		for _, e := range n.SetNeigh {
			ip := e.IP.Unmap()
			d.setEntry(&res, overlay.NeighObject(n.VNI, ip, e.MAC), arpEntry(idx[i], ip, e.MAC))
		}
	}
	for i, n := range delta.Networks {
		for _, e := range n.DelFDB {
			vtep := e.VTEP.Unmap()
			deleteEntry(d.h, &res, overlay.FDBObject(n.VNI, e.MAC, vtep), fdbEntry(idx[i], e.MAC, vtep))
		}
		for _, v := range n.DelFlood {
			v = v.Unmap()
			deleteEntry(d.h, &res, overlay.FloodObject(n.VNI, v), floodEntry(idx[i], v))
		}
		for _, e := range n.DelNeigh {
			ip := e.IP.Unmap()
			deleteEntry(d.h, &res, overlay.NeighObject(n.VNI, ip, e.MAC), arpEntry(idx[i], ip, e.MAC))
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
