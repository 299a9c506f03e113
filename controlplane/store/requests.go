package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Request records (TenantRequestKey, RequestKey) make a create with a request_id idempotent. They
// must not pile up in etcd forever: with ExpireRequests each record rides on an etcd lease, so etcd
// itself deletes it about the retention after its create, with no janitor and nothing to do on
// restart. Records share leases: one per slice of retention/retentionSlices, granted by the first
// create of its slice, so a lease's keys expire between retention and
// retention*(1+1/retentionSlices) after their creates. A retry after that is a new create: it
// answers AlreadyExists when the resource's name is still taken. etcd gives every lease its whole
// TTL again when its leader restarts or changes, unless the cluster checkpoints leases (feature
// gates LeaseCheckpoint and LeaseCheckpointPersist, which the embedded etcd turns on): then a
// restart resumes from the remaining TTL of the last checkpoint, which the leader takes 5 minutes
// after it starts and every 5 minutes after that (leases do not run while etcd is down). A leader
// that restarts more often than every 5 minutes with them, or more often than every retention
// without them, renews the records each time.

// retentionSlices is how many leases one retention period spans.
const retentionSlices = 24

// DefaultRequestRetention is how long vxfab server remembers a request_id.
const DefaultRequestRetention = 24 * time.Hour

// requestLeases grants and caches the current slice's lease.
type requestLeases struct {
	lessor    clientv3.Lease
	retention time.Duration
	slice     time.Duration

	mu    sync.Mutex
	start time.Time // the cached lease's slice; zero when none
	id    clientv3.LeaseID
}

// ExpireRequests makes request records written from now on expire about retention after their create.
// Without it (the zero Store of tests) records are kept forever. It returns s.
func (s *Store) ExpireRequests(lessor clientv3.Lease, retention time.Duration) *Store {
	s.requests = &requestLeases{lessor: lessor, retention: retention, slice: max(retention/retentionSlices, time.Second)}
	return s
}

// requestPut is the put of a request record, on the current slice's lease when records expire; lease
// is 0 otherwise.
func (s *Store) requestPut(ctx context.Context, key, id string) (put clientv3.Op, lease clientv3.LeaseID, err error) {
	if s.requests == nil {
		return clientv3.OpPut(key, id), 0, nil
	}
	lease, err = s.requests.current(ctx)
	if err != nil {
		return clientv3.Op{}, 0, err
	}
	return clientv3.OpPut(key, id, clientv3.WithLease(lease)), lease, nil
}

// current returns the lease of the slice now is in, granting it on the slice's first use.
func (l *requestLeases) current(ctx context.Context) (clientv3.LeaseID, error) {
	start := time.Now().Truncate(l.slice)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id != 0 && l.start.Equal(start) {
		return l.id, nil
	}
	ttl := int64((l.retention + l.slice + time.Second - 1) / time.Second)
	resp, err := l.lessor.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("grant the request records' lease: %w", err)
	}
	l.start, l.id = start, resp.ID
	return resp.ID, nil
}

// leaseLost reports whether a transaction failed because its request record's lease is gone
// (revoked, or expired while the clock jumped); it forgets that lease, and the caller retries with a
// new one.
func (s *Store) leaseLost(err error, lease clientv3.LeaseID) bool {
	if lease == 0 || !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return false
	}
	l := s.requests
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id == lease {
		l.start, l.id = time.Time{}, 0
	}
	return true
}
