package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/httpapi"
	"github.com/kvd-project/kvd/replication"
	"github.com/kvd-project/kvd/store"
)

// backend serves the HTTP handlers from the node's replicas.
type backend struct{ s *Server }

var _ httpapi.Backend = backend{}

func (b backend) NodeID() string                    { return b.s.id }
func (b backend) PeerHTTP(id string) (string, bool) { return b.s.PeerHTTP(id) }

// groupFor returns the local replica of the group that owns key. A routed
// request must name that group at the current epoch and reach a node that
// hosts it; an unrouted one for a group hosted elsewhere gets a
// NotLeaderError naming the group's preferred leader, to be forwarded.
func (b backend) groupFor(key string, rt httpapi.Route) (*replication.Group, error) {
	m := b.s.Map()
	gid, ok := m.GroupOf(kvd.Slot(key))
	if !ok {
		return nil, fmt.Errorf("slot %d has no group: %w", kvd.Slot(key), kvd.ErrUnavailable)
	}
	if rt.Direct {
		if rt.Group != gid || rt.Epoch < m.Epoch {
			return nil, fmt.Errorf("%w: key %q belongs to group %d at epoch %d (asked: group %d, epoch %d)", kvd.ErrWrongGroup, key, gid, m.Epoch, rt.Group, rt.Epoch)
		}
		g, ok := b.s.hosted()[gid]
		if !ok {
			return nil, fmt.Errorf("%w: node %s hosts no replica of group %d", kvd.ErrWrongGroup, b.s.id, gid)
		}
		return g, nil
	}
	if g, ok := b.s.hosted()[gid]; ok {
		return g, nil
	}
	grp, _ := m.Group(gid)
	leader := ""
	if len(grp.Members) > 0 {
		leader = grp.Members[0]
	}
	return nil, &kvd.NotLeaderError{Group: gid, Leader: leader}
}

func (b backend) Get(ctx context.Context, key string, c kvd.Consistency, rt httpapi.Route) (kvd.Item, error) {
	g, err := b.groupFor(key, rt)
	if err != nil {
		return kvd.Item{}, err
	}
	if err := g.ReadBarrier(ctx, c); err != nil {
		return kvd.Item{}, err
	}
	return g.Store().Get(key)
}

func (b backend) Put(ctx context.Context, key string, value []byte, cond kvd.Cond, rt httpapi.Route) (kvd.Version, error) {
	g, err := b.groupFor(key, rt)
	if err != nil {
		return 0, err
	}
	res, err := g.Propose(ctx, store.Cmd{Kind: store.CmdPut, Key: key, Value: value, Cond: cond})
	if err != nil {
		return 0, err
	}
	if res.Err != nil {
		return 0, fmt.Errorf("put %q: current version %d: %w", key, res.Version, res.Err)
	}
	return res.Version, nil
}

func (b backend) Delete(ctx context.Context, key string, cond kvd.Cond, rt httpapi.Route) (bool, kvd.Version, error) {
	g, err := b.groupFor(key, rt)
	if err != nil {
		return false, 0, err
	}
	res, err := g.Propose(ctx, store.Cmd{Kind: store.CmdDelete, Key: key, Cond: cond})
	if err != nil {
		return false, 0, err
	}
	if res.Err != nil {
		return false, 0, fmt.Errorf("delete %q: current version %d: %w", key, res.Version, res.Err)
	}
	return res.Deleted, res.Version, nil
}

// Scan reads a page from every group and merges them in key order. The
// page is exact: of all matching keys, the first Limit, and the key after
// them as next.
func (b backend) Scan(ctx context.Context, o kvd.ScanOptions, c kvd.Consistency) ([]kvd.Item, string, error) {
	m := b.s.Map()
	var all []kvd.Item
	var nexts []string
	for _, grp := range m.Groups {
		g, ok := b.s.hosted()[grp.ID]
		if !ok {
			leader := ""
			if len(grp.Members) > 0 {
				leader = grp.Members[0]
			}
			return nil, "", &kvd.NotLeaderError{Group: grp.ID, Leader: leader}
		}
		if err := g.ReadBarrier(ctx, c); err != nil {
			return nil, "", err
		}
		items, next, err := g.Store().Scan(o)
		if err != nil {
			return nil, "", err
		}
		all = append(all, items...)
		if next != "" {
			nexts = append(nexts, next)
		}
	}
	return mergePage(all, nexts, o.Limit)
}

// mergePage sorts items from several groups and cuts the page at limit;
// next is the smallest key not returned, among the surplus items and the
// groups' own next keys.
func mergePage(all []kvd.Item, nexts []string, limit int) ([]kvd.Item, string, error) {
	sort.Slice(all, func(i, j int) bool { return all[i].Key < all[j].Key })
	next := ""
	if limit > 0 && len(all) > limit {
		next = all[limit].Key
		all = all[:limit]
	}
	for _, n := range nexts {
		if next == "" || n < next {
			next = n
		}
	}
	return all, next, nil
}

func (b backend) Cluster(ctx context.Context) (api.Cluster, error) {
	m := b.s.Map()
	c := api.Cluster{Epoch: m.Epoch}
	for _, n := range m.Nodes {
		c.Nodes = append(c.Nodes, api.Node{ID: n.ID, HTTP: n.HTTP, Raft: n.Raft})
	}
	for _, grp := range m.Groups {
		ag := api.Group{ID: uint64(grp.ID), Members: grp.Members}
		for _, r := range grp.Slots {
			ag.Slots = append(ag.Slots, [2]int{r[0], r[1]})
		}
		if g, ok := b.s.hosted()[grp.ID]; ok {
			ag.Leader = g.LeaderID()
		}
		c.Groups = append(c.Groups, ag)
	}
	return c, nil
}

func (b backend) Status(ctx context.Context) api.Status {
	st := api.Status{Node: b.s.id, HTTP: b.s.HTTPAddr(), Raft: b.s.mux.Addr().String(), Version: b.s.cfg.Version,
		Uptime: time.Since(b.s.started).Round(time.Second).String(), Epoch: b.s.Map().Epoch}
	for _, gid := range b.s.Map().GroupsOf(b.s.id) {
		g, ok := b.s.hosted()[gid]
		if !ok {
			continue
		}
		gs := g.Status()
		st.Groups = append(st.Groups, api.GroupStatus{Group: uint64(gs.Group), Role: gs.Role, Term: gs.Term, Leader: gs.Leader,
			CommitIndex: gs.CommitIndex, AppliedIndex: gs.AppliedIndex, LastIndex: gs.LastIndex, LastContact: gs.LastContact, Members: gs.Members})
	}
	return st
}

func (b backend) Ready() error {
	for gid, g := range b.s.hosted() {
		if g.LeaderID() == "" {
			return fmt.Errorf("group %d has no leader: %w", gid, kvd.ErrUnavailable)
		}
	}
	return nil
}

func (b backend) ReadIndex(ctx context.Context, gid kvd.GroupID) (uint64, error) {
	g, ok := b.s.hosted()[gid]
	if !ok {
		return 0, fmt.Errorf("%w: node %s hosts no replica of group %d", kvd.ErrWrongGroup, b.s.id, gid)
	}
	return g.ReadIndex(ctx)
}

// remoteReadIndex asks node leader for a read index of group g over HTTP;
// it serves follower reads.
func (s *Server) remoteReadIndex(ctx context.Context, leader string, g kvd.GroupID) (uint64, error) {
	addr, ok := s.PeerHTTP(leader)
	if !ok {
		return 0, fmt.Errorf("read index: no address for node %q: %w", leader, kvd.ErrUnavailable)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/internal/readindex?group="+strconv.FormatUint(uint64(g), 10), nil)
	if err != nil {
		return 0, fmt.Errorf("read index: %w", err)
	}
	req.Header.Set(api.HeaderForwarded, s.id)
	resp, err := s.peerHTTP.Do(req)
	if err != nil {
		return 0, fmt.Errorf("read index from %s: %v: %w", leader, err, kvd.ErrUnavailable)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return 0, fmt.Errorf("read index from %s: %v: %w", leader, err, kvd.ErrUnavailable)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode == http.StatusServiceUnavailable {
			return 0, &kvd.NotLeaderError{Group: g, Leader: e.Error.Leader}
		}
		return 0, fmt.Errorf("read index from %s: %s %s: %w", leader, resp.Status, e.Error.Message, kvd.ErrUnavailable)
	}
	var ri api.ReadIndexResponse
	if err := json.Unmarshal(body, &ri); err != nil {
		return 0, fmt.Errorf("read index from %s: %v: %w", leader, err, kvd.ErrUnavailable)
	}
	return ri.Index, nil
}
