package server

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/internal/fsutil"
	"github.com/kvd-project/kvd/replication"
)

// Encryption at rest: every node of a cluster holds the same keys (a
// snapshot a node sends carries its state's pages, sealed under its key),
// in a key file the node reads again when it changes (or on SIGHUP). A
// rotation adds a new key on every node first, then makes it active on
// every node, so that no node ever meets data under a key it lacks; each
// replica then re-encrypts what it holds in the background.

// keyReloadEvery is how often the key file is looked at for a change.
const keyReloadEvery = 2 * time.Second

// keyState is the node's view of its key file.
type keyState struct {
	mu      sync.Mutex // serializes reloads and edits of the key file
	lastErr error      // the last reload's failure
}

// ReloadKeys reads the key file again; if its keys changed, new data is
// sealed under its first key and every replica re-encrypts. A file that
// lacks a key data may still be under (a replica not yet done with the
// last rotation) is refused, and the keys read before stay in use.
func (s *Server) ReloadKeys() error {
	keys := s.cfg.Encryption
	if keys.Path() == "" {
		return nil
	}
	s.keyState.mu.Lock()
	defer s.keyState.mu.Unlock()
	err := s.reloadKeysLocked()
	if err != nil && (s.keyState.lastErr == nil || s.keyState.lastErr.Error() != err.Error()) {
		s.log.Error("encryption key file not taken; the keys read before stay in use", "err", err)
	}
	s.keyState.lastErr = err
	return err
}

func (s *Server) reloadKeysLocked() error {
	keys := s.cfg.Encryption
	next, err := atrest.LoadKeyFile(keys.Path())
	if err != nil {
		return err
	}
	cur := keys.Ring()
	if slices.Equal(cur.IDs(), next.IDs()) {
		return nil
	}
	for _, id := range cur.IDs() {
		if next.Has(id) {
			continue
		}
		// Dropping a key: only once every replica is done under a
		// key the new file holds (what is under a dropped key could
		// not be read again).
		for _, g := range s.hostedGroups() {
			st := g.EncryptionStatus()
			active, _ := parseKeyID(st.Active)
			if !st.Done || !next.Has(active) {
				return fmt.Errorf("the new key file lacks key %s, which group %d's data may still be under: keep it until re-encryption is done (GET /v1/admin/encryption)", id, g.ID())
			}
		}
	}
	if err := keys.Replace(next); err != nil {
		return err
	}
	s.log.Info("encryption keys changed", "active", next.Active().String(), "keys", len(next.IDs()))
	for _, g := range s.hostedGroups() {
		g.Reencrypt()
	}
	return nil
}

// hostedGroups returns the replicas the node hosts, by group id.
func (s *Server) hostedGroups() []*replication.Group {
	h := s.hosted()
	out := make([]*replication.Group, 0, len(h))
	for _, g := range h {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *replication.Group) int { return cmp.Compare(a.ID(), b.ID()) })
	return out
}

// parseKeyID reads a key id in hex.
func parseKeyID(s string) (atrest.KeyID, bool) {
	var id atrest.KeyID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, false
	}
	copy(id[:], b)
	return id, true
}

// nodeEncryption is this node's encryption status.
func (s *Server) nodeEncryption() api.NodeEncryption {
	out := api.NodeEncryption{Node: s.id}
	ring := s.cfg.Encryption.Ring()
	if ring == nil {
		out.Done = true
		return out
	}
	out.Enabled, out.Active, out.Done = true, ring.Active().String(), true
	out.Keys = ring.Names()
	out.Groups = map[string]api.GroupEncryption{}
	for _, g := range s.hostedGroups() {
		st := g.EncryptionStatus()
		out.Groups[strconv.FormatUint(uint64(g.ID()), 10)] = api.GroupEncryption{Done: st.Done, Rewritten: st.Rewritten, Error: st.Error}
		out.Done = out.Done && st.Done
	}
	s.keyState.mu.Lock()
	if s.keyState.lastErr != nil {
		out.Error = s.keyState.lastErr.Error()
	}
	s.keyState.mu.Unlock()
	return out
}

// EncryptionStatus asks every node of the map where its encryption
// stands (GET /v1/admin/encryption).
func (s *Server) EncryptionStatus(ctx context.Context) (api.EncryptionStatus, error) {
	m := s.Map()
	out := api.EncryptionStatus{Done: true}
	active := ""
	for _, n := range m.Nodes {
		var ne api.NodeEncryption
		if n.ID == s.id {
			ne = s.nodeEncryption()
		} else {
			var err error
			if ne, err = s.peerEncryption(ctx, n.ID, keyOp{Op: "status"}); err != nil {
				ne = api.NodeEncryption{Node: n.ID, Error: err.Error()}
			}
		}
		out.Done = out.Done && ne.Done && ne.Error == "" && (active == "" || ne.Active == active)
		active = cmp.Or(active, ne.Active)
		out.Nodes = append(out.Nodes, ne)
	}
	return out, nil
}

// keyOp is a node-to-node request about keys (POST
// /v1/internal/encryption).
type keyOp struct {
	// Op is "status", "add" (Key becomes a key the node holds, not the
	// active one), "activate" (Key becomes the active key) or "drop"
	// (Key, unless active, is no longer held: a failed rotation's undo).
	Op  string `json:"op"`
	Key []byte `json:"key,omitempty"`
}

// encryptionOf runs op on node (this one without a request).
func (s *Server) encryptionOf(ctx context.Context, node string, op keyOp) (api.NodeEncryption, error) {
	if node != s.id {
		return s.peerEncryption(ctx, node, op)
	}
	if op.Op != "status" {
		if err := s.editKeyFile(op.Key, op.Op); err != nil {
			return api.NodeEncryption{}, err
		}
	}
	return s.nodeEncryption(), nil
}

func (s *Server) peerEncryption(ctx context.Context, node string, op keyOp) (api.NodeEncryption, error) {
	body, _ := json.Marshal(op)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ans, err := s.call(cctx, peerCall{op: "encryption " + op.Op, method: http.MethodPost, node: node, path: "/v1/internal/encryption", body: body, keepCodes: true})
	if err != nil {
		return api.NodeEncryption{}, err
	}
	var ne api.NodeEncryption
	if err := json.Unmarshal(ans, &ne); err != nil {
		return ne, fmt.Errorf("encryption %s %s: decode: %v: %w", op.Op, node, err, kvd.ErrUnavailable)
	}
	return ne, nil
}

// InternalEncryption serves POST /v1/internal/encryption.
func (s *Server) InternalEncryption(ctx context.Context, body []byte) ([]byte, error) {
	var op keyOp
	if err := json.Unmarshal(body, &op); err != nil {
		return nil, fmt.Errorf("%w: encryption request: %v", kvd.ErrInvalid, err)
	}
	switch op.Op {
	case "status":
	case "add", "activate", "drop":
		if err := s.editKeyFile(op.Key, op.Op); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: encryption request: no operation %q", kvd.ErrInvalid, op.Op)
	}
	return json.Marshal(s.nodeEncryption())
}

// editKeyFile adds key to the node's key file (op "add"), first
// ("activate"), or takes it out unless it is active ("drop"), and takes
// the file at once. Each is safe to repeat: adding a key the file holds,
// activating the active key, dropping a key it lacks change nothing.
func (s *Server) editKeyFile(key []byte, op string) error {
	activate := op == "activate"
	keys := s.cfg.Encryption
	if keys.Ring() == nil {
		return fmt.Errorf("%w: this node has no --encryption-key-file", kvd.ErrInvalid)
	}
	if keys.Path() == "" {
		return fmt.Errorf("%w: this node's keys are not read from a file (embedded): rotate them where they are made", kvd.ErrInvalid)
	}
	if len(key) != atrest.KeySize {
		return fmt.Errorf("%w: a key is %d bytes, not %d", kvd.ErrInvalid, atrest.KeySize, len(key))
	}
	s.keyState.mu.Lock()
	defer s.keyState.mu.Unlock()
	cur, err := atrest.LoadKeyFile(keys.Path())
	if err != nil {
		return fmt.Errorf("read the key file: %w", err)
	}
	id := atrest.IDOf(key)
	ring := cur.Keys()
	switch {
	case op == "drop" && cur.Active() == id:
		return fmt.Errorf("%w: key %s is active here: it cannot be dropped", kvd.ErrConflict, id)
	case op == "drop" && !cur.Has(id):
		return nil
	case op == "drop":
		ring = slices.DeleteFunc(ring, func(k []byte) bool { return atrest.IDOf(k) == id })
	case activate && cur.Active() == id, !activate && cur.Has(id):
		return nil // done already
	case activate:
		ring = slices.DeleteFunc(ring, func(k []byte) bool { return atrest.IDOf(k) == id })
		ring = append([][]byte{key}, ring...)
	default:
		if len(ring) >= atrest.MaxKeys {
			return fmt.Errorf("%w: the key file holds %d keys, the most it may: drop those no data is under any more", kvd.ErrConflict, len(ring))
		}
		ring = append(ring, key)
	}
	if err := fsutil.WriteFile(keys.Path(), atrest.FormatKeyFile(ring...), atrest.KeyFileMode); err != nil {
		return fmt.Errorf("write the key file: %w", err)
	}
	err = s.reloadKeysLocked()
	s.keyState.lastErr = err
	return err
}

// RotateKey makes a new key the active one on every node (POST
// /v1/admin/encryption/rotate): first every node adds it, then every
// node activates it, so that whatever a node seals under it, every other
// node can open. A node down or refusing stops the rotation before any
// node seals under the new key (if it fails while adding), or leaves
// nodes on either key, both held by all (while activating): running it
// again finishes it, under another new key. Keys travel between nodes
// only on peer TLS.
func (s *Server) RotateKey(ctx context.Context) (api.KeyRotation, error) {
	if s.cfg.Encryption.Ring() == nil {
		return api.KeyRotation{}, fmt.Errorf("%w: this node has no --encryption-key-file", kvd.ErrInvalid)
	}
	m := s.Map()
	if len(m.Nodes) > 1 && (s.tls == nil || s.tls.peer == nil) {
		return api.KeyRotation{}, fmt.Errorf("%w: a key would cross the network in the clear: rotate online only with peer TLS (--peer-tls-*), or put the same new key file on every node (kvd rotate-key --encryption-key-file)", kvd.ErrInvalid)
	}
	// Every node must be able to take a key before any is given one: a
	// rotation refused here changes nothing.
	for _, n := range m.Nodes {
		ne, err := s.encryptionOf(ctx, n.ID, keyOp{Op: "status"})
		switch {
		case err != nil:
			// A conflict, not unavailable: asking another node would
			// meet the same node down.
			return api.KeyRotation{}, fmt.Errorf("%w: rotate: node %s cannot be asked (%v); nothing was changed: run it again once every node is up", kvd.ErrConflict, n.ID, err)
		case !ne.Enabled:
			return api.KeyRotation{}, fmt.Errorf("%w: rotate: node %s has no --encryption-key-file", kvd.ErrInvalid, n.ID)
		case ne.Error != "":
			return api.KeyRotation{}, fmt.Errorf("%w: rotate: node %s: %s; nothing was changed", kvd.ErrConflict, n.ID, ne.Error)
		case len(ne.Keys) >= atrest.MaxKeys:
			return api.KeyRotation{}, fmt.Errorf("%w: rotate: node %s holds %d keys, the most a key file may: drop the lines of keys no data is under any more", kvd.ErrConflict, n.ID, len(ne.Keys))
		}
	}
	key := atrest.NewKey()
	out := api.KeyRotation{Key: atrest.IDOf(key).String()}
	for i, n := range m.Nodes {
		if _, err := s.encryptionOf(ctx, n.ID, keyOp{Op: "add", Key: key}); err != nil {
			// No node seals under the key yet: take it back out.
			for _, done := range m.Nodes[:i+1] {
				if _, derr := s.encryptionOf(ctx, done.ID, keyOp{Op: "drop", Key: key}); derr != nil {
					s.log.Warn("a failed rotation's key could not be dropped; it stays, unused", "node", done.ID, "key", out.Key, "err", derr)
				}
			}
			// A conflict, not unavailable: another node asked again
			// would meet the same node failing.
			return api.KeyRotation{}, fmt.Errorf("%w: rotate: add the new key on node %s (taken back out where it was added; no node uses it): %v", kvd.ErrConflict, n.ID, err)
		}
	}
	for _, n := range m.Nodes {
		if _, err := s.encryptionOf(ctx, n.ID, keyOp{Op: "activate", Key: key}); err != nil {
			return out, fmt.Errorf("%w: rotate: the new key %s is active on %v, not on node %s (%v); every node holds it and the old one: run the rotation again once every node is up", kvd.ErrConflict, out.Key, out.Nodes, n.ID, err)
		}
		out.Nodes = append(out.Nodes, n.ID)
	}
	s.log.Info("rotated the encryption key on every node", "key", out.Key, "nodes", len(out.Nodes))
	return out, nil
}
