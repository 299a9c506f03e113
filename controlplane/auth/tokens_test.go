package auth

import (
	"context"
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
	got, err := s.authenticate(ctx, token)
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
		if _, err := s.authenticate(ctx, bad); err == nil {
			t.Errorf("authenticated %q", bad)
		}
	}

	recs, err := s.list(ctx, "a")
	if err != nil || len(recs) != 1 || recs[0].ID != rec.ID {
		t.Fatalf("list a: %+v, %v", recs, err)
	}
	if recs, _ := s.list(ctx, "b"); len(recs) != 0 {
		t.Errorf("list b: %+v", recs)
	}

	if err := s.revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.authenticate(ctx, token); err == nil {
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
	if _, err := two.authenticate(ctx, token); err != nil {
		t.Fatal(err)
	}
	if err := one.revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	for {
		if _, err := two.authenticate(ctx, token); err != nil {
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
	if _, err := s.authenticate(ctx, token); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, tenantsPrefix+"a"); err != nil {
		t.Fatal(err)
	}
	putTenant(t, cli, "a")
	clock = clock.Add(time.Second) // the cached lookup expires
	if _, err := s.authenticate(ctx, token); err == nil {
		t.Error("token of a deleted tenant authenticates for its namesake")
	}
}

func TestTokenCacheBounded(t *testing.T) {
	cli := startEtcd(t)
	s := newTokenStore(cli, time.Second)
	s.maxEntries = 64
	ctx := context.Background()
	for i := range s.maxEntries + 10 {
		s.authenticate(ctx, fmt.Sprintf("vxft_%016x_AAAA", i))
	}
	s.mu.Lock()
	n := len(s.cache)
	s.mu.Unlock()
	if n == 0 || n > s.maxEntries {
		t.Errorf("cache holds %d entries, bound %d", n, s.maxEntries)
	}
}
