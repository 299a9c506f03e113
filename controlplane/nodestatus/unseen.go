package nodestatus

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vxfabric/vxfabric/membership"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Nodes recorded that gossip does not know.
//
// Gossip passes on no death of a member it never knew, and forgets the dead after a while: a server
// started after a host died never hears of that host, and its record would say ALIVE for good.
// Agents that do not know the host from their own gossip (restarted since) take the record and
// forward to it. So while it leads, the writer dials the host of every node recorded that its
// gossip does not know, as a reachability check dials a suspect (membership.HostAnswers, at the
// VTEP's gossip port: any answer of its kernel counts, a refusal too). A host silent in two passes
// unseenConfirm apart (one silent round may be a blip) is recorded Unreachable, and SUSPECT if it
// was ALIVE, which such agents withhold; once it answers again it is reachable, and ALIVE again if
// this check had made it SUSPECT. Nodes registered without gossip (RegisterNode) are checked the
// same way, so their hosts' kernels must answer on the gossip port too (see the README). A host
// recorded unreachable is dialled every unseenSlowPasses passes only.
//
// The check runs beside the lead loop, not in it: a silent host costs ReachAttempts dials of
// ReachTimeout each, and a thousand of them must not hold up the writes of gossip's events.

const (
	// unseenConfirm is how soon a host silent for the first time is dialled again.
	unseenConfirm = 2 * time.Second
	// unseenSlowPasses: a host recorded unreachable is dialled in one pass of this many.
	unseenSlowPasses = 6
	// unseenDials bounds the dials in flight.
	unseenDials = 128
)

// unseenNode is what the check remembers of one node between passes.
type unseenNode struct {
	silent int // passes in a row its host answered nothing
	skip   int // passes to let go by before dialling a host recorded unreachable again
}

// watchUnseen runs checkUnseen at once and then every ResyncInterval (unseenConfirm after a pass
// that found a host silent for the first time) until ctx ends or leadership is lost.
func (w *Writer) watchUnseen(ctx context.Context, lead leadership) {
	nodes := map[string]*unseenNode{}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		confirm, err := w.checkUnseen(ctx, lead, nodes)
		if ctx.Err() != nil || errors.Is(err, errNotLeader) {
			return // the lead loop sees the lost lease too
		}
		if err != nil {
			w.log.Warn("check of recorded nodes that gossip does not know", "err", err)
		}
		next := w.cfg.ResyncInterval
		if confirm {
			next = min(next, unseenConfirm)
		}
		t.Reset(next)
	}
}

// checkUnseen is one pass: it dials the hosts and writes what changed. confirm reports a host silent
// for the first time, to be dialled again soon.
func (w *Writer) checkUnseen(ctx context.Context, lead leadership, nodes map[string]*unseenNode) (confirm bool, err error) {
	resp, err := w.cli.Get(ctx, w.cfg.Prefix+"nodes/", clientv3.WithPrefix())
	if err != nil {
		return false, fmt.Errorf("read nodes: %w", err)
	}
	type probe struct {
		name     string
		addr     string
		state    *unseenNode
		answered bool
	}
	seen := w.gossipNodes()
	recorded := map[string]bool{}
	var probes []*probe
	for _, kv := range resp.Kvs {
		n := &vxfabricv1.Node{}
		if err := proto.Unmarshal(kv.Value, n); err != nil {
			w.log.Warn("node record skipped: undecodable", "key", string(kv.Key), "err", err)
			continue
		}
		vtep, err := netip.ParseAddr(n.GetVtep())
		if err != nil || seen[n.GetName()] {
			continue
		}
		recorded[n.GetName()] = true
		st := nodes[n.GetName()]
		if st == nil {
			st = &unseenNode{}
			nodes[n.GetName()] = st
		}
		if n.GetUnreachable() && st.skip > 0 {
			st.skip--
			continue
		}
		st.skip = 0
		if n.GetUnreachable() {
			st.skip = unseenSlowPasses - 1
		}
		probes = append(probes, &probe{name: n.GetName(), addr: netip.AddrPortFrom(vtep, membership.DefaultPort).String(), state: st})
	}
	for name := range nodes {
		if !recorded[name] {
			delete(nodes, name) // deleted, or known to gossip now
		}
	}

	var wg sync.WaitGroup
	sem := make(chan struct{}, unseenDials)
	for _, p := range probes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			p.answered, _ = w.m.HostAnswers(ctx, p.addr)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return false, err
	}

	seen = w.gossipNodes() // a node that joined meanwhile is gossip's to write
	var errs []error
	for _, p := range probes {
		if seen[p.name] {
			delete(nodes, p.name)
			continue
		}
		if p.answered {
			p.state.silent = 0
		} else {
			p.state.silent++
			if p.state.silent < 2 {
				confirm = true
				continue
			}
		}
		err := w.update(ctx, lead, p.name, func(cur *vxfabricv1.Node) *vxfabricv1.Node {
			if cur == nil || w.gossipNodes()[p.name] {
				return nil // deleted meanwhile, or back in gossip (whose write this must not undo)
			}
			next := proto.CloneOf(cur)
			next.Unreachable = !p.answered
			switch {
			case !p.answered && cur.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_ALIVE:
				next.Status, next.LastChange = vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT, timestamppb.Now()
			case p.answered && cur.GetUnreachable() && cur.GetStatus() == vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT:
				next.Status, next.LastChange = vxfabricv1.NodeStatus_NODE_STATUS_ALIVE, timestamppb.Now()
			}
			return next
		})
		if errors.Is(err, errNotLeader) {
			return false, err
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return confirm, errors.Join(errs...)
}

// gossipNodes is the set of nodes this server's gossip knows an agent of, in any state.
func (w *Writer) gossipNodes() map[string]bool {
	seen := map[string]bool{}
	for _, p := range w.m.Members() {
		if p.Meta.Role == membership.RoleAgent && p.Meta.Node != "" {
			seen[p.Meta.Node] = true
		}
	}
	return seen
}
