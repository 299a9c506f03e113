package fanout

import (
	"context"
	"fmt"
	"sync"

	"github.com/vxfabric/vxfabric/controlplane/server"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
	"google.golang.org/grpc"
)

// Plugin serves AgentService from a Hub inside `vxfab server`. The hub runs until the server stops;
// if it fails, it is logged and the server keeps serving the rest of the API (agents reconnect to
// another replica). A nil cfg.Logger takes the server's.
func Plugin(cfg Config) server.Plugin {
	return func(ctx context.Context, host server.Host) (server.Extension, error) {
		if cfg.Logger == nil {
			cfg.Logger = host.Logger
		}
		if err := cfg.Validate(); err != nil {
			return server.Extension{}, fmt.Errorf("sync fan-out: %w", err)
		}
		hub := New(host.Etcd, cfg)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hub.Run(ctx); err != nil {
				cfg.Logger.Error("sync hub stopped", "err", err)
			}
		}()
		return server.Extension{
			Register:    func(s *grpc.Server) { vxfabricv1.RegisterAgentServiceServer(s, hub) },
			Services:    []string{vxfabricv1.AgentService_ServiceDesc.ServiceName},
			Convergence: hub,
			Close:       wg.Wait,
		}, nil
	}
}
