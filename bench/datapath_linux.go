//go:build linux

package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/vxfabric/vxfabric/overlay/linux/linuxbench"
)

// DatapathConfig is benchmark 4.
type DatapathConfig struct {
	// Trials is the number of fresh namespaces measured; the table shows the medians.
	Trials   int
	Logger   *slog.Logger
	Progress func(format string, args ...any)
}

// RunDatapath runs benchmark 4 through overlay/linux/linuxbench: in a fresh namespace per trial,
// 10,000 remote ports (over 100 VTEPs) programmed in one Apply, a no-op Apply, and the repair of one
// FDB entry deleted by hand.
func RunDatapath(ctx context.Context, cfg DatapathConfig) Outcome {
	out := Outcome{Benchmark: "4 datapath"}
	if os.Geteuid() != 0 {
		out.Skipped = "needs root (a network namespace with the real kernel datapath)"
		return out
	}
	opts := linuxbench.Default()
	opts.Logger = cfg.Logger
	var prog, noop, repair []time.Duration
	for i := range cfg.Trials {
		r, err := linuxbench.Run(ctx, opts)
		if err != nil {
			out.Error = fmt.Sprintf("trial %d: %v", i+1, err)
			return out
		}
		cfg.Progress("datapath trial %d: program %s, no-op %s, repair %s", i+1, r.Program, r.Noop, r.Repair)
		prog, noop, repair = append(prog, r.Program), append(noop, r.Noop), append(repair, r.Repair)
	}
	t := linuxbench.Targets
	n := fmt.Sprintf("median of %d fresh namespaces", cfg.Trials)
	ms := []Metric{
		NewMetric(fmt.Sprintf("Apply %d remote ports (one network, %d VTEPs)", opts.Remotes, opts.VTEPs), Millis(Percentile(prog, 50)), "ms", AtMost, Millis(t.Program)),
		NewMetric(fmt.Sprintf("no-op Apply over %d", opts.Remotes), Millis(Percentile(noop, 50)), "ms", AtMost, Millis(t.Noop)),
		NewMetric("repair one deleted FDB entry", Millis(Percentile(repair, 50)), "ms", AtMost, Millis(t.Repair)),
	}
	for i := range ms {
		ms[i].Note = n
	}
	out.Metrics = ms
	out.Notes = append(out.Notes, "overlay/linux through overlay/linux/linuxbench; each Apply is checked to write exactly all entries, nothing, one entry")
	return out
}
