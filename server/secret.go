package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvd-project/kvd/internal/fsutil"
)

// The peer secret authenticates nodes to each other: every node-to-node
// HTTP call carries a credential derived from it, and both ends of a Raft
// connection prove they know it (see replication.NewMux). It is random,
// created when the cluster is bootstrapped, kept in <data-dir>/peer.secret
// (mode 0600) on every member, and never served.
//
// Every member of a cluster needs the same secret before it first starts.
// A single-node cluster makes its own. A multi-node bootstrap takes it
// from the file Config.PeerSecretFile names, which the first member to
// start creates with a random secret if it does not exist (atomically, so
// members started at once from one folder agree); on other machines the
// operator copies that file, as with a cluster's certificates.

// peerSecretName is the secret's file in the data directory.
const peerSecretName = "peer.secret"

// minSecretLen is the shortest secret accepted, in characters.
const minSecretLen = 32

// peerKeys are the credentials derived from the peer secret, one per use,
// so that one leaking (an HTTP credential seen on an unencrypted link)
// does not give away the others.
type peerKeys struct {
	// http is sent in api.HeaderPeerAuth on node-to-node HTTP calls.
	http string
	// raft keys the Raft connection handshake.
	raft []byte
}

func derive(secret []byte, purpose string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

func keysOf(secret []byte) peerKeys {
	return peerKeys{http: hex.EncodeToString(derive(secret, "kvd peer http v1")), raft: derive(secret, "kvd peer raft v1")}
}

// PeerCredential returns the credential node-to-node HTTP calls carry
// (api.HeaderPeerAuth) in a cluster whose peer secret is secret: for
// tools that act as a node.
func PeerCredential(secret []byte) string { return keysOf(bytes.TrimSpace(secret)).http }

// readSecret reads a secret file: its trimmed contents.
func readSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) < minSecretLen {
		return nil, fmt.Errorf("peer secret %s holds %d characters; at least %d are needed", path, len(b), minSecretLen)
	}
	return b, nil
}

func newSecret() []byte {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("random secret: %v", err)) // crypto/rand does not fail on supported systems
	}
	return []byte(hex.EncodeToString(b[:]))
}

// writeSecretExclusive creates path holding secret, unless it exists: the
// secret is written to a temporary file, synced, then linked to path, so
// path is either absent or complete. It reports whether it created path.
func writeSecretExclusive(path string, secret []byte) (bool, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".peer-secret-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := tmp.Write(append(append([]byte(nil), secret...), '\n')); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, fsutil.SyncDir(filepath.Dir(path))
}

// loadPeerSecret returns the node's peer secret. A node that has one
// (<data-dir>/peer.secret) keeps it; one that has none yet takes
// cfg.PeerSecret, else cfg.PeerSecretFile (created with a random secret if
// absent), else, for a cluster of this node alone, a new random one, and
// keeps it in its data directory.
func (s *Server) loadPeerSecret(singleNode bool) ([]byte, error) {
	path := filepath.Join(s.cfg.DataDir, peerSecretName)
	own, err := readSecret(path)
	switch {
	case err == nil:
		if given := s.givenSecret(); given != nil && !hmac.Equal(own, given) {
			s.log.Warn("the peer secret given differs from this node's own; keeping its own", "own", path)
		}
		return own, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	secret := s.cfg.PeerSecret
	if len(secret) == 0 && s.cfg.PeerSecretFile != "" {
		// Read it first: it may sit in a read-only place (a mounted
		// secret); create it only if it does not exist.
		secret, err = readSecret(s.cfg.PeerSecretFile)
		if errors.Is(err, os.ErrNotExist) {
			created, cerr := writeSecretExclusive(s.cfg.PeerSecretFile, newSecret())
			if cerr != nil {
				return nil, fmt.Errorf("create peer secret file %s: %w (give another with --peer-secret-file)", s.cfg.PeerSecretFile, cerr)
			}
			if created {
				s.log.Info("created the cluster's peer secret; copy it to members on other machines", "file", s.cfg.PeerSecretFile)
			}
			secret, err = readSecret(s.cfg.PeerSecretFile)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(secret) == 0 {
		if !singleNode {
			return nil, fmt.Errorf("this node has no peer secret (%s): the members of a cluster share one; give a file holding it (a member's peer.secret) with --peer-secret-file", path)
		}
		secret = newSecret()
	}
	if len(secret) < minSecretLen {
		return nil, fmt.Errorf("the peer secret has %d characters; at least %d are needed", len(secret), minSecretLen)
	}
	if _, err := writeSecretExclusive(path, secret); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return readSecret(path)
}

// givenSecret is the secret the configuration names, if it can be read
// without creating anything.
func (s *Server) givenSecret() []byte {
	if len(s.cfg.PeerSecret) > 0 {
		return bytes.TrimSpace(s.cfg.PeerSecret)
	}
	if s.cfg.PeerSecretFile != "" {
		if b, err := readSecret(s.cfg.PeerSecretFile); err == nil {
			return b
		}
	}
	return nil
}
