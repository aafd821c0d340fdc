package faultproxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoServer echoes every connection.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err
}

func TestProxy_Modes(t *testing.T) {
	p, err := New("127.0.0.1:0", echoServer(t))
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, roundTrip(p.Addr()))

	// An open connection is cut when the link is.
	open, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	_, err = open.Write([]byte("x"))
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, p.SetMode(Refuse))
	open.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 8)
	n, _ := open.Read(buf)
	_, err = open.Read(buf[n:])
	require.Error(t, err, "the pooled connection is closed")

	// New connections are refused, as by a dead peer.
	_, err = net.DialTimeout("tcp", p.Addr(), time.Second)
	var op *net.OpError
	require.ErrorAs(t, err, &op)
	require.Equal(t, "dial", op.Op)

	// Drop: connections open, nothing comes back.
	require.NoError(t, p.SetMode(Drop))
	err = roundTrip(p.Addr())
	require.Error(t, err)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout(), "a dropped link hangs: %v", err)

	require.NoError(t, p.SetMode(Pass))
	require.NoError(t, roundTrip(p.Addr()))

	p.SetDelay(100 * time.Millisecond)
	start := time.Now()
	require.NoError(t, roundTrip(p.Addr()))
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond, "delay applies both ways")
}

// TestProxy_SetDelays_DelaysOneDirection proves a delay of the answers
// alone lets requests through at once: the target has the request long
// before the dialer has the answer.
func TestProxy_SetDelays_DelaysOneDirection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	got := make(chan time.Time, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		got <- time.Now()
		c.Write(buf)
	}()
	p, err := New("127.0.0.1:0", ln.Addr().String())
	require.NoError(t, err)
	defer p.Close()
	p.SetDelays(0, 300*time.Millisecond)
	start := time.Now()
	require.NoError(t, roundTrip(p.Addr()))
	answered := time.Since(start)
	arrived := (<-got).Sub(start)
	require.Less(t, arrived, 150*time.Millisecond, "the request is not delayed")
	require.GreaterOrEqual(t, answered, 300*time.Millisecond, "the answer is")
}
