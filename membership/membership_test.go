package membership

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vxfabric/vxfabric/security/pki"
)

// memberlist's Shutdown does not wait for a probe in flight: it ends by itself within a (scaled)
// probe interval.
func TestMain(m *testing.M) {
	if name := os.Getenv("VXFAB_MEMBERSHIP_CHILD"); name != "" {
		runChild(name, os.Getenv("VXFAB_MEMBERSHIP_SEED"))
		return
	}
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

type memberOpts struct {
	role        Role
	keys        [][]byte
	keyringFile string
	seeds       []string
	seedsFn     func() []string
	bind        string
	mod         func(*Config) // last word on the configuration
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("VXFAB_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startMember(t *testing.T, name string, o memberOpts) *Member {
	t.Helper()
	if o.role == "" {
		o.role = RoleAgent
	}
	if o.bind == "" {
		o.bind = "127.0.0.1:0"
	}
	cfg := Default(o.role, name)
	cfg.VTEP = netip.MustParseAddr("198.18.0." + strconv.Itoa(len(name)))
	if o.role == RoleServer {
		cfg.GRPCAddr = "127.0.0.1:" + strconv.Itoa(7400+len(name))
	}
	cfg.Version = "test"
	cfg.BindAddr = o.bind
	cfg.Join = o.seeds
	cfg.Seeds = o.seedsFn
	cfg.Keys = o.keys
	cfg.KeyringFile = o.keyringFile
	cfg.RejoinInterval = 200 * time.Millisecond
	// A join gossiped over UDP can be lost on a loaded machine; a full sync soon repairs that.
	cfg.PushPullInterval = 2 * time.Second
	cfg.Logger = testLogger(t)
	if o.mod != nil {
		o.mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("start member %s: %v", name, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

func waitState(t *testing.T, m *Member, peer string, want State, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	err := m.WaitFor(ctx, func(ps []Peer) bool {
		for _, p := range ps {
			if p.Name == peer {
				return p.State == want
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("%s: %s did not become %s within %s: members %v", m.Name(), peer, want, within, m.Members())
	}
}

func stateOf(m *Member, peer string) State {
	for _, p := range m.Members() {
		if p.Name == peer {
			return p.State
		}
	}
	return 0
}

func TestJoinMetadataServersAndLeave(t *testing.T) {
	srv := startMember(t, "srv", memberOpts{role: RoleServer})
	seed := []string{srv.LocalAddr().String()}
	a := startMember(t, "agent-a", memberOpts{seeds: seed})
	b := startMember(t, "agent-bb", memberOpts{seeds: seed})
	events, cancel := b.Subscribe()
	defer cancel()

	for _, m := range []*Member{srv, a, b} {
		for _, peer := range []string{"srv", "agent-a", "agent-bb"} {
			waitState(t, m, peer, StateAlive, 5*time.Second)
		}
	}
	var pa Peer
	for _, p := range b.Members() {
		if p.Name == "agent-a" {
			pa = p
		}
	}
	want := Meta{Role: RoleAgent, Node: "agent-a", VTEP: netip.MustParseAddr("198.18.0.7"), Version: "test"}
	if pa.Meta != want || pa.Addr != a.LocalAddr() {
		t.Fatalf("agent-a as seen by agent-bb: %+v, want meta %+v at %s", pa, want, a.LocalAddr())
	}
	if got := a.Servers(); !slices.Equal(got, []string{"127.0.0.1:7403"}) {
		t.Fatalf("Servers() = %v, want the server's gRPC address", got)
	}

	if err := a.Leave(2 * time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitState(t, b, "agent-a", StateLeft, 5*time.Second)
	waitState(t, srv, "agent-a", StateLeft, 5*time.Second)

	// The event stream saw agent-a go from alive to left.
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Peer.Name == "agent-a" && ev.Peer.State == StateLeft {
				if ev.Previous != StateAlive {
					t.Fatalf("left event previous state %s, want alive", ev.Previous)
				}
				return
			}
		case <-deadline:
			t.Fatal("no left event for agent-a")
		}
	}
}

// TestTimeToDead kills members without Leave and measures when every peer marks them dead, then
// restarts them on the same address and checks that they come back alive.
func TestTimeToDead(t *testing.T) {
	clusters := 3
	if n, err := strconv.Atoi(os.Getenv("VXFAB_GOSSIP_TRIALS")); err == nil && n > 0 {
		clusters = n
	}
	const size = 5
	var mu sync.Mutex
	var samples []time.Duration // per (trial, observer)
	var worst []time.Duration   // per trial: the last observer
	var wg sync.WaitGroup
	for c := range clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms := make([]*Member, size)
			for i := range ms {
				var seeds []string
				if i > 0 {
					seeds = []string{ms[0].LocalAddr().String()}
				}
				ms[i] = startMember(t, fmt.Sprintf("c%d-m%d", c, i), memberOpts{seeds: seeds})
			}
			victim := ms[size-1]
			for _, m := range ms {
				for _, o := range ms {
					waitState(t, m, o.Name(), StateAlive, 10*time.Second)
				}
			}
			addr := victim.LocalAddr()
			killed := time.Now()
			_ = victim.Shutdown()
			var last time.Duration
			for _, m := range ms[:size-1] {
				waitState(t, m, victim.Name(), StateDead, 10*time.Second)
				d := time.Since(killed)
				// Waits are sequential: the first observer's time is exact, later ones are upper bounds
				// refined by the Since timestamps.
				for _, p := range m.Members() {
					if p.Name == victim.Name() {
						d = p.Since.Sub(killed)
					}
				}
				mu.Lock()
				samples = append(samples, d)
				mu.Unlock()
				last = max(last, d)
			}
			mu.Lock()
			worst = append(worst, last)
			mu.Unlock()

			back := startMember(t, victim.Name(), memberOpts{seeds: []string{ms[0].LocalAddr().String()}, bind: addr.String()})
			for _, m := range ms[:size-1] {
				waitState(t, m, back.Name(), StateAlive, 10*time.Second)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	sort.Slice(worst, func(i, j int) bool { return worst[i] < worst[j] })
	p := func(s []time.Duration, q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	t.Logf("time to dead over %d trials of %d members: per observer p50 %s p99 %s; all observers p50 %s max %s",
		clusters, size, p(samples, 0.5), p(samples, 0.99), p(worst, 0.5), worst[len(worst)-1])
	if w := worst[len(worst)-1]; w > deadBound {
		t.Fatalf("a killed member took %s to be dead everywhere, want under %s", w, deadBound)
	}
}

func key(b byte, n int) []byte {
	k := make([]byte, n)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func TestWrongOrMissingKeyCannotJoin(t *testing.T) {
	good := key(1, 32)
	a := startMember(t, "keyed-a", memberOpts{keys: [][]byte{good}})
	b := startMember(t, "keyed-b", memberOpts{keys: [][]byte{good}, seeds: []string{a.LocalAddr().String()}})
	waitState(t, a, "keyed-b", StateAlive, 5*time.Second)

	for _, tc := range []struct {
		name string
		keys [][]byte
	}{
		{"nokey", nil},
		{"wrongkey", [][]byte{key(9, 32)}},
		{"wrongsize", [][]byte{key(1, 16)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			intruder := startMember(t, "intruder-"+tc.name, memberOpts{keys: tc.keys})
			if _, err := intruder.Join([]string{a.LocalAddr().String()}); err == nil {
				t.Fatal("join with a wrong key succeeded")
			}
			// Give gossip time to spread anything that did get through.
			time.Sleep(500 * time.Millisecond)
			for _, m := range []*Member{a, b} {
				if st := stateOf(m, intruder.Name()); st != 0 {
					t.Fatalf("%s knows the intruder as %s", m.Name(), st)
				}
			}
			if n := len(intruder.Members()); n != 1 {
				t.Fatalf("intruder knows %d members, want only itself", n)
			}
		})
	}
}

func writeKeyring(t *testing.T, path string, keys ...[]byte) {
	t.Helper()
	var s string
	for _, k := range keys {
		s += base64.StdEncoding.EncodeToString(k) + "\n"
	}
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestKeyRotation rotates the gossip key through the keyring files (install, use, remove), reloading
// with SIGHUP, and checks that no member is declared dead meanwhile.
func TestKeyRotation(t *testing.T) {
	oldKey, newKey := key(10, 32), key(100, 16)
	dir := t.TempDir()
	var ms []*Member
	var files []string
	for i := range 3 {
		f := filepath.Join(dir, fmt.Sprintf("keyring-%d", i))
		writeKeyring(t, f, oldKey)
		files = append(files, f)
		var seeds []string
		if i > 0 {
			seeds = []string{ms[0].LocalAddr().String()}
		}
		ms = append(ms, startMember(t, fmt.Sprintf("rot-%d", i), memberOpts{keyringFile: f, seeds: seeds}))
	}
	for _, m := range ms {
		for _, o := range ms {
			waitState(t, m, o.Name(), StateAlive, 5*time.Second)
		}
	}
	var bad []string
	var badMu sync.Mutex
	var subs sync.WaitGroup
	for _, m := range ms {
		ch, cancel := m.Subscribe()
		defer cancel()
		subs.Add(1)
		go func() {
			defer subs.Done()
			for ev := range ch {
				// SUSPECT is allowed (a loaded machine may miss a probe); a death is not.
				if ev.Peer.State == StateDead || ev.Peer.State == StateLeft {
					badMu.Lock()
					bad = append(bad, fmt.Sprintf("%s saw %s %s", m.Name(), ev.Peer.Name, ev.Peer.State))
					badMu.Unlock()
				}
			}
		}()
	}
	step := func(keys ...[]byte) {
		t.Helper()
		for _, f := range files {
			writeKeyring(t, f, keys...)
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// Every member reloaded: its keyring holds exactly the file's keys.
		deadline := time.Now().Add(5 * time.Second)
		for _, m := range ms {
			for !keysEqual(m.Keyring().GetKeys(), keys) || string(m.Keyring().GetPrimaryKey()) != string(keys[0]) {
				if time.Now().After(deadline) {
					t.Fatalf("%s did not reload its keyring", m.Name())
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		// Let a few probe rounds run under the new keyring.
		time.Sleep(1500 * time.Millisecond)
	}
	step(oldKey, newKey) // install
	step(newKey, oldKey) // use
	step(newKey)         // remove

	// Only the new key gets in now.
	joiner := startMember(t, "rot-new", memberOpts{keys: [][]byte{newKey}})
	if _, err := joiner.Join([]string{ms[1].LocalAddr().String()}); err != nil {
		t.Fatalf("join with the new key: %v", err)
	}
	stale := startMember(t, "rot-old", memberOpts{keys: [][]byte{oldKey}})
	if _, err := stale.Join([]string{ms[1].LocalAddr().String()}); err == nil {
		t.Fatal("join with the removed key succeeded")
	}
	waitState(t, ms[2], "rot-new", StateAlive, 5*time.Second)
	for _, m := range ms {
		for _, o := range ms {
			if st := stateOf(m, o.Name()); st != StateAlive {
				t.Errorf("%s sees %s as %s after rotation", m.Name(), o.Name(), st)
			}
		}
	}
	for _, m := range ms {
		_ = m.Shutdown() // closes the subscriptions
	}
	subs.Wait()
	if len(bad) > 0 {
		t.Fatalf("members changed state during key rotation: %v", bad)
	}
}

func keysEqual(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for _, k := range b {
		if !slices.ContainsFunc(a, func(x []byte) bool { return string(x) == string(k) }) {
			return false
		}
	}
	return true
}

func TestConfigValidate(t *testing.T) {
	ok := Default(RoleAgent, "h1")
	ok.VTEP = netip.MustParseAddr("198.18.0.1")
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"role", func(c *Config) { c.Role = "x" }},
		{"novtep", func(c *Config) { c.VTEP = netip.Addr{} }},
		{"servernogrpc", func(c *Config) { c.Role = RoleServer }},
		{"bind", func(c *Config) { c.BindAddr = "nope" }},
		{"key", func(c *Config) { c.Keys = [][]byte{{1, 2, 3}} }},
		{"timeout", func(c *Config) { c.ProbeTimeout = c.ProbeInterval }},
		{"meta", func(c *Config) { c.Version = string(make([]byte, 600)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			if err := c.Validate(); err == nil {
				t.Fatal("Validate accepted a bad config")
			}
		})
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("default agent config: %v", err)
	}
	if _, err := pki.ParseGossipKey(base64.StdEncoding.EncodeToString(key(0, 24))); err != nil {
		t.Fatalf("24-byte key: %v", err)
	}
	if _, err := pki.ParseGossipKey("not base64!"); err == nil {
		t.Fatal("ParseGossipKey accepted garbage")
	}
}

// TestAloneMemberJoinsSeedsItIsGiven: a member with no --join (a restarted server) joins the members
// its Seeds function names (the hosts its store knows) once it finds itself alone.
func TestAloneMemberJoinsSeedsItIsGiven(t *testing.T) {
	b := startMember(t, "sd-b", memberOpts{})
	var asked atomic.Int32
	a := startMember(t, "sd-a", memberOpts{role: RoleServer, seedsFn: func() []string {
		asked.Add(1)
		return []string{b.LocalAddr().String()}
	}})
	waitState(t, a, b.Name(), StateAlive, 5*time.Second)
	waitState(t, b, a.Name(), StateAlive, 5*time.Second)
	if asked.Load() == 0 {
		t.Error("joined without asking Seeds")
	}
}

// TestMetadataUpdateKeepsAConcurrentStateChange: NotifyUpdate (a metadata change) keeps whatever state
// the member is in when it is applied; a state change made meanwhile (a host found unreachable) is not
// reverted by a state read before it.
func TestMetadataUpdateKeepsAConcurrentStateChange(t *testing.T) {
	a := startMember(t, "mu-a", memberOpts{})
	d, n := ghost(t, a, "mu-ghost", RoleAgent, netip.MustParseAddrPort("127.0.0.1:9"))
	stop := make(chan struct{})
	var updates sync.WaitGroup
	for range 2 {
		updates.Add(1)
		go func() {
			defer updates.Done()
			for {
				select {
				case <-stop:
					return
				default:
					d.NotifyUpdate(n)
				}
			}
		}()
	}
	// The race window, if there were one, is a few instructions wide: try for a while.
	reverted, rounds := 0, 0
	for deadline := time.Now().Add(2 * time.Second); reverted == 0 && time.Now().Before(deadline); rounds++ {
		a.setState(n.Name, nil, StateAlive, StateSuspect)
		since, _ := a.stateSince(n.Name)
		runtime.Gosched() // let an update read the state alive ...
		recheck := true
		a.setReach(n.Name, since, false, &recheck) // a round of dials got no answer: suspect and down
		runtime.Gosched()                          // ... and apply it after the change
		if p := peerOf(a, n.Name); !p.Down() {
			reverted++
		}
	}
	close(stop)
	updates.Wait()
	if reverted > 0 {
		t.Fatalf("a concurrent metadata update reverted %d of %d state changes", reverted, rounds)
	}
}
