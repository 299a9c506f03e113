package bench

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vxfabric/vxfabric/overlay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	tests := []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 50, 3 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 99, 5 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
	}
	for _, tt := range tests {
		in := slices.Clone(tt.in)
		if got := Percentile(tt.in, tt.p); got != tt.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", tt.in, tt.p, got, tt.want)
		}
		if !slices.Equal(in, tt.in) {
			t.Errorf("Percentile reordered its input: %v", tt.in)
		}
	}
}

func TestNewMetric(t *testing.T) {
	tests := []struct {
		value, target float64
		cmp           Comparison
		met           bool
	}{
		{20, 25, AtMost, true},
		{25, 25, AtMost, true},
		{26, 25, AtMost, false},
		{0.89, 0.9, AtLeast, false},
		{0.9, 0.9, AtLeast, true},
		{0, 0, Equal, true},
		{1, 0, Equal, false},
	}
	for _, tt := range tests {
		m := NewMetric("m", tt.value, "", tt.cmp, tt.target)
		if m.Met == nil || *m.Met != tt.met {
			t.Errorf("%v %s %v: met %v, want %v", tt.value, tt.cmp, tt.target, m.Met, tt.met)
		}
	}
	if m := InfoMetric("m", 1, "ms"); m.Met != nil || m.metText() != "-" || m.targetText() != "-" {
		t.Errorf("info metric has a target: %+v", m)
	}
	// A value that would print as its target although it misses it shows more digits.
	for _, tt := range []struct {
		m    Metric
		want string
	}{
		{NewMetric("ratio", 0.8978, "", AtLeast, 0.9), "0.8978"},
		{NewMetric("ratio", 0.9012, "", AtLeast, 0.9), "0.9012"},
		{NewMetric("ratio", 0.93, "", AtLeast, 0.9), "0.93"},
		{NewMetric("p99", 25.04, "ms", AtMost, 25), "25.04 ms"},
		{NewMetric("p99", 3.2, "ms", AtMost, 25), "3.20 ms"},
	} {
		if got := tt.m.valueText(); got != tt.want {
			t.Errorf("%s %v against %v: %q, want %q", tt.m.Name, tt.m.Value, tt.m.Target, got, tt.want)
		}
	}
}

func TestTableAndMarkdown(t *testing.T) {
	r := Report{Date: time.Date(2026, 12, 4, 22, 0, 0, 0, time.UTC), Commit: "0123456789abcdef", Machine: Machine{Cores: 2, MemoryBytes: 24 << 30, Kernel: "6.18", GoVersion: "go1.26.8"},
		Outcomes: []Outcome{
			{Benchmark: "1 convergence", Metrics: []Metric{NewMetric("N=10 convergence p99", 3.2, "ms", AtMost, 25)}},
			{Benchmark: "5 throughput", Skipped: "iperf3 is not installed"},
			{Benchmark: "6 failover", Error: "lab up:\n server exited"},
		}}
	var b strings.Builder
	r.PrintTable(&b)
	for _, want := range []string{"N=10 convergence p99", "3.20 ms", "<= 25 ms", "met", "(skipped)", "ERROR", "lab up: server exited"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	md := r.Markdown()
	for _, want := range []string{"| 1 convergence | N=10 convergence p99 | 3.20 ms | <= 25 ms | met |", "commit 0123456789ab", "2 cores, 24 GiB"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestPortBatchArgs(t *testing.T) {
	b := PortBatch{Addr: "unix:///tmp/s.sock", Prefix: "burst", First: 3, Count: 1000, Hosts: 100, MACBase: 77, Clients: 16}
	got, err := ParsePortBatch(b.args())
	if err != nil || got != b {
		t.Fatalf("ParsePortBatch(args()) = %+v, %v; want %+v", got, err, b)
	}
	if _, err := ParsePortBatch([]string{"-addr", "x", "-count", "0"}); err == nil {
		t.Error("ParsePortBatch accepted a batch without ports")
	}
	if seqMAC(0x01020304).String() != "0e:b0:01:02:03:04" {
		t.Errorf("seqMAC = %s", seqMAC(0x01020304))
	}
}

func TestCommitWatch(t *testing.T) {
	w := newCommitWatch()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	got := make(chan time.Time, 1)
	go func() {
		at, err := w.at(ctx, 42)
		if err != nil {
			t.Error(err)
		}
		got <- at
	}()
	w.line("ready 127.0.0.1:1 http://127.0.0.1:2")
	w.line("commit 41 1000")
	w.line("commit 42 2000")
	if at := <-got; !at.Equal(time.Unix(0, 2000)) {
		t.Errorf("revision 42 seen at %v, want 2000 ns", at)
	}
	w.end()
	if _, err := w.at(ctx, 43); err == nil {
		t.Error("at returned no error for a revision never seen after the output ended")
	}
}

func TestApplyWatch(t *testing.T) {
	w := newApplyWatch(3)
	mac := seqMAC(9)
	e := w.expect(mac, 0) // bound to host 0: hosts 1 and 2 must program it
	t0 := time.Unix(100, 0)
	w.applied(1, t0, resultWith("add", "fdb vxlan4096 "+mac.String()+" dst 198.18.0.1"))
	w.applied(2, t0.Add(time.Second), resultWith("delete", "fdb vxlan4096 "+mac.String()+" dst 198.18.0.1"))
	select {
	case <-e.done:
		t.Fatal("a delete counted as programming the MAC")
	default:
	}
	w.applied(2, t0.Add(2*time.Second), resultWith("add", "fdb vxlan4096 "+mac.String()+" dst 198.18.0.1"))
	last, err := e.Wait(context.Background())
	if err != nil || !last.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("Wait = %v, %v; want the second host's apply", last, err)
	}
	if first, _ := e.First(context.Background()); !first.Equal(t0) {
		t.Errorf("First = %v, want %v", first, t0)
	}
}

func resultWith(op, object string) overlay.Result {
	return overlay.Result{Changes: []overlay.Change{{Op: overlay.Op(op), Object: object}}}
}
