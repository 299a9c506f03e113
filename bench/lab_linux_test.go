//go:build linux

package bench

import "testing"

func TestCPUMask(t *testing.T) {
	for cpu, want := range map[int]string{0: "00000001", 1: "00000002", 31: "80000000", 33: "00000002,00000000", 64: "00000001,00000000,00000000"} {
		if got := cpuMask(cpu); got != want {
			t.Errorf("cpuMask(%d) = %q, want %q", cpu, got, want)
		}
	}
}

func TestUsableCPUs(t *testing.T) {
	cpus := usableCPUs()
	if len(cpus) == 0 {
		t.Fatal("no usable CPU")
	}
	for i := 1; i < len(cpus); i++ {
		if cpus[i] <= cpus[i-1] {
			t.Fatalf("usableCPUs() = %v, want ascending", cpus)
		}
	}
}
