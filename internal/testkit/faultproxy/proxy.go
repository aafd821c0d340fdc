// Package faultproxy is a TCP proxy for fault injection on loopback: it
// can add latency, and cut a link (closing every open connection and
// refusing or silently dropping new ones) until healed.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does with traffic.
type Mode int

const (
	// Pass forwards traffic (after the configured delay).
	Pass Mode = iota
	// Refuse closes every open connection and stops listening, so new
	// connections are refused by the kernel, as from a dead peer.
	Refuse
	// Drop closes every open connection, then accepts new ones and never
	// forwards a byte: peers see a link that hangs.
	Drop
)

// Proxy forwards connections accepted on its address to a target.
type Proxy struct {
	addr   string
	target string

	accepted atomic.Int64

	// mu protects ln, mode, the delays, conns and closed.
	mu     sync.Mutex
	ln     net.Listener // nil while refusing
	mode   Mode
	delay  [2]time.Duration // by direction: toTarget, fromTarget
	conns  map[net.Conn]struct{}
	closed bool

	wg sync.WaitGroup
}

// New listens on listen (e.g. "127.0.0.1:0") and forwards to target.
func New(listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.ln = ln
	p.wg.Add(1)
	go p.accept(ln)
	return p, nil
}

// Addr returns the proxy's address.
func (p *Proxy) Addr() string { return p.addr }

// Accepted returns the number of connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Directions of the traffic a proxy carries.
const (
	toTarget   = 0 // from the dialer to the target: requests
	fromTarget = 1 // from the target back to the dialer: answers
)

// SetDelay delays every chunk of data, in both directions, by d.
func (p *Proxy) SetDelay(d time.Duration) { p.SetDelays(d, d) }

// SetDelays delays every chunk of data sent to the target by toTarget,
// and every chunk the target sends back by fromTarget: with the first 0,
// requests arrive at once and their answers late. A new delay applies to
// open connections from their next chunk on.
func (p *Proxy) SetDelays(toTarget, fromTarget time.Duration) {
	p.mu.Lock()
	p.delay = [2]time.Duration{toTarget, fromTarget}
	p.mu.Unlock()
}

// SetMode switches the proxy's mode. Any change closes every open
// connection: leaving Pass cuts pooled connections too, and leaving Drop
// ends the connections it was swallowing, so peers redial at once.
func (p *Proxy) SetMode(m Mode) error {
	p.mu.Lock()
	if p.closed || p.mode == m {
		p.mu.Unlock()
		return nil
	}
	p.mode = m
	open := p.openConns()
	var err error
	switch {
	case m == Refuse && p.ln != nil:
		p.ln.Close()
		p.ln = nil
	case m != Refuse && p.ln == nil:
		var ln net.Listener
		for range 50 { // the port was ours a moment ago
			if ln, err = net.Listen("tcp", p.addr); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err == nil {
			p.ln = ln
			p.wg.Add(1)
			go p.accept(ln)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	if err != nil {
		return fmt.Errorf("faultproxy: listen again on %s: %w", p.addr, err)
	}
	return nil
}

// openConns lists the connections open now; p.mu must be held (the
// callers close them once they have released it).
func (p *Proxy) openConns() []net.Conn {
	var open []net.Conn
	for c := range p.conns {
		open = append(open, c)
	}
	return open
}

// Mode returns the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	open := p.openConns()
	var err error
	if p.ln != nil {
		err = p.ln.Close()
		p.ln = nil
	}
	p.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.accepted.Add(1)
		p.mu.Lock()
		mode := p.mode
		p.mu.Unlock()
		switch mode {
		case Refuse:
			c.Close()
			continue
		case Drop:
			if !p.track(c) {
				c.Close()
				continue
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				io.Copy(io.Discard, c) // swallow until cut
				p.untrack(c)
			}()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *Proxy) serve(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	defer p.untrack(c)
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	done := make(chan struct{}, 2)
	go func() { p.pipe(up, c, toTarget); done <- struct{}{} }()
	go func() { p.pipe(c, up, fromTarget); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

// pipe copies src to dst, delaying each chunk by the current delay of
// direction dir.
func (p *Proxy) pipe(dst, src net.Conn, dir int) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			d, mode := p.delay[dir], p.mode
			p.mu.Unlock()
			if mode != Pass {
				return
			}
			if d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
