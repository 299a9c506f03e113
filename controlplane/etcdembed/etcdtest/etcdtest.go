// Package etcdtest starts a real embedded etcd for a test (fast raft ticks, data in t.TempDir())
// and closes it when the test ends. For tests only.
package etcdtest

import (
	"context"
	"testing"

	"github.com/vxfabric/vxfabric/controlplane/etcdembed"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Start runs an embedded etcd for t and returns it; it is closed in t.Cleanup (closing it earlier, to
// test an outage, is fine).
func Start(t testing.TB) *etcdembed.Server {
	t.Helper()
	cfg := etcdembed.Default(t.TempDir())
	cfg.Fast = true
	srv, err := etcdembed.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// Client runs an embedded etcd for t and returns a client to it; both are closed in t.Cleanup.
func Client(t testing.TB) *clientv3.Client {
	t.Helper()
	srv := Start(t)
	cli, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
