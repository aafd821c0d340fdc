//go:build unix

package main

import "syscall"

// defaultMaxConnections leaves a quarter of the process's limit of open
// files (at least 256) for its data files, Raft connections and
// snapshots, and lets HTTP connections have the rest.
func defaultMaxConnections() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<20 {
		return 1 << 16
	}
	n := int(rl.Cur)
	return max(n-max(n/4, 256), 64)
}
