//go:build !unix

package main

// defaultMaxConnections is a fixed cap where the limit of open files is
// not known.
func defaultMaxConnections() int { return 4096 }
