// Command vxbench runs vxfabric's benchmarks (`make bench`), prints one table of figures against
// their targets and writes it as JSON with the machine, the commit and the date. Slow figures are
// reported as "NOT MET"; the exit status is non-zero only when a benchmark could not measure.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vxfabric/vxfabric/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == bench.ServeSimCommand {
		return serveSim(os.Args[2:])
	}
	if len(os.Args) > 1 && os.Args[1] == bench.CreatePortsCommand {
		return createPorts(os.Args[2:])
	}
	quick := flag.Bool("quick", os.Getenv("QUICK") != "", "reduced run (under 2 minutes)")
	out := flag.String("out", "", "where the JSON report goes (default bench/results/latest.json, quick.json with -quick; - for nowhere)")
	md := flag.String("markdown", "", "where the table goes as Markdown (default beside the JSON report, .md; - for nowhere)")
	only := flag.String("only", "", "comma-separated benchmark numbers to run (default all), e.g. 1,3")
	profileDir := flag.String("profile-dir", "", "write CPU profiles (convergence, burst, allocation) and the memory benchmark's server heap profile here (created if missing)")
	labLogs := flag.String("lab-logs", "", "keep the logs of the lab's server and agents (benchmarks 5 and 6) in this directory")
	logLevel := flag.String("log-level", "error", "level of the components' logs on stderr")
	bin := flag.String("bin", envOr("VXFAB_BIN", "bin/vxfab"), "the vxfab binary (lab and memory benchmarks)")
	flag.Parse()

	// A quick run never overwrites the full run's committed results.
	if *out == "" {
		*out = "bench/results/latest.json"
		if *quick {
			*out = "bench/results/quick.json"
		}
	}
	if *md == "" && *out != "-" {
		*md = strings.TrimSuffix(*out, ".json") + ".md"
	}
	if *profileDir != "" {
		if err := os.MkdirAll(*profileDir, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "vxbench: --profile-dir: %v\n", err)
			return 2
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "vxbench: --log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	opts := bench.Options{
		Quick:      *quick,
		ProfileDir: *profileDir,
		LabLogs:    *labLogs,
		Bin:        *bin,
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		LogLevel:   level,
		Progress: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "%s vxbench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
		},
	}
	if *only != "" {
		for _, f := range strings.Split(*only, ",") {
			opts.Only = append(opts.Only, strings.TrimSpace(f))
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	commit, dirty := bench.GitCommit(".")
	rep := bench.Report{Date: start.UTC(), Commit: commit, Dirty: dirty, Quick: *quick, Machine: bench.ReadMachine()}
	for _, b := range bench.All() {
		if !slices.ContainsFunc(append([]string{b.ID}, b.Also...), opts.Selected) {
			continue
		}
		opts.Progress("benchmark %s: %s", strings.Join(append([]string{b.ID}, b.Also...), ","), b.Name)
		t := time.Now()
		var outs []bench.Outcome
		if b.RunMany != nil {
			outs = b.RunMany(ctx, opts)
		} else {
			outs = []bench.Outcome{b.Run(ctx, opts)}
		}
		for _, o := range outs {
			o.Took = time.Since(t)
			rep.Outcomes = append(rep.Outcomes, o)
		}
		if ctx.Err() != nil {
			break
		}
	}
	rep.Took = time.Since(start).Round(time.Second).String()
	fmt.Println()
	rep.PrintTable(os.Stdout)
	fmt.Printf("took %s\n", rep.Took)
	if *out != "-" {
		if err := rep.WriteJSON(*out); err != nil {
			fmt.Fprintln(os.Stderr, "vxbench:", err)
			return 1
		}
		fmt.Printf("wrote %s\n", *out)
	}
	if *md != "" && *md != "-" {
		if err := os.WriteFile(*md, []byte(rep.Markdown()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "vxbench: write", *md+":", err)
			return 1
		}
		fmt.Printf("wrote %s\n", *md)
	}
	failed := 0
	for _, o := range rep.Outcomes {
		if o.Error != "" {
			failed++
		}
	}
	if failed > 0 || ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "vxbench: %d benchmark(s) could not measure\n", failed)
		return 1
	}
	return 0
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// serveSim is the server process of a simulated fabric (see bench.ServeSim).
func serveSim(args []string) int {
	fs := flag.NewFlagSet(bench.ServeSimCommand, flag.ExitOnError)
	dir := fs.String("dir", "", "data directory of the embedded etcd")
	logLevel := fs.String("log-level", "error", "log level")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run here")
	listen := fs.String("listen", "", "API address (default 127.0.0.1:0; unix:///path for a socket)")
	memProfile := fs.String("memprofile", "", "write a heap profile here on SIGUSR1")
	_ = fs.Parse(args)
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil || *dir == "" {
		fmt.Fprintln(os.Stderr, "vxbench serve-sim: want -dir and a valid -log-level")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("proc", "sim-server")
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "vxbench serve-sim:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "vxbench serve-sim:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if *memProfile != "" {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		defer signal.Stop(usr1)
		go func() {
			for range usr1 {
				if err := writeHeapProfile(*memProfile); err != nil {
					log.Error("heap profile", "err", err)
				}
			}
		}()
	}
	if err := bench.ServeSim(ctx, *dir, *listen, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, "vxbench serve-sim:", err)
		return 1
	}
	return 0
}

// createPorts is an API client process of the simulated fabric (see bench.CreatePorts).
func createPorts(args []string) int {
	b, err := bench.ParsePortBatch(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vxbench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench.CreatePorts(ctx, b, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vxbench create-ports:", err)
		return 1
	}
	return 0
}

// writeHeapProfile collects garbage, then writes the heap profile (the live set) to path, through
// a temporary file so that a reader never sees half of it.
func writeHeapProfile(path string) error {
	runtime.GC()
	runtime.GC() // a second time: sync.Pool keeps what the first one found for one more cycle
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
