package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/replication"
)

// remote lets a replica reach the replicas of its group on other nodes,
// over their node-to-node endpoints.
type remote struct{ s *Server }

var _ replication.Remote = remote{}

// ReadIndex asks node leader for a read index of group g; it serves
// follower reads.
func (r remote) ReadIndex(ctx context.Context, leader string, g kvd.GroupID) (uint64, error) {
	var ri api.ReadIndexResponse
	if err := r.s.peerGet(ctx, leader, "/v1/internal/readindex?"+groupQuery(g), nil, &ri); err != nil {
		return 0, fmt.Errorf("read index: %w", err)
	}
	return ri.Index, nil
}

// FetchLog fetches entry index of group g from node's log.
func (r remote) FetchLog(ctx context.Context, node string, g kvd.GroupID, index uint64) (*raft.Log, error) {
	var e api.LogEntry
	if err := r.s.peerGet(ctx, node, "/v1/internal/log?"+groupQuery(g, "index", strconv.FormatUint(index, 10)), nil, &e); err != nil {
		return nil, fmt.Errorf("log entry %d: %w", index, err)
	}
	return &raft.Log{Index: e.Index, Term: e.Term, Type: raft.LogType(e.Type), Data: e.Data}, nil
}

// FetchSnapshot streams a snapshot of node's replica of g, taken at or
// past minIndex.
func (r remote) FetchSnapshot(ctx context.Context, node string, g kvd.GroupID, minIndex uint64) (io.ReadCloser, error) {
	body, err := r.s.open(ctx, peerCall{op: "snapshot from", method: http.MethodGet, node: node,
		path: "/v1/internal/snapshot?" + groupQuery(g, "min_index", strconv.FormatUint(minIndex, 10)), group: g})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return body, nil
}

// HashAt asks node for the state hash its replica of g recorded at index.
func (r remote) HashAt(ctx context.Context, node string, g kvd.GroupID, index uint64) (uint64, error) {
	var h api.HashResponse
	if err := r.s.peerGet(ctx, node, "/v1/internal/hash?"+groupQuery(g, "index", strconv.FormatUint(index, 10)), nil, &h); err != nil {
		return 0, fmt.Errorf("state hash at %d: %w", index, err)
	}
	v, err := strconv.ParseUint(h.Hash, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("state hash from %s: %q: %w", node, h.Hash, kvd.ErrUnavailable)
	}
	return v, nil
}
