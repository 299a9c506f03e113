//go:build linux

package bench

import "golang.org/x/sys/unix"

func memoryAndKernel() (memory uint64, kernel string) {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		memory = uint64(si.Totalram) * uint64(si.Unit)
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	return memory, kernel
}
