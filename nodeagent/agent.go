// Package nodeagent is the node agent: it keeps one host's kernel converged to the desired state the
// control plane streams for that host (AgentService.Sync), through overlay.Datapath.
//
// Goroutines of a running agent, and what they own:
//   - sync: the Sync stream to one server at a time (failing over between them, backoff with jitter,
//     and, with gossip, away from a server gossip declares dead even if its TCP stream never closes);
//     it merges snapshots and deltas into the desired model, refusing any older than what was applied;
//   - reconcile: the only caller of Datapath.Apply and ApplyDelta. Triggers (new desired state, a
//     watched interface appearing or going, a gossip death or return, the periodic full pass) coalesce
//     into one pending pass; a failed Apply is retried with backoff. A pass for new desired state that
//     only adds, moves or removes remote ports and flood entries of programmed networks behind known
//     VTEPs writes just those entries (ApplyDelta, see incremental.go); every other pass, and every
//     pass a link, liveness or the timer asks for, is a full one (build, Apply, drift repaired);
//   - report: ReportApplied, coalesced (only the newest report is sent), re-sent on every new stream;
//   - links: the LinkSource, which triggers a pass when a desired port's interface appears or goes;
//   - liveness (with gossip): triggers a pass when gossip finds an agent node Down (SUSPECT or DEAD,
//     and its host does not answer on the underlay), sees it return, or learns of a node for the
//     first time.
//
// Liveness: the remote ports and flood entries of a dead node are withheld from the kernel (and return
// with it). A node is dead when this agent's gossip says it is Down (membership.Peer.Down: a host cut
// off is withdrawn about 0.4 s after gossip suspects it (two unanswered dials); a host whose agent is paused, crashed or
// restarting is never withdrawn while its kernel answers, since that kernel still forwards to its
// VMs, even once gossip declares the agent DEAD); when gossip does not know the node (it
// died before this agent started, and memberlist ignores dead members it never saw alive), when the
// control plane's status for it, sent as a peer of the view, is DEAD. Gossip, when it knows the node,
// overrides a status that may be stale. LEFT withholds nothing while the host answers: a graceful
// stop of an agent (upgrade, restart) leaves its kernel forwarding to its VMs, and withdrawing it
// would cut them off; only failure detection withdraws, also that of a host whose agent had left.
//
// What it must never do: apply anything before the first snapshot (a restarted agent adopts the
// kernel as it is), clear or change the kernel because the control plane is unreachable, or go back
// to an older revision than one it applied.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/vxfabric/vxfabric/membership"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// ErrStaleRevision is returned (and logged) when the control plane sends a desired state older than
// one this agent applied: the message is refused and the kernel kept.
var ErrStaleRevision = errors.New("desired state older than the applied one")

// Agent is a node agent. Create it with New and call Run once.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	met   *metrics
	links LinkSource

	// mu guards model, applied and watched.
	mu      sync.Mutex
	model   *desiredModel
	applied int64
	watched map[string]string // interface name of each desired local port -> its port id

	kick chan struct{} // pending reconcile pass (capacity 1: triggers coalesce)
	// fullWanted makes the next pass a full one (see trigger); without it a kick from a merged
	// change may be applied incrementally.
	fullWanted atomic.Bool
	// plugged is the last full pass's plugged port ids, reported again by incremental passes (which
	// plug nothing); standing is its refusals (overlay.Standing), reported with every revision
	// until a full pass meets none. Only the reconcile goroutine uses them.
	plugged  []string
	standing []string

	current atomic.Pointer[string] // server of the open Sync stream, nil while disconnected
	// syncWake cuts short the Sync loop's wait before it dials again: gossip has just seen a
	// server come (back), so the wait would only delay the desired state (capacity 1).
	syncWake chan struct{}

	// repMu guards client, pending, lastSent, statusToken and underlay.
	repMu    sync.Mutex
	client   vxfabricv1.AgentServiceClient // of the current stream; nil while disconnected
	pending  *report
	lastSent *report
	// underlay is the host's underlay routes as the last full Apply read them (nil: not yet), sent
	// with every report (ReportAppliedRequest.underlay_routes).
	underlay []string
	// statusToken is the status_revision of the last successful report (0 after a failed one): any
	// server replica judges the next report against a view holding that report's status writes.
	statusToken int64
	repKick     chan struct{}
	// reportSeq numbers the reports (ReportAppliedRequest.sequence), from the clock at start so
	// that a restarted agent's come after its last.
	reportSeq atomic.Int64

	converged     chan struct{} // closed by the first full pass that applied a snapshot
	convergedOnce sync.Once

	// keyring is the revision of the newest gossip keyring installed (reported as
	// gossip_keyring_revision); keyringErr why the newest one received could not be ("" if it was).
	keyring    atomic.Int64
	keyringErr atomic.Pointer[string]

	// remembered are the servers gossip last listed (also in the state directory): tried when
	// gossip lists none. Used by the sync loop only.
	remembered []string
}

type report struct {
	rev      int64
	plugged  []string
	errors   []string // what the last Apply could not converge (reportErrors)
	underlay []string // Agent.underlay when queued
}

func (r *report) equal(o *report) bool {
	return r != nil && o != nil && r.rev == o.rev && slices.Equal(r.plugged, o.plugged) && slices.Equal(r.errors, o.errors) &&
		slices.Equal(r.underlay, o.underlay)
}

// maxUnderlayRoutes is the server's bound on a report's underlay routes.
const maxUnderlayRoutes = 64

// setUnderlay records what the host reaches outside the fabric for the reports: its servers (/32:
// a server reached through a router is in no route of the host's own) and the underlay routes a
// full Apply read (nil: it read none, keep the last), at most maxUnderlayRoutes of them
// (overlay.SelectUnderlay).
func (a *Agent) setUnderlay(routes []overlay.UnderlayRoute) {
	if routes == nil {
		return
	}
	var all []overlay.UnderlayRoute
	for _, s := range a.serverAddrs() {
		all = append(all, overlay.UnderlayRoute{Prefix: netip.PrefixFrom(s, 32), Server: true})
	}
	picked := overlay.SelectUnderlay(append(all, routes...), maxUnderlayRoutes)
	lines := make([]string, 0, len(picked))
	for _, p := range picked {
		lines = append(lines, p.String())
	}
	a.repMu.Lock()
	a.underlay = lines
	a.repMu.Unlock()
}

// The bounds of a report's errors, within the server's (32 lines of 512 bytes).
const (
	maxReportErrors   = 16
	maxReportErrorLen = 256
)

// reportErrors turns a failed Apply's object errors (or, without any, its error) into the lines
// of a report, sorted, each cut to maxReportErrorLen bytes, the last one counting those left out.
func reportErrors(errs []overlay.ObjectError, err error) []string {
	lines := make([]string, 0, max(min(len(errs), maxReportErrors), 1))
	for _, e := range errs {
		lines = append(lines, e.Error())
	}
	if len(lines) == 0 {
		lines = append(lines, err.Error())
	}
	slices.Sort(lines)
	if len(lines) > maxReportErrors {
		lines = append(lines[:maxReportErrors-1], fmt.Sprintf("and %d more", len(lines)-maxReportErrors+1))
	}
	for i, l := range lines {
		if len(l) > maxReportErrorLen {
			lines[i] = strings.ToValidUTF8(l[:maxReportErrorLen-3], "") + "..."
		}
	}
	return lines
}

// New checks cfg and reads the revision last applied on this host.
func New(cfg Config) (*Agent, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	applied, err := loadAppliedRevision(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	remembered, err := loadServers(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	links := cfg.Links
	if links == nil {
		links = NetlinkLinks{Logger: cfg.Logger}
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.Node),
		met:      newMetrics(cfg.Registerer),
		links:    links,
		model:    newDesiredModel(),
		applied:  applied,
		watched:  map[string]string{},
		kick:     make(chan struct{}, 1),
		repKick:  make(chan struct{}, 1),
		syncWake: make(chan struct{}, 1),

		converged:  make(chan struct{}),
		remembered: remembered,
	}
	a.reportSeq.Store(time.Now().UnixNano())
	a.met.appliedRevision.Set(float64(applied))
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(newPortDropCollector(a))
	}
	return a, nil
}

// Converged is closed once the kernel holds the first desired state this agent received: start-up
// is over, from then on the agent only follows changes.
func (a *Agent) Converged() <-chan struct{} { return a.converged }

// AppliedRevision is the newest revision applied to the kernel (persisted across restarts).
func (a *Agent) AppliedRevision() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied
}

// Server returns the address of the server whose Sync stream is open, "" while disconnected.
func (a *Agent) Server() string {
	if p := a.current.Load(); p != nil {
		return *p
	}
	return ""
}

// Run drives the agent until ctx ends. It leaves the kernel as it is when it returns.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("agent starting", "vtep", a.cfg.VTEP.String(), "rev", a.AppliedRevision())
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){a.syncLoop, a.reconcileLoop, a.reportLoop, a.linkLoop, a.livenessLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
	a.log.Info("agent stopped, kernel state left in place", "rev", a.AppliedRevision())
	return nil
}

// trigger asks for a full pass: an interface came or went, a node's liveness changed.
func (a *Agent) trigger() {
	a.fullWanted.Store(true)
	a.kickChange()
}

// kickChange asks for a pass that may apply what was merged incrementally.
func (a *Agent) kickChange() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// backoff is exponential with "equal jitter": each wait is between half and all of the current step.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

func (b *backoff) reset() { b.cur = 0 }

// sleepCtx waits d; it returns false once ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	ok, _ := sleepOrWake(ctx, d, nil)
	return ok
}

// sleepOrWake waits d, or less if wake (nil: never) delivers first (woken); ok is false once ctx
// ends.
func sleepOrWake(ctx context.Context, d time.Duration, wake <-chan struct{}) (ok, woken bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, false
	case <-t.C:
		return true, false
	case <-wake:
		return true, true
	}
}

// servers is the list to fail over between: configured, or discovered through gossip, or, while
// gossip lists none, the ones it listed last (remembered says which).
func (a *Agent) servers() (servers []string, remembered bool) {
	if len(a.cfg.Servers) > 0 {
		return a.cfg.Servers, false
	}
	if live := a.cfg.Membership.Servers(); len(live) > 0 {
		return live, false
	}
	return a.remembered, len(a.remembered) > 0
}

// remember keeps the servers gossip lists now, in memory and in the state directory, for a start
// whose gossip finds none (see serversFile).
func (a *Agent) remember() {
	if len(a.cfg.Servers) > 0 || a.cfg.Membership == nil {
		return
	}
	live := a.cfg.Membership.Servers()
	if len(live) == 0 || slices.Equal(live, a.remembered) {
		return
	}
	if err := saveServers(a.cfg.StateDir, live); err != nil {
		a.log.Warn("servers not remembered", "err", err)
		return
	}
	a.remembered = live
}

// waitToDial waits d before the Sync loop dials again, or less: when gossip sees a server come
// (back), a restart or a healed partition, it dials at once rather than when a backoff grown while
// the server was away ends, and starts the backoff over. It returns false once ctx ends.
func (a *Agent) waitToDial(ctx context.Context, d time.Duration, bo *backoff) bool {
	ok, woken := sleepOrWake(ctx, d, a.syncWake)
	if woken {
		bo.reset()
		a.log.Info("gossip sees a server: dialling now", "was_waiting", d)
	}
	return ok
}

func (a *Agent) syncLoop(ctx context.Context) {
	bo := backoff{min: a.cfg.BackoffMin, max: a.cfg.BackoffMax}
	next := -1
	for ctx.Err() == nil {
		servers, remembered := a.servers()
		if len(servers) == 0 {
			d := bo.next()
			a.log.Warn("no server known yet, waiting for gossip", "retry_in", d)
			if !a.waitToDial(ctx, d, &bo) {
				return
			}
			continue
		}
		if next < 0 {
			next = rand.N(len(servers))
		}
		addr := servers[next%len(servers)]
		if remembered {
			a.log.Info("gossip lists no server: trying one it listed before", "server", addr)
		}
		progressed, err := a.syncOnce(ctx, addr, remembered)
		if ctx.Err() != nil {
			return
		}
		a.met.syncReconnects.Inc()
		if progressed {
			bo.reset()
		} else {
			next++ // fail over
		}
		d := bo.next()
		if errors.Is(err, ErrStaleRevision) {
			a.log.Error("sync refused: the control plane is behind this host, keeping the kernel as it is", "server", addr, "err", err, "retry_in", d)
		} else {
			a.log.Warn("sync stream ended, kernel left as it is", "server", addr, "err", err, "retry_in", d)
		}
		if !a.waitToDial(ctx, d, &bo) {
			return
		}
	}
}

// syncOnce runs one Sync stream; progressed tells whether it delivered anything. remembered: addr is
// not listed by gossip now, but was before.
func (a *Agent) syncOnce(ctx context.Context, addr string, remembered bool) (progressed bool, err error) {
	// Keepalive pings find a server whose host vanished without a word, where nothing else would
	// (a stream to a remembered server while gossip is down); the server allows one per 10 s.
	opts := append(slices.Clip(a.cfg.DialOptions), grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second}))
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return false, fmt.Errorf("dial server %s: %w", addr, err)
	}
	defer conn.Close()
	client := vxfabricv1.NewAgentServiceClient(conn)
	defer a.setReportClient(nil)
	if a.cfg.Membership == nil {
		// Static membership: nobody learns this node from gossip, so record it.
		rctx, cancel := context.WithTimeout(ctx, a.cfg.RPCTimeout)
		_, err := client.RegisterNode(rctx, &vxfabricv1.RegisterNodeRequest{Name: a.cfg.Node, Vtep: a.cfg.VTEP.String(), Version: a.cfg.Version})
		cancel()
		if err != nil {
			return false, fmt.Errorf("register node %q with %s: %w", a.cfg.Node, addr, err)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer a.current.Store(nil)
	if a.cfg.Membership != nil && len(a.cfg.Servers) == 0 {
		// A server whose host died may never close the stream: gossip tells first.
		go a.watchServer(sctx, cancel, addr, remembered)
	}
	resume := a.resumeRevision()
	stream, err := client.Sync(sctx, &vxfabricv1.SyncRequest{Node: a.cfg.Node, ResumeRevision: resume, SnapshotParts: true})
	if err != nil {
		return false, fmt.Errorf("open sync stream to %s: %w", addr, err)
	}
	// parts gathers a snapshot sent in parts; it lives and dies with this stream, so a stream cut
	// between parts leaves the desired state as it was.
	var parts snapshotParts
	for {
		part, err := stream.Recv()
		if err != nil {
			return progressed, fmt.Errorf("sync stream from %s: %w", addr, err)
		}
		resp, err := parts.add(part)
		if err != nil {
			return progressed, fmt.Errorf("sync stream from %s: %w", addr, err)
		}
		if resp == nil {
			continue
		}
		if err := a.accept(resp); err != nil {
			return progressed, err
		}
		if !progressed {
			progressed = true
			a.log.Info("sync stream open", "server", addr, "resume", resume, "rev", resp.GetRevision(), "snapshot", resp.GetSnapshot())
			a.current.Store(&addr)
			a.setReportClient(client)
			a.remember()
		}
	}
}

// watchServer ends the stream (cancel) once gossip no longer lists addr among the live servers. A
// stream to a remembered server (gossip listed none) ends only once gossip lists others: until then
// gossip knows nothing better.
func (a *Agent) watchServer(ctx context.Context, cancel context.CancelFunc, addr string, remembered bool) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			live := a.cfg.Membership.Servers()
			if remembered && len(live) == 0 {
				continue
			}
			if !slices.Contains(live, addr) {
				a.log.Warn("server gone from gossip, failing over", "server", addr)
				cancel()
				return
			}
		}
	}
}

// resumeRevision is 0 (ask for a snapshot) until this process has one; then the newest revision merged.
func (a *Agent) resumeRevision() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.model.ready {
		return 0
	}
	return a.model.revision
}

// accept merges one Sync message, unless it is older than what this host already has.
func (a *Agent) accept(resp *vxfabricv1.SyncResponse) error {
	a.mu.Lock()
	floor := max(a.applied, a.model.revision)
	if resp.GetRevision() < floor {
		a.mu.Unlock()
		a.met.staleRefused.Inc()
		a.log.Error("REFUSING desired state older than the one applied (control plane restored from an old backup?): kernel kept as it is",
			"rev", resp.GetRevision(), "applied", floor, "snapshot", resp.GetSnapshot())
		return fmt.Errorf("%w: revision %d, this host has %d", ErrStaleRevision, resp.GetRevision(), floor)
	}
	a.model.merge(resp)
	rev := a.model.revision
	a.mu.Unlock()
	if k := resp.GetGossipKeys(); k != nil && k.GetRevision() > a.keyring.Load() {
		a.installKeyring(k)
	}
	a.met.desiredRevision.Set(float64(rev))
	if a.log.Enabled(context.Background(), slog.LevelDebug) {
		a.log.Debug("desired state received", "rev", resp.GetRevision(), "snapshot", resp.GetSnapshot(),
			"networks", len(resp.GetNetworks()), "local_ports", len(resp.GetLocalPorts()), "remote_ports", len(resp.GetRemotePorts()))
	}
	a.kickChange()
	return nil
}

// installKeyring puts the fabric's gossip keyring (GossipService's rotation) into this host's gossip
// member before the revision that carries it is applied, so that the report of that revision
// confirms it. Without gossip there is nothing to install: the keyring is confirmed as it is.
func (a *Agent) installKeyring(k *vxfabricv1.GossipKeys) {
	a.keyringErr.Store(nil)
	if a.cfg.Membership != nil {
		err := a.cfg.Membership.InstallKeys(k.GetKeys())
		if err != nil {
			msg := fmt.Sprintf("gossip keyring of revision %d: %v", k.GetRevision(), err)
			a.keyringErr.Store(&msg)
		}
		if err != nil && !errors.Is(err, membership.ErrKeyringNotRecorded) {
			a.log.Error("gossip keyring not installed", "rev", k.GetRevision(), "err", err)
			return
		}
		// Installed; a keyring file that could not be rewritten is reported, not fatal.
		a.log.Info("gossip keyring installed", "rev", k.GetRevision(), "keys", len(k.GetKeys()), "err", err)
	}
	a.keyring.Store(k.GetRevision())
}

func (a *Agent) reconcileLoop(ctx context.Context) {
	full := time.NewTimer(jittered(a.cfg.FullResyncInterval))
	defer full.Stop()
	bo := backoff{min: a.cfg.BackoffMin, max: a.cfg.BackoffMax}
	var retry <-chan time.Time
	for {
		fullPass := true
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
			fullPass = a.fullWanted.Swap(false)
		case <-full.C:
			full.Reset(jittered(a.cfg.FullResyncInterval))
			// The periodic pass reports again even what it reported before: a server that
			// recorded the report wrongly, or lost it, has it right once more.
			a.repMu.Lock()
			a.lastSent = nil
			a.repMu.Unlock()
		case <-retry:
		}
		retry = nil
		pass := a.reconcile
		if !fullPass {
			pass = a.reconcileChange
		}
		if err := pass(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			retry = time.After(bo.next())
		} else {
			bo.reset()
		}
	}
}

// jittered spreads a period over 0.75..1.25 of itself: agents started together (a rack powered on,
// a fleet upgraded) must not all read and diff their kernels, and load their servers, in the same
// instant of every period.
func jittered(d time.Duration) time.Duration {
	return d*3/4 + rand.N(d/2+1)
}

// gossipDead returns, for each agent node this agent's gossip knows, whether it is dead: every member
// carrying its name is Down (SUSPECT, DEAD or LEFT, with a host that does not answer on the
// underlay; a node alive again under another member name is not). SUSPECT, DEAD or LEFT on a host
// that answers (a paused, crashed, stopped or restarting agent: its kernel still forwards) are not
// dead. Nil without gossip: the control plane's status alone decides.
func (a *Agent) gossipDead() map[string]bool {
	if a.cfg.Membership == nil {
		return nil
	}
	known := map[string]bool{}
	for _, p := range a.cfg.Membership.Members() {
		if p.Meta.Role != membership.RoleAgent || p.Meta.Node == "" {
			continue
		}
		dead, seen := known[p.Meta.Node]
		known[p.Meta.Node] = p.Down() && (dead || !seen)
	}
	return known
}

// infrastructure lists the fabric's own addresses that VMs may never connect to: every gossip
// member's address and VTEP, the servers' API addresses (from gossip and from Config.Servers), and
// this host's VTEP. Peers' VTEPs from the desired state are added by the caller under a.mu.
// serverAddrs are the IPv4 addresses of the API servers this agent knows: the configured ones and,
// with gossip, the server members'.
func (a *Agent) serverAddrs() []netip.Addr {
	var out []netip.Addr
	add := func(hostport string) {
		if ap, err := netip.ParseAddrPort(hostport); err == nil && ap.Addr().Unmap().Is4() {
			out = append(out, ap.Addr().Unmap())
		}
	}
	for _, s := range a.cfg.Servers {
		add(s)
	}
	if a.cfg.Membership != nil {
		for _, p := range a.cfg.Membership.Members() {
			if p.Meta.Role == membership.RoleServer {
				add(p.Meta.GRPCAddr)
			}
		}
	}
	return out
}

func (a *Agent) infrastructure() []netip.Addr {
	out := []netip.Addr{a.cfg.VTEP}
	addHost := func(hostport string) {
		if ap, err := netip.ParseAddrPort(hostport); err == nil {
			out = append(out, ap.Addr())
		}
	}
	for _, s := range a.cfg.Servers {
		addHost(s)
	}
	if a.cfg.Membership != nil {
		for _, p := range a.cfg.Membership.Members() {
			out = append(out, p.Addr.Addr())
			if p.Meta.VTEP.IsValid() {
				out = append(out, p.Meta.VTEP)
			}
			addHost(p.Meta.GRPCAddr)
		}
	}
	return out
}

// reconcileChange applies what was merged since the last pass as a delta when it can (see
// incremental.go), and runs the full pass otherwise or when the delta fails.
func (a *Agent) reconcileChange(ctx context.Context) error {
	a.mu.Lock()
	if !a.model.ready {
		a.mu.Unlock()
		return nil
	}
	d, remotes, withheld, ok := a.model.incremental(a.cfg.VTEP)
	rev := a.model.revision
	a.mu.Unlock()
	if !ok {
		return a.reconcile(ctx)
	}
	if !d.Empty() {
		start := time.Now()
		res, err := a.cfg.Datapath.ApplyDelta(ctx, d)
		a.met.reconcileDuration.Observe(time.Since(start).Seconds())
		if err != nil {
			// The model recorded the delta as programmed; only a full pass knows better now.
			a.mu.Lock()
			a.model.prog = nil
			a.mu.Unlock()
			if ctx.Err() != nil {
				return err
			}
			a.log.Warn("incremental apply failed, running a full pass", "rev", rev, "objects", len(res.Errors), "err", err)
			return a.reconcile(ctx)
		}
		if a.log.Enabled(ctx, slog.LevelDebug) {
			for _, c := range res.Changes {
				a.log.Debug("kernel object written", "op", string(c.Op), "object", c.Object, "rev", rev)
			}
		}
	}
	a.met.remotePorts.Set(float64(remotes))
	a.met.withheldPorts.Set(float64(withheld))
	a.advance(rev, a.plugged)
	return nil
}

// advance records rev as applied (the kernel holds it), persists it and queues the report.
func (a *Agent) advance(rev int64, plugged []string) {
	a.mu.Lock()
	advanced := rev > a.applied
	if advanced {
		a.applied = rev
	}
	applied := a.applied
	a.mu.Unlock()
	if advanced {
		if err := saveAppliedRevision(a.cfg.StateDir, applied); err != nil {
			a.log.Error("cannot persist the applied revision", "rev", applied, "err", err)
		}
	}
	a.met.appliedRevision.Set(float64(applied))
	a.queueReport(applied, plugged, a.standing)
}

// reconcile runs one Apply of the current desired state (a full pass).
func (a *Agent) reconcile(ctx context.Context) error {
	gossip := a.gossipDead()
	infra := a.infrastructure()
	a.mu.Lock()
	if !a.model.ready {
		a.mu.Unlock()
		return nil
	}
	b := a.model.build(overlay.Underlay{VTEP: a.cfg.VTEP, Interface: a.cfg.UnderlayInterface}, a.model.dead(gossip))
	for _, vtep := range a.model.peerVTEPs {
		infra = append(infra, vtep)
	}
	b.state.Infrastructure = infra
	a.watched = maps.Clone(b.portByIface)
	a.mu.Unlock()
	for _, err := range b.invalid {
		a.log.Warn("desired object skipped", "rev", b.revision, "err", err)
	}
	a.met.invalidObjects.Set(float64(len(b.invalid)))

	start := time.Now()
	res, err := a.cfg.Datapath.Apply(ctx, b.state)
	a.met.reconcileDuration.Observe(time.Since(start).Seconds())
	a.setUnderlay(res.UnderlayRoutes)
	for _, c := range res.Changes {
		a.log.Debug("kernel object written", "op", string(c.Op), "object", c.Object, "rev", b.revision)
	}
	if len(res.Changes) > 0 {
		a.log.Info("kernel converged", "rev", b.revision, "changes", len(res.Changes), "took", time.Since(start))
	}
	var plugged []string
	for iface, ok := range res.Plugged {
		if id, known := b.portByIface[iface]; ok && known {
			plugged = append(plugged, id)
		}
	}
	slices.Sort(plugged)
	a.met.localPorts.Set(float64(len(b.portByIface)))
	a.met.pluggedPorts.Set(float64(len(plugged)))
	a.met.withheldPorts.Set(float64(b.withheld))
	standing := overlay.OnlyStanding(err)
	if standing {
		// Everything converged but what the host refuses until it or the desired state changes (a
		// gateway over its underlay, an uplink that must stay out): the revision is applied as far
		// as it can be, the refusals are reported with it, and the normal cadence goes on (retrying
		// at once would only meet them again).
		if !slices.Equal(a.standing, reportErrors(res.Errors, nil)) {
			a.log.Warn("apply refused objects", "rev", b.revision, "objects", len(res.Errors), "err", err)
		}
		a.standing = reportErrors(res.Errors, nil)
	} else if err == nil {
		a.standing = nil
	}
	if err != nil && !standing {
		a.mu.Lock()
		a.model.prog = nil // the kernel may hold part of it: the next pass is full again
		a.mu.Unlock()
		a.met.reconcileErrors.Inc()
		if ctx.Err() == nil {
			a.log.Error("apply failed, retrying", "rev", b.revision, "objects", len(res.Errors), "err", err)
		}
		if ctx.Err() == nil {
			if res.Plugged == nil { // Apply failed before it read the ports
				plugged = a.plugged
			}
			a.queueReport(a.AppliedRevision(), plugged, reportErrors(res.Errors, err))
		}
		return fmt.Errorf("apply revision %d: %w", b.revision, err)
	}
	a.met.remotePorts.Set(float64(b.remotes))
	a.plugged = plugged
	a.advance(b.revision, plugged)
	a.convergedOnce.Do(func() { close(a.converged) })
	return nil
}

func (a *Agent) queueReport(rev int64, plugged, errors []string) {
	a.repMu.Lock()
	a.pending = &report{rev: rev, plugged: plugged, errors: errors, underlay: a.underlay}
	a.repMu.Unlock()
	select {
	case a.repKick <- struct{}{}:
	default:
	}
}

// setReportClient switches reports to a new stream's server (nil: disconnected); a new server gets
// the newest report again.
func (a *Agent) setReportClient(c vxfabricv1.AgentServiceClient) {
	a.repMu.Lock()
	a.client = c
	a.lastSent = nil
	a.repMu.Unlock()
	select {
	case a.repKick <- struct{}{}:
	default:
	}
}

func (a *Agent) reportLoop(ctx context.Context) {
	bo := backoff{min: a.cfg.BackoffMin, max: a.cfg.BackoffMax}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.repKick:
		}
		for {
			a.repMu.Lock()
			client, p, last, token := a.client, a.pending, a.lastSent, a.statusToken
			a.repMu.Unlock()
			if client == nil || p == nil || p.equal(last) {
				break
			}
			rctx, cancel := context.WithTimeout(ctx, a.cfg.RPCTimeout)
			errs := p.errors
			if e := a.keyringErr.Load(); e != nil {
				errs = append(slices.Clip(errs), *e)
			}
			resp, err := client.ReportApplied(rctx, &vxfabricv1.ReportAppliedRequest{
				Node: a.cfg.Node, Revision: p.rev, PluggedPortIds: p.plugged, StatusRevision: token, Errors: errs,
				Sequence: a.reportSeq.Add(1), GossipKeyringRevision: a.keyring.Load(), UnderlayRoutes: p.underlay,
			})
			cancel()
			if err != nil {
				// The failed call may have written some of its statuses: the next one makes its
				// server catch up with the whole store first.
				a.repMu.Lock()
				a.statusToken = 0
				a.repMu.Unlock()
				if ctx.Err() != nil {
					return
				}
				d := bo.next()
				a.log.Warn("report applied revision failed", "rev", p.rev, "err", err, "retry_in", d)
				if !sleepCtx(ctx, d) {
					return
				}
				continue
			}
			bo.reset()
			a.repMu.Lock()
			if a.client == client {
				a.lastSent = p
			}
			a.statusToken = resp.GetStatusRevision()
			a.repMu.Unlock()
		}
	}
}

func (a *Agent) linkLoop(ctx context.Context) {
	drift := make(chan struct{}, 1)
	go a.driftLoop(ctx, drift)
	changed := func(name string) {
		a.mu.Lock()
		_, hit := a.watched[name]
		a.mu.Unlock()
		switch {
		case hit: // a desired port's interface: plug it now
			a.trigger()
		case overlay.IsDeviceName(name):
			// A device of ours changed (someone set it down, took an entry away, or we did):
			// a full pass repairs it now rather than at the next periodic one.
			select {
			case drift <- struct{}{}:
			default:
			}
		}
	}
	if err := a.links.Run(ctx, changed, a.trigger); err != nil && ctx.Err() == nil {
		a.log.Error("link watch failed: new interfaces are plugged by the periodic pass only", "err", err)
	}
}

// driftLoop turns changes of our own devices into full passes, at most one per driftPassInterval:
// our own writes cause such changes too (a remote port's entry deleted, a network's devices made),
// and a burst of them must cost one pass, not one each.
func (a *Agent) driftLoop(ctx context.Context, drift <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-drift:
		}
		a.trigger()
		if !sleepCtx(ctx, driftPassInterval) {
			return
		}
	}
}

// driftPassInterval bounds the full passes that changes of our own devices cause.
const driftPassInterval = time.Second

func (a *Agent) livenessLoop(ctx context.Context) {
	if a.cfg.Membership == nil {
		return
	}
	events, cancel := a.cfg.Membership.Subscribe()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			first := ev.Previous == 0 // gossip now decides for this node instead of the control plane
			if ev.Peer.Meta.Role == membership.RoleServer {
				// A server's addresses join the infrastructure set (VMs may not reach them) as soon as
				// it is seen or moves, not at the next periodic pass.
				if first || ev.Previous == ev.Peer.State && ev.PreviousDown == ev.Peer.Down() { // seen, or its metadata changed
					a.trigger()
				}
				if ev.Peer.State == membership.StateAlive && !ev.Peer.Down() && (first || ev.Previous != membership.StateAlive || ev.PreviousDown) {
					select { // a server came (back): a Sync loop waiting to dial again dials now
					case a.syncWake <- struct{}{}:
					default:
					}
				}
				continue
			}
			if ev.Peer.Meta.Role != membership.RoleAgent || !first && ev.Peer.Down() == ev.PreviousDown {
				continue // a reachable SUSPECT, DEAD or LEFT and metadata changes withhold nothing and return nothing
			}
			a.log.Info("node liveness changed", "peer", ev.Peer.Meta.Node, "state", ev.Peer.State.String(), "down", ev.Peer.Down(), "vtep", ev.Peer.Meta.VTEP.String())
			a.trigger()
		}
	}
}
