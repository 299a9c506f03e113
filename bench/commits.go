package bench

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vxfabric/vxfabric/controlplane/store"
)

// reportCommits watches the port keys from the current revision on and writes one line per written
// port, "commit <revision> <unix ns>", to w, until ctx ends. It runs in the server process: the time
// is when the watch event reached that process, as the fan-out hub's own watch event does.
func reportCommits(ctx context.Context, cli *clientv3.Client, w io.Writer, mu *sync.Mutex) error {
	resp, err := cli.Get(ctx, store.Prefix+"ports/", clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("read store revision: %w", err)
	}
	ch := cli.Watch(ctx, store.Prefix+"ports/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		for r := range ch {
			now := time.Now().UnixNano()
			var b strings.Builder
			for _, ev := range r.Events {
				if ev.Type == clientv3.EventTypePut {
					fmt.Fprintf(&b, "commit %d %d\n", ev.Kv.ModRevision, now)
				}
			}
			mu.Lock()
			_, _ = io.WriteString(w, b.String())
			mu.Unlock()
		}
	}()
	return nil
}

// commitWatch collects the server process's commit lines: when each port write's watch event
// reached the server, the earliest moment anything outside etcd knows of the commit.
type commitWatch struct {
	mu    sync.Mutex
	seen  map[int64]time.Time
	wake  chan struct{}
	ended bool
}

func newCommitWatch() *commitWatch {
	return &commitWatch{seen: map[int64]time.Time{}, wake: make(chan struct{})}
}

// line records one line of the server's output, if it is a commit line.
func (w *commitWatch) line(s string) {
	f := strings.Fields(s)
	if len(f) != 3 || f[0] != "commit" {
		return
	}
	rev, err1 := strconv.ParseInt(f[1], 10, 64)
	ns, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	w.mu.Lock()
	w.seen[rev] = time.Unix(0, ns)
	close(w.wake)
	w.wake = make(chan struct{})
	w.mu.Unlock()
}

// end marks the server's output closed.
func (w *commitWatch) end() {
	w.mu.Lock()
	w.ended = true
	close(w.wake)
	w.wake = make(chan struct{})
	w.mu.Unlock()
}

// at returns when the write of revision rev was seen, waiting for it until ctx ends.
func (w *commitWatch) at(ctx context.Context, rev int64) (time.Time, error) {
	for {
		w.mu.Lock()
		t, ok := w.seen[rev]
		delete(w.seen, rev)
		wake, ended := w.wake, w.ended
		w.mu.Unlock()
		switch {
		case ok:
			return t, nil
		case ended:
			return time.Time{}, fmt.Errorf("server output ended before the commit of revision %d", rev)
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("wait for the commit of revision %d: %w", rev, ctx.Err())
		}
	}
}
