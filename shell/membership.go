package shell

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/kvd-project/kvd/api"
)

// Usage lines of the membership subcommands.
const (
	usageNodeAdd      = "node add ID HTTP-ADDR RAFT-ADDR"
	usageNodeRemove   = "node remove ID [--force]"
	usageAddMember    = "group add-member G NODE"
	usageRemoveMember = "group remove-member G NODE"
	usageLeader       = "group leader G NODE"
	usageGroupCreate  = "group create [--id N] [NODE...]"
	usageGroupDelete  = "group delete G"
)

// followHint ends the line of a change still in progress.
const followHint = `it finishes on its own: follow it with "kvcli cluster"`

// changeError is a cluster change that failed: Explain words its
// refusals and unknown outcomes for a change, not for a key.
type changeError struct {
	err error
	// look is the command that shows whether a change whose outcome is
	// unknown was made; "" for "kvcli cluster".
	look string
	// what names the change when the node's message may not: a change
	// whose outcome is unknown is looked up by it (a move's id).
	what string
	// ifMade, if set, says what to do when a change whose outcome is
	// unknown turns out to have been made.
	ifMade string
}

func (e *changeError) Error() string { return e.err.Error() }
func (e *changeError) Unwrap() error { return e.err }

// node runs "node add" and "node remove".
func (s *Shell) node(ctx context.Context, a *args) error {
	switch a.optional("") {
	case "add":
		if len(a.pos) != 4 || a.has("force") {
			return usagef("usage: %s", usageNodeAdd)
		}
		req := api.NodeRequest{ID: a.pos[1], HTTP: a.pos[2], Raft: a.pos[3]}
		if strings.TrimSpace(req.ID) == "" {
			return usagef("ID must not be empty (usage: %s)", usageNodeAdd)
		}
		for _, addr := range []struct{ name, v string }{{"HTTP-ADDR", req.HTTP}, {"RAFT-ADDR", req.Raft}} {
			if err := checkAddr(addr.v); err != nil {
				return usagef("%s must be the host:port other nodes dial, not %q: %v", addr.name, addr.v, err)
			}
		}
		ch, err := s.c.AddNode(ctx, req)
		if err != nil {
			return &changeError{err: err}
		}
		if s.o.JSON {
			return s.emit(ch)
		}
		printNodeChange(s.out, "add", ch)
		return nil
	case "remove":
		if len(a.pos) != 2 {
			return usagef("usage: %s", usageNodeRemove)
		}
		ch, err := s.c.RemoveNode(ctx, a.pos[1], a.has("force"))
		if err != nil {
			return &changeError{err: err}
		}
		if s.o.JSON {
			return s.emit(ch)
		}
		printNodeChange(s.out, "remove", ch)
		return nil
	}
	return usagef("usage: %s | %s", usageNodeAdd, usageNodeRemove)
}

// checkAddr checks an advertised address: host:port, no scheme.
func checkAddr(addr string) error {
	if strings.Contains(addr, "://") {
		return fmt.Errorf("drop the scheme")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" || port == "" {
		return fmt.Errorf("a host and a port are needed")
	}
	return nil
}

// group runs "group create", "group delete", "group add-member", "group
// remove-member" and "group leader".
func (s *Shell) group(ctx context.Context, a *args) error {
	sub := a.optional("")
	switch sub {
	case "create":
		return s.groupCreate(ctx, a)
	case "delete":
		return s.groupDelete(ctx, a)
	}
	usage := map[string]string{"add-member": usageAddMember, "remove-member": usageRemoveMember, "leader": usageLeader}[sub]
	if usage == "" {
		return usagef("usage: %s | %s | %s | %s | %s", usageAddMember, usageRemoveMember, usageLeader, usageGroupCreate, usageGroupDelete)
	}
	if len(a.pos) != 3 || a.has("id") {
		return usagef("usage: %s", usage)
	}
	g, err := groupArg(a.pos[1], usage)
	if err != nil {
		return err
	}
	node := a.pos[2]
	var ch api.MembershipChange
	switch sub {
	case "add-member":
		ch, err = s.c.AddMember(ctx, g, node)
	case "remove-member":
		ch, err = s.c.RemoveMember(ctx, g, node)
	case "leader":
		ch, err = s.c.TransferLeader(ctx, g, node)
	}
	if err != nil {
		return &changeError{err: err}
	}
	if s.o.JSON {
		return s.emit(ch)
	}
	printMembershipChange(s.out, sub, g, node, ch)
	return nil
}

// groupArg reads a group id argument.
func groupArg(v, usage string) (uint64, error) {
	g, err := strconv.ParseUint(v, 10, 64)
	if err != nil || g == 0 {
		return 0, usagef("G is a group id (a number \"kvcli cluster\" lists), not %q (usage: %s)", v, usage)
	}
	return g, nil
}

// groupCreate runs "group create [--id N] [NODE...]".
func (s *Shell) groupCreate(ctx context.Context, a *args) error {
	req := api.GroupRequest{Members: a.pos[1:]}
	if v, ok := a.flags["id"]; ok {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil || id == 0 {
			return usagef("--id is a positive group id, not %q (usage: %s)", v, usageGroupCreate)
		}
		req.ID = id
	}
	for i, n := range req.Members {
		if strings.TrimSpace(n) == "" {
			return usagef("a NODE must not be empty (usage: %s)", usageGroupCreate)
		}
		if slices.Contains(req.Members[:i], n) {
			return usagef("node %s is named twice: a group has one replica per node (usage: %s)", n, usageGroupCreate)
		}
	}
	ch, err := s.c.CreateGroup(ctx, req)
	if err != nil {
		return &changeError{err: err}
	}
	if s.o.JSON {
		return s.emit(ch)
	}
	printGroupChange(s.out, "create", ch)
	return nil
}

// groupDelete runs "group delete G".
func (s *Shell) groupDelete(ctx context.Context, a *args) error {
	if len(a.pos) != 2 || a.has("id") {
		return usagef("usage: %s", usageGroupDelete)
	}
	g, err := groupArg(a.pos[1], usageGroupDelete)
	if err != nil {
		return err
	}
	ch, err := s.c.DeleteGroup(ctx, g)
	if err != nil {
		return &changeError{err: err}
	}
	if ch.Group == 0 {
		ch.Group = g
	}
	if s.o.JSON {
		return s.emit(ch)
	}
	printGroupChange(s.out, "delete", ch)
	return nil
}

// printGroupChange reports the answer to "group create" (verb "create")
// or "group delete" (verb "delete"), as printNodeChange does.
func printGroupChange(w io.Writer, verb string, ch api.GroupChange) {
	members := strings.Join(ch.Members, ",")
	switch {
	case ch.State == api.ChangeInProgress && verb == "delete":
		printInProgress(w, fmt.Sprintf("deleting group %d", ch.Group), ch.Epoch, "its replicas are being removed from their nodes")
	case ch.State == api.ChangeInProgress:
		replicas := "its replicas are starting"
		if members != "" {
			replicas = "its replicas on " + members + " are starting"
		}
		printInProgress(w, fmt.Sprintf("creating group %d", ch.Group), ch.Epoch, replicas+" and electing a leader")
	case verb == "delete":
		fmt.Fprintf(w, "group %d deleted (map epoch %d)\n", ch.Group, ch.Epoch)
	default:
		fmt.Fprintf(w, "group %d created (map epoch %d); members %s", ch.Group, ch.Epoch, orDash(members))
		if ch.Leader != "" {
			fmt.Fprintf(w, ", leader %s", ch.Leader)
		}
		fmt.Fprintf(w, "; it owns no slot yet: \"kvcli move SLOTS --to %d\" or \"kvcli rebalance\" gives it some\n", ch.Group)
	}
}

// printNodeChange reports the answer to "node add" (verb "add") or "node
// remove" (verb "remove"). A change in progress is described in the
// shell's words (the node's message is in the --json output).
func printNodeChange(w io.Writer, verb string, ch api.NodeChange) {
	id := ch.Node.ID
	switch {
	case ch.State == api.ChangeInProgress && verb == "remove":
		var replicas string
		switch len(ch.Groups) {
		case 0:
			replicas = "its replicas are"
		case 1:
			replicas = "its replica of group " + joinIDs(ch.Groups) + " is"
		default:
			replicas = "its replicas of groups " + joinIDs(ch.Groups) + " are"
		}
		printInProgress(w, "node "+id+" leaving", ch.Epoch, replicas+" being moved to other nodes, then it is removed")
	case ch.State == api.ChangeInProgress:
		printInProgress(w, "adding node "+id, ch.Epoch, "the map records it")
	case verb == "remove":
		fmt.Fprintf(w, "node %s removed (map epoch %d)\n", id, ch.Epoch)
	default:
		fmt.Fprintf(w, "node %s added (map epoch %d); it holds no replica yet: \"kvcli group add-member G %s\" adds one\n", id, ch.Epoch, id)
	}
}

// printMembershipChange reports the answer to "group SUB G NODE", as
// printNodeChange does.
func printMembershipChange(w io.Writer, sub string, g uint64, node string, ch api.MembershipChange) {
	switch {
	case sub == "leader" && ch.State == api.ChangeInProgress:
		printInProgress(w, fmt.Sprintf("handing the leadership of group %d to %s", g, node), ch.Epoch, "the transfer goes on")
	case sub == "leader" && ch.Leader != "" && ch.Leader != node:
		fmt.Fprintf(w, "group %d: leadership handed to %s, but %s leads it now\n", g, node, ch.Leader)
	case sub == "leader":
		fmt.Fprintf(w, "group %d: leadership handed to %s\n", g, node)
	case ch.State == api.ChangeInProgress && sub == "remove-member":
		printInProgress(w, fmt.Sprintf("removing %s from group %d", node, g), ch.Epoch, "the replica serves nothing any more and is being taken out of the group")
	case ch.State == api.ChangeInProgress:
		printInProgress(w, fmt.Sprintf("adding %s to group %d", node, g), ch.Epoch, node+" is catching up as a learner and becomes a voter once it has")
	default:
		done := fmt.Sprintf("%s added to group %d, voting", node, g)
		if sub == "remove-member" {
			done = fmt.Sprintf("%s removed from group %d", node, g)
		}
		fmt.Fprintf(w, "%s (map epoch %d); members %s", done, ch.Epoch, orDash(strings.Join(ch.Members, ",")))
		if len(ch.Learners) > 0 {
			fmt.Fprintf(w, ", learners %s", strings.Join(ch.Learners, ","))
		}
		fmt.Fprintln(w)
	}
}

// printInProgress writes the one line of a change the cluster is still
// carrying out.
func printInProgress(w io.Writer, what string, epoch uint64, detail string) {
	fmt.Fprintf(w, "%s: in progress (map epoch %d): %s; %s\n", what, epoch, detail, followHint)
}

func joinIDs(ids []uint64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(id, 10)
	}
	return strings.Join(s, ", ")
}

// completeNode completes the arguments of "node": its subcommands, then
// the node to remove.
func (s *Shell) completeNode(prev []string) []string {
	switch {
	case len(prev) == 0:
		return []string{"add", "remove"}
	case len(prev) == 1 && prev[0] == "remove":
		var ids []string
		for _, n := range s.c.CachedMap().Nodes {
			ids = append(ids, n.ID)
		}
		return ids
	}
	return nil
}

// completeGroup completes the arguments of "group": its subcommands, the
// group, then a node that can take the change (one that does not host
// the group for add-member, a member or learner for remove-member, a
// voter for leader); for create, the nodes not named yet.
func (s *Shell) completeGroup(prev []string) []string {
	if len(prev) == 0 {
		return []string{"create", "delete", "add-member", "remove-member", "leader"}
	}
	cl := s.c.CachedMap()
	if prev[0] == "create" {
		var ids []string
		for _, n := range cl.Nodes {
			if !slices.Contains(prev[1:], n.ID) {
				ids = append(ids, n.ID)
			}
		}
		return ids
	}
	if len(prev) == 1 {
		return groupIDs(cl)
	}
	if len(prev) != 2 {
		return nil
	}
	var grp *api.Group
	for i, g := range cl.Groups {
		if strconv.FormatUint(g.ID, 10) == prev[1] {
			grp = &cl.Groups[i]
		}
	}
	if grp == nil {
		return nil
	}
	switch prev[0] {
	case "add-member":
		var ids []string
		for _, n := range cl.Nodes {
			if !slices.Contains(grp.Members, n.ID) && !slices.Contains(grp.Learners, n.ID) {
				ids = append(ids, n.ID)
			}
		}
		return ids
	case "remove-member":
		return append(slices.Clone(grp.Members), grp.Learners...)
	case "leader":
		return slices.Clone(grp.Members)
	}
	return nil
}

// groupIDs lists the groups of the map.
func groupIDs(cl api.Cluster) []string {
	var ids []string
	for _, g := range cl.Groups {
		ids = append(ids, strconv.FormatUint(g.ID, 10))
	}
	return ids
}
