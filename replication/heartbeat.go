package replication

import (
	"sync"

	"github.com/hashicorp/raft"
)

// gatedTransport is raft's network transport with its heartbeat fast path
// under a gate. Raft handles heartbeats on the transport's own goroutine,
// outside its main loop, so raft.Shutdown does not wait for one in
// progress: a heartbeat that passed raft's shutdown check can still write
// the term to the stable store after the replica closed it, and raft
// panics when that write fails. The replica shuts the gate (waiting for a
// heartbeat in progress) before it closes its stores; heartbeats after
// that are answered with an error.
type gatedTransport struct {
	*raft.NetworkTransport

	mu     sync.RWMutex
	closed bool
}

// SetHeartbeatHandler implements raft.Transport.
func (t *gatedTransport) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	if cb == nil {
		t.NetworkTransport.SetHeartbeatHandler(nil)
		return
	}
	t.NetworkTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		t.mu.RLock()
		defer t.mu.RUnlock()
		if t.closed {
			rpc.Respond(nil, errReplicaClosed)
			return
		}
		cb(rpc)
	})
}

// shut waits for a heartbeat in progress and refuses the next ones.
func (t *gatedTransport) shut() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
}
