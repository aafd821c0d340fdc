// Package atrest encrypts what a node writes to its disk: values in the
// state, Raft log entries, snapshots and backups, with AES-256-GCM under
// keys read from a key file.
//
// A key file holds one key per line, each 32 random bytes in base64; the
// first line is the active key, which seals everything written from now
// on, and the others still open what was sealed under them (a rotation
// puts a new key first, re-encrypts, and the old lines can go once no data
// is under them). A key is named by its id: the first 8 bytes of a
// SHA-256 of the key, never the key itself.
//
// Two forms are sealed:
//
//   - a message (a value, a log entry): 0xEC 0x01 | key id (8) | nonce (12)
//     | ciphertext and tag (16), with associated data the caller names (a
//     bucket and key, a log index), so that a sealed message copied to
//     another place fails to open;
//   - a stream (a snapshot, a backup): "KVDENCS1" | key id (8) | nonce
//     prefix (8), then chunks of a 4-byte length and up to 64 KiB sealed,
//     the last one shorter than 64 KiB (empty if need be) and marked as
//     last in its associated data, so that a stream cut short, reordered
//     or extended fails to open.
package atrest
