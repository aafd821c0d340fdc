package shell

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// cluster shows the cluster map: nodes, groups, leaders and slots.
func (s *Shell) cluster(ctx context.Context, a *args) error {
	cl, err := s.c.Cluster(ctx)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(cl)
	}
	printCluster(s.out, cl)
	return nil
}

// printCluster writes the cluster map for people: the nodes with their
// state, then the groups with their leader, voting members, learners
// (replicas still catching up) and slot ranges.
func printCluster(w io.Writer, cl api.Cluster) {
	fmt.Fprintf(w, "epoch %d, %d nodes, %d groups", cl.Epoch, len(cl.Nodes), len(cl.Groups))
	if cl.Replicas > 0 {
		fmt.Fprintf(w, " of %d replicas", cl.Replicas)
	}
	fmt.Fprint(w, "\n\n")
	var rows [][]string
	for _, n := range cl.Nodes {
		rows = append(rows, []string{n.ID, n.HTTP, n.Raft, orDash(n.State)})
	}
	table(w, []string{"NODE", "HTTP", "RAFT", "STATE"}, rows)
	fmt.Fprintln(w)
	rows = nil
	for _, g := range cl.Groups {
		var slots []string
		for _, r := range g.Slots {
			slots = append(slots, fmt.Sprintf("%d-%d", r[0], r[1]))
		}
		leader := g.Leader
		if leader == "" {
			leader = "(none)"
		}
		rows = append(rows, []string{strconv.FormatUint(g.ID, 10), leader, orDash(strings.Join(g.Members, ",")),
			orDash(strings.Join(g.Learners, ",")), orDash(strings.Join(slots, ","))})
	}
	table(w, []string{"GROUP", "LEADER", "MEMBERS", "LEARNERS", "SLOTS"}, rows)
}

// orDash shows an empty cell as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// status shows a node's replicas and disk.
func (s *Shell) status(ctx context.Context, a *args) error {
	if err := a.want(0, 1); err != nil {
		return err
	}
	st, err := s.c.Status(ctx, a.optional(""))
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(st)
	}
	fmt.Fprintf(s.out, "node %s  http %s  raft %s  version %s  up %s  map epoch %d\n\n", st.Node, st.HTTP, st.Raft, st.Version, st.Uptime, st.Epoch)
	var rows [][]string
	for _, g := range st.Groups {
		contact := "-"
		if !g.LastContact.IsZero() {
			contact = time.Since(g.LastContact).Round(time.Millisecond).String() + " ago"
		}
		health := "-"
		if g.Health != nil {
			health = g.Health.State
			if c := g.Health.Integrity; c != nil && !c.OK {
				health += " ALARM: " + c.Alarm
			}
		}
		rows = append(rows, []string{strconv.FormatUint(g.Group, 10), g.Role, strconv.FormatUint(g.Term, 10), g.Leader,
			strconv.FormatUint(g.CommitIndex, 10), strconv.FormatUint(g.AppliedIndex, 10), contact, health})
	}
	table(s.out, []string{"GROUP", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST CONTACT", "HEALTH"}, rows)
	for _, m := range st.Missing {
		fmt.Fprintf(s.out, "group %d NOT STARTED: %s\n", m.Group, m.Reason)
	}
	if d := st.Storage; d != nil {
		state := "writable"
		if !d.Writable {
			state = "WRITES REFUSED: " + d.Reason
		}
		fmt.Fprintf(s.out, "\ndisk: data %s, free %s; %s\n", bytesText(d.UsedBytes), bytesText(d.FreeBytes), state)
	}
	return nil
}

// health checks every node and fails unless all are ready.
func (s *Shell) health(ctx context.Context, a *args) error {
	hs := s.c.Health(ctx)
	bad := 0
	for _, h := range hs {
		if !h.Ready {
			bad++
		}
	}
	if s.o.JSON {
		if err := s.emit(hs); err != nil {
			return err
		}
	} else {
		var rows [][]string
		for _, h := range hs {
			state := "ready"
			switch {
			case !h.Live:
				state = "DOWN: " + h.Err
			case !h.Ready:
				state = "NOT READY: " + h.Err
			}
			rows = append(rows, []string{h.ID, h.URL, state})
		}
		table(s.out, []string{"NODE", "URL", "STATE"}, rows)
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d nodes are not ready: %w", bad, len(hs), kvd.ErrUnavailable)
	}
	return nil
}
