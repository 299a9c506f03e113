package bench

import (
	"context"
	"log/slog"
	"slices"
	"time"
)

// Options are what `make bench` passes every benchmark.
type Options struct {
	// Quick is the reduced run (QUICK=1).
	Quick bool
	// Only lists the benchmark IDs to run (empty: all).
	Only []string
	// ProfileDir receives CPU profiles (convergence) when set.
	ProfileDir string
	// LabLogs, when set, receives the logs of the lab's processes (benchmarks 5 and 6).
	LabLogs string
	// Bin is the vxfab binary.
	Bin      string
	Logger   *slog.Logger
	LogLevel slog.Level
	Progress func(format string, args ...any)
}

// Benchmark is one of the seven.
type Benchmark struct {
	ID   string
	Name string
	Run  func(context.Context, Options) Outcome
	// Also lists further IDs that RunMany measures in the same setup (it gets Options.Only).
	Also    []string
	RunMany func(context.Context, Options) []Outcome
}

// Selected tells whether the benchmark with id runs.
func (o Options) Selected(id string) bool {
	return len(o.Only) == 0 || slices.Contains(o.Only, id)
}

// All returns the benchmarks in the order they run.
func All() []Benchmark {
	return []Benchmark{
		{ID: "1", Name: "convergence at scale", Run: runConvergence},
		{ID: "2", Name: "burst", Run: runBurst},
		{ID: "3", Name: "VNI allocation", Run: runAllocation},
		{ID: "4", Name: "datapath programming", Run: runDatapath},
		{ID: "5", Name: "throughput and failover in the lab", Also: []string{"6"}, RunMany: runLab},
		{ID: "7", Name: "memory", Run: runMemory},
	}
}

func runConvergence(ctx context.Context, o Options) Outcome {
	cfg := ConvergenceConfig{
		Sizes:         []int{10, 100, 1000},
		Targets:       map[int]time.Duration{10: 25 * time.Millisecond, 100: 75 * time.Millisecond, 1000: 500 * time.Millisecond},
		Samples:       200,
		SamplesBySize: map[int]int{1000: 100},
		ProfileDir:    o.ProfileDir,
		Logger:        o.Logger,
		LogLevel:      o.LogLevel,
		Progress:      o.Progress,
	}
	if o.Quick {
		cfg.Sizes = []int{10, 100}
		cfg.Samples = 50
	}
	return RunConvergence(ctx, cfg)
}

func runBurst(ctx context.Context, o Options) Outcome {
	return RunBurst(ctx, BurstConfig{Hosts: 100, Ports: 1000, Clients: 16, Target: 2 * time.Second, ProfileDir: o.ProfileDir, Logger: o.Logger, LogLevel: o.LogLevel, Progress: o.Progress})
}

func runAllocation(ctx context.Context, o Options) Outcome {
	cfg := AllocationConfig{Clients: []int{1, 32}, Duration: 5 * time.Second, ProfileDir: o.ProfileDir, Logger: o.Logger, Progress: o.Progress}
	if o.Quick {
		cfg.Duration = 2 * time.Second
	}
	return RunAllocation(ctx, cfg)
}
