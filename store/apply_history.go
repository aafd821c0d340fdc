package store

import "bytes"

// logChange appends a change to the history and prunes it to its bounds.
func (a *applier) logChange(del bool, key string, val []byte) error {
	return a.logChangeAt(del, key, val, a.version())
}

// logChangeAt is logChange for a change that takes version ver (it is
// still recorded at this entry's position).
func (a *applier) logChangeAt(del bool, key string, val []byte, ver uint64) error {
	if a.hist.b == nil {
		return nil
	}
	a.seq++
	ev := encodeEvent(del, key, val, ver, a.index)
	if err := a.put(a.hist, Pos{Index: a.index, Seq: a.seq}.bytes(), ev); err != nil {
		return err
	}
	if !a.histLoaded {
		var err error
		if a.histCount, err = metaU64(a.meta, metaHistCount); err != nil {
			return err
		}
		if a.histSize, err = metaU64(a.meta, metaHistBytes); err != nil {
			return err
		}
		a.histLoaded = true
	}
	a.histCount++
	a.histSize += uint64(len(ev))
	return nil
}

// flushHistory ends a batch: it drops the oldest events past the bounds
// (keeping at least one) and stores the counters and the floor. Pruning
// once per batch keeps the same events as pruning after every change
// (the longest suffix within the bounds), so replicas that group entries
// into batches differently still agree.
func (a *applier) flushHistory() error {
	if !a.histLoaded {
		return nil
	}
	count, size := a.histCount, a.histSize
	c := a.hist.b.Cursor()
	var floor []byte
	for k, v := c.First(); k != nil && (count > uint64(a.histMax) || size > uint64(a.histMaxBytes)) && count > 1; k, v = c.Next() {
		count--
		size -= uint64(len(v) - sealOverhead(v))
		floor = append(floor[:0], k...)
	}
	if floor != nil {
		// Delete up to and including the floor.
		for k, _ := c.First(); k != nil && bytes.Compare(k, floor) <= 0; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		if err := putMeta(a.meta, metaHistFloor, floor); err != nil {
			return err
		}
	}
	if err := putMeta(a.meta, metaHistCount, be64(count)); err != nil {
		return err
	}
	return putMeta(a.meta, metaHistBytes, be64(size))
}
