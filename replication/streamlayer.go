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
