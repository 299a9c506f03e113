package etcdembed

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/pkg/v3/featuregate"
	"go.etcd.io/etcd/server/v3/features"
)

func TestStartPutGetRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	cfg := Default(dir)
	cfg.Fast = true
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Put(cctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	s.Close()

	// Acknowledged writes survive a restart on the same directory.
	s, err = Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cli, err = s.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(cctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart got %v, want /k=v", resp.Kvs)
	}
	// Leases' remaining TTLs are checkpointed and persisted, so a restart does not renew them.
	for _, f := range []featuregate.Feature{features.LeaseCheckpoint, features.LeaseCheckpointPersist} {
		if !s.etcd.Server.Cfg.ServerFeatureGate.Enabled(f) {
			t.Errorf("embedded etcd runs without %s", f)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := (Config{}).Validate(); err == nil {
		t.Fatal("empty config validated")
	}
}

func TestCloseTwice(t *testing.T) {
	cfg := Default(t.TempDir())
	cfg.Fast = true
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()
}
