//go:build linux

package bench

import (
	"context"
	"time"

	"github.com/vxfabric/vxfabric/nodeagent"
)

func runDatapath(ctx context.Context, o Options) Outcome {
	cfg := DatapathConfig{Trials: 5, Logger: o.Logger, Progress: o.Progress}
	if o.Quick {
		cfg.Trials = 1
	}
	return RunDatapath(ctx, cfg)
}

func runLab(ctx context.Context, o Options) []Outcome {
	cfg := LabConfig{
		Bin: o.Bin, Hosts: 5, Rounds: 8, Seconds: 4, Trials: 10, Poll: 15 * time.Millisecond, Timeout: 30 * time.Second,
		Pause: time.Second, Throughput: o.Selected("5"), Failover: o.Selected("6"), KeepLogs: o.LabLogs, Logger: o.Logger, Progress: o.Progress,
	}
	if o.Quick {
		cfg.Rounds, cfg.Seconds, cfg.Trials = 2, 2, 3
	}
	return RunLab(ctx, cfg)
}

// fullPassWindow holds at least one of the agent's periodic full reconcile passes, which come every
// FullResyncInterval +- 25 %.
var fullPassWindow = nodeagent.Default().FullResyncInterval*5/4 + 2*time.Second

func runMemory(ctx context.Context, o Options) Outcome {
	cfg := MemoryConfig{
		Bin: o.Bin, Hosts: 1000, Ports: 10000, Settle: 2 * time.Second,
		IdleWindow: fullPassWindow, LoadedWindow: fullPassWindow,
		Targets:    MemoryTargets{AgentIdle: 25, AgentLoaded: 50, Server: 300},
		ProfileDir: o.ProfileDir, LogLevel: o.LogLevel, Progress: o.Progress,
	}
	if o.Quick {
		cfg.Hosts, cfg.Ports, cfg.Settle, cfg.LoadedWindow = 100, 2000, time.Second, 0
	}
	return RunMemory(ctx, cfg)
}
