//go:build !unix

package server

import "io/fs"

// allocated returns a file's apparent size: what it takes on disk cannot
// be told here.
func allocated(info fs.FileInfo) int64 { return info.Size() }

// freeSpace cannot tell on this system.
func freeSpace(string) int64 { return -1 }
