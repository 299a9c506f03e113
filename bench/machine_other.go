//go:build !linux

package bench

func memoryAndKernel() (memory uint64, kernel string) { return 0, "" }
