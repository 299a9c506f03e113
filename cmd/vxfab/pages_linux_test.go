package main

import (
	"encoding/json"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// written is data of the binary, changed at run time: releasing the binary's pages must keep it.
var written = []string{"before"}

func TestReleaseStartupPages(t *testing.T) {
	written[0] = "changed at run time"
	before, after, err := releaseStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resident file-backed memory: %d KiB before, %d KiB after", before>>10, after>>10)
	if before < 4<<20 {
		t.Fatalf("only %d KiB of the test binary resident before the release: nothing to measure", before>>10)
	}
	if after > before/2 {
		t.Fatalf("resident file-backed memory %d KiB after the release, %d KiB before: want at most half", after>>10, before>>10)
	}
	// Code, read-only data and run-time data all still work: the next touch maps them back.
	if written[0] != "changed at run time" {
		t.Fatalf("data written before the release reads %q after it", written[0])
	}
	b, err := json.Marshal(map[string][]int{"a": {1, 2}})
	if err != nil || string(b) != `{"a":[1,2]}` {
		t.Fatalf("json after the release: %s, %v", b, err)
	}
	var out strings.Builder
	root := newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"--help"})
	if err := root.Execute(); err != nil || !strings.Contains(out.String(), "agent") {
		t.Fatalf("vxfab --help after the release: %v\n%s", err, out.String())
	}
}

func TestParseMapping(t *testing.T) {
	for _, tc := range []struct {
		line string
		want mapping
		ok   bool
	}{
		{"00400000-01125000 r-xp 00000000 fd:01 1835058                            /usr/bin/vxfab",
			mapping{start: 0x400000, end: 0x1125000, perms: "r-xp", dev: unix.Mkdev(0xfd, 1), inode: 1835058}, true},
		{"02047000-020d7000 rw-p 01c47000 08:10 42 /opt/vxfab (deleted)",
			mapping{start: 0x2047000, end: 0x20d7000, perms: "rw-p", dev: unix.Mkdev(8, 0x10), inode: 42}, true},
		{"c000000000-c004000000 rw-p 00000000 00:00 0", mapping{start: 0xc000000000, end: 0xc004000000, perms: "rw-p"}, true},
		{"7ffd1000-7ffd2000 r-xp 00000000 00:00 0                                  [vdso]", mapping{start: 0x7ffd1000, end: 0x7ffd2000, perms: "r-xp"}, true},
		{"garbage", mapping{}, false},
		{"0040000001125000 r-xp 00000000 fd:01 1", mapping{}, false},
		{"00400000-01125000 r-xp 00000000 fd01 1", mapping{}, false},
		{"00400000-zz r-xp 00000000 fd:01 1", mapping{}, false},
	} {
		got, ok := parseMapping(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseMapping(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}
