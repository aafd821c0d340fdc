package shell

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
)

// get prints a key's value; inside a transaction it reads through it.
func (s *Shell) get(ctx context.Context, a *args) error {
	if err := a.want(1, 1); err != nil {
		return err
	}
	key := a.pos[0]
	var it kvd.Item
	var err error
	if s.tx != nil {
		it, err = s.tx.Get(ctx, key)
	} else {
		c, cerr := s.consistency(a)
		if cerr != nil {
			return cerr
		}
		it, err = s.c.Get(ctx, key, client.WithConsistency(c))
	}
	if err != nil {
		return err
	}
	switch {
	case s.o.JSON:
		return s.emit(map[string]any{"key": key, "value": it.Value, "version": it.Version})
	case s.o.Raw:
		_, err := s.out.Write(it.Value)
		return err
	}
	fmt.Fprintln(s.out, showValue(it.Value))
	return nil
}

// put writes a key; inside a transaction it queues the write.
func (s *Shell) put(ctx context.Context, a *args) error {
	if err := a.want(2, 2); err != nil {
		return err
	}
	val, err := s.value(a.pos[1])
	if err != nil {
		return err
	}
	opts, err := writeOpts(a)
	if err != nil {
		return err
	}
	if s.tx != nil {
		if len(opts) > 0 {
			return usagef("inside a transaction, conditions come from what it reads; drop the flags")
		}
		s.tx.Put(a.pos[0], val)
		fmt.Fprintf(s.out, "queued: put %s\n", a.pos[0])
		return nil
	}
	v, err := s.c.Put(ctx, a.pos[0], val, opts...)
	if err != nil {
		return err
	}
	return s.printWritten(a.pos[0], v)
}

// printWritten reports a value written to key at version v.
func (s *Shell) printWritten(key string, v kvd.Version) error {
	if s.o.JSON {
		return s.emit(map[string]any{"key": key, "version": v})
	}
	fmt.Fprintf(s.out, "OK (version %d)\n", v)
	return nil
}

// add adds to the integer at a key and prints the sum.
func (s *Shell) add(ctx context.Context, a *args) error {
	if err := a.want(2, 2); err != nil {
		return err
	}
	delta, err := strconv.ParseInt(a.pos[1], 10, 64)
	if err != nil {
		return usagef("DELTA must be an integer, not %q", a.pos[1])
	}
	n, err := s.c.Add(ctx, a.pos[0], delta)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(map[string]any{"key": a.pos[0], "value": n})
	}
	fmt.Fprintln(s.out, n)
	return nil
}

// del deletes a key; inside a transaction it queues the delete.
func (s *Shell) del(ctx context.Context, a *args) error {
	if err := a.want(1, 1); err != nil {
		return err
	}
	opts, err := writeOpts(a)
	if err != nil {
		return err
	}
	if s.tx != nil {
		s.tx.Delete(a.pos[0])
		fmt.Fprintf(s.out, "queued: del %s\n", a.pos[0])
		return nil
	}
	deleted, err := s.c.Delete(ctx, a.pos[0], opts...)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(map[string]any{"key": a.pos[0], "deleted": deleted})
	}
	if deleted {
		fmt.Fprintln(s.out, "deleted")
	} else {
		fmt.Fprintln(s.out, "no such key, nothing deleted")
	}
	return nil
}

// scan lists keys in order: one page, or every page with --all.
func (s *Shell) scan(ctx context.Context, a *args) error {
	if err := a.want(0, 1); err != nil {
		return err
	}
	o := kvd.ScanOptions{Prefix: a.optional(""), Start: a.flags["start"], End: a.flags["end"], Limit: 100}
	if v, ok := a.flags["limit"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > kvd.DefaultLimits().MaxScanLimit {
			return usagef("--limit must be between 1 and %d", kvd.DefaultLimits().MaxScanLimit)
		}
		o.Limit = n
	}
	c, err := s.consistency(a)
	if err != nil {
		return err
	}
	var items []kvd.Item
	next := ""
	for {
		p, err := s.c.Scan(ctx, o, client.WithConsistency(c))
		if err != nil {
			return err
		}
		items = append(items, p.Items...)
		next = p.Next
		if !p.More || !a.has("all") {
			break
		}
		o.Start = p.Next
	}
	if s.o.JSON {
		out := api.ScanResponse{Items: []api.Item{}, More: next != "", Next: next}
		for _, it := range items {
			out.Items = append(out.Items, api.Item{Key: it.Key, Value: it.Value, Version: it.Version})
		}
		return s.emit(out)
	}
	if a.has("keys-only") {
		for _, it := range items {
			fmt.Fprintln(s.out, it.Key)
		}
	} else {
		var rows [][]string
		for _, it := range items {
			rows = append(rows, []string{cell([]byte(it.Key), 60), strconv.FormatUint(it.Version, 10), cell(it.Value, 60)})
		}
		if len(rows) > 0 {
			table(s.out, []string{"KEY", "VERSION", "VALUE"}, rows)
		}
	}
	switch {
	case next != "":
		fmt.Fprintf(s.out, "%d keys shown; more follow: --start %s (or --all)\n", len(items), strconv.Quote(next))
	case len(items) == 1:
		fmt.Fprintln(s.out, "1 key")
	default:
		fmt.Fprintf(s.out, "%d keys\n", len(items))
	}
	return nil
}

// cas replaces a key's value if it holds the one given.
func (s *Shell) cas(ctx context.Context, a *args) error {
	if err := a.want(3, 3); err != nil {
		return err
	}
	key := a.pos[0]
	resp, err := s.c.Txn(ctx, kvd.Txn{Compares: []kvd.Compare{kvd.ValueIs(key, []byte(a.pos[1]))}, Ops: []kvd.Op{kvd.OpPut(key, []byte(a.pos[2]))}})
	if err != nil {
		if errors.Is(err, kvd.ErrCompareFailed) {
			return fmt.Errorf("%q does not hold %q: %w", key, a.pos[1], kvd.ErrPreconditionFailed)
		}
		return err
	}
	return s.printWritten(key, resp.Results[0].Version)
}
