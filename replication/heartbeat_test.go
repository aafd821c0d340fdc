package replication

import (
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// Raft answers heartbeats on the transport's goroutine, which its
// Shutdown does not wait for. The gate does: shutting it waits for a
// heartbeat in progress, and later ones are refused without reaching
// raft (whose stores are about to close).
func TestGatedTransport_HeartbeatsStopBeforeTheStoresClose(t *testing.T) {
	newTrans := func() *raft.NetworkTransport {
		tr, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, 5*time.Second, io.Discard)
		require.NoError(t, err)
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	server := &gatedTransport{NetworkTransport: newTrans()}
	client := newTrans()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	calls := 0
	server.SetHeartbeatHandler(func(rpc raft.RPC) {
		calls++
		entered <- struct{}{}
		<-release
		rpc.Respond(&raft.AppendEntriesResponse{Term: 1, Success: true}, nil)
	})
	// A heartbeat: an AppendEntries with no entries and no commit index.
	heartbeat := func() error {
		var resp raft.AppendEntriesResponse
		return client.AppendEntries("s", server.LocalAddr(), &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ID: []byte("c"), Addr: []byte(client.LocalAddr())}, Term: 1}, &resp)
	}
	first := make(chan error, 1)
	go func() { first <- heartbeat() }()
	<-entered
	shut := make(chan struct{})
	go func() {
		server.shut()
		close(shut)
	}()
	select {
	case <-shut:
		t.Fatal("shut returned while a heartbeat was in progress")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	<-shut
	require.NoError(t, <-first, "the heartbeat in progress finishes")
	err := heartbeat()
	require.ErrorContains(t, err, errReplicaClosed.Error(), "later heartbeats are refused")
	require.Equal(t, 1, calls, "and never reach raft")
}
