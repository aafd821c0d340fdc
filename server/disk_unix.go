//go:build unix

package server

import (
	"io/fs"
	"syscall"

	"golang.org/x/sys/unix"
)

// allocated returns the bytes a file takes on disk.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return info.Size()
}

// freeSpace returns the bytes an unprivileged writer may still use on
// dir's file system, or -1 if it cannot tell.
func freeSpace(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
