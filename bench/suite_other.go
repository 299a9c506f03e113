//go:build !linux

package bench

import "context"

// The datapath, lab and memory benchmarks need Linux network namespaces.

func runDatapath(_ context.Context, _ Options) Outcome {
	return Outcome{Benchmark: "4 datapath", Skipped: "needs Linux"}
}

func runLab(_ context.Context, o Options) []Outcome {
	var outs []Outcome
	if o.Selected("5") {
		outs = append(outs, Outcome{Benchmark: "5 throughput", Skipped: "needs Linux"})
	}
	if o.Selected("6") {
		outs = append(outs, Outcome{Benchmark: "6 failover", Skipped: "needs Linux"})
	}
	return outs
}

func runMemory(_ context.Context, _ Options) Outcome {
	return Outcome{Benchmark: "7 memory", Skipped: "needs Linux"}
}
