// Package binpages reads which pages of a process's executable are resident, and lets the agent
// release the ones only its start-up touched.
//
// Starting the binary runs the init functions of every package linked into it, some 300 of them
// (etcd's server, gRPC, the protobuf registries...), and for each page touched the kernel maps the
// 64 KiB around it (fault-around). An agent keeps about 20 MiB of its binary mapped that way, most
// of which it never touches again. Release drops those page table entries: the pages stay in the
// page cache (shared with any other process of the binary, and still charged to the memory cgroup
// that read them), and the next touch maps them back with a minor fault.
package binpages

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mapping is one mapping of a process's executable, as /proc/PID/smaps describes it.
type Mapping struct {
	Start, End uint64
	Perms      string // "r-xp", "r--p", "rw-p"...
	// Rss is what is resident, Anonymous the part of it that is a private copy: a page written
	// since the binary was mapped (data, or addresses the loader patched in before making the
	// mapping read-only).
	Rss, Anonymous uint64 // bytes
}

// Of returns the mappings of the executable of process pid (0: this process).
func Of(pid int) ([]Mapping, error) {
	proc := "/proc/self"
	if pid != 0 {
		proc = "/proc/" + strconv.Itoa(pid)
	}
	exe, err := os.Readlink(proc + "/exe")
	if err != nil {
		return nil, fmt.Errorf("executable of %s: %w", proc, err)
	}
	f, err := os.Open(proc + "/smaps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mapping
	var cur *Mapping // the executable's mapping whose fields follow, nil for any other
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m, path, ok := parseHeader(line); ok {
			cur = nil
			if path == exe {
				out = append(out, m)
				cur = &out[len(out)-1]
			}
			continue
		}
		if cur == nil {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name != "Rss" && name != "Anonymous" {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s/smaps: %q: %w", proc, line, err)
		}
		if name == "Rss" {
			cur.Rss = kb << 10
		} else {
			cur.Anonymous = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s/smaps: %w", proc, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s/smaps has no mapping of %s", proc, exe)
	}
	return out, nil
}

// parseHeader reads a mapping's first line, "start-end perms offset major:minor inode [path]"; the
// path, which may hold spaces (and ends in " (deleted)" once the file is replaced), is the rest.
func parseHeader(line string) (m Mapping, path string, ok bool) {
	f := strings.Fields(line)
	if len(f) < 5 || strings.HasSuffix(f[0], ":") {
		return Mapping{}, "", false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return Mapping{}, "", false
	}
	var err1, err2 error
	m.Start, err1 = strconv.ParseUint(lo, 16, 64)
	m.End, err2 = strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || len(f[1]) != 4 {
		return Mapping{}, "", false
	}
	m.Perms = f[1]
	if len(f) > 5 {
		// The path starts after the inode field and the padding that follows it.
		rest := line
		for range 5 {
			rest = strings.TrimLeft(rest, " ")
			_, rest, _ = strings.Cut(rest, " ")
		}
		path = strings.TrimLeft(rest, " ")
	}
	return m, path, true
}

// Resident is the resident size of mappings, in bytes.
func Resident(ms []Mapping) uint64 {
	var n uint64
	for _, m := range ms {
		n += m.Rss
	}
	return n
}

// Release drops this process's page table entries of its executable's read-only mappings, and
// returns how much of those mappings was resident before and is after. Only private mappings with
// no page written since load qualify: the kernel refuses writes to a running executable, so what it
// maps back on the next touch is what was there. Writable mappings, and read-only ones the loader
// wrote to (the relocations of a position-independent or externally linked binary, GNU_RELRO), are
// left alone: dropping those would lose what was written.
func Release() (before, after uint64, err error) {
	ms, err := Of(0)
	if err != nil {
		return 0, 0, err
	}
	released := map[uint64]bool{} // by start address
	for _, m := range ms {
		if strings.ContainsAny(m.Perms, "ws") || m.Perms[0] != 'r' || m.Anonymous != 0 {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.Start), uintptr(m.End-m.Start), unix.MADV_DONTNEED); errno != 0 {
			return 0, 0, fmt.Errorf("madvise %x-%x %s: %w", m.Start, m.End, m.Perms, errno)
		}
		released[m.Start] = true
		before += m.Rss
	}
	if len(released) == 0 {
		return 0, 0, errors.New("no read-only mapping of the executable without written pages")
	}
	now, err := Of(0)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range now {
		if released[m.Start] {
			after += m.Rss
		}
	}
	return before, after, nil
}
