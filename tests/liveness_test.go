//go:build linux

package tests

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxfabric/vxfabric/lab"
	"github.com/vxfabric/vxfabric/overlay"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// watchKernel records the link and neighbour events of hosts until the test ends (or stop is
// called): the agents' every move, seen from outside the fabric.
func watchKernel(t *testing.T, l *lab.Lab, hosts ...string) *lab.KernelWatch {
	t.Helper()
	w, err := l.WatchKernel(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Stop() })
	return w
}

// stopWatch ends a watch and fails the test if its record is incomplete.
func stopWatch(t *testing.T, w *lab.KernelWatch) []lab.KernelEvent {
	t.Helper()
	events, err := w.Stop()
	if err != nil {
		t.Fatalf("kernel watch lost events, the record cannot be trusted: %v", err)
	}
	return events
}

// fabricLink reports whether a link is one of the fabric's: a network's bridge or vxlan device, or a
// port's host interface.
func fabricLink(name string) bool {
	return overlay.IsDeviceName(name) || strings.HasPrefix(name, "vxp")
}

// disruptions returns the events that cost traffic: a neighbour or FDB entry of a vxlan device
// deleted, and a bridge, vxlan device or port interface deleted, set down, or operationally down.
func disruptions(events []lab.KernelEvent) []lab.KernelEvent {
	var bad []lab.KernelEvent
	for _, e := range events {
		switch {
		case e.Link && fabricLink(e.Device) && (e.Deleted || !e.Up || e.OperState == netlink.OperDown):
			bad = append(bad, e)
		case !e.Link && e.Deleted && strings.HasPrefix(e.Device, overlay.VxlanPrefix):
			bad = append(bad, e)
		}
	}
	return bad
}

// fdbChanges returns the FDB events, additions and deletions, of entries that point at vtep on
// hosts other than skip.
func fdbChanges(events []lab.KernelEvent, vtep netip.Addr, skip string) []lab.KernelEvent {
	var changed []lab.KernelEvent
	for _, e := range events {
		if !e.Link && e.Family == unix.AF_BRIDGE && e.IP == vtep && e.Target != skip {
			changed = append(changed, e)
		}
	}
	return changed
}

func eventLines(events []lab.KernelEvent) string {
	const max = 20
	var b strings.Builder
	for i, e := range events {
		if i == max {
			fmt.Fprintf(&b, "\n\t... and %d more", len(events)-max)
			break
		}
		b.WriteString("\n\t" + e.String())
	}
	return b.String()
}

// nodeWatch polls the server's node list (what `vxfab node list` prints) and records each status a
// node was shown with: when it was first and last seen so, and how often.
type nodeWatch struct {
	c      *lab.Client
	node   string
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex // guards seen and errs
	seen  map[vxfabricv1.NodeStatus]*statusSeen
	polls int
	errs  []error
}

type statusSeen struct {
	first, last time.Time
	count       int
}

func watchNode(c *lab.Client, node string, every time.Duration) *nodeWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &nodeWatch{c: c, node: node, cancel: cancel, done: make(chan struct{}), seen: map[vxfabricv1.NodeStatus]*statusSeen{}}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			w.poll(ctx)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *nodeWatch) poll(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	resp, err := w.c.Nodes.ListNodes(cctx, &vxfabricv1.ListNodesRequest{})
	cancel()
	at := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	w.polls++
	if err != nil {
		w.errs = append(w.errs, err)
		return
	}
	st := vxfabricv1.NodeStatus_NODE_STATUS_UNSPECIFIED // not listed at all
	for _, n := range resp.GetNodes() {
		if n.GetName() == w.node {
			st = n.GetStatus()
		}
	}
	s := w.seen[st]
	if s == nil {
		s = &statusSeen{first: at}
		w.seen[st] = s
	}
	s.last = at
	s.count++
}

// stop ends the polling and returns what was seen.
func (w *nodeWatch) stop() (map[vxfabricv1.NodeStatus]*statusSeen, int, []error) {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen, w.polls, w.errs
}

// TestPrivilegedAgentPause stops h2's agent with SIGSTOP for 3 s, as a stalled machine would, and
// watches 5 s more after SIGCONT: the server never lists h2 as DEAD (or gone), no host deletes an
// FDB or neighbour entry or downs a link, the entries of h1 and h3 that point at h2 do not change at
// all, and a ping between VMs on h1 and h2 every 20 ms loses nothing.
func TestPrivilegedAgentPause(t *testing.T) {
	f := newFixture(t, "e2e-pause")
	n := f.network("net", "10.63.0.0/24", isolated)
	vni := n.GetVni()
	p1 := f.vm("pa-1", "h1", "net")
	p2 := f.vm("pa-2", "h2", "net")
	f.vm("pa-3", "h3", "net")
	f.reach("pa-1", p2.IP(0), 5*time.Second)
	h2 := lab.HostAddr(2)
	present := func() (bool, error) {
		for _, h := range []string{"h1", "h3"} {
			if e := f.fdbTo(h, vni, h2); !hasMAC(e, p2.Ports[0].GetMac()) || !hasMAC(e, "00:00:00:00:00:00") {
				return false, nil
			}
		}
		return true, nil
	}
	if _, err := lab.WaitFor(f.ctx, 5*time.Second, present); err != nil {
		t.Fatalf("entries to h2 before the pause: %v", err)
	}
	t.Cleanup(func() {
		if err := f.l.ResumeAgent("h2"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	const (
		paused   = 3 * time.Second
		after    = 5 * time.Second
		interval = 20 * time.Millisecond
	)
	kernel := watchKernel(t, f.l, "h1", "h2", "h3")
	nodes := watchNode(f.c, "h2", 50*time.Millisecond)
	count := int((paused + after) / interval)
	pings := backgroundPing(f, "pa-1", p2, count, interval)
	began := time.Now()
	pauseOut := mustVxfab(t, "lab", "agent", "pause", "h2") // the CLI, as a lab user would
	time.Sleep(paused - time.Since(began))                  // the stall itself, not a wait for convergence
	resumeOut := mustVxfab(t, "lab", "agent", "resume", "h2")
	resumed := time.Now()
	if pauseOut != "agent h2: paused\n" || resumeOut != "agent h2: resumed\n" {
		t.Errorf("lab agent pause, resume h2 said %q, %q", pauseOut, resumeOut)
	}
	time.Sleep(after) // the window in which a late verdict of death would show
	seen, polls, pollErrs := nodes.stop()
	events := stopWatch(t, kernel)
	res := <-pings

	var statuses []string
	for st, s := range seen {
		statuses = append(statuses, fmt.Sprintf("%s x%d (+%s..+%s)", strings.TrimPrefix(st.String(), "NODE_STATUS_"), s.count,
			s.first.Sub(began).Round(10*time.Millisecond), s.last.Sub(began).Round(10*time.Millisecond)))
	}
	t.Logf("h2 paused %s, watched %s after; node list polled %d times: %s; %d kernel events on h1-h3; ping %d sent, %d received",
		resumed.Sub(began).Round(time.Millisecond), after, polls, strings.Join(statuses, ", "), len(events), res.Sent, res.Received)
	if len(pollErrs) > polls/10 {
		t.Errorf("node list failed %d of %d times (first: %v): the status record has gaps", len(pollErrs), polls, pollErrs[0])
	}
	for _, st := range []vxfabricv1.NodeStatus{vxfabricv1.NodeStatus_NODE_STATUS_DEAD, vxfabricv1.NodeStatus_NODE_STATUS_LEFT,
		vxfabricv1.NodeStatus_NODE_STATUS_UNSPECIFIED} {
		if s := seen[st]; s != nil {
			t.Errorf("node list showed h2 %s %d times, from +%s to +%s after the pause began", st, s.count,
				s.first.Sub(began).Round(time.Millisecond), s.last.Sub(began).Round(time.Millisecond))
		}
	}
	if s := seen[vxfabricv1.NodeStatus_NODE_STATUS_ALIVE]; s == nil || s.last.Before(resumed) {
		t.Errorf("node list did not show h2 ALIVE after SIGCONT: %v", statuses)
	}
	if bad := disruptions(events); len(bad) > 0 {
		t.Errorf("%d disruptive kernel changes while h2's agent was paused or just after:%s", len(bad), eventLines(bad))
	}
	if churn := fdbChanges(events, h2, "h2"); len(churn) > 0 {
		t.Errorf("%d changes of FDB entries pointing at h2 on its peers, want none:%s", len(churn), eventLines(churn))
	}
	if ok, _ := present(); !ok {
		t.Errorf("entries to h2 missing after the pause: h1 %v, h3 %v", f.fdbTo("h1", vni, h2), f.fdbTo("h3", vni, h2))
	}
	if res.Sent < count/2 || res.Received != res.Sent {
		t.Errorf("ping pa-1 -> pa-2 across the pause: %d sent, %d received, want none lost", res.Sent, res.Received)
	}
	f.reach("pa-2", p1.IP(0), 2*time.Second)
}
