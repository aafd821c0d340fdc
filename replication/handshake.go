package replication

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/kvd-project/kvd"
)

// The handshake of every node-to-node Raft connection proves to each end
// that the other holds the cluster's secret, without sending it:
//
//	dialer   -> preamble, cluster id (ClusterIDSize), nonce c (16)
//	listener -> connOtherCluster, or connChallenge, nonce s (16), MAC("server", id, c, s)
//	dialer   -> MAC("client", id, c, s)
//	listener -> connAccepted, or connBadSecret
//
// where MAC is HMAC-SHA256 keyed with the secret (the Raft key derived
// from the cluster's peer secret). A yamux session follows connAccepted.
// A passive observer learns neither the key nor anything it can replay:
// each side chooses a fresh nonce.
const connPreamble = "KVDMUX3\n"

// ClusterIDSize is the length of a cluster id on the wire.
const ClusterIDSize = 32

const (
	connAccepted     = 'K'
	connOtherCluster = 'C'
	connChallenge    = 'N'
	connBadSecret    = 'S'
	nonceSize        = 16
	macSize          = sha256.Size
)

// maxHandshakes caps the inbound Raft connections in their handshake at
// once. Members dial one connection each, so only strangers come near it.
const maxHandshakes = 64

// mac is the handshake's proof of the key for one side.
func (m *Mux) mac(side string, cnonce, snonce []byte) []byte {
	h := hmac.New(sha256.New, m.key)
	h.Write([]byte(side))
	h.Write(m.cluster[:])
	h.Write(cnonce)
	h.Write(snonce)
	return h.Sum(nil)
}

// refuse logs a refused connection, at most every 10 s.
func (m *Mux) refuse(c net.Conn, msg string, args ...any) {
	m.refused.Add(1)
	if now := time.Now().UnixNano(); now-m.lastRefusal.Load() > int64(10*time.Second) {
		m.lastRefusal.Store(now)
		m.log.Warn(msg, append([]any{"remote", c.RemoteAddr().String()}, args...)...)
	}
}

// Refused returns how many connections the handshake refused.
func (m *Mux) Refused() uint64 { return m.refused.Load() }

// handshake runs the listener's side of the handshake; it reports whether
// the peer proved it holds the key.
func (m *Mux) handshake(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(headerTimeout))
	pre := make([]byte, len(connPreamble)+ClusterIDSize+nonceSize)
	if _, err := io.ReadFull(c, pre); err != nil || string(pre[:len(connPreamble)]) != connPreamble {
		m.refuse(c, "refused a Raft connection that does not speak this version's handshake")
		return false
	}
	cluster := pre[len(connPreamble) : len(connPreamble)+ClusterIDSize]
	cnonce := pre[len(connPreamble)+ClusterIDSize:]
	if !hmac.Equal(cluster, m.cluster[:]) {
		_, _ = c.Write([]byte{connOtherCluster})
		m.refuse(c, "refused a Raft connection from a node of another cluster", "their_cluster", string(cluster), "our_cluster", string(m.cluster[:]))
		return false
	}
	snonce := make([]byte, nonceSize)
	if _, err := rand.Read(snonce); err != nil {
		return false
	}
	if _, err := c.Write(append(append([]byte{connChallenge}, snonce...), m.mac("server", cnonce, snonce)...)); err != nil {
		return false
	}
	proof := make([]byte, macSize)
	if _, err := io.ReadFull(c, proof); err != nil {
		m.refuse(c, "refused a Raft connection that did not prove it holds the cluster's secret", "err", err)
		return false
	}
	if !hmac.Equal(proof, m.mac("client", cnonce, snonce)) {
		_, _ = c.Write([]byte{connBadSecret})
		m.refuse(c, "refused a Raft connection from a node without this cluster's secret")
		return false
	}
	if _, err := c.Write([]byte{connAccepted}); err != nil {
		return false
	}
	_ = c.SetDeadline(time.Time{})
	return true
}

// dialHandshake runs the dialer's side of the handshake.
func (m *Mux) dialHandshake(c net.Conn) error {
	cnonce := make([]byte, nonceSize)
	if _, err := rand.Read(cnonce); err != nil {
		return err
	}
	if _, err := c.Write(append(append([]byte(connPreamble), m.cluster[:]...), cnonce...)); err != nil {
		return err
	}
	var answer [1]byte
	if _, err := io.ReadFull(c, answer[:]); err != nil {
		return fmt.Errorf("no answer to the handshake: %w", err)
	}
	switch answer[0] {
	case connChallenge:
	case connOtherCluster:
		return fmt.Errorf("the node there belongs to another cluster: %w", kvd.ErrUnavailable)
	default:
		return fmt.Errorf("unexpected handshake answer %q: %w", answer[0], kvd.ErrUnavailable)
	}
	challenge := make([]byte, nonceSize+macSize)
	if _, err := io.ReadFull(c, challenge); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	snonce := challenge[:nonceSize]
	if !hmac.Equal(challenge[nonceSize:], m.mac("server", cnonce, snonce)) {
		return fmt.Errorf("the node there does not hold this cluster's secret: %w", kvd.ErrUnavailable)
	}
	if _, err := c.Write(m.mac("client", cnonce, snonce)); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, answer[:]); err != nil {
		return fmt.Errorf("no answer to the handshake: %w", err)
	}
	switch answer[0] {
	case connAccepted:
		return nil
	case connBadSecret:
		return fmt.Errorf("the node there refused this node's secret: %w", kvd.ErrUnavailable)
	}
	return fmt.Errorf("unexpected handshake answer %q: %w", answer[0], kvd.ErrUnavailable)
}
