package jepsen

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"
)

// Status is the outcome of an operation.
type Status string

// Operation outcomes.
const (
	// OK: the operation took effect (for reads: this is what was read).
	OK Status = "ok"
	// Fail: the operation certainly did not take effect.
	Fail Status = "fail"
	// Unknown: the operation may or may not have taken effect, possibly
	// at any later time (a timeout, a 5xx on a write).
	Unknown Status = "unknown"
)

// Op is one operation of a history. Workloads use the fields they need.
type Op struct {
	// Index is the operation's position in the history.
	Index int `json:"index"`
	// Process is the client worker that ran it.
	Process int `json:"process"`
	// W names the workload that made it when several run at once (a
	// soak); empty otherwise.
	W string `json:"w,omitempty"`
	// F is the operation: "put", "get", "delete", "cas", "insert",
	// "read" and so on.
	F string `json:"f"`
	// Key is the key it concerns, if any.
	Key string `json:"key,omitempty"`
	// Value is the value written, or the value read (Found tells absent
	// from empty).
	Value string `json:"value,omitempty"`
	Found bool   `json:"found,omitempty"`
	// Version is the version read or written; Expect the version a cas
	// required.
	Version uint64 `json:"version,omitempty"`
	Expect  uint64 `json:"expect,omitempty"`
	// Deleted is a delete's answer.
	Deleted bool `json:"deleted,omitempty"`
	// Values holds the keys a multi-key read returned (final reads).
	Values []string `json:"values,omitempty"`
	// Txn holds a list-append transaction's micro-operations (reads
	// with what they read).
	Txn []Micro `json:"txn,omitempty"`
	// Consistency is a read's level.
	Consistency string `json:"consistency,omitempty"`
	// Node is the node asked; Served the node that answered.
	Node   string `json:"node,omitempty"`
	Served string `json:"served,omitempty"`
	// Status is the outcome, Error the reason for a fail or unknown.
	Status Status `json:"status"`
	Error  string `json:"error,omitempty"`
	// Call and Return are the invocation and completion times, in
	// nanoseconds since the run began.
	Call   int64 `json:"call"`
	Return int64 `json:"return"`
}

// Latency returns how long the operation took.
func (o Op) Latency() time.Duration { return time.Duration(o.Return - o.Call) }

// History records operations from concurrent workers.
type History struct {
	start time.Time
	mu    sync.Mutex // protects ops
	ops   []Op
}

// NewHistory starts a history whose clock begins now.
func NewHistory() *History { return &History{start: time.Now()} }

// Now returns the history's clock.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Start returns when the history's clock began.
func (h *History) Start() time.Time { return h.start }

// Add records a completed operation.
func (h *History) Add(op Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	op.Index = len(h.ops)
	h.ops = append(h.ops, op)
}

// Recent returns the last n operations recorded, in the order they
// completed.
func (h *History) Recent(n int) []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops[max(0, len(h.ops)-n):]...)
}

// Ops returns the operations in order of invocation.
func (h *History) Ops() []Op {
	h.mu.Lock()
	ops := append([]Op(nil), h.ops...)
	h.mu.Unlock()
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	return ops
}

// WriteJSONL writes the history, one operation per line.
func WriteJSONL(path string, ops []Op) error {
	if err := writeJSONL(path, ops); err != nil {
		return fmt.Errorf("write history: %w", err)
	}
	return nil
}

// writeJSONL writes items to path, one JSON object per line.
func writeJSONL[T any](path string, items []T) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, it := range items {
		if err := enc.Encode(it); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadJSONL reads a history written by WriteJSONL.
func ReadJSONL(path string) ([]Op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ops []Op
	dec := json.NewDecoder(bufio.NewReader(f))
	for dec.More() {
		var op Op
		if err := dec.Decode(&op); err != nil {
			return nil, fmt.Errorf("read history %s: %w", path, err)
		}
		ops = append(ops, op)
	}
	return ops, nil
}
