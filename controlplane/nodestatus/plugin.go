package nodestatus

import (
	"context"
	"fmt"
	"time"

	"github.com/vxfabric/vxfabric/controlplane/server"
	"github.com/vxfabric/vxfabric/membership"
)

// Plugin joins the gossip cluster as a server (so that agents find it and it hears about them) and
// runs the node status writer for as long as `vxfab server` runs. mcfg is the server's gossip
// configuration; its Role is forced to server and GRPCAddr must be the address agents dial. At
// shutdown the server leaves the cluster (agents see it LEFT and fail over) after resigning.
func Plugin(mcfg membership.Config) server.Plugin {
	return func(ctx context.Context, host server.Host) (server.Extension, error) {
		mcfg.Role = membership.RoleServer
		if mcfg.Logger == nil {
			mcfg.Logger = host.Logger
		}
		m, err := membership.New(mcfg)
		if err != nil {
			return server.Extension{}, fmt.Errorf("server gossip: %w", err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		cfg := Default()
		cfg.Logger = host.Logger
		go func() {
			defer close(done)
			if err := New(host.Etcd, m, cfg).Run(wctx); err != nil {
				host.Logger.Error("node status writer stopped", "err", err)
			}
		}()
		return server.Extension{Close: func() {
			cancel()
			<-done
			if err := m.Leave(2 * time.Second); err != nil {
				host.Logger.Warn("gossip leave incomplete", "err", err)
			}
			_ = m.Shutdown()
		}}, nil
	}
}
