package server_test

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/server"
)

// lockedBuffer is a bytes.Buffer a logger may write from any goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A node whose free-space reserve cannot hold a raft-wal segment for
// each group it hosts says so when it starts: the disk could fill before
// writes are refused. A reserve large enough says nothing.
func TestServer_WarnsOfAReserveSmallerThanTheWALSegments(t *testing.T) {
	for _, c := range []struct {
		minFree int64
		warns   bool
	}{{1 << 20, true}, {1 << 30, false}} {
		var logs lockedBuffer
		testcluster.New(t, 1, 2, func(cfg *server.Config) {
			cfg.MinFreeBytes = c.minFree
			cfg.Replication.LogStore = replication.LogStoreWAL
			cfg.Replication.WALSegmentBytes = 16 << 20
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		})
		require.Equal(t, c.warns, bytes.Contains([]byte(logs.String()), []byte("less than a raft-wal segment for every hosted group")), "min free %d:\n%s", c.minFree, logs.String())
	}
}
