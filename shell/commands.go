package shell

import (
	"context"
	"fmt"
	"sort"
)

// command is one kvcli command.
type command struct {
	name    string
	args    string
	summary string
	flags   map[string]bool // flag name -> takes a value
	shell   bool            // only in the interactive shell
	// keyArg commands take a key (or a prefix) first: the interactive
	// shell completes it from the cluster's keys.
	keyArg bool
	// endless commands run until interrupted, not within --timeout.
	endless bool
	// transfer commands move a file of any size: --timeout (the client's
	// Timeout) bounds each wait in which nothing moves, not the command,
	// which runs until it ends or is interrupted.
	transfer bool
	// fileArg commands take a local file first: the interactive shell
	// completes its path.
	fileArg bool
	// more are lines help prints under the summary.
	more []string
	// complete, if set, lists the candidates for the next argument of
	// the interactive shell's completion, given the positional
	// arguments before it.
	complete func(s *Shell, prev []string) []string
	// completeFlag, if set, lists the candidates for the value of a flag
	// that takes one.
	completeFlag func(s *Shell, flag string) []string
	run          func(s *Shell, ctx context.Context, a *args) error
}

// commands are kvcli's commands, in the order help lists them. They are
// set in init because help, one of them, reads the list.
var commands []*command

func init() {
	commands = []*command{
		{name: "get", keyArg: true, args: "KEY [--consistency linearizable|follower|stale]", summary: "print a key's value",
			flags: map[string]bool{"consistency": true}, run: (*Shell).get},
		{name: "put", keyArg: true, args: "KEY VALUE|@FILE|- [--if-version N] [--create-only] [--ttl D]", summary: "store a value (from the argument, a file, or standard input); --ttl 30s makes it vanish after that",
			flags: map[string]bool{"if-version": true, "create-only": false, "ttl": true}, run: (*Shell).put},
		{name: "add", keyArg: true, args: "KEY DELTA", summary: "add DELTA to the integer at KEY (absent: 0) and print the new value", run: (*Shell).add},
		{name: "del", keyArg: true, args: "KEY [--if-version N]", summary: "delete a key", flags: map[string]bool{"if-version": true}, run: (*Shell).del},
		{name: "scan", keyArg: true, args: "[PREFIX] [--start KEY] [--end KEY] [--limit N] [--all] [--keys-only]", summary: "list keys in order, a page at a time",
			flags: map[string]bool{"start": true, "end": true, "limit": true, "all": false, "keys-only": false, "consistency": true}, run: (*Shell).scan},
		{name: "cas", keyArg: true, args: "KEY OLD NEW", summary: "replace KEY's value with NEW if it is OLD (NEW is written atomically)", run: (*Shell).cas},
		{name: "txn", args: "[FILE|-] | list | abort ID", summary: "run a transaction read as JSON (the body of POST /v1/txn) from a file or standard input; \"txn list\" shows the transactions holding locks, \"txn abort ID\" aborts a stuck one (unless it committed) and releases its locks",
			more: []string{`example: {"compare":[{"key":"a","version":5}],"ops":[{"op":"put","key":"a","value":"MQ=="}]}`}, run: (*Shell).txnJSON},
		{name: "begin", summary: "open a transaction: get records versions, put and del are buffered until commit", shell: true, run: (*Shell).begin},
		{name: "commit", summary: "commit the open transaction, if nothing it read has changed", shell: true, run: (*Shell).commit},
		{name: "abort", summary: "drop the open transaction", shell: true, run: (*Shell).abort},
		{name: "watch", keyArg: true, args: "[PREFIX] [--since CURSOR] [--count N]", summary: "print changes to keys with PREFIX as they happen, until interrupted (Ctrl-C)",
			flags: map[string]bool{"since": true, "count": true}, endless: true, run: (*Shell).watch},
		{name: "cluster", summary: "show the nodes and their state, the groups with their leaders, members, learners and slot ranges", run: (*Shell).cluster},
		{name: "status", args: "[NODE]", summary: "show a node's replicas: role, term, indexes", run: (*Shell).status},
		{name: "health", summary: "check every node's liveness and readiness", run: (*Shell).health},
		{name: "node", args: "add ID HTTP-ADDR RAFT-ADDR | remove ID [--force]", summary: "add a node to the cluster (it holds no replica until one is added), or decommission one: its replicas move to other nodes, then it leaves the map; --force for a dead node",
			flags: map[string]bool{"force": false}, complete: (*Shell).completeNode, run: (*Shell).node,
			more: []string{
				usageNodeAdd + ": HTTP-ADDR and RAFT-ADDR are the host:port other nodes and clients dial",
				usageNodeRemove + ": answers once the node is removed, or says the removal is in progress (follow it with \"kvcli cluster\")",
			}},
		{name: "group", args: "add-member G NODE | remove-member G NODE | leader G NODE | create [--id N] [NODE...] | delete G", summary: "change a group's replicas: add one on NODE (a learner that catches up, then votes), remove NODE's, or hand the leadership to NODE; create a group (on the NODEs, or on nodes the cluster chooses), or delete one that owns no slot",
			flags: map[string]bool{"id": true}, complete: (*Shell).completeGroup, run: (*Shell).group,
			more: []string{
				usageAddMember + ": answers once NODE votes, or says it is still catching up (follow it with \"kvcli cluster\")",
				usageRemoveMember + ": refused if the group would lose its majority or its last voter",
				usageLeader + ": NODE must be a voting member of G",
				usageGroupCreate + ": one replica on each NODE, the first its preferred leader, or, with no NODE, on the least loaded nodes; --id names the group; it owns no slot until a move gives it some",
				usageGroupDelete + ": refused while G owns slots (move them away first) or takes part in a move",
			}},
		{name: "move", args: "SLOTS --to G [--wait]", summary: "move slots to group G while they stay served; SLOTS is a list of slots and ranges such as 0-99,200,300-310 (0 to 1023)",
			flags: map[string]bool{"to": true, "wait": false}, completeFlag: (*Shell).completeFlagTo, run: (*Shell).move,
			more: []string{
				usageMove + ": prints the move's id (one move per group that owns some of the slots) and answers at once; --wait waits until the moves end, within --timeout",
				"refused if a slot is already moving or already belongs to G; a failed move leaves its slots where they were",
			}},
		{name: "moves", summary: "list the slot moves under way, waiting, and the last ones that ended: groups, slots, state, progress, error", run: (*Shell).moves},
		{name: "rebalance", args: "[--dry-run]", summary: "move slots so that every group holds about as much data, printing each group's load before and after and the planned moves; --dry-run only prints the plan",
			flags: map[string]bool{"dry-run": false}, run: (*Shell).rebalance,
			more: []string{
				usageRebalance + ": a group takes part in one move at a time, the others wait as pending (follow them with \"kvcli moves\")",
			}},
		{name: "backup", args: "FILE", summary: "write a backup of the whole cluster to FILE: every key with its value and expiry deadline, at one consistent cut, verified as it arrives",
			fileArg: true, transfer: true, run: (*Shell).backupFile,
			more: []string{
				usageBackup + ": streams into FILE.tmp beside FILE and renames it to FILE only once the whole stream verified (checksums and counts) and is synced to disk; on a failure FILE.tmp is removed and a FILE already there is left as it was",
				"a key keeps its absolute expiry deadline: one whose TTL runs out before a restore is left out of it",
				"--timeout bounds each wait in which nothing arrives, not the whole backup; Ctrl-C stops it; the progress goes to standard error",
			}},
		{name: "restore", args: "FILE [--force]", summary: "load a backup FILE into the cluster, which must hold no key; --force drops every key it holds first",
			flags: map[string]bool{"force": false}, fileArg: true, transfer: true, run: (*Shell).restoreFile,
			more: []string{
				usageRestore + ": verifies FILE whole first and sends nothing if it is damaged, cut short, of another format version or empty; then uploads it and prints what was loaded",
				"refused while the cluster holds keys (--force drops them all first, with no undo), or while a restore or a slot move is under way; keys whose TTL ran out since the backup are left out",
				"--timeout bounds each wait in which nothing moves, the cluster's answer after the last byte included: raise it for a large backup; Ctrl-C stops the upload and leaves the outcome unknown",
			}},
		{name: "token", args: "create NAME [--read PREFIX]... [--write PREFIX]... [--admin] [--ttl D] | list | revoke NAME", summary: "manage the access tokens of a cluster that requires them (an admin token is needed): make one that may read or write the keys under some prefixes, or an admin one; list them; revoke one",
			flags: map[string]bool{"read": true, "write": true, "admin": false, "ttl": true}, complete: (*Shell).completeToken, run: (*Shell).token,
			more: []string{
				usageTokenCreate + ": --read PREFIX lets it read the keys that start with PREFIX, --write PREFIX read and write them (each repeatable, no prefix within another); --admin makes a token for every key and the operations API; --ttl 720h makes it expire (default: never)",
				"prints the token once: the cluster keeps only its hash, so keep it safe; give it to kvcli with --token or KVD_TOKEN",
				usageTokenList + ": name, admin or not, grants (prefix:access), when made and when it expires; never the secrets",
				usageTokenRevoke + ": every node refuses the token within a second",
			}},
		{name: "help", args: "[COMMAND]", summary: "list the commands, or explain one", run: (*Shell).help},
	}
}

// lookup returns the command called name, nil if there is none.
func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// CommandNames lists the commands, for completion.
func CommandNames(interactive bool) []string {
	var out []string
	for _, c := range commands {
		if interactive || !c.shell {
			out = append(out, c.name)
		}
	}
	if interactive {
		out = append(out, "exit")
	}
	sort.Strings(out)
	return out
}

// help lists the commands, or explains the one named.
func (s *Shell) help(ctx context.Context, a *args) error {
	if len(a.pos) == 1 {
		c := lookup(a.pos[0])
		if c == nil {
			return usagef("no command %q", a.pos[0])
		}
		fmt.Fprintf(s.out, "%s %s\n  %s\n", c.name, c.args, c.summary)
		for _, l := range c.more {
			fmt.Fprintln(s.out, "  "+l)
		}
		return nil
	}
	var rows [][]string
	for _, c := range commands {
		name := c.name
		if c.args != "" {
			name += " " + c.args
		}
		if c.shell {
			name += "   (shell)"
		}
		rows = append(rows, []string{name, c.summary})
	}
	table(s.out, []string{"COMMAND", "WHAT IT DOES"}, rows)
	return nil
}
