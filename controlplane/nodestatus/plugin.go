package nodestatus

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/vxfabric/vxfabric/controlplane/gossipkeys"
	"github.com/vxfabric/vxfabric/controlplane/server"
	"github.com/vxfabric/vxfabric/membership"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Plugin joins the gossip cluster as a server (so that agents find it and it hears about them) and
// runs the node status writer and the gossip keyring's rotator (GossipService, controlplane/gossipkeys)
// for as long as `vxfab server` runs. mcfg is the server's gossip configuration; its Role is forced
// to server and GRPCAddr must be the address agents dial. With revokeRotation > 0, a client
// certificate revocation list (Host.Revocations) that revokes more starts a rotation with that step
// timeout once every running server enforces it.
// At shutdown the server leaves the cluster (agents see it LEFT and fail over) after resigning.
func Plugin(mcfg membership.Config, revokeRotation time.Duration) server.Plugin {
	return func(ctx context.Context, host server.Host) (server.Extension, error) {
		mcfg.Role = membership.RoleServer
		if mcfg.Logger == nil {
			mcfg.Logger = host.Logger
		}
		if mcfg.Seeds == nil {
			mcfg.Seeds = knownHosts(ctx, host)
		}
		m, err := membership.New(mcfg)
		if err != nil {
			return server.Extension{}, fmt.Errorf("server gossip: %w", err)
		}
		wctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		cfg := Default()
		cfg.Logger = host.Logger
		wg.Go(func() {
			if err := New(host.Etcd, m, cfg).Run(wctx); err != nil {
				host.Logger.Error("node status writer stopped", "err", err)
			}
		})
		keys := gossipkeys.New(host.Etcd, m, gossipkeys.Config{Logger: host.Logger, Revocations: host.Revocations, RevokeStepTimeout: revokeRotation})
		wg.Go(func() { keys.Run(wctx) })
		return server.Extension{
			Register: func(g *grpc.Server) { vxfabricv1.RegisterGossipServiceServer(g, keys) },
			Services: []string{vxfabricv1.GossipService_ServiceDesc.ServiceName},
			Close: func() {
				cancel()
				wg.Wait()
				if err := m.Leave(2 * time.Second); err != nil {
					host.Logger.Warn("gossip leave incomplete", "err", err)
				}
				_ = m.Shutdown()
			},
		}, nil
	}
}

// knownHosts gives, as gossip seeds, the default gossip address (VTEP:7946) of every node the store
// knows: a server restarted alone (the agents still see each other, so none of them looks for it)
// joins the fabric through them, --join or not.
func knownHosts(ctx context.Context, host server.Host) func() []string {
	return func() []string {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		nodes, _, err := host.Store.ListNodes(ctx)
		if err != nil {
			host.Logger.Debug("gossip seeds from the store", "err", err)
			return nil
		}
		var seeds []string
		for _, n := range nodes {
			if a, err := netip.ParseAddr(n.GetVtep()); err == nil {
				seeds = append(seeds, netip.AddrPortFrom(a, membership.DefaultPort).String())
			}
		}
		// One answering member is enough: a few, chosen at random, so that a large fabric with
		// hosts down does not hold the join (and a shutdown waiting for it) up: memberlist tries
		// them one after the other, each for up to its TCP timeout.
		rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
		return seeds[:min(len(seeds), maxStoreSeeds)]
	}
}

// maxStoreSeeds bounds the seeds knownHosts gives at once.
const maxStoreSeeds = 3
