//go:build !unix

package server

// freeSpace cannot tell on this system.
func freeSpace(string) int64 { return -1 }
