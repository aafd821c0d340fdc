package server

import (
	"context"
	"encoding/json"
	"time"

	"github.com/kvd-project/kvd/store"
)

// runMaintenance does the leader's periodic duties in every group this
// node leads: it expires keys whose TTL ran out (a replicated delete,
// decided by the leader's clock and applied alike by every replica) and
// removes idempotency records older than the retention window.
func (s *Server) runMaintenance(ctx context.Context) {
	ttl := time.NewTicker(s.cfg.TTLInterval)
	defer ttl.Stop()
	gc := time.NewTicker(s.cfg.IdempotencyRetention / 20)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ttl.C:
			s.expireKeys(ctx)
		case <-gc.C:
			s.collectIdempotency(ctx)
		}
	}
}

func (s *Server) expireKeys(ctx context.Context) {
	now := time.Now().UnixNano()
	for gid, g := range s.hosted() {
		if !g.IsLeader() {
			continue
		}
		keys, err := g.Store().Expired(now, 512)
		if err != nil || len(keys) == 0 {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		done := make(chan struct{}, len(keys))
		for _, k := range keys {
			go func() {
				defer func() { done <- struct{}{} }()
				res, err := g.Propose(pctx, store.Cmd{Kind: store.CmdExpire, Key: k.Key, Cond: store.ExpireCond(k.Version)})
				if err != nil {
					s.log.Debug("expire", "group", gid, "key", k.Key, "err", err)
				} else if res.Deleted {
					s.metrics.expired.Add(1)
				}
			}()
		}
		for range keys {
			<-done
		}
		cancel()
	}
}

func (s *Server) collectIdempotency(ctx context.Context) {
	before := time.Now().Add(-s.cfg.IdempotencyRetention).UnixNano()
	data, _ := json.Marshal(store.DedupGC{Before: before})
	for gid, g := range s.hosted() {
		if !g.IsLeader() {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := g.Propose(pctx, store.Cmd{Kind: store.CmdDedupGC, Data: data}); err != nil {
			s.log.Debug("idempotency records", "group", gid, "err", err)
		}
		cancel()
	}
}
