package kvd

import (
	"fmt"
	"sort"
	"sync"
)

// Consistency is the consistency level of a read.
type Consistency string

// The read consistency levels of the contract.
const (
	// Linearizable reads are served by the group leader after it confirms
	// its leadership with a quorum and has applied everything committed
	// before the read arrived.
	Linearizable Consistency = "linearizable"
	// Follower reads are linearizable too: the serving replica asks the
	// leader for its commit index and waits until it has applied it.
	Follower Consistency = "follower"
	// Stale reads serve the local replica's state without a round trip.
	Stale Consistency = "stale"
)

// ParseConsistency parses a consistency level; the empty string means
// Linearizable.
func ParseConsistency(s string) (Consistency, error) {
	switch Consistency(s) {
	case "", Linearizable:
		return Linearizable, nil
	case Follower, Stale:
		return Consistency(s), nil
	}
	return "", fmt.Errorf("%w: consistency must be linearizable, follower or stale, not %q", ErrInvalid, s)
}

// Version is a key's version: the Raft index, in the key's group, of the
// entry that made its current value visible. 0 means "does not exist".
type Version = uint64

// Item is a key with its value and version.
type Item struct {
	Key     string
	Value   []byte
	Version Version
}

// CondKind is the kind of a write's precondition.
type CondKind uint8

// The condition kinds. Their numbers are part of the log format: never
// renumber them.
const (
	// CondNone always holds.
	CondNone CondKind = 0
	// CondVersionEq holds when the key's version equals Version (0: the
	// key does not exist). If-Match and If-None-Match: * map to it.
	CondVersionEq CondKind = 1
	// CondVersionNe holds when the key's version differs from Version
	// (If-None-Match with a version).
	CondVersionNe CondKind = 2
	// CondExists holds when the key exists (If-Match: *).
	CondExists CondKind = 3
)

// Cond is a precondition on a key's current version.
type Cond struct {
	Kind    CondKind
	Version Version
}

// Holds reports whether the condition holds for a key at version cur
// (0: absent).
func (c Cond) Holds(cur Version) bool {
	switch c.Kind {
	case CondVersionEq:
		return cur == c.Version
	case CondVersionNe:
		return cur != c.Version
	case CondExists:
		return cur != 0
	}
	return true
}

// ScanOptions select a range of keys: those with Prefix, at or after Start,
// and before End (each optional), at most Limit of them (0: no limit).
type ScanOptions struct {
	Prefix string
	Start  string
	End    string
	Limit  int
	// MaxBytes, if positive, ends a page early once its values add up to
	// this many bytes (a page always holds at least one item).
	MaxBytes int
}

// ScanGroups reads one page of a scan from each of n groups at once,
// page(i) reading group i's, merges them (see MergePages) and caps the
// result at maxBytes (see CapPage). It returns the first error, in group
// order, if any page failed.
func ScanGroups(n, limit, maxBytes int, page func(i int) ([]Item, string, error)) ([]Item, string, error) {
	type result struct {
		items []Item
		next  string
		err   error
	}
	pages := make([]result, n)
	var wg sync.WaitGroup
	for i := range pages {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &pages[i]
			p.items, p.next, p.err = page(i)
		}()
	}
	wg.Wait()
	var all []Item
	nexts := make([]string, 0, n)
	for _, p := range pages {
		if p.err != nil {
			return nil, "", p.err
		}
		all = append(all, p.items...)
		nexts = append(nexts, p.next)
	}
	items, next := MergePages(all, nexts, limit)
	items, next = CapPage(items, next, maxBytes)
	return items, next, nil
}

// CapPage cuts a page of a scan (items in key order, and the next key)
// to at most maxBytes of keys and values, keeping at least one item: the
// items cut off start the next page. With maxBytes 0 it keeps the page
// whole.
func CapPage(items []Item, next string, maxBytes int) ([]Item, string) {
	if maxBytes <= 0 {
		return items, next
	}
	size := 0
	for i, it := range items {
		size += len(it.Key) + len(it.Value)
		if i > 0 && size > maxBytes {
			return items[:i], it.Key
		}
	}
	return items, next
}

// MergePages merges pages of one scan read from several groups: items
// (in any order) and each group's next key ("" if the group had no more).
// It returns the first limit keys in order and the next key, exact: no
// key is returned that sorts after a key some group did not return.
func MergePages(items []Item, nexts []string, limit int) ([]Item, string) {
	sort.Slice(items, func(i, j int) bool { return items[i].Key < items[j].Key })
	next := ""
	for _, n := range nexts {
		if n != "" && (next == "" || n < next) {
			next = n
		}
	}
	if next != "" {
		// A group stopped early (limit or byte budget) at next: keys
		// beyond it from other groups would skip its remaining keys.
		cut := sort.Search(len(items), func(i int) bool { return items[i].Key >= next })
		items = items[:cut]
	}
	if limit > 0 && len(items) > limit {
		next = items[limit].Key
		items = items[:limit]
	}
	return items, next
}
