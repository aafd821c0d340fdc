package shell

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

// txnJSON runs the txn command: a transaction read as JSON, or the list
// and abort subcommands.
func (s *Shell) txnJSON(ctx context.Context, a *args) error {
	if len(a.pos) > 0 {
		switch a.pos[0] {
		case "list":
			if err := a.want(1, 1); err != nil {
				return err
			}
			return s.txnList(ctx)
		case "abort":
			if len(a.pos) != 2 {
				return usagef("usage: txn abort ID (the ids are in \"txn list\")")
			}
			return s.txnAbort(ctx, a.pos[1])
		}
	}
	if err := a.want(0, 1); err != nil {
		return err
	}
	src := a.optional("-")
	var body []byte
	var err error
	if src == "-" {
		body, err = io.ReadAll(s.in)
	} else {
		body, err = os.ReadFile(strings.TrimPrefix(src, "@"))
	}
	if err != nil {
		return usagef("cannot read the transaction: %v", err)
	}
	var req api.TxnRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return usagef("the transaction is not valid JSON of the form {\"compare\":[...],\"ops\":[...]}: %v", err)
	}
	t, err := wire.Txn(req)
	if err != nil {
		return err
	}
	resp, err := s.c.Txn(ctx, t)
	if err != nil {
		return err
	}
	return s.printTxn(resp)
}

// txnList shows the transactions that hold locks or records.
func (s *Shell) txnList(ctx context.Context) error {
	list, err := s.c.Txns(ctx)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(list)
	}
	if len(list.Txns) == 0 {
		fmt.Fprintln(s.out, "no transaction holds a lock or a record")
	}
	var rows [][]string
	for _, t := range list.Txns {
		var keys []string
		for _, l := range t.Locks {
			k := fmt.Sprintf("%s@%d", l.Key, l.Group)
			if !l.Write {
				k += "(read)"
			}
			keys = append(keys, k)
		}
		if len(keys) > 4 {
			keys = append(keys[:4], fmt.Sprintf("and %d more", len(keys)-4))
		}
		rows = append(rows, []string{t.ID, t.State, strconv.FormatUint(t.RecordGroup, 10), t.Deadline, strings.Join(keys, " ")})
	}
	if len(rows) > 0 {
		table(s.out, []string{"ID", "STATE", "RECORD GROUP", "DEADLINE", "LOCKS (key@group)"}, rows)
	}
	if len(list.Unreached) > 0 {
		fmt.Fprintf(s.out, "groups %v could not be read\n", list.Unreached)
	}
	return nil
}

// txnAbort aborts transaction id unless it committed.
func (s *Shell) txnAbort(ctx context.Context, id string) error {
	t, err := s.c.AbortTxn(ctx, id)
	if err != nil {
		return err
	}
	if s.o.JSON {
		return s.emit(t)
	}
	switch t.State {
	case "committed":
		fmt.Fprintf(s.out, "transaction %s had committed: its writes are applied and its locks released\n", id)
	default:
		fmt.Fprintf(s.out, "transaction %s aborted: nothing of it was written, and its locks are released\n", id)
	}
	return nil
}

// printTxn reports a committed transaction and its results.
func (s *Shell) printTxn(resp kvd.TxnResponse) error {
	if s.o.JSON {
		return s.emit(wire.FromTxnResponse(resp))
	}
	fmt.Fprintln(s.out, "committed")
	for _, r := range resp.Results {
		switch r.Op {
		case "get":
			if r.Found {
				fmt.Fprintf(s.out, "get %s = %s (version %d)\n", r.Key, showValue(r.Value), r.Version)
			} else {
				fmt.Fprintf(s.out, "get %s: not found\n", r.Key)
			}
		case "put":
			fmt.Fprintf(s.out, "put %s (version %d)\n", r.Key, r.Version)
		case "add":
			fmt.Fprintf(s.out, "add %s = %s (version %d)\n", r.Key, r.Value, r.Version)
		case "delete":
			fmt.Fprintf(s.out, "del %s (deleted: %v)\n", r.Key, r.Deleted)
		}
	}
	return nil
}

// begin opens the interactive transaction.
func (s *Shell) begin(ctx context.Context, a *args) error {
	if s.tx != nil {
		return usagef("a transaction is already open: commit or abort it first")
	}
	s.tx = s.c.Begin()
	fmt.Fprintln(s.out, "transaction open: get records what it read; put and del are queued until commit")
	return nil
}

// commit commits the interactive transaction.
func (s *Shell) commit(ctx context.Context, a *args) error {
	if s.tx == nil {
		return usagef("no transaction is open; start one with begin")
	}
	tx := s.tx
	s.tx = nil
	resp, err := tx.Commit(ctx)
	if err != nil {
		if errors.Is(err, kvd.ErrCompareFailed) {
			return fmt.Errorf("something this transaction read changed before it committed (run it again): %w", err)
		}
		return err
	}
	return s.printTxn(resp)
}

// abort drops the interactive transaction, which wrote nothing.
func (s *Shell) abort(ctx context.Context, a *args) error {
	if s.tx == nil {
		return usagef("no transaction is open")
	}
	s.tx = nil
	fmt.Fprintln(s.out, "transaction dropped, nothing written")
	return nil
}
