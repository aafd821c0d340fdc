//go:build !linux

package store

// ReleaseMemory does nothing where the memory map's pages cannot be told
// apart (see the Linux version).
func (db *DB) ReleaseMemory() error { return nil }
