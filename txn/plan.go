package txn

import (
	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/store"
)

// part is one group's share of a transaction.
type part struct {
	group    kvd.GroupID
	compares []store.TxnCompare
	ops      []store.TxnOp
	writes   []string
}

// plan splits a request by group and names the record group: the group
// of the first key (of the ops, else of the compares).
func (c *Coordinator) plan(req Request) (map[kvd.GroupID]*part, kvd.GroupID, error) {
	parts := map[kvd.GroupID]*part{}
	get := func(key string) (*part, error) {
		g, err := c.g.GroupOf(key)
		if err != nil {
			return nil, err
		}
		p := parts[g]
		if p == nil {
			p = &part{group: g}
			parts[g] = p
		}
		return p, nil
	}
	for i, cmp := range req.Compares {
		p, err := get(cmp.Key)
		if err != nil {
			return nil, 0, err
		}
		p.compares = append(p.compares, store.TxnCompare{Index: i, Key: cmp.Key, Version: cmp.Version, Value: cmp.Value, Exists: cmp.Exists})
	}
	for i, op := range req.Ops {
		p, err := get(op.Key)
		if err != nil {
			return nil, 0, err
		}
		p.ops = append(p.ops, store.TxnOp{Index: i, Op: op.Op, Key: op.Key, Value: op.Value, Delta: op.Delta, TTL: int64(op.TTL)})
		if op.Op != "get" {
			p.writes = append(p.writes, op.Key)
		}
	}
	first := ""
	if len(req.Ops) > 0 {
		first = req.Ops[0].Key
	} else {
		first = req.Compares[0].Key
	}
	rg, err := c.g.GroupOf(first)
	return parts, rg, err
}
