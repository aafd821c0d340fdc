package replication

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/yamux"

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

// streamMagic opens every stream inside a session, followed by the group
// id (8 bytes, big endian).
const streamMagic = "KVR1"

const streamHeaderSize = len(streamMagic) + 8

// headerTimeout bounds how long a new connection or stream may take to
// identify itself.
const headerTimeout = 5 * time.Second

// Mux is a node's Raft transport, shared by all the groups it hosts. It
// listens on one address; to each peer address it keeps one TCP
// connection that it dialed itself, carrying a yamux session in which
// every Raft connection of every group is a stream whose header names the
// group. Streams to a peer only ever travel over the session this node
// dialed, never over the one the peer dialed to it, so each direction of
// a link is one TCP connection: cutting it cuts that direction for every
// group.
type Mux struct {
	ln        net.Listener
	advertise net.Addr
	cluster   [ClusterIDSize]byte
	key       []byte
	log       *slog.Logger
	ycfg      *yamux.Config
	// lastRefusal rate-limits the warnings about refused connections.
	lastRefusal atomic.Int64
	// refused counts connections refused at the handshake.
	refused atomic.Uint64
	// handshaking counts the inbound connections not yet through the
	// handshake: past maxHandshakes more are closed at once, so that
	// strangers cannot hold the node's descriptors.
	handshaking atomic.Int64

	// mu protects layers, out, in and closed.
	mu     sync.Mutex
	layers map[kvd.GroupID]*streamLayer
	out    map[string]*outSession
	in     map[*yamux.Session]net.Conn
	closed bool

	wg sync.WaitGroup
}

// outSession is a session this node dials; ready is closed once sess or
// err is set, so concurrent dials to one address share one attempt.
type outSession struct {
	ready chan struct{}
	sess  *yamux.Session
	err   error
}

// NewMux serves Raft streams accepted on ln. advertise is the address peers
// dial (empty: ln's address). cluster identifies the cluster (see
// kvd.ClusterID): connections between nodes of different clusters are
// refused both ways, so a node left over from another cluster on the same
// addresses cannot disturb this one. key is the secret both ends of every
// connection must hold (at least 16 bytes): a connection from anything
// else is refused. Close stops it.
func NewMux(ln net.Listener, advertise, cluster string, key []byte, logger *slog.Logger) (*Mux, error) {
	if len(cluster) != ClusterIDSize {
		return nil, fmt.Errorf("raft mux: cluster id %q is not %d characters", cluster, ClusterIDSize)
	}
	if len(key) < 16 {
		return nil, fmt.Errorf("raft mux: the key has %d bytes, at least 16 are needed", len(key))
	}
	var adv net.Addr = ln.Addr()
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
		}
		adv = a
	}
	if logger == nil {
		logger = slog.Default()
	}
	ycfg := yamux.DefaultConfig()
	ycfg.AcceptBacklog = 1024
	ycfg.EnableKeepAlive = true
	ycfg.KeepAliveInterval = 2 * time.Second
	ycfg.ConnectionWriteTimeout = 5 * time.Second
	ycfg.MaxStreamWindowSize = 8 << 20
	ycfg.StreamOpenTimeout = 10 * time.Second
	ycfg.StreamCloseTimeout = 30 * time.Second
	ycfg.LogOutput = nil
	ycfg.Logger = log.New(slogWriter{&hclogAdapter{l: logger, name: "raft-mux"}}, "", 0)
	m := &Mux{ln: ln, advertise: adv, key: append([]byte(nil), key...), log: logger, ycfg: ycfg,
		layers: map[kvd.GroupID]*streamLayer{}, out: map[string]*outSession{}, in: map[*yamux.Session]net.Conn{}}
	copy(m.cluster[:], cluster)
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

// Addr returns the advertised address.
func (m *Mux) Addr() net.Addr { return m.advertise }

// Layer returns the StreamLayer of group g, registering it.
func (m *Mux) Layer(g kvd.GroupID) (raft.StreamLayer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("raft mux: %w", kvd.ErrClosed)
	}
	if _, ok := m.layers[g]; ok {
		return nil, fmt.Errorf("raft mux: group %d already registered", g)
	}
	l := &streamLayer{mux: m, group: g, conns: make(chan net.Conn, 64), done: make(chan struct{})}
	m.layers[g] = l
	return l, nil
}

// MuxStats counts a Mux's sessions.
type MuxStats struct {
	// Outbound is the number of live sessions this node dialed.
	Outbound int
	// Inbound is the number of live sessions peers dialed to this node.
	Inbound int
	// Streams is the number of open streams over all sessions.
	Streams int
}

// Stats returns the number of live sessions and streams.
func (m *Mux) Stats() MuxStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	var st MuxStats
	for _, o := range m.out {
		select {
		case <-o.ready:
			if o.sess != nil && !o.sess.IsClosed() {
				st.Outbound++
				st.Streams += o.sess.NumStreams()
			}
		default:
		}
	}
	for s := range m.in {
		if !s.IsClosed() {
			st.Inbound++
			st.Streams += s.NumStreams()
		}
	}
	return st
}

// Close stops accepting, closes every session and layer, and waits for
// the goroutines it started.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	layers := m.layers
	m.layers = map[kvd.GroupID]*streamLayer{}
	var sessions []*yamux.Session
	for _, o := range m.out {
		select {
		case <-o.ready:
			if o.sess != nil {
				sessions = append(sessions, o.sess)
			}
		default:
		}
	}
	var inConns []net.Conn
	for s, c := range m.in {
		sessions = append(sessions, s)
		inConns = append(inConns, c)
	}
	m.mu.Unlock()
	err := m.ln.Close()
	for _, s := range sessions {
		s.Close()
	}
	for _, c := range inConns {
		c.Close()
	}
	for _, l := range layers {
		l.shut()
	}
	m.wg.Wait()
	return err
}

func (m *Mux) acceptLoop() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("raft accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if m.handshaking.Add(1) > maxHandshakes {
			m.handshaking.Add(-1)
			m.refuse(c, "refused a Raft connection: too many connections are in their handshake", "max", maxHandshakes)
			c.Close()
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.serveConn(c)
		}()
	}
}

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

// serveConn runs one inbound session: it accepts streams and hands each
// to its group's layer.
func (m *Mux) serveConn(c net.Conn) {
	ok := m.handshake(c)
	m.handshaking.Add(-1)
	if !ok {
		c.Close()
		return
	}
	sess, err := yamux.Server(c, m.ycfg)
	if err != nil {
		c.Close()
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		sess.Close()
		return
	}
	m.in[sess] = c
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.in, sess)
		m.mu.Unlock()
		sess.Close()
	}()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(st)
		}()
	}
}

// route reads a stream's header and hands it to its group's layer.
func (m *Mux) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
	var hdr [streamHeaderSize]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil || string(hdr[:len(streamMagic)]) != streamMagic {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	g := kvd.GroupID(binary.BigEndian.Uint64(hdr[len(streamMagic):]))
	m.mu.Lock()
	l := m.layers[g]
	m.mu.Unlock()
	if l == nil {
		m.log.Debug("raft stream for a group not hosted here", "group", g)
		c.Close()
		return
	}
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

// session returns the live session this node dialed to address, dialing
// one if there is none. Concurrent callers share one dial.
func (m *Mux) session(address string, timeout time.Duration) (*yamux.Session, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("raft mux: %w", kvd.ErrClosed)
	}
	o := m.out[address]
	if o != nil {
		select {
		case <-o.ready:
			if o.err != nil || o.sess.IsClosed() {
				o = nil // failed or dead: dial again
			}
		default:
		}
	}
	if o != nil {
		m.mu.Unlock()
		<-o.ready
		return o.sess, o.err
	}
	o = &outSession{ready: make(chan struct{})}
	m.out[address] = o
	m.mu.Unlock()

	o.sess, o.err = m.dial(address, timeout)
	close(o.ready)
	if o.err != nil {
		m.mu.Lock()
		if m.out[address] == o {
			delete(m.out, address)
		}
		m.mu.Unlock()
	}
	return o.sess, o.err
}

func (m *Mux) dial(address string, timeout time.Duration) (*yamux.Session, error) {
	c, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if err := m.dialHandshake(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	_ = c.SetDeadline(time.Time{})
	sess, err := yamux.Client(c, m.ycfg)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		sess.Close()
		return nil, fmt.Errorf("raft mux: %w", kvd.ErrClosed)
	}
	return sess, nil
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

// streamLayer is one group's view of the Mux.
type streamLayer struct {
	mux   *Mux
	group kvd.GroupID
	conns chan net.Conn

	// closeOnce guards done.
	closeOnce sync.Once
	done      chan struct{}
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// Accept waits for the next stream of this group.
func (l *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close unregisters the layer; the shared transport stays open.
func (l *streamLayer) Close() error {
	l.mux.mu.Lock()
	if l.mux.layers[l.group] == l {
		delete(l.mux.layers, l.group)
	}
	l.mux.mu.Unlock()
	l.shut()
	return nil
}

func (l *streamLayer) shut() {
	l.closeOnce.Do(func() { close(l.done) })
}

// Addr returns the node's advertised Raft address.
func (l *streamLayer) Addr() net.Addr { return l.mux.advertise }

// Dial opens a stream of this group to the node at address, over the
// session this node keeps to that address.
func (l *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	var st net.Conn
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var sess *yamux.Session
		sess, err = l.mux.session(string(address), timeout)
		if err != nil {
			return nil, err
		}
		st, err = sess.Open()
		if err == nil {
			break
		}
		sess.Close() // dead session: the next attempt dials a new one
	}
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: open stream: %w", address, err)
	}
	var hdr [streamHeaderSize]byte
	copy(hdr[:], streamMagic)
	binary.BigEndian.PutUint64(hdr[len(streamMagic):], uint64(l.group))
	_ = st.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := st.Write(hdr[:]); err != nil {
		st.Close()
		return nil, fmt.Errorf("raft dial %s: write header: %w", address, err)
	}
	_ = st.SetWriteDeadline(time.Time{})
	return st, nil
}
