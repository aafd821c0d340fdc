package replication

import (
	"crypto/tls"
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
	// tlsServer and tlsClient, if set, put connections on TLS (WithTLS).
	tlsServer *tls.Config
	tlsClient func(address string) *tls.Config
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

	// redials counts the RPCs that found their pooled stream's session
	// dead and went out on a new stream (see raftStream).
	redials atomic.Uint64
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
func NewMux(ln net.Listener, advertise, cluster string, key []byte, logger *slog.Logger, opts ...MuxOption) (*Mux, error) {
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
	for _, o := range opts {
		o(m)
	}
	m.goFunc(m.acceptLoop)
	return m, nil
}

// MuxOption configures a Mux.
type MuxOption func(*Mux)

// WithTLS puts every Raft connection on TLS, under the handshake: an
// inbound one with server (which should require and verify the peer's
// certificate), one dialed to an address with client(address) (which
// should verify the peer's and present the node's own).
func WithTLS(server *tls.Config, client func(address string) *tls.Config) MuxOption {
	return func(m *Mux) { m.tlsServer, m.tlsClient = server, client }
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
	// Redials counts the RPCs that found the session of their pooled
	// stream dead (the peer restarted) and went out on a new stream.
	Redials uint64
}

// Stats returns the number of live sessions and streams.
func (m *Mux) Stats() MuxStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := MuxStats{Redials: m.redials.Load()}
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

// goFunc runs fn on a goroutine of the Mux's: Close waits for it.
func (m *Mux) goFunc(fn func()) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		fn()
	}()
}

func (m *Mux) acceptLoop() {
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
		m.goFunc(func() { m.serveConn(c) })
	}
}

// serveConn runs one inbound session: it accepts streams and hands each
// to its group's layer.
func (m *Mux) serveConn(c net.Conn) {
	if m.tlsServer != nil {
		tc := tls.Server(c, m.tlsServer)
		_ = c.SetDeadline(time.Now().Add(headerTimeout))
		if err := tc.Handshake(); err != nil {
			m.handshaking.Add(-1)
			m.refuse(c, "refused a Raft connection at its TLS handshake", "err", err)
			c.Close()
			return
		}
		c = tc
	}
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
		m.goFunc(func() { m.route(st) })
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
	if m.tlsClient != nil {
		tc := tls.Client(c, m.tlsClient(address))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, fmt.Errorf("raft dial %s: TLS: %w", address, err)
		}
		c = tc
	}
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
