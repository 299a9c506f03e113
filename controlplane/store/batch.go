package store

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Group commit of create transactions.
//
// Concurrent creates are independent transactions of the same shape: compares that the keys they
// write are absent (and that the tenant and the nodes are as read), then puts. While one etcd
// transaction is in flight, the creates that arrive queue up, and the next transaction carries all
// of them: one gRPC call, one raft entry and one apply for many creates, which is what bounds the
// create rate under load (each create still compares and writes exactly what it did alone).
//
// A batch is all or nothing in etcd, so it only ever holds creates that cannot affect each other:
// no create writes a key that another one in the batch compares or writes (two creates of the same
// name, VNI or request id go in different batches, and the later one fails its compare as it would
// alone). When a batch of several fails (one of its compares is false, or etcd refused it), each of
// its creates runs again alone and gets its own answer, so a caller always sees what its own
// transaction would have returned. A single create is committed as it is.

// maxBatchOps bounds the compares and the puts of one batched transaction, each: etcd refuses a
// transaction with more than --max-txn-ops (default 128) of either.
const maxBatchOps = 128

// batchCommitTimeout bounds one batched commit. It does not end with the context of any one caller:
// the batch carries the others' creates too. A caller whose context ends stops waiting.
const batchCommitTimeout = 30 * time.Second

type batchedTxn struct {
	cmps []clientv3.Cmp
	puts []clientv3.Op
	done chan struct{}
	// Set before done is closed.
	resp  *clientv3.TxnResponse
	err   error
	alone bool // the batch failed: run the transaction alone
}

type txnBatcher struct {
	kv clientv3.KV

	mu      sync.Mutex
	queue   []*batchedTxn
	running bool // a drain goroutine is committing the queue

	// Counted for tests and metrics: transactions sent, and creates they carried.
	commits, carried uint64
}

// commit runs If(cmps).Then(puts) as one transaction would, possibly in one etcd transaction with
// other creates.
func (b *txnBatcher) commit(ctx context.Context, cmps []clientv3.Cmp, puts []clientv3.Op) (*clientv3.TxnResponse, error) {
	t := &batchedTxn{cmps: cmps, puts: puts, done: make(chan struct{})}
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
		b.withdraw(t) // not sent yet: never sent; in flight: it may commit, as any timed-out call
		return nil, ctx.Err()
	}
	if t.alone {
		return b.kv.Txn(ctx).If(cmps...).Then(puts...).Commit()
	}
	return t.resp, t.err
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
	ctx, cancel := context.WithTimeout(context.Background(), batchCommitTimeout)
	defer cancel()
	if len(batch) == 1 {
		t := batch[0]
		t.resp, t.err = b.kv.Txn(ctx).If(t.cmps...).Then(t.puts...).Commit()
		close(t.done)
		return
	}
	var cmps []clientv3.Cmp
	var puts []clientv3.Op
	for _, t := range batch {
		cmps = append(cmps, t.cmps...)
		puts = append(puts, t.puts...)
	}
	resp, err := b.kv.Txn(ctx).If(cmps...).Then(puts...).Commit()
	for _, t := range batch {
		if err == nil && resp.Succeeded {
			t.resp = resp
		} else {
			t.alone = true
		}
		close(t.done)
	}
}

// take removes from the queue, in order, the transactions that fit one batch together; the others
// stay queued for the next one. Called with mu held.
func (b *txnBatcher) take() []*batchedTxn {
	var batch []*batchedTxn
	ncmps, nputs := 0, 0
	rest := b.queue[:0]
	for _, t := range b.queue {
		fits := ncmps+len(t.cmps) <= maxBatchOps && nputs+len(t.puts) <= maxBatchOps
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
		ncmps += len(t.cmps)
		nputs += len(t.puts)
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
