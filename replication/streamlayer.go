package replication

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/yamux"

	"github.com/kvd-project/kvd"
)

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
	st, sess, err := l.open(address, timeout)
	if err != nil {
		return nil, err
	}
	return &raftStream{l: l, address: address, timeout: timeout, conn: st, sess: sess}, nil
}

// open opens a stream of this group to address and writes its header.
func (l *streamLayer) open(address raft.ServerAddress, timeout time.Duration) (net.Conn, *yamux.Session, error) {
	var st net.Conn
	var sess *yamux.Session
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		sess, err = l.mux.session(string(address), timeout)
		if err != nil {
			return nil, nil, err
		}
		st, err = sess.Open()
		if err == nil {
			break
		}
		sess.Close() // dead session: the next attempt dials a new one
	}
	if err != nil {
		return nil, nil, fmt.Errorf("raft dial %s: open stream: %w", address, err)
	}
	var hdr [streamHeaderSize]byte
	copy(hdr[:], streamMagic)
	binary.BigEndian.PutUint64(hdr[len(streamMagic):], uint64(l.group))
	_ = st.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := st.Write(hdr[:]); err != nil {
		st.Close()
		return nil, nil, fmt.Errorf("raft dial %s: write header: %w", address, err)
	}
	_ = st.SetWriteDeadline(time.Time{})
	return st, sess, nil
}

// raftStream is a stream raft dialed, which raft may keep in its
// connection pool. raft takes a pooled connection without checking it
// (NetworkTransport.getPooledConn): once a peer restarts, every stream of
// the session to its old process is dead, and each RPC sent on one fails,
// so a candidate loses an election round (a whole timeout) per pooled
// stream. A stream whose session is gone when an RPC starts (its first
// write after the last answer was read, or ever) opens a new stream
// first: nothing of that RPC has left yet, so it goes out whole on the
// new one.
//
// raft uses a connection for one RPC at a time (pipelining is off, see
// newTransport): a write that follows a read starts an RPC.
type raftStream struct {
	l       *streamLayer
	address raft.ServerAddress
	timeout time.Duration

	mu   sync.Mutex // guards the fields below against Close
	conn net.Conn
	sess *yamux.Session
	// inRPC is set from an RPC's first write until its answer is read.
	inRPC bool
	// deadline, readDeadline and writeDeadline are the last set, for a
	// new stream to take on.
	deadline, readDeadline, writeDeadline time.Time
}

func (s *raftStream) current() net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

func (s *raftStream) Write(b []byte) (int, error) {
	s.mu.Lock()
	if !s.inRPC && s.sess.IsClosed() {
		if st, sess, err := s.l.open(s.address, s.timeout); err == nil {
			s.conn.Close()
			s.conn, s.sess = st, sess
			if !s.deadline.IsZero() {
				_ = st.SetDeadline(s.deadline)
			}
			if !s.readDeadline.IsZero() {
				_ = st.SetReadDeadline(s.readDeadline)
			}
			if !s.writeDeadline.IsZero() {
				_ = st.SetWriteDeadline(s.writeDeadline)
			}
			s.l.mux.redials.Add(1)
		}
	}
	s.inRPC = true
	c := s.conn
	s.mu.Unlock()
	return c.Write(b)
}

func (s *raftStream) Read(b []byte) (int, error) {
	s.mu.Lock()
	s.inRPC = false
	c := s.conn
	s.mu.Unlock()
	return c.Read(b)
}

func (s *raftStream) Close() error         { return s.current().Close() }
func (s *raftStream) LocalAddr() net.Addr  { return s.current().LocalAddr() }
func (s *raftStream) RemoteAddr() net.Addr { return s.current().RemoteAddr() }

func (s *raftStream) SetDeadline(t time.Time) error {
	s.mu.Lock()
	s.deadline = t
	c := s.conn
	s.mu.Unlock()
	return c.SetDeadline(t)
}

func (s *raftStream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.readDeadline = t
	c := s.conn
	s.mu.Unlock()
	return c.SetReadDeadline(t)
}

func (s *raftStream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.writeDeadline = t
	c := s.conn
	s.mu.Unlock()
	return c.SetWriteDeadline(t)
}
