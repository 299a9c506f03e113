package auth

import (
	"context"
	"fmt"
	"sync"

	"github.com/vxfabric/vxfabric/controlplane/server"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Plugin wires authentication into `vxfab server`. It must come FIRST in server.Config.Plugins:
// chained interceptors run in the order their options were given, and nothing may run for a
// caller before it is authenticated. cfg.DataDir should be the server's data directory; a nil
// cfg.Logger takes the server's.
func Plugin(cfg Config) server.Plugin {
	return func(ctx context.Context, host server.Host) (server.Extension, error) {
		if cfg.Logger == nil {
			cfg.Logger = host.Logger
		}
		a, err := New(cfg, host.Etcd)
		if err != nil {
			return server.Extension{}, fmt.Errorf("auth: %w", err)
		}
		wctx, cancel := context.WithCancel(ctx)
		var running sync.WaitGroup
		running.Go(func() { a.tokens.watchDeletes(wctx) })
		running.Go(func() { a.renewPKI(wctx, pkiRenewInterval) })
		ext := server.Extension{
			ServerOptions: a.ServerOptions(),
			Register:      a.Register,
			Services:      []string{vxfabricv1.TokenService_ServiceDesc.ServiceName},
			Close: func() {
				cancel()
				running.Wait()
			},
		}
		if a.revoked != nil {
			ext.Revocations = a.revoked
		}
		return ext, nil
	}
}
