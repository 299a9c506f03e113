package binpages

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Mapping
		path string
		ok   bool
	}{
		{"00400000-01125000 r-xp 00000000 fd:01 1835058                            /usr/bin/vxfab",
			Mapping{Start: 0x400000, End: 0x1125000, Perms: "r-xp"}, "/usr/bin/vxfab", true},
		{"02047000-020d7000 rw-p 01c47000 08:10 42 /opt/my tools/vxfab (deleted)",
			Mapping{Start: 0x2047000, End: 0x20d7000, Perms: "rw-p"}, "/opt/my tools/vxfab (deleted)", true},
		{"c000000000-c004000000 rw-p 00000000 00:00 0", Mapping{Start: 0xc000000000, End: 0xc004000000, Perms: "rw-p"}, "", true},
		{"7ffd1000-7ffd2000 r-xp 00000000 00:00 0                                  [vdso]",
			Mapping{Start: 0x7ffd1000, End: 0x7ffd2000, Perms: "r-xp"}, "[vdso]", true},
		{"Rss:                 128 kB", Mapping{}, "", false},
		{"VmFlags: rd ex mr mw me", Mapping{}, "", false},
		{"0040000001125000 r-xp 00000000 fd:01 1", Mapping{}, "", false},
		{"00400000-zz r-xp 00000000 fd:01 1", Mapping{}, "", false},
	} {
		got, path, ok := parseHeader(tc.line)
		if ok != tc.ok || got != tc.want || path != tc.path {
			t.Errorf("parseHeader(%q) = %+v, %q, %v; want %+v, %q, %v", tc.line, got, path, ok, tc.want, tc.path, tc.ok)
		}
	}
}

// TestRelease releases this test binary's pages: far less of it stays resident, and what it runs
// next still works.
func TestRelease(t *testing.T) {
	ms, err := Of(0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ms[0].Perms, "r") {
		t.Fatalf("first mapping of the executable: %+v", ms[0])
	}
	before, after, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("read-only mappings of the executable resident: %d KiB before, %d KiB after", before>>10, after>>10)
	// What stays is what ran since, each page touched mapping the 64 KiB around it again: in a
	// binary this small, about half.
	if before < 1<<20 || after*3 > before*2 {
		t.Fatalf("read-only mappings of the executable resident: %d KiB before the release, %d KiB after; want at least 1 MiB, then at most two thirds", before>>10, after>>10)
	}
}

// TestReleaseInOtherBuildModes runs a program that releases its pages and goes on working, built
// position-independent (the loader writes relocations into mappings it then makes read-only: those
// must be kept) and as a plain executable.
func TestReleaseInOtherBuildModes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs")
	}
	for _, mode := range []string{"pie", "exe"} {
		t.Run(mode, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "release")
			build := exec.Command("go", "build", "-buildmode="+mode, "-o", bin, "./testdata/release")
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build -buildmode=%s: %v\n%s", mode, err, out)
			}
			out, err := exec.Command(bin).CombinedOutput()
			if err != nil {
				t.Fatalf("the %s program after releasing its pages: %v\n%s", mode, err, out)
			}
			f := strings.Fields(string(out))
			if len(f) != 2 {
				t.Fatalf("output %q", out)
			}
			before, _ := strconv.ParseUint(f[0], 10, 64)
			after, _ := strconv.ParseUint(f[1], 10, 64)
			if after >= before {
				t.Fatalf("%s: executable resident %d bytes before the release, %d after", mode, before, after)
			}
		})
	}
}
