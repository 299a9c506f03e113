package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys this package reads and writes. tokensPrefix is ours (see the key schema); tenantsPrefix is
// controlplane/store's TenantsPrefix, read only to tie a token to the tenant it was made for.
const (
	tokensPrefix  = "/vxfabric/v1/tokens/"
	tenantsPrefix = "/vxfabric/v1/tenants/"
)

// Tenant token format: "vxft_<id>_<secret>", id 16 lowercase hex characters (the etcd key), secret
// 32 random bytes in unpadded base64url. Only SHA-256 of the whole token is stored: a high-entropy
// secret needs no salt or slow hash, and a leaked etcd backup grants nothing.
const (
	tenantTokenPrefix = "vxft_"
	tokenIDLen        = 16
	secretBytes       = 32
)

var (
	errNoSuchToken  = errors.New("no such token")
	errNoSuchTenant = errors.New("no such tenant")
)

// tokenRecord is the JSON value of tokens/<id>.
type tokenRecord struct {
	ID     string    `json:"id"`
	Tenant string    `json:"tenant"`
	Create time.Time `json:"create_time"`
	// SHA256 is the hex SHA-256 of the whole token string.
	SHA256 string `json:"sha256"`
	// TenantCreateRevision is the tenant key's create revision when the token was made: a tenant
	// deleted and created again under the same name is another tenant, and old tokens die with the
	// first one.
	TenantCreateRevision int64 `json:"tenant_create_revision"`
}

func tokenKey(id string) string { return tokensPrefix + id }

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// splitTenantToken returns the id of a well-formed tenant token.
func splitTenantToken(token string) (string, bool) {
	rest, ok := strings.CutPrefix(token, tenantTokenPrefix)
	if !ok || len(rest) < tokenIDLen+2 || rest[tokenIDLen] != '_' {
		return "", false
	}
	id := rest[:tokenIDLen]
	for _, c := range []byte(id) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	if _, err := base64.RawURLEncoding.DecodeString(rest[tokenIDLen+1:]); err != nil {
		return "", false
	}
	return id, true
}

// tokenStore keeps tenant tokens in etcd, with a short-lived cache of lookups in front.
type tokenStore struct {
	cli *clientv3.Client
	ttl time.Duration
	now func() time.Time
	// maxEntries bounds the cache against a flood of made-up token ids (maxCacheEntries); such a
	// flood evicts its own misses, not the lookups of real tokens.
	maxEntries int

	mu    sync.Mutex // guards cache and gen
	cache map[string]cacheEntry
	// gen counts the drops of cached lookups: a lookup read from etcd before a drop is not cached
	// after it (it may hold what the drop removed).
	gen uint64
}

type cacheEntry struct {
	rec     *tokenRecord // nil: no valid token of this id
	fetched time.Time
}

// maxCacheEntries bounds the cache against a flood of made-up token ids.
const maxCacheEntries = 4096

func newTokenStore(cli *clientv3.Client, ttl time.Duration) *tokenStore {
	return &tokenStore{cli: cli, ttl: ttl, now: time.Now, maxEntries: maxCacheEntries, cache: map[string]cacheEntry{}}
}

// create stores a new token for an existing tenant and returns its record and the secret token.
func (s *tokenStore) create(ctx context.Context, tenant string) (tokenRecord, string, error) {
	for range 3 {
		idRaw := make([]byte, tokenIDLen/2)
		secret := make([]byte, secretBytes)
		if _, err := rand.Read(idRaw); err != nil {
			return tokenRecord{}, "", fmt.Errorf("generate token id: %w", err)
		}
		if _, err := rand.Read(secret); err != nil {
			return tokenRecord{}, "", fmt.Errorf("generate token secret: %w", err)
		}
		id := hex.EncodeToString(idRaw)
		token := tenantTokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(secret)

		tr, err := s.cli.Get(ctx, tenantsPrefix+tenant)
		if err != nil {
			return tokenRecord{}, "", fmt.Errorf("read tenant %q: %w", tenant, err)
		}
		if len(tr.Kvs) == 0 {
			return tokenRecord{}, "", fmt.Errorf("tenant %s: %w", tenant, errNoSuchTenant)
		}
		rec := tokenRecord{
			ID: id, Tenant: tenant, Create: s.now().UTC(), SHA256: hashToken(token),
			TenantCreateRevision: tr.Kvs[0].CreateRevision,
		}
		val, err := json.Marshal(rec)
		if err != nil {
			return tokenRecord{}, "", fmt.Errorf("encode token %s: %w", id, err)
		}
		// One transaction: the token exists only if its tenant still is the one just read.
		resp, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(tokenKey(id)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(tenantsPrefix+tenant), "=", rec.TenantCreateRevision),
		).Then(clientv3.OpPut(tokenKey(id), string(val))).Commit()
		if err != nil {
			return tokenRecord{}, "", fmt.Errorf("store token %s: %w", id, err)
		}
		if resp.Succeeded {
			return rec, token, nil
		}
		// The tenant changed under us, or (practically never) the id collided: try again.
	}
	return tokenRecord{}, "", fmt.Errorf("store token for tenant %q: lost three races", tenant)
}

// list returns the live tokens of one tenant (errNoSuchTenant when it does not exist), or of all
// tenants when tenant is empty, sorted by tenant and id. A token is live while the tenant it was made
// for exists: a token left over from a deleted tenant is not listed, not even under a tenant created
// since with the same name (it does not authenticate for that one either, see fetch).
func (s *tokenStore) list(ctx context.Context, tenant string) ([]tokenRecord, error) {
	tenantsOp := clientv3.OpGet(tenantsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if tenant != "" {
		tenantsOp = clientv3.OpGet(tenantsPrefix+tenant, clientv3.WithKeysOnly())
	}
	// One transaction: the tokens and tenants as of one revision.
	resp, err := s.cli.Txn(ctx).Then(tenantsOp, clientv3.OpGet(tokensPrefix, clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	tenants, tokens := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if tenant != "" && len(tenants) == 0 {
		return nil, fmt.Errorf("tenant %s: %w", tenant, errNoSuchTenant)
	}
	created := make(map[string]int64, len(tenants)) // tenant name -> create revision of its key
	for _, kv := range tenants {
		created[strings.TrimPrefix(string(kv.Key), tenantsPrefix)] = kv.CreateRevision
	}
	out := make([]tokenRecord, 0, len(tokens))
	for _, kv := range tokens {
		var rec tokenRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode token %s: %w", kv.Key, err)
		}
		if rev, ok := created[rec.Tenant]; ok && rev == rec.TenantCreateRevision {
			out = append(out, rec)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tenant != out[j].Tenant {
			return out[i].Tenant < out[j].Tenant
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// revoke deletes a token; revoking a token that does not exist is errNoSuchToken.
func (s *tokenStore) revoke(ctx context.Context, id string) error {
	resp, err := s.cli.Delete(ctx, tokenKey(id))
	s.forget(id)
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("token %s: %w", id, errNoSuchToken)
	}
	return nil
}

// watchDeletes drops cached lookups as soon as etcd deletes their token or their token's tenant, on
// whichever replica, until ctx ends. After a broken watch it drops every lookup (deletes may have
// been missed) and watches again.
func (s *tokenStore) watchDeletes(ctx context.Context) {
	var from int64 // 0: from now; then the revision after the last one seen
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithFilterPut(), clientv3.WithProgressNotify()}
		if from > 0 {
			opts = append(opts, clientv3.WithRev(from))
		}
		// One watch over both prefixes' parent would carry every delete of the fabric: two small ones.
		tokens := s.cli.Watch(wctx, tokensPrefix, opts...)
		tenants := s.cli.Watch(wctx, tenantsPrefix, opts...)
		// ended tells whether a watch response ends the watch; it records how far deletes were seen.
		ended := func(resp clientv3.WatchResponse, ok bool) bool {
			if resp.CompactRevision != 0 {
				from = 0 // what was missed is gone: start from now
			}
			if !ok || resp.Err() != nil || resp.Canceled {
				return true
			}
			from = max(from, resp.Header.Revision+1)
			return false
		}
		for tokens != nil && tenants != nil {
			select {
			case resp, ok := <-tokens:
				if ended(resp, ok) {
					tokens = nil
					continue
				}
				for _, ev := range resp.Events {
					s.forget(strings.TrimPrefix(string(ev.Kv.Key), tokensPrefix))
				}
			case resp, ok := <-tenants:
				if ended(resp, ok) {
					tenants = nil
					continue
				}
				for _, ev := range resp.Events {
					s.forgetTenant(strings.TrimPrefix(string(ev.Kv.Key), tenantsPrefix))
				}
			}
		}
		cancel()
		// Deletes may have been missed meanwhile: every lookup goes, and the next watch resumes
		// after the last revision seen (from now when that was compacted).
		s.mu.Lock()
		clear(s.cache)
		s.gen++
		s.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// forgetTenant drops the cached lookups of tenant's tokens.
func (s *tokenStore) forgetTenant(tenant string) {
	s.mu.Lock()
	s.gen++
	for id, e := range s.cache {
		if e.rec != nil && e.rec.Tenant == tenant {
			delete(s.cache, id)
		}
	}
	s.mu.Unlock()
}

func (s *tokenStore) forget(id string) {
	s.mu.Lock()
	s.gen++
	delete(s.cache, id)
	s.mu.Unlock()
}

// authenticate maps a bearer token to its record. A lookup older than the TTL, or any when fresh, is
// read again from etcd; deletes of tokens and tenants seen by watchDeletes drop lookups at once. So
// a revocation on any replica takes effect here within milliseconds, and within the TTL at worst.
func (s *tokenStore) authenticate(ctx context.Context, token string, fresh bool) (tokenRecord, error) {
	id, ok := splitTenantToken(token)
	if !ok {
		return tokenRecord{}, errNoSuchToken
	}
	now := s.now()
	s.mu.Lock()
	e, hit := s.cache[id]
	gen := s.gen
	s.mu.Unlock()
	valid := hit && now.Sub(e.fetched) < s.ttl
	// A token that did not exist stays so (ids are random and never reused): trusted even fresh.
	if !valid || fresh && e.rec != nil {
		rec, err := s.fetch(ctx, id)
		if err != nil {
			return tokenRecord{}, err
		}
		e = cacheEntry{rec: rec, fetched: now}
		s.mu.Lock()
		if s.gen == gen {
			if len(s.cache) >= s.maxEntries {
				// A flood of made-up ids fills the cache with misses: they go, and the lookups of
				// real tokens stay (all go only when real tokens alone fill it).
				maps.DeleteFunc(s.cache, func(_ string, e cacheEntry) bool { return e.rec == nil })
				if len(s.cache) >= s.maxEntries {
					clear(s.cache)
				}
			}
			s.cache[id] = e
		}
		s.mu.Unlock()
	}
	if e.rec == nil || subtle.ConstantTimeCompare([]byte(e.rec.SHA256), []byte(hashToken(token))) != 1 {
		return tokenRecord{}, errNoSuchToken
	}
	return *e.rec, nil
}

// fetch reads a token and its tenant in one consistent read; nil when either is gone.
func (s *tokenStore) fetch(ctx context.Context, id string) (*tokenRecord, error) {
	resp, err := s.cli.Get(ctx, tokenKey(id))
	if err != nil {
		return nil, fmt.Errorf("read token %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var rec tokenRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return nil, fmt.Errorf("decode token %s: %w", id, err)
	}
	tr, err := s.cli.Get(ctx, tenantsPrefix+rec.Tenant, clientv3.WithRev(resp.Header.Revision))
	if err != nil {
		return nil, fmt.Errorf("read tenant %q of token %s: %w", rec.Tenant, id, err)
	}
	if len(tr.Kvs) == 0 || tr.Kvs[0].CreateRevision != rec.TenantCreateRevision {
		return nil, nil
	}
	return &rec, nil
}
