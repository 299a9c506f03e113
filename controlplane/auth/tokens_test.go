package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestTokenStoreLifecycle(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	s := newTokenStore(cli, 500*time.Millisecond)

	if _, _, err := s.create(ctx, "ghost"); err == nil {
		t.Fatal("created a token for a tenant that does not exist")
	}
	putTenant(t, cli, "a")
	rec, token, err := s.create(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(token, "vxft_"+rec.ID+"_") {
		t.Errorf("token %q does not carry its id %s", token, rec.ID)
	}
	got, err := s.authenticate(ctx, token, false)
	if err != nil || got.Tenant != "a" || got.ID != rec.ID {
		t.Fatalf("authenticate: %+v, %v", got, err)
	}

	// Only the hash is stored: the secret appears nowhere in etcd.
	all, err := cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	secret := token[len("vxft_")+tokenIDLen+1:]
	for _, kv := range all.Kvs {
		if strings.Contains(string(kv.Value), secret) || strings.Contains(string(kv.Key), secret) {
			t.Errorf("secret stored in etcd at %s", kv.Key)
		}
	}
	if v, _ := cli.Get(ctx, tokenKey(rec.ID)); len(v.Kvs) != 1 || !strings.Contains(string(v.Kvs[0].Value), hashToken(token)) {
		t.Errorf("token key does not hold the hash: %v", v.Kvs)
	}

	// A token with the right id and a wrong secret, and tokens of the wrong shape.
	forged := token[:len(token)-4] + "AAAA"
	if forged == token {
		forged = token[:len(token)-4] + "BBBB"
	}
	for _, bad := range []string{forged, "vxft_" + rec.ID, "vxft_" + rec.ID + "_", "vxft_" + strings.ToUpper(rec.ID) + "_x", "", "vxfa_x", token + " "} {
		if _, err := s.authenticate(ctx, bad, false); err == nil {
			t.Errorf("authenticated %q", bad)
		}
	}

	recs, err := s.list(ctx, "a")
	if err != nil || len(recs) != 1 || recs[0].ID != rec.ID {
		t.Fatalf("list a: %+v, %v", recs, err)
	}
	putTenant(t, cli, "b")
	if recs, err := s.list(ctx, "b"); err != nil || len(recs) != 0 {
		t.Errorf("list b: %+v, %v", recs, err)
	}

	if err := s.revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.authenticate(ctx, token, false); err == nil {
		t.Error("revoked token still authenticates on the replica that revoked it")
	}
	if err := s.revoke(ctx, rec.ID); err == nil {
		t.Error("revoking twice succeeded")
	}
}

// TestRevocationReachesOtherReplicaWithinASecond: a second store (another server replica) that has
// the token cached stops accepting it within its TTL.
func TestRevocationReachesOtherReplicaWithinASecond(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	putTenant(t, cli, "a")
	one := newTokenStore(cli, 500*time.Millisecond)
	two := newTokenStore(cli, 500*time.Millisecond)
	rec, token, err := one.create(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := two.authenticate(ctx, token, false); err != nil {
		t.Fatal(err)
	}
	if err := one.revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	for {
		if _, err := two.authenticate(ctx, token, false); err != nil {
			break
		}
		if time.Since(revoked) > time.Second {
			t.Fatal("other replica still accepts a token revoked a second ago")
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a convergence wait
	}
	t.Logf("revocation effective on the other replica after %s", time.Since(revoked).Round(time.Millisecond))
}

// TestTokenDiesWithItsTenant: deleting a tenant and creating another of the same name does not
// revive the first one's tokens.
func TestTokenDiesWithItsTenant(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	putTenant(t, cli, "a")
	s := newTokenStore(cli, time.Second)
	clock := time.Now()
	s.now = func() time.Time { return clock }
	_, token, err := s.create(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.authenticate(ctx, token, false); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, tenantsPrefix+"a"); err != nil {
		t.Fatal(err)
	}
	putTenant(t, cli, "a")
	clock = clock.Add(time.Second) // the cached lookup expires
	if _, err := s.authenticate(ctx, token, false); err == nil {
		t.Error("token of a deleted tenant authenticates for its namesake")
	}
}

// TestTokenGoneAtOnce: a lookup cached for its lifetime would let the token of a tenant deleted and
// created anew act for the namesake; a call that writes looks it up afresh and is refused. And with
// watchDeletes running, the delete of a tenant or of a token made on another replica drops this
// replica's cached lookups at once, for reads too.
func TestTokenGoneAtOnce(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	for _, tenant := range []string{"a", "b", "c"} {
		putTenant(t, cli, tenant)
	}
	other := newTokenStore(cli, time.Second) // another replica
	tokens := map[string]string{}
	var recC tokenRecord
	for _, tenant := range []string{"a", "b", "c"} {
		rec, tok, err := other.create(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		tokens[tenant] = tok
		if tenant == "c" {
			recC = rec
		}
	}
	frozen := func(s *tokenStore) *tokenStore {
		clock := time.Now()
		s.now = func() time.Time { return clock } // no cached lookup expires
		for _, tok := range tokens {
			if _, err := s.authenticate(ctx, tok, false); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	unwatched := frozen(newTokenStore(cli, time.Second))
	watched := frozen(newTokenStore(cli, time.Second))
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watched.watchDeletes(wctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	time.Sleep(100 * time.Millisecond) // the watches start from now

	recreate := func(tenant string) {
		if _, err := cli.Delete(ctx, tenantsPrefix+tenant); err != nil {
			t.Fatal(err)
		}
		putTenant(t, cli, tenant)
	}
	recreate("a")
	if _, err := unwatched.authenticate(ctx, tokens["a"], false); err != nil {
		t.Fatalf("the cached lookup is gone without a watch (the test proves nothing): %v", err)
	}
	if _, err := unwatched.authenticate(ctx, tokens["a"], true); err == nil {
		t.Error("a write with the token of a deleted tenant was let through for its namesake")
	}

	recreate("b")
	if err := other.revoke(ctx, recC.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, tenant := range []string{"b", "c"} {
		for {
			if _, err := watched.authenticate(ctx, tokens[tenant], false); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a cached lookup of tenant %s's token outlived the delete of its tenant or token", tenant)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestListTokensOfMissingOrRecreatedTenant: listing the tokens of a tenant that does not exist is
// errNoSuchTenant, not an empty list; the tokens of a deleted tenant are not listed, not even under a
// tenant created since with its name (they do not authenticate for it either).
func TestListTokensOfMissingOrRecreatedTenant(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	s := newTokenStore(cli, time.Second)
	if recs, err := s.list(ctx, "nosuch"); !errors.Is(err, errNoSuchTenant) {
		t.Errorf("list nosuch: %+v, %v; want no such tenant", recs, err)
	}
	putTenant(t, cli, "a")
	putTenant(t, cli, "b")
	old, _, err := s.create(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	kept, _, err := s.create(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	// Tenant a deleted (by a server that left its tokens behind) and created again.
	if _, err := cli.Delete(ctx, tenantsPrefix+"a"); err != nil {
		t.Fatal(err)
	}
	if recs, err := s.list(ctx, "a"); !errors.Is(err, errNoSuchTenant) {
		t.Errorf("list a after its deletion: %+v, %v; want no such tenant", recs, err)
	}
	putTenant(t, cli, "a")
	if recs, err := s.list(ctx, "a"); err != nil || len(recs) != 0 {
		t.Errorf("list the new tenant a: %+v, %v; want none (token %s was the old a's)", recs, err, old.ID)
	}
	recs, err := s.list(ctx, "")
	if err != nil || len(recs) != 1 || recs[0].ID != kept.ID {
		t.Errorf("list all: %+v, %v; want only b's token %s", recs, err, kept.ID)
	}
	fresh, _, err := s.create(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if recs, err := s.list(ctx, "a"); err != nil || len(recs) != 1 || recs[0].ID != fresh.ID {
		t.Errorf("list a: %+v, %v; want its new token %s", recs, err, fresh.ID)
	}
}

func TestTokenCacheBounded(t *testing.T) {
	cli := startEtcd(t)
	s := newTokenStore(cli, time.Second)
	s.maxEntries = 64
	ctx := context.Background()
	for i := range s.maxEntries + 10 {
		s.authenticate(ctx, fmt.Sprintf("vxft_%016x_AAAA", i), false)
	}
	s.mu.Lock()
	n := len(s.cache)
	s.mu.Unlock()
	if n == 0 || n > s.maxEntries {
		t.Errorf("cache holds %d entries, bound %d", n, s.maxEntries)
	}
}

// A flood of made-up token ids does not evict the lookups of real tokens: their callers keep being
// answered from the cache, without a read of etcd each.
func TestTokenCacheFloodKeepsRealTokens(t *testing.T) {
	cli := startEtcd(t)
	s := newTokenStore(cli, time.Hour)
	s.maxEntries = 64
	ctx := context.Background()
	if _, err := cli.Put(ctx, tenantsPrefix+"a", "x"); err != nil {
		t.Fatal(err)
	}
	rec, secret, err := s.create(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.authenticate(ctx, secret, false); err != nil {
		t.Fatal(err)
	}
	for i := range 4 * s.maxEntries {
		_, _ = s.authenticate(ctx, fmt.Sprintf("vxft_%016x_AAAA", i), false)
	}
	s.mu.Lock()
	e, ok := s.cache[rec.ID]
	n := len(s.cache)
	s.mu.Unlock()
	if !ok || e.rec == nil {
		t.Errorf("the real token's lookup was evicted by made-up ids")
	}
	if n > s.maxEntries {
		t.Errorf("cache holds %d entries, bound %d", n, s.maxEntries)
	}
}
