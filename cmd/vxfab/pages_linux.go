package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// releaseStartupPages takes the pages of this process's own executable out of its address space
// once start-up is over, so that only what runs from then on is mapped back in. It returns the
// resident file-backed memory before and after, in bytes.
//
// Starting the binary runs the init functions of every package linked into it, some 300 of them
// (etcd's server, gRPC, the protobuf registries...), and for each page touched the kernel maps the
// 64 KiB around it (fault-around). An agent keeps about 20 MiB of its binary mapped that way, most
// of which it never touches again. MADV_DONTNEED on a private mapping that was never written only
// drops the page table entries: the pages stay in the page cache (shared with any other process of
// the binary), and the next touch maps them back without I/O. The file cannot change under them:
// the kernel refuses writes to a running executable. Writable mappings (data, bss) are left alone,
// since dropping them would lose their contents.
func releaseStartupPages() (before, after uint64, err error) {
	exe, err := os.Stat("/proc/self/exe")
	if err != nil {
		return 0, 0, err
	}
	st, ok := exe.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("stat /proc/self/exe: no inode")
	}
	before, err = residentFile()
	if err != nil {
		return 0, 0, err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m, ok := parseMapping(sc.Text())
		if !ok || m.inode != st.Ino || m.dev != uint64(st.Dev) || strings.ContainsAny(m.perms, "ws") {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), unix.MADV_DONTNEED); errno != 0 {
			return 0, 0, fmt.Errorf("madvise %x-%x %s: %w", m.start, m.end, m.perms, errno)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	after, err = residentFile()
	return before, after, err
}

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end uint64
	perms      string
	dev, inode uint64
}

// parseMapping reads "start-end perms offset major:minor inode [path]".
func parseMapping(line string) (mapping, bool) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return mapping{}, false
	}
	lo, hi, ok1 := strings.Cut(f[0], "-")
	major, minor, ok2 := strings.Cut(f[3], ":")
	if !ok1 || !ok2 {
		return mapping{}, false
	}
	var m mapping
	var maj, mnr uint64
	for _, p := range []struct {
		dst  *uint64
		s    string
		base int
	}{{&m.start, lo, 16}, {&m.end, hi, 16}, {&maj, major, 16}, {&mnr, minor, 16}, {&m.inode, f[4], 10}} {
		v, err := strconv.ParseUint(p.s, p.base, 64)
		if err != nil {
			return mapping{}, false
		}
		*p.dst = v
	}
	m.perms = f[1]
	m.dev = unix.Mkdev(uint32(maj), uint32(mnr))
	return m, true
}

// residentFile is this process's resident file-backed memory (RssFile), in bytes.
func residentFile() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/self/status has no RssFile")
}
