// Package fanout is the server side of AgentService: it lets one server feed every node agent its own
// desired state from ONE etcd watch, fanned out in memory.
//
// The hub loads the key prefix once (a Get at revision R), then watches it from R+1. Each watch
// response is applied to a shared in-memory model (networks, ports, nodes, with indexes by network and by
// node) and turned into per-node deltas for the nodes it affects only. Each Sync stream has a mailbox that
// merges successive deltas (coalescing bursts into one message per drain) and never blocks the watch
// loop; a mailbox that grows past Config.MaxPending is dropped and its stream gets a fresh snapshot.
// On watch compaction the hub reloads and resnapshots every stream.
//
// Memory: the model holds one immutable message per port, peer and flood entry, which every view's
// snapshot and delta points to, so a snapshot costs a pointer per item. At most Config.MaxSnapshots
// snapshots are built and handed to gRPC at once; other streams wait for a slot (a reconnect storm of
// 1,000 agents would otherwise build 1,000 snapshots at once). What the slots cannot bound is gRPC's
// copy: Send returns once the encoded message is queued, and it stays queued until the agent reads it.
//
// Message semantics, for agents: a snapshot replaces the whole view. A delta upserts whole objects by id
// (a NetworkState always carries its full flood list) and removes by id; when a network leaves a node's
// view, the same delta also removes each of its ports explicitly. Agents ignore removals of unknown ids.
// Remote ports of a node without a VTEP are withheld (and that node is left out of flood lists) until it
// registers one. Node status (SUSPECT, DEAD) withholds nothing here: a view also names its peers, the
// other nodes its remote ports and flood entries belong to, each with the VTEP and status of its
// nodes/<name> record, and a peer's status or VTEP change is a delta to exactly the nodes whose view holds
// it. It is the agent that decides what to withhold (only DEAD peers, and gossip overrides the status
// when it knows the node): an agent started after a host died learns of the death only from here.
//
// It owns the status/ports/<id> keys (written from ReportApplied) and, for static membership, nodes/<name>
// (RegisterNode). It never writes networks, ports or allocations, and never opens a watch per agent.
//
// Revision contract of a Sync stream: the first message is a snapshot, or an empty delta when the agent
// resumed from a revision at which nothing in its view has changed since; every message carries the
// newest store revision it reflects, and revisions never decrease within a stream. A resume revision
// newer than the store's current revision (etcd restored from an older backup) is answered with a
// snapshot at the store's (older) revision: the agent must notice the revision going backwards, refuse
// the snapshot and keep its kernel state. If the hub itself sees the store go backwards mid-stream, it
// ends the stream with ABORTED rather than send a lower revision.
package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Config tunes a Hub.
type Config struct {
	// Prefix is the key prefix of the fabric's state. Default "/vxfabric/v1/".
	Prefix string
	// MaxPending bounds the items (networks plus ports) a stream's backlog may hold before it is dropped
	// for a snapshot. Default 16384, above one node's view in a 1,000-node network of 10 ports per node.
	MaxPending int
	// History is how many unreported view changes per node are kept to measure convergence. Default 64.
	History int
	// RetryInterval is the wait between failed loads or watches. Default 1 s.
	RetryInterval time.Duration
	// CatchUpTimeout bounds how long Sync waits for the hub to reach a resume revision that the store
	// already has (the agent came from a replica that was ahead). Default 5 s.
	CatchUpTimeout time.Duration
	// MaxSnapshots bounds the snapshots being built or sent at once. A snapshot of a large view is a
	// large message (10,000 remote ports encode to about 1 MB), so 1,000 agents connecting at once
	// would otherwise hold 1,000 of them; streams beyond the bound wait their turn. Default 2 x GOMAXPROCS.
	MaxSnapshots int
	// SnapshotSlotHold is the longest a stream keeps its snapshot slot while its Send is held up by flow
	// control (an agent not reading), so that stalled agents cannot hold up everyone else. Default 1 s.
	SnapshotSlotHold time.Duration
	// SnapshotPartItems bounds the items (networks, ports and peers) of one message of a snapshot: a
	// larger snapshot is sent in parts (SyncResponse.snapshot_continues on all but the last), so that
	// each Send waits for the stream's flow-control window and about one part per stream sits queued in
	// gRPC instead of a whole snapshot. Default 512 (about 64 KB of remote ports).
	SnapshotPartItems int
	// Registerer receives the hub's metrics; nil: a private registry (metrics not exported).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Default returns the configuration `vxfab server` uses.
func Default() Config {
	return Config{
		Prefix:         "/vxfabric/v1/",
		MaxPending:     16384,
		History:        64,
		RetryInterval:  time.Second,
		CatchUpTimeout: 5 * time.Second,
		MaxSnapshots:   2 * runtime.GOMAXPROCS(0),
		// Well above the time to build and encode a 10,000-port snapshot (a few ms), well below a
		// reconnect timeout.
		SnapshotSlotHold:  time.Second,
		SnapshotPartItems: 512,
	}
}

// Validate reports a configuration the hub cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Prefix == "" || c.Prefix[len(c.Prefix)-1] != '/':
		return fmt.Errorf("fanout prefix %q must be non-empty and end in /", c.Prefix)
	case c.MaxPending < 1:
		return fmt.Errorf("fanout max pending %d must be positive", c.MaxPending)
	case c.History < 1:
		return fmt.Errorf("fanout history %d must be positive", c.History)
	case c.RetryInterval <= 0 || c.CatchUpTimeout <= 0:
		return errors.New("fanout retry interval and catch-up timeout must be positive")
	case c.MaxSnapshots < 1:
		return fmt.Errorf("fanout max snapshots %d must be positive", c.MaxSnapshots)
	case c.SnapshotSlotHold <= 0:
		return fmt.Errorf("fanout snapshot slot hold %s must be positive", c.SnapshotSlotHold)
	case c.SnapshotPartItems < 1:
		return fmt.Errorf("fanout snapshot part items %d must be positive", c.SnapshotPartItems)
	}
	return nil
}

// Hub is the AgentService implementation. Create it with New, start Run, register it on a gRPC server.
type Hub struct {
	vxfabricv1.UnimplementedAgentServiceServer

	cli *clientv3.Client
	cfg Config
	log *slog.Logger
	met *metrics

	// mu guards the model and the fields below it. The watch loop takes it for writing per batch; Sync
	// takes it for reading while it builds a snapshot. Lock order: mu, then subsMu, then statMu or a
	// subscriber's mu.
	mu      sync.RWMutex
	m       *model
	baseRev int64         // revision of the last full load: changes before it are unknown to the hub
	revCh   chan struct{} // closed and replaced whenever m.rev advances
	loaded  bool

	ready     chan struct{} // closed after the first load
	readyOnce sync.Once
	done      chan struct{} // closed when Run returns

	subsMu sync.Mutex
	subs   map[string]map[*subscriber]struct{}

	// slots holds a token per snapshot being built or sent (capacity Config.MaxSnapshots).
	slots chan struct{}

	// statusRev is the revision of the newest status/ports write of this hub: ReportApplied decides
	// what to write against a model that has seen it, or two quick reports (unplugged, then plugged)
	// could find the first one's write not yet in the model and skip the second's.
	statusRev atomic.Int64

	statMu sync.Mutex // desired revisions change only with mu also held for writing; taken after mu and subsMu
	stats  map[string]*nodeStat
	// forgotten is the highest desired revision of the nodes whose figures went with their record
	// (a deleted node): a node without figures may be one of them, and resumes only from there.
	forgotten int64
	statCh    chan struct{} // closed and replaced on every applied report

	// Test hooks: kick cancels the current watch (as a broken connection would); beforeRewatch runs
	// before a watch is re-established after that.
	hookMu        sync.Mutex
	kick          context.CancelFunc
	beforeRewatch func()
	// snapshotBuilt, set before streams start, runs after each snapshot is built for a stream.
	snapshotBuilt func()
}

// nodeStat is what the hub knows of one node's convergence.
type nodeStat struct {
	applied int64
	desired int64
	changes []change // view changes not yet reported applied, oldest first, at most Config.History
	errors  []string // what the agent's last report said it could not apply
	seq     int64    // the highest report sequence seen: an older report is late
	keyring int64    // the newest gossip keyring revision recorded as confirmed (confirmKeyring)
	// underlay is the node's underlay routes as this hub knows them stored (recordUnderlay);
	// "" when not known.
	underlay string
}

type change struct {
	rev  int64
	seen time.Time
}

// New returns a hub reading and writing through cli. It panics if cfg.Registerer already holds the hub's
// metrics, as prometheus.MustRegister does; zero fields of cfg take Default's values.
func New(cli *clientv3.Client, cfg Config) *Hub {
	def := Default()
	if cfg.Prefix == "" {
		cfg.Prefix = def.Prefix
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = def.MaxPending
	}
	if cfg.History == 0 {
		cfg.History = def.History
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = def.RetryInterval
	}
	if cfg.CatchUpTimeout == 0 {
		cfg.CatchUpTimeout = def.CatchUpTimeout
	}
	if cfg.MaxSnapshots == 0 {
		cfg.MaxSnapshots = def.MaxSnapshots
	}
	if cfg.SnapshotSlotHold == 0 {
		cfg.SnapshotSlotHold = def.SnapshotSlotHold
	}
	if cfg.SnapshotPartItems == 0 {
		cfg.SnapshotPartItems = def.SnapshotPartItems
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	return &Hub{
		cli:    cli,
		cfg:    cfg,
		log:    cfg.Logger,
		met:    newMetrics(cfg.Registerer),
		m:      newModel(),
		revCh:  make(chan struct{}),
		ready:  make(chan struct{}),
		done:   make(chan struct{}),
		subs:   map[string]map[*subscriber]struct{}{},
		slots:  make(chan struct{}, max(cfg.MaxSnapshots, 1)),
		stats:  map[string]*nodeStat{},
		statCh: make(chan struct{}),
	}
}

// Run loads the state and follows the watch until ctx ends; then every Sync stream ends with UNAVAILABLE.
// It returns nil when ctx ends and an error only for an invalid configuration. Call it once.
func (h *Hub) Run(ctx context.Context) error {
	defer close(h.done)
	if err := h.cfg.Validate(); err != nil {
		return err
	}
	needLoad := true
	for {
		if needLoad {
			if err := h.load(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				h.log.Warn("fanout load failed", "err", err)
				if !sleep(ctx, h.cfg.RetryInterval) {
					return nil
				}
				continue
			}
			needLoad = false
		}
		err := h.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			h.log.Warn("fanout watch compacted, reloading", "err", err)
			needLoad = true
			continue
		}
		h.log.Warn("fanout watch interrupted, resuming", "err", err)
		h.hookMu.Lock()
		hook := h.beforeRewatch
		h.hookMu.Unlock()
		if hook != nil {
			hook()
		} else if !sleep(ctx, h.cfg.RetryInterval) {
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// load reads the whole prefix at one revision and replaces the model. After the first load, every
// stream is resnapshotted: what changed in between is not known.
func (h *Hub) load(ctx context.Context) error {
	resp, err := h.cli.Get(ctx, h.cfg.Prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("load %s: %w", h.cfg.Prefix, err)
	}
	rev := resp.Header.Revision
	m := newModel()
	b := newBatch(m, h.log, func(string) bool { return false }, 0)
	b.loading = true
	// Per network, the newest revision among its objects and nodes: the desired revision of its nodes
	// as far as a load can tell (deletions before the load are invisible).
	netRev := map[string]int64{}
	nodeRev := map[string]int64{}
	for _, kv := range resp.Kvs {
		key := string(kv.Key[len(h.cfg.Prefix):])
		b.apply(event{key: key, value: kv.Value, rev: kv.ModRevision})
		kind, id, _ := keyKind(key)
		switch kind {
		case "networks/":
			netRev[id] = max(netRev[id], kv.ModRevision)
		case "ports/":
			if p := m.ports[id]; p != nil {
				netRev[p.GetNetworkId()] = max(netRev[p.GetNetworkId()], kv.ModRevision)
			}
		case "nodes/":
			nodeRev[id] = kv.ModRevision
		}
	}
	m.rev = rev
	desired := map[string]int64{}
	for id := range m.networks {
		r := netRev[id]
		m.forParticipants(id, func(node string) { r = max(r, nodeRev[node]) })
		m.forParticipants(id, func(node string) { desired[node] = max(desired[node], r) })
	}

	h.mu.Lock()
	reload := h.loaded
	h.m, h.baseRev, h.loaded = m, rev, true
	h.advanceLocked()
	h.subsMu.Lock()
	for _, set := range h.subs {
		for s := range set {
			s.requestSnapshot()
		}
	}
	h.subsMu.Unlock()
	h.statMu.Lock()
	for node, r := range desired {
		h.stat(node).desired = max(h.stat(node).desired, r)
	}
	if reload {
		// Whatever changed while the watch was lost, every view may have changed.
		for _, st := range h.stats {
			st.desired = max(st.desired, rev)
		}
	}
	h.statMu.Unlock()
	h.mu.Unlock()

	h.met.revision.Set(float64(rev))
	h.met.loads.Inc()
	h.log.Info("fanout loaded", "rev", rev, "networks", len(m.networks), "ports", len(m.ports), "nodes", len(m.nodes))
	h.readyOnce.Do(func() { close(h.ready) })
	return nil
}

// advanceLocked wakes revision waiters. h.mu is held for writing.
func (h *Hub) advanceLocked() {
	close(h.revCh)
	h.revCh = make(chan struct{})
}

// watch follows the prefix from the model's revision + 1 until an error.
func (h *Hub) watch(ctx context.Context) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	h.hookMu.Lock()
	h.kick = cancel
	h.hookMu.Unlock()

	h.mu.RLock()
	from := h.m.rev + 1
	h.mu.RUnlock()
	ch := h.cli.Watch(wctx, h.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	for resp := range ch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("watch %s from %d (compacted at %d): %w", h.cfg.Prefix, from, resp.CompactRevision, rpctypes.ErrCompacted)
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch %s from %d: %w", h.cfg.Prefix, from, err)
		}
		if resp.IsProgressNotify() {
			h.progress(resp.Header.Revision)
			continue
		}
		evs := make([]event, 0, len(resp.Events))
		for _, e := range resp.Events {
			evs = append(evs, event{
				key:     string(e.Kv.Key[len(h.cfg.Prefix):]),
				value:   e.Kv.Value,
				deleted: e.Type == clientv3.EventTypeDelete,
				rev:     e.Kv.ModRevision,
			})
		}
		h.applyEvents(evs, time.Now())
	}
	if err := wctx.Err(); err != nil {
		return fmt.Errorf("watch %s: %w", h.cfg.Prefix, err)
	}
	return fmt.Errorf("watch %s: channel closed", h.cfg.Prefix)
}

// progress records a progress notification: every change up to rev has been delivered.
func (h *Hub) progress(rev int64) {
	h.mu.Lock()
	if rev > h.m.rev {
		h.m.rev = rev
		h.advanceLocked()
	}
	h.mu.Unlock()
	h.met.revision.Set(float64(rev))
}

// applyEvents applies one watch response and hands each affected subscriber its delta.
func (h *Hub) applyEvents(evs []event, seen time.Time) {
	h.mu.Lock()
	// subsMu is held through the batch (streams ending wait that long) so the set of subscribers
	// cannot change between building deltas and handing them out.
	h.subsMu.Lock()
	b := newBatch(h.m, h.log, func(node string) bool { return len(h.subs[node]) > 0 }, len(h.subs))
	for _, ev := range evs {
		b.apply(ev)
	}
	deltas, touched := b.finish()
	rev := h.m.rev
	if b.keysChanged {
		// The keyring is in every view: every connected node gets it, every known node must apply it.
		for node := range h.subs {
			d := deltas[node]
			if d == nil {
				d = newDelta()
				deltas[node] = d
			}
			d.keys = h.m.keys
			touched[node] = true
		}
		h.statMu.Lock()
		for node := range h.stats {
			touched[node] = true
		}
		h.statMu.Unlock()
	}
	// Desired revisions move under h.mu too (subscribe compares a resume revision with them and with
	// the model in one critical section), and before any delta goes out, so an agent that has
	// received one never finds its node's desired revision behind it.
	h.statMu.Lock()
	for node := range touched {
		st := h.stat(node)
		st.desired = rev
		if len(st.changes) == h.cfg.History {
			st.changes = st.changes[1:]
		}
		st.changes = append(st.changes, change{rev: rev, seen: seen})
	}
	for _, ev := range evs {
		// A deleted node (NodeService.DeleteNode) takes its figures along, unless it streams here;
		// its confirmed keyring went with it in etcd in any case.
		if kind, node, _ := keyKind(ev.key); kind == "nodes/" && ev.deleted {
			if len(h.subs[node]) == 0 {
				if st := h.stats[node]; st != nil {
					h.forgotten = max(h.forgotten, st.desired)
				}
				delete(h.stats, node)
			} else if st := h.stats[node]; st != nil {
				st.keyring, st.underlay = 0, ""
			}
		}
	}
	h.statMu.Unlock()
	overflows := 0
	for node, d := range deltas {
		for s := range h.subs[node] {
			if s.push(d, rev, h.cfg.MaxPending) {
				overflows++
			}
		}
	}
	h.subsMu.Unlock()
	h.advanceLocked()
	h.mu.Unlock()
	h.met.revision.Set(float64(rev))
	h.met.overflows.Add(float64(overflows))
}

// stat returns node's record, creating it. h.statMu is held.
func (h *Hub) stat(node string) *nodeStat {
	st := h.stats[node]
	if st == nil {
		st = &nodeStat{}
		h.stats[node] = st
	}
	return st
}

// NodeRevisions returns the newest revision node's agent reported applied and the newest revision that
// changed node's view (both 0 when unknown). Safe for concurrent use; for NodeService.
func (h *Hub) NodeRevisions(node string) (applied, desired int64) {
	h.statMu.Lock()
	defer h.statMu.Unlock()
	if st := h.stats[node]; st != nil {
		return st.applied, st.desired
	}
	return 0, 0
}

// NodeErrors returns what node's agent said, in its last report to this replica, it could not
// apply (nil when it applied everything or never reported here). Safe for concurrent use.
func (h *Hub) NodeErrors(node string) []string {
	h.statMu.Lock()
	defer h.statMu.Unlock()
	if st := h.stats[node]; st != nil {
		return slices.Clone(st.errors)
	}
	return nil
}

// Ready is closed once the hub has loaded the store for the first time (Sync streams wait for it).
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Revision returns the store revision the hub's model reflects (0 before the first load).
func (h *Hub) Revision() int64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.m.rev
}

// WaitRevision blocks until the hub's model reflects rev, ctx ends, or the hub stops.
func (h *Hub) WaitRevision(ctx context.Context, rev int64) error {
	for {
		h.mu.RLock()
		cur, ch := h.m.rev, h.revCh
		h.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (at %d): %w", rev, cur, ctx.Err())
		case <-h.done:
			return fmt.Errorf("wait for revision %d: %w", rev, errStopped)
		}
	}
}

// WaitApplied blocks until node's agent has reported rev (or newer) applied, or ctx ends.
func (h *Hub) WaitApplied(ctx context.Context, node string, rev int64) error {
	for {
		h.statMu.Lock()
		var applied int64
		if st := h.stats[node]; st != nil {
			applied = st.applied
		}
		ch := h.statCh
		h.statMu.Unlock()
		if applied >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for node %q to apply revision %d (at %d): %w", node, rev, applied, ctx.Err())
		}
	}
}

var errStopped = errors.New("fanout hub stopped")

// subscribe builds the first message for a new stream and registers its mailbox, atomically with
// respect to watch batches: every change after the first message's revision reaches the mailbox.
func (h *Hub) subscribe(node string, resume int64) (*subscriber, *vxfabricv1.SyncResponse) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	h.statMu.Lock()
	desired := h.forgotten // a node whose figures went with its record (deleted while its agent was away)
	if st := h.stats[node]; st != nil {
		desired = st.desired
	}
	h.statMu.Unlock()
	var first *vxfabricv1.SyncResponse
	if resume > 0 && resume >= h.baseRev && resume >= desired && resume <= h.m.rev {
		// The keyring rides along: this replica cannot tell whether the agent saw its last change
		// (it may have streamed from another one), and an agent ignores a keyring it already has.
		first = &vxfabricv1.SyncResponse{Revision: h.m.rev, GossipKeys: h.m.keys}
	} else {
		first = h.snapshot(node)
	}
	s := newSubscriber(node)
	h.subsMu.Lock()
	if h.subs[node] == nil {
		h.subs[node] = map[*subscriber]struct{}{}
	}
	h.subs[node][s] = struct{}{}
	h.subsMu.Unlock()
	return s, first
}

// unsubscribe ends a stream. When it was the node's last one here, what the node reported applied
// is forgotten: its agent reports to the replica it streams from, so a figure kept here would go
// stale once it streams from another one (node list would show it behind, with old errors). It is
// "not known" (0) until the agent reports here again, which it does at once on a new stream.
func (h *Hub) unsubscribe(s *subscriber) {
	h.subsMu.Lock()
	defer h.subsMu.Unlock()
	delete(h.subs[s.node], s)
	if len(h.subs[s.node]) > 0 {
		return
	}
	delete(h.subs, s.node)
	h.statMu.Lock()
	if st := h.stats[s.node]; st != nil {
		// The underlay routes another replica writes meanwhile are not seen here: compared anew.
		st.applied, st.errors, st.underlay = 0, nil, ""
	}
	h.statMu.Unlock()
}

// next returns the message a stream must send now, or nil when its mailbox is empty. A snapshot is built
// only when the caller holds a snapshot slot (slotted); otherwise next returns nil and owed, and the
// snapshot stays owed.
func (h *Hub) next(s *subscriber, slotted bool) (msg *vxfabricv1.SyncResponse, owed bool) {
	d, rev, snap := s.take()
	if !snap {
		if d == nil {
			return nil, false
		}
		return d.message(rev), false
	}
	if !slotted {
		return nil, true
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	// Cleared under h.mu: no batch runs meanwhile, so the snapshot covers everything dropped.
	s.mu.Lock()
	s.pending, s.items, s.resnapshot = nil, 0, false
	s.mu.Unlock()
	return h.snapshot(s.node), false
}

// snapshot builds node's snapshot. h.mu is held for reading, and the caller holds a snapshot slot.
func (h *Hub) snapshot(node string) *vxfabricv1.SyncResponse {
	msg := h.m.snapshot(node)
	if h.snapshotBuilt != nil {
		h.snapshotBuilt()
	}
	return msg
}

// snapshotSlot waits for one of Config.MaxSnapshots slots, to be held while a snapshot is built and
// handed to gRPC; release gives it back (once, however often it is called). Send returns once the
// encoded message is queued on the connection, which is immediate unless the stream's previous
// messages are still unread; a slot held up that way is given back after Config.SnapshotSlotHold.
// A stream that ends while waiting takes nothing and owes nothing.
func (h *Hub) snapshotSlot(ctx context.Context) (release func(), err error) {
	select {
	case h.slots <- struct{}{}:
	default:
		h.met.snapshotWaiting.Inc()
		defer h.met.snapshotWaiting.Dec()
		select {
		case h.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-h.done:
			return nil, status.Error(codes.Unavailable, "fan-out hub stopped")
		}
	}
	var once sync.Once
	free := func() { once.Do(func() { <-h.slots }) }
	t := time.AfterFunc(h.cfg.SnapshotSlotHold, free)
	return func() {
		t.Stop()
		free()
	}, nil
}
