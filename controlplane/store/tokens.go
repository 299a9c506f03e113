package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxTokenDeletes bounds the token deletes carried by a tenant's delete transaction, within etcd's
// default --max-txn-ops (128) with the transaction's other operations.
const maxTokenDeletes = 100

// tokenOwner is the part of controlplane/auth's token record (JSON) that ties it to its tenant.
type tokenOwner struct {
	Tenant string `json:"tenant"`
}

// tenantTokens are the API tokens of a tenant, as read at rev with the tenant's key.
type tenantTokens struct {
	tenant    string
	createRev int64 // the tenant key's create revision; 0 when it does not exist
	rev       int64
	keys      []string
}

// readTenantTokens reads the tenant's key and its tokens (also those left by an earlier tenant of the
// same name, which authenticate nothing) at one revision. Token keys are not grouped by tenant, so
// this reads every token: a tenant delete is rare and tokens are few.
func (s *Store) readTenantTokens(ctx context.Context, tenant string) (*tenantTokens, error) {
	resp, err := s.kv.Get(ctx, TokensPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the tokens of tenant %s: %w", tenant, err)
	}
	out := &tenantTokens{tenant: tenant, rev: resp.Header.Revision}
	tr, err := s.kv.Get(ctx, TenantKey(tenant), clientv3.WithKeysOnly(), clientv3.WithRev(out.rev))
	if err != nil {
		return nil, fmt.Errorf("read tenant %s: %w", tenant, err)
	}
	if len(tr.Kvs) > 0 {
		out.createRev = tr.Kvs[0].CreateRevision
	}
	for _, kv := range resp.Kvs {
		var owner tokenOwner
		if err := json.Unmarshal(kv.Value, &owner); err != nil {
			return nil, fmt.Errorf("decode token %s: %w", kv.Key, err)
		}
		if owner.Tenant == tenant {
			out.keys = append(out.keys, string(kv.Key))
		}
	}
	return out, nil
}

// cmps holds while the tenant is the one read and no token was created since the read: a token is
// created only while its tenant exists (controlplane/auth compares the tenant key's create revision),
// so a delete carrying these compares leaves none of the tenant's tokens behind.
func (t *tenantTokens) cmps() []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(TenantKey(t.tenant)), "=", t.createRev),
		clientv3.Compare(clientv3.CreateRevision(TokensPrefix), "<", t.rev+1).WithPrefix(),
	}
}

// deletes are the token deletes of the tenant's delete transaction, at most maxTokenDeletes; the
// rest is left to deleteRest.
func (t *tenantTokens) deletes() []clientv3.Op {
	var ops []clientv3.Op
	for _, k := range t.keys[:min(len(t.keys), maxTokenDeletes)] {
		ops = append(ops, clientv3.OpDelete(k))
	}
	return ops
}

// deleteRest deletes the tokens beyond maxTokenDeletes after the tenant's delete. They authenticate
// nothing already (their tenant is gone), and no token of it can be created any more, so they need
// not be deleted atomically with it.
func (s *Store) deleteRest(ctx context.Context, t *tenantTokens) error {
	for rest := t.keys[min(len(t.keys), maxTokenDeletes):]; len(rest) > 0; {
		n := min(len(rest), maxTokenDeletes)
		ops := make([]clientv3.Op, 0, n)
		for _, k := range rest[:n] {
			ops = append(ops, clientv3.OpDelete(k))
		}
		if _, err := s.kv.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("delete the tokens of deleted tenant %s: %w", t.tenant, err)
		}
		rest = rest[n:]
	}
	return nil
}
