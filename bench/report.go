// Package bench measures vxfabric against the targets of `make bench`: convergence and burst at scale
// (the real server, fan-out hub and agent code over the fake datapath), VNI allocation against raw
// etcd, datapath programming on a real kernel, overlay throughput, failover and memory in the lab.
//
// Benchmarks report figures; they never fail because something is slow. An error means the benchmark
// could not measure (a component failed, a prerequisite is missing). Everything a benchmark creates
// (namespaces, labs, temporary directories, processes) is removed before it returns, also on error.
// This package never touches the machine's root network namespace.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Comparison says how a value meets its target.
type Comparison string

const (
	// AtMost: the value must not exceed the target (latencies, memory).
	AtMost Comparison = "<="
	// AtLeast: the value must reach the target (rates, ratios).
	AtLeast Comparison = ">="
	// Equal: the value must equal the target (counts of errors).
	Equal Comparison = "=="
	// Info: no target, the figure explains another one.
	Info Comparison = ""
)

// Metric is one row of the table.
type Metric struct {
	Benchmark string     `json:"benchmark"`
	Name      string     `json:"name"`
	Value     float64    `json:"value"`
	Unit      string     `json:"unit"`
	Target    float64    `json:"target,omitempty"`
	Compare   Comparison `json:"compare,omitempty"`
	// Met is nil for Info rows.
	Met  *bool  `json:"met,omitempty"`
	Note string `json:"note,omitempty"`
}

// NewMetric returns a row with Met computed from value, cmp and target.
func NewMetric(name string, value float64, unit string, cmp Comparison, target float64) Metric {
	m := Metric{Name: name, Value: value, Unit: unit, Target: target, Compare: cmp}
	var met bool
	switch cmp {
	case AtMost:
		met = value <= target
	case AtLeast:
		met = value >= target
	case Equal:
		met = value == target
	default:
		return m
	}
	m.Met = &met
	return m
}

// InfoMetric is a row without a target.
func InfoMetric(name string, value float64, unit string) Metric {
	return Metric{Name: name, Value: value, Unit: unit}
}

// Outcome is what one benchmark produced.
type Outcome struct {
	Benchmark string        `json:"benchmark"`
	Metrics   []Metric      `json:"metrics"`
	Notes     []string      `json:"notes,omitempty"`
	Error     string        `json:"error,omitempty"`
	Skipped   string        `json:"skipped,omitempty"`
	Took      time.Duration `json:"took_ns"`
}

// Machine describes where the figures were measured.
type Machine struct {
	Cores       int    `json:"cores"`
	MemoryBytes uint64 `json:"memory_bytes"`
	Kernel      string `json:"kernel"`
	GoVersion   string `json:"go_version"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
}

// Report is bench/results/latest.json.
type Report struct {
	Date     time.Time `json:"date"`
	Commit   string    `json:"commit"`
	Dirty    bool      `json:"dirty"`
	Quick    bool      `json:"quick"`
	Machine  Machine   `json:"machine"`
	Outcomes []Outcome `json:"benchmarks"`
	Took     string    `json:"took"`
}

// ReadMachine reads the machine's cores, memory and kernel.
func ReadMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	m.MemoryBytes, m.Kernel = memoryAndKernel()
	return m
}

// GitCommit returns HEAD of the repository in dir and whether the tree has uncommitted changes.
func GitCommit(dir string) (commit string, dirty bool) {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown", false
	}
	st, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output()
	return strings.TrimSpace(string(out)), err == nil && len(st) > 0
}

// WriteJSON writes the report to path (indented, with a trailing newline).
func (r Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return nil
}

// FormatValue renders a value with its unit, at a precision that suits it.
func FormatValue(v float64, unit string) string {
	var s string
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e9:
		s = fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		s = fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.2f", v)
	}
	if unit != "" {
		s += " " + unit
	}
	return s
}

// valueText is the value as FormatValue renders it, with more digits when that would show it equal
// to its target although it is not ("0.90 >= 0.90 NOT MET" for 0.898).
func (m Metric) valueText() string {
	s := FormatValue(m.Value, m.Unit)
	shown, _ := strconv.ParseFloat(strings.Fields(s)[0], 64)
	if m.Compare != Info && m.Value != m.Target && shown == m.Target {
		s = strings.TrimSuffix(fmt.Sprintf("%.4g %s", m.Value, m.Unit), " ")
	}
	return s
}

func (m Metric) targetText() string {
	if m.Compare == Info {
		return "-"
	}
	return string(m.Compare) + " " + FormatValue(m.Target, m.Unit)
}

func (m Metric) metText() string {
	switch {
	case m.Met == nil:
		return "-"
	case *m.Met:
		return "met"
	default:
		return "NOT MET"
	}
}

// PrintTable prints the report as one table: benchmark, metric, value, target, met.
func (r Report) PrintTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BENCHMARK\tMETRIC\tVALUE\tTARGET\tMET")
	for _, o := range r.Outcomes {
		switch {
		case o.Error != "":
			fmt.Fprintf(tw, "%s\t(error)\t%s\t\tERROR\n", o.Benchmark, oneLine(o.Error))
		case o.Skipped != "":
			fmt.Fprintf(tw, "%s\t(skipped)\t%s\t\t-\n", o.Benchmark, oneLine(o.Skipped))
		}
		for _, m := range o.Metrics {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.Benchmark, m.Name, m.valueText(), m.targetText(), m.metText())
		}
	}
	tw.Flush()
	for _, o := range r.Outcomes {
		for _, n := range o.Notes {
			fmt.Fprintf(w, "note (%s): %s\n", o.Benchmark, n)
		}
	}
}

// Markdown renders the table for the README.
func (r Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on commit %.12s (%d cores, %.0f GiB, Linux %s, %s)%s.\n\n",
		r.Date.UTC().Format("2006-01-02 15:04 UTC"), r.Commit, r.Machine.Cores,
		float64(r.Machine.MemoryBytes)/(1<<30), r.Machine.Kernel, r.Machine.GoVersion, map[bool]string{true: ", QUICK run"}[r.Quick])
	b.WriteString("| benchmark | metric | value | target | met |\n| --- | --- | --- | --- | --- |\n")
	for _, o := range r.Outcomes {
		switch {
		case o.Error != "":
			fmt.Fprintf(&b, "| %s | (error) | %s | | ERROR |\n", o.Benchmark, oneLine(o.Error))
		case o.Skipped != "":
			fmt.Fprintf(&b, "| %s | (skipped) | %s | | - |\n", o.Benchmark, oneLine(o.Skipped))
		}
		for _, m := range o.Metrics {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", o.Benchmark, m.Name, m.valueText(), m.targetText(), m.metText())
		}
	}
	b.WriteString("\n")
	for _, o := range r.Outcomes {
		for _, n := range o.Notes {
			fmt.Fprintf(&b, "- %s: %s\n", o.Benchmark, n)
		}
	}
	return b.String()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Percentile returns the p-th percentile (0 < p <= 100) of ds by the nearest-rank method.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// Millis converts a duration to fractional milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
