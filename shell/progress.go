package shell

import (
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"
)

// progressEvery is how often a live progress line is redrawn.
const progressEvery = 250 * time.Millisecond

// progress shows how far a transfer has gone on the shell's Progress
// writer: while it runs, a line redrawn in place four times a second when
// that writer is a terminal (LiveProgress); once it ends, its last state,
// always.
type progress struct {
	w     io.Writer
	live  bool
	what  string // the transfer: "backup", "verify", "restore"
	verb  string // what happens to its bytes: "received", "read", "sent"
	total int64  // bytes; -1 when unknown
	start time.Time
	// waiting says what the transfer waits for once all its bytes moved
	// ("" if nothing).
	waiting string
	bytes   atomic.Int64
	keys    atomic.Int64 // -1 when unknown
	// fullAt is when all total bytes had moved, Unix ns (0: not yet).
	fullAt atomic.Int64
	// width is the length of the last line drawn, which a shorter one
	// blanks out. Only the redrawing goroutine uses it until done.
	width int
	stop  chan struct{}
	done  chan struct{}
}

// startProgress starts showing a transfer of total bytes (-1: unknown)
// that waits for what waiting says once its bytes moved.
func (s *Shell) startProgress(what, verb string, total int64, waiting string) *progress {
	p := &progress{w: s.o.Progress, live: s.o.LiveProgress, what: what, verb: verb, total: total, waiting: waiting, start: time.Now(),
		stop: make(chan struct{}), done: make(chan struct{})}
	p.keys.Store(-1)
	if p.w == nil {
		p.w, p.live = io.Discard, false
	}
	if !p.live {
		close(p.done)
		return p
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.draw(p.line(false, true))
			}
		}
	}()
	return p
}

// end stops the redraws and writes the last state of the transfer,
// ended well (ok) or not.
func (p *progress) end(ok bool) {
	if p.live {
		close(p.stop)
		<-p.done
	}
	p.draw(p.line(true, ok))
	if p.live {
		fmt.Fprintln(p.w)
	}
}

// draw writes line: over the last one when live, else on its own.
func (p *progress) draw(line string) {
	if !p.live {
		fmt.Fprintln(p.w, line)
		return
	}
	pad := max(p.width-len(line), 0)
	p.width = len(line)
	fmt.Fprint(p.w, "\r"+line+strings.Repeat(" ", pad))
}

// line describes the transfer: "restore: 12.3 MiB of 45.6 MiB sent (27%),
// 4.5 MiB/s", and once it ended, how long it took.
func (p *progress) line(ended, ok bool) string {
	n := p.bytes.Load()
	var b strings.Builder
	b.WriteString(p.what + ": ")
	if ended && !ok {
		b.WriteString("stopped after ")
	}
	b.WriteString(bytesText(n))
	if p.total >= 0 {
		b.WriteString(" of " + bytesText(p.total))
	}
	b.WriteString(" " + p.verb)
	if p.total > 0 {
		fmt.Fprintf(&b, " (%d%%)", n*100/p.total)
	}
	if k := p.keys.Load(); k >= 0 {
		fmt.Fprintf(&b, ", %s", plural(int(k), "key"))
	}
	elapsed := time.Since(p.start)
	full := p.fullAt.Load()
	if full != 0 {
		elapsed = time.Unix(0, full).Sub(p.start) // the time the bytes took
	}
	rate := ""
	if elapsed >= time.Millisecond {
		rate = bytesText(int64(float64(n)/elapsed.Seconds())) + "/s"
	}
	switch {
	case ended && rate != "":
		fmt.Fprintf(&b, " in %s (%s)", elapsed.Round(time.Millisecond), rate)
	case ended:
		fmt.Fprintf(&b, " in %s", elapsed.Round(time.Millisecond))
	case full != 0 && p.waiting != "":
		fmt.Fprintf(&b, "; %s (%s)", p.waiting, time.Since(time.Unix(0, full)).Round(time.Second))
	case rate != "":
		b.WriteString(", " + rate)
	}
	return b.String()
}

// countingWriter counts into p the bytes written to w.
type countingWriter struct {
	w io.Writer
	p *progress
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.p.bytes.Add(int64(n))
	return n, err
}

// countingReader counts into p the bytes read from r. Its Len tells the
// bytes left of total, so that the client sends them with their length.
type countingReader struct {
	r     io.Reader
	p     *progress
	total int64
	read  int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.read += int64(n)
	if c.p.bytes.Add(int64(n)) >= c.total {
		c.p.fullAt.CompareAndSwap(0, time.Now().UnixNano())
	}
	return n, err
}

// Len returns how many bytes are left to read.
func (c *countingReader) Len() int { return int(max(c.total-c.read, 0)) }
