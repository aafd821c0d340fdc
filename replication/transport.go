package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
)

// streamMagic opens every Raft stream between nodes, followed by the group
// id (8 bytes, big endian), so one listener serves every group of a node.
const streamMagic = "KVR1"

const streamHeaderSize = len(streamMagic) + 8

// headerTimeout bounds how long an accepted connection may take to name
// its group.
const headerTimeout = 5 * time.Second

// Mux is a node's Raft listener, shared by all the groups the node hosts.
// Each incoming stream names its group in a short header; Mux hands it to
// that group's StreamLayer. Outgoing streams are dialed per group and carry
// the same header.
type Mux struct {
	ln        net.Listener
	advertise net.Addr
	log       *slog.Logger

	// mu protects layers and closed.
	mu     sync.Mutex
	layers map[kvd.GroupID]*streamLayer
	closed bool

	wg sync.WaitGroup
}

// NewMux serves Raft streams accepted on ln. advertise is the address peers
// dial (nil: ln's address). Close stops it.
func NewMux(ln net.Listener, advertise string, log *slog.Logger) (*Mux, error) {
	var adv net.Addr = ln.Addr()
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
		}
		adv = a
	}
	if log == nil {
		log = slog.Default()
	}
	m := &Mux{ln: ln, advertise: adv, log: log, layers: map[kvd.GroupID]*streamLayer{}}
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
	l := &streamLayer{mux: m, group: g, conns: make(chan net.Conn, 16), done: make(chan struct{})}
	m.layers[g] = l
	return l, nil
}

// Close stops accepting, closes every layer and waits for the accept loop.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	layers := m.layers
	m.layers = map[kvd.GroupID]*streamLayer{}
	m.mu.Unlock()
	err := m.ln.Close()
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
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(c)
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
		m.log.Debug("raft stream for a group not hosted here", "group", g, "remote", c.RemoteAddr())
		c.Close()
		return
	}
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
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

// Close unregisters the layer; the shared listener stays open.
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

// Dial opens a stream to the group's replica at address.
func (l *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, err
	}
	var hdr [streamHeaderSize]byte
	copy(hdr[:], streamMagic)
	binary.BigEndian.PutUint64(hdr[len(streamMagic):], uint64(l.group))
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write(hdr[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("raft dial %s: write header: %w", address, err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}
