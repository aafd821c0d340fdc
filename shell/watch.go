package shell

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/kvd-project/kvd"
)

// watch prints the changes under a prefix until interrupted or --count
// changes were printed.
func (s *Shell) watch(ctx context.Context, a *args) error {
	if err := a.want(0, 1); err != nil {
		return err
	}
	prefix := a.optional("")
	count := -1
	if v, ok := a.flags["count"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return usagef("--count must be a positive number")
		}
		count = n
	}
	w, err := s.c.Watch(ctx, prefix, a.flags["since"])
	if err != nil {
		if errors.Is(err, kvd.ErrCompacted) {
			return fmt.Errorf("the cursor is older than the retained history; watch from now and read the current state first: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer w.Close()
	if !s.o.JSON {
		fmt.Fprintf(s.out, "watching %q (Ctrl-C to stop)\n", prefix)
	}
	for n := 0; count < 0 || n < count; n++ {
		ev, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: a normal end
			}
			return err
		}
		if s.o.JSON {
			if err := s.emit(map[string]any{"type": ev.Type, "key": ev.Key, "value": ev.Value, "version": ev.Version, "cursor": ev.Cursor}); err != nil {
				return err
			}
			continue
		}
		if ev.Type == "delete" {
			fmt.Fprintf(s.out, "delete %s (version %d)\n", ev.Key, ev.Version)
		} else {
			fmt.Fprintf(s.out, "put %s = %s (version %d)\n", ev.Key, showValue(ev.Value), ev.Version)
		}
	}
	return nil
}
