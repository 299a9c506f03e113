package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vxfabric/vxfabric/controlplane/store"
)

// commitWatch records when each port write's watch event reached this process: the earliest moment
// anything outside etcd can know of the commit (the fan-out hub learns it the same way).
type commitWatch struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	seen  map[int64]time.Time
	wake  chan struct{}
	err   error
	ended bool
}

func watchCommits(ctx context.Context, cli *clientv3.Client) (*commitWatch, error) {
	wctx, cancel := context.WithCancel(context.Background())
	w := &commitWatch{cancel: cancel, done: make(chan struct{}), seen: map[int64]time.Time{}, wake: make(chan struct{})}
	resp, err := cli.Get(ctx, store.Prefix+"ports/", clientv3.WithCountOnly())
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read store revision: %w", err)
	}
	ch := cli.Watch(wctx, store.Prefix+"ports/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		defer close(w.done)
		for r := range ch {
			now := time.Now()
			w.mu.Lock()
			if err := r.Err(); err != nil && w.err == nil {
				w.err = err
			}
			for _, ev := range r.Events {
				if ev.Type == clientv3.EventTypePut {
					w.seen[ev.Kv.ModRevision] = now
				}
			}
			close(w.wake)
			w.wake = make(chan struct{})
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.ended = true
		close(w.wake)
		w.wake = make(chan struct{})
		w.mu.Unlock()
	}()
	return w, nil
}

// at returns when the write of revision rev was seen, waiting for it until ctx ends.
func (w *commitWatch) at(ctx context.Context, rev int64) (time.Time, error) {
	for {
		w.mu.Lock()
		t, ok := w.seen[rev]
		delete(w.seen, rev)
		wake, err, ended := w.wake, w.err, w.ended
		w.mu.Unlock()
		switch {
		case ok:
			return t, nil
		case err != nil:
			return time.Time{}, fmt.Errorf("watch ports: %w", err)
		case ended:
			return time.Time{}, fmt.Errorf("watch ports ended before revision %d", rev)
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("wait for the watch event of revision %d: %w", rev, ctx.Err())
		}
	}
}

func (w *commitWatch) stop() {
	w.cancel()
	<-w.done
}
