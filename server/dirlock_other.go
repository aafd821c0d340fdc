//go:build !unix

package server

import "os"

// lockDataDir is a no-op where flock is not available; bbolt's own file
// locks still keep two processes apart.
func lockDataDir(dir string) (*os.File, error) { return nil, nil }
