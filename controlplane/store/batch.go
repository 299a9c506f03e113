package store

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Group commit of create transactions.
//
// Network and port creates are independent transactions of one shape: compares that the keys they
// write are absent (and that the tenant, network and nodes are as read), then puts. While one etcd
// transaction is in flight, the creates that arrive queue up, and the next transaction carries all
// of them, each as a nested transaction of its own: one gRPC call, one raft entry and one apply for
// many creates, which is what bounds the create rate under load. etcd evaluates each nested
// transaction's compares on its own, so each create succeeds or fails exactly as it would have
// alone, and gets its own answer.
//
// etcd evaluates every compare of a transaction against the state before it, so a batch never holds
// two creates that touch each other's keys: no create writes a key that another one in the batch
// compares or writes (two creates of the same name, VNI, address or request id go in different
// batches, and whichever commits second fails its compare).
//
// When etcd refuses a batch as a whole (too many operations, too large, an expired request lease),
// nothing of it was applied, and each of its creates runs again alone. Any other error leaves the
// outcome unknown, as it would for one transaction, and every create of the batch returns it.

// maxTxnOps is etcd's default --max-txn-ops: a transaction, and each transaction nested in it, may
// have at most this many compares and this many operations, minus the operations of the
// transactions around it. A batch refused for too many operations halves the batcher's limit.
const maxTxnOps = 128

// maxBatch bounds the creates of one batch, which keeps the request well under etcd's default
// --max-request-bytes (1.5 MiB).
const maxBatch = 64

// batchCommitTimeout bounds the commit of a batch of several creates whose callers set no deadline;
// a batch runs until the latest of its callers' deadlines otherwise. A caller whose context ends
// stops waiting.
const batchCommitTimeout = 30 * time.Second

type batchedTxn struct {
	ctx  context.Context
	cmps []clientv3.Cmp
	puts []clientv3.Op
	done chan struct{}
	// Set before done is closed.
	resp  *clientv3.TxnResponse
	err   error
	alone bool // etcd refused the batch as a whole: run the transaction alone
}

// ops is what the transaction counts against etcd's per-transaction limit.
func (t *batchedTxn) ops() int { return max(len(t.cmps), len(t.puts)) }

type txnBatcher struct {
	kv clientv3.KV

	mu sync.Mutex // guards the fields below
	// queue holds the transactions waiting for a batch, in arrival order.
	queue []*batchedTxn
	// running is set while a drain goroutine commits the queue.
	running bool
	// maxOps is maxTxnOps, halved by every batch that etcd refuses for too many operations.
	maxOps int
	// commits and carried count the transactions sent and the creates they carried.
	commits, carried uint64
}

func newTxnBatcher(kv clientv3.KV) *txnBatcher { return &txnBatcher{kv: kv, maxOps: maxTxnOps} }

// commit runs If(cmps).Then(puts) with the answer it would get alone (its response holds its own
// puts' results, under the header of the transaction that carried it), possibly inside one etcd
// transaction with other creates.
func (b *txnBatcher) commit(ctx context.Context, cmps []clientv3.Cmp, puts []clientv3.Op) (*clientv3.TxnResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := &batchedTxn{ctx: ctx, cmps: cmps, puts: puts, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, t)
	if !b.running {
		b.running = true
		go b.drain()
	}
	b.mu.Unlock()
	select {
	case <-t.done:
	case <-ctx.Done():
		b.withdraw(t) // not taken yet: never sent; in flight: it may commit, as any timed-out call
		return nil, ctx.Err()
	}
	if t.alone {
		return b.kv.Txn(ctx).If(cmps...).Then(puts...).Commit()
	}
	return t.resp, t.err
}

// Metrics returns the group commit's counters, for a Prometheus registry: the etcd transactions that
// committed creates, and the creates they carried (their ratio is the mean batch size).
func (s *Store) Metrics() []prometheus.Collector {
	b := s.creates
	read := func(f func() uint64) func() float64 {
		return func() float64 {
			b.mu.Lock()
			defer b.mu.Unlock()
			return float64(f())
		}
	}
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vxfabric_store_create_transactions_total",
			Help: "etcd transactions that committed network and port creates (several creates share one under load).",
		}, read(func() uint64 { return b.commits })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vxfabric_store_creates_committed_total",
			Help: "Network and port creates sent to etcd, batched or alone.",
		}, read(func() uint64 { return b.carried })),
	}
}

// withdraw removes t from the queue if no batch has taken it yet.
func (b *txnBatcher) withdraw(t *batchedTxn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i := slices.Index(b.queue, t); i >= 0 {
		b.queue = slices.Delete(b.queue, i, i+1)
	}
}

// drain commits the queue batch by batch until it is empty.
func (b *txnBatcher) drain() {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.commits++
		b.carried += uint64(len(batch))
		b.mu.Unlock()
		b.commitBatch(batch)
	}
}

func (b *txnBatcher) commitBatch(batch []*batchedTxn) {
	if len(batch) == 1 {
		t := batch[0]
		ctx, cancel := context.WithTimeout(t.ctx, batchCommitTimeout)
		defer cancel()
		t.resp, t.err = b.kv.Txn(ctx).If(t.cmps...).Then(t.puts...).Commit()
		close(t.done)
		return
	}
	ctx, cancel := batchContext(batch)
	defer cancel()
	nested := make([]clientv3.Op, len(batch))
	for i, t := range batch {
		nested[i] = clientv3.OpTxn(t.cmps, t.puts, nil)
	}
	resp, err := b.kv.Txn(ctx).Then(nested...).Commit()
	refused := refusedWhole(err)
	if errors.Is(err, rpctypes.ErrTooManyOps) {
		b.mu.Lock()
		b.maxOps = max(b.maxOps/2, 2)
		b.mu.Unlock()
	}
	for i, t := range batch {
		switch {
		case refused:
			t.alone = true
		case err != nil:
			t.err = err
		default:
			own := resp.Responses[i].GetResponseTxn()
			t.resp = (*clientv3.TxnResponse)(&pb.TxnResponse{Header: resp.Header, Succeeded: own.Succeeded, Responses: own.Responses})
		}
		close(t.done)
	}
}

// refusedWhole reports whether etcd refused a transaction before applying any of it, for a reason
// that may lie with one create of the batch or with the batch's size.
func refusedWhole(err error) bool {
	return errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) ||
		errors.Is(err, rpctypes.ErrDuplicateKey) || errors.Is(err, rpctypes.ErrLeaseNotFound)
}

// batchContext runs until the latest deadline of the batch's callers, or batchCommitTimeout if one
// of them has none: the batch carries every caller's create, so no one caller's end cancels it.
func batchContext(batch []*batchedTxn) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, t := range batch {
		d, ok := t.ctx.Deadline()
		if !ok {
			return context.WithTimeout(context.Background(), batchCommitTimeout)
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.Background(), latest)
}

// take removes from the queue, in order, the transactions that fit one batch together; the others
// stay queued for the next one. Called with mu held.
func (b *txnBatcher) take() []*batchedTxn {
	var batch []*batchedTxn
	widest := 0 // the largest ops() of the batch
	rest := b.queue[:0]
	for _, t := range b.queue {
		// The outer transaction has one operation per create, which each nested one gives up.
		fits := len(batch) < maxBatch && len(batch)+1+max(widest, t.ops()) <= b.maxOps
		for _, o := range batch {
			if !fits {
				break
			}
			fits = !writesInto(t, o) && !writesInto(o, t)
		}
		if !fits && len(batch) > 0 {
			rest = append(rest, t)
			continue
		}
		batch = append(batch, t)
		widest = max(widest, t.ops())
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	return batch
}

// writesInto reports whether a puts a key that b compares or puts.
func writesInto(a, b *batchedTxn) bool {
	for _, p := range a.puts {
		k := p.KeyBytes()
		for i := range b.cmps {
			c := b.cmps[i].GetCompare()
			if inRange(k, c.Key, c.RangeEnd) {
				return true
			}
		}
		for _, q := range b.puts {
			if bytes.Equal(k, q.KeyBytes()) {
				return true
			}
		}
	}
	return false
}

// inRange: key is start, or within [start, end) when end is set ("\x00" meaning every key from
// start on, as in etcd).
func inRange(key, start, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(key, start)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(key, start) >= 0
	}
	return bytes.Compare(key, start) >= 0 && bytes.Compare(key, end) < 0
}
