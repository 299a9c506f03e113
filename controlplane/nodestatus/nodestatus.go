// Package nodestatus publishes what gossip says about agent nodes into the store: nodes/<name> holds
// each node's VTEP, status (ALIVE, SUSPECT, DEAD, LEFT), last status change and version. It runs in
// every `vxfab server`, but only the one elected under leader/ (an etcd election whose lease dies with
// its server) writes, so N servers do not write N times. On winning the election it reconciles the
// whole member list; then it writes on every change, and only what changed.
//
// It never writes any key but nodes/<name>, never deletes one, and keeps the fields it does not own
// (a node recorded by RegisterNode keeps them). SUSPECT is the elected server's own view (see
// package membership); DEAD and LEFT are the cluster's. Unreachable is the elected server's own
// dials of a SUSPECT, DEAD or LEFT node's host: agents that do not know the node from gossip
// withhold its entries on it. The host of a node recorded that the elected server's gossip does not
// know at all (it died before this server started: gossip passes on no death of a member it never
// knew) is dialled too, and the node recorded Unreachable while it answers nothing (unseen.go).
package nodestatus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vxfabric/vxfabric/controlplane/store"
	"github.com/vxfabric/vxfabric/membership"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Config tunes a Writer.
type Config struct {
	// Prefix is the fabric's key prefix. Default "/vxfabric/v1/".
	Prefix string
	// SessionTTL is the election lease in seconds: a dead leader's successor waits at most this long.
	// Default 5.
	SessionTTL int
	// Identity is the value this candidate publishes under leader/. Default: the gossip member name.
	Identity string
	// ResyncInterval is the period of the full reconcile that also retries failed writes. Default 10 s.
	ResyncInterval time.Duration
	Logger         *slog.Logger
	// Registerer receives the writer's metrics; nil: not exported.
	Registerer prometheus.Registerer
}

// Default returns the configuration `vxfab server` uses.
func Default() Config {
	return Config{Prefix: "/vxfabric/v1/", SessionTTL: 5, ResyncInterval: 10 * time.Second}
}

// Validate reports a configuration the writer cannot run with.
func (c Config) Validate() error {
	if c.Prefix == "" || c.Prefix[len(c.Prefix)-1] != '/' {
		return fmt.Errorf("node status prefix %q must be non-empty and end in /", c.Prefix)
	}
	if c.SessionTTL < 1 || c.ResyncInterval <= 0 {
		return errors.New("node status session ttl and resync interval must be positive")
	}
	return nil
}

// Writer is one server's candidacy for writing node status.
type Writer struct {
	cli    *clientv3.Client
	m      *membership.Member
	cfg    Config
	log    *slog.Logger
	leader prometheus.Gauge
	writes prometheus.Counter
}

// New returns a writer; zero fields of cfg take Default's values.
func New(cli *clientv3.Client, m *membership.Member, cfg Config) *Writer {
	d := Default()
	if cfg.Prefix == "" {
		cfg.Prefix = d.Prefix
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = d.SessionTTL
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = d.ResyncInterval
	}
	if cfg.Identity == "" {
		cfg.Identity = m.Name()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Writer{
		cli: cli, m: m, cfg: cfg, log: cfg.Logger,
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_nodestatus_leader",
			Help: "1 while this server is the one writing node status from gossip."}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "vxfabric_nodestatus_writes_total",
			Help: "Node records written from gossip."}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(w.leader, w.writes)
	}
	return w
}

// Run campaigns with the defaults until ctx ends; see Writer.Run.
func Run(ctx context.Context, cli *clientv3.Client, m *membership.Member, log *slog.Logger) error {
	cfg := Default()
	cfg.Logger = log
	return New(cli, m, cfg).Run(ctx)
}

// Run campaigns for leadership and, while leader, writes node status; it campaigns again after losing
// its lease (etcd unreachable). It returns nil when ctx ends, resigning if it leads.
func (w *Writer) Run(ctx context.Context) error {
	if err := w.cfg.Validate(); err != nil {
		return err
	}
	for ctx.Err() == nil {
		err := w.lead(ctx)
		w.leader.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		w.log.Warn("node status leadership lost, campaigning again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	return nil
}

var errNotLeader = errors.New("no longer the node status leader")

func (w *Writer) lead(ctx context.Context) error {
	sess, err := concurrency.NewSession(w.cli, concurrency.WithTTL(w.cfg.SessionTTL), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("node status election session: %w", err)
	}
	defer sess.Close() // revokes the lease: a successor takes over at once
	el := concurrency.NewElection(sess, w.cfg.Prefix+"leader/")
	if err := el.Campaign(ctx, w.cfg.Identity); err != nil {
		return fmt.Errorf("node status campaign: %w", err)
	}
	lead := leadership{key: el.Key(), rev: el.Rev()}
	w.leader.Set(1)
	w.log.Info("node status writer elected", "identity", w.cfg.Identity)
	defer w.log.Info("node status writer stepping down", "identity", w.cfg.Identity)

	events, cancel := w.m.Subscribe()
	defer cancel()
	unseenCtx, stopUnseen := context.WithCancel(ctx)
	unseenDone := make(chan struct{})
	go func() {
		defer close(unseenDone)
		w.watchUnseen(unseenCtx, lead)
	}()
	defer func() {
		stopUnseen()
		<-unseenDone
	}()
	resync := time.NewTicker(w.cfg.ResyncInterval)
	defer resync.Stop()
	retry := time.NewTimer(0) // the reconcile on election
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return errors.New("node status election lease expired")
		case <-resync.C:
			if err := w.reconcileAll(ctx, lead); err != nil {
				if errors.Is(err, errNotLeader) {
					return err
				}
				retry.Reset(time.Second)
			}
		case <-retry.C:
			if err := w.reconcileAll(ctx, lead); err != nil {
				if errors.Is(err, errNotLeader) {
					return err
				}
				retry.Reset(time.Second)
			}
		case ev, ok := <-events:
			if !ok {
				return errors.New("gossip member shut down")
			}
			if err := w.write(ctx, lead, ev.Peer); err != nil {
				if errors.Is(err, errNotLeader) {
					return err
				}
				w.log.Warn("node status write failed, retrying", "node", ev.Peer.Meta.Node, "err", err)
				retry.Reset(time.Second)
			}
		}
	}
}

type leadership struct {
	key string
	rev int64
}

// reconcileAll writes every agent member's status.
func (w *Writer) reconcileAll(ctx context.Context, lead leadership) error {
	var errs []error
	for _, p := range w.m.Members() {
		if err := w.write(ctx, lead, p); err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func statusOf(s membership.State) vxfabricv1.NodeStatus {
	switch s {
	case membership.StateAlive:
		return vxfabricv1.NodeStatus_NODE_STATUS_ALIVE
	case membership.StateSuspect:
		return vxfabricv1.NodeStatus_NODE_STATUS_SUSPECT
	case membership.StateDead:
		return vxfabricv1.NodeStatus_NODE_STATUS_DEAD
	case membership.StateLeft:
		return vxfabricv1.NodeStatus_NODE_STATUS_LEFT
	}
	return vxfabricv1.NodeStatus_NODE_STATUS_UNSPECIFIED
}

// write brings nodes/<node> in line with one agent peer, if anything differs, while still leader.
func (w *Writer) write(ctx context.Context, lead leadership, p membership.Peer) error {
	if p.Meta.Role != membership.RoleAgent || p.Meta.Node == "" || !p.Meta.VTEP.IsValid() {
		return nil
	}
	return w.update(ctx, lead, p.Meta.Node, func(cur *vxfabricv1.Node) *vxfabricv1.Node {
		if cur == nil && (p.State == membership.StateDead || p.State == membership.StateLeft) {
			// Gossip remembers gone members for a while: one never recorded, or deleted since
			// (NodeService.DeleteNode), is not recorded again until it comes back.
			return nil
		}
		next := proto.CloneOf(cur)
		if next == nil {
			next = &vxfabricv1.Node{}
		}
		next.Name, next.Vtep, next.Status, next.Version = p.Meta.Node, p.Meta.VTEP.String(), statusOf(p.State), p.Meta.Version
		next.Unreachable = p.Unreachable
		if cur == nil || cur.GetStatus() != next.GetStatus() || next.LastChange == nil {
			since := p.Since
			if since.IsZero() {
				since = time.Now()
			}
			next.LastChange = timestamppb.New(since)
		}
		return next
	})
}

// update writes nodes/<name> as change makes it from the record stored (nil when there is none),
// while still leader; change returns nil, or a record equal to the stored one, to write nothing.
// A record written by someone else meanwhile (RegisterNode) is read again and changed anew.
func (w *Writer) update(ctx context.Context, lead leadership, name string, change func(cur *vxfabricv1.Node) *vxfabricv1.Node) error {
	key := w.cfg.Prefix + "nodes/" + name
	for {
		resp, err := w.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("read node %q: %w", name, err)
		}
		var cur *vxfabricv1.Node
		var modRev int64
		if len(resp.Kvs) == 1 {
			modRev = resp.Kvs[0].ModRevision
			cur = &vxfabricv1.Node{}
			if err := proto.Unmarshal(resp.Kvs[0].Value, cur); err != nil {
				return fmt.Errorf("decode node %q: %w", name, err)
			}
		}
		next := change(cur)
		if next == nil {
			return nil
		}
		// Revisions are not stored in the record (see the key schema).
		next.AppliedRevision, next.DesiredRevision, next.Revision = 0, 0, 0
		if cur != nil && proto.Equal(cur, next) {
			return nil
		}
		val, err := proto.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode node %q: %w", name, err)
		}
		tx, err := w.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(lead.key), "=", lead.rev),
			clientv3.Compare(clientv3.ModRevision(key), "=", modRev),
		).Then(store.NodeWriteOps(w.cfg.Prefix, name, string(val), cur == nil || cur.GetVtep() != next.GetVtep())...).Else(clientv3.OpGet(lead.key)).Commit()
		if err != nil {
			return fmt.Errorf("write node %q: %w", name, err)
		}
		if tx.Succeeded {
			w.writes.Inc()
			w.log.Info("node status written", "node", name, "status", next.GetStatus().String(), "vtep", next.GetVtep(), "unreachable", next.GetUnreachable())
			return nil
		}
		if kvs := tx.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 0 || kvs[0].CreateRevision != lead.rev {
			return errNotLeader
		}
		// Someone else (RegisterNode) wrote the node meanwhile: read again.
	}
}
