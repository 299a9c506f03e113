// Package etcdtest starts a real embedded etcd for a test (fast raft ticks, data in t.TempDir())
// and closes it when the test ends. For tests only.
package etcdtest

import (
	"context"
	"os"
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

// ClientEnv chooses the client Client returns: "in-process" for etcdembed.Server.InProcessClient
// (what `vxfab server` uses on its embedded etcd), anything else for a client over the socket (as
// to an external etcd). `make test` runs the control plane's tests with each.
const ClientEnv = "VXFAB_TEST_ETCD_CLIENT"

// Client runs an embedded etcd for t and returns a client to it (see ClientEnv); both are closed in
// t.Cleanup.
func Client(t testing.TB) *clientv3.Client {
	t.Helper()
	srv := Start(t)
	var cli *clientv3.Client
	if os.Getenv(ClientEnv) == "in-process" {
		cli = srv.InProcessClient()
	} else {
		var err error
		if cli, err = srv.Client(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
