package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// Access tokens (see server/auth.go) are kept in the system group's
// state, hashed: the table changes only through the log (CmdTokens), so
// every replica holds the same, and a revocation is one entry.

// Grant access levels.
const (
	AccessRead  = api.AccessRead
	AccessWrite = api.AccessWrite
)

// MaxTokens bounds the token table.
const MaxTokens = 1000

// Grant allows access to the keys that start with Prefix.
type Grant = api.Grant

// TokenRecord is a token as the state keeps it: its name, the SHA-256 of
// its secret (hex), its grants, whether it administers the cluster, and
// when it was made and expires (Unix ns, 0: never).
type TokenRecord struct {
	Name    string  `json:"name"`
	Hash    string  `json:"hash"`
	Grants  []Grant `json:"grants,omitempty"`
	Admin   bool    `json:"admin,omitempty"`
	Created int64   `json:"created"`
	Expires int64   `json:"expires,omitempty"`
}

// TokenOp is the payload of a CmdTokens: put Token (a new name only), or
// delete the token named Name.
type TokenOp struct {
	Op    string      `json:"op"`
	Token TokenRecord `json:"token,omitempty"`
	Name  string      `json:"name,omitempty"`
}

// Token operations.
const (
	TokenPut    = "put"
	TokenDelete = "delete"
)

// metaTokens is the meta key of the token table.
var metaTokens = []byte("tokens")

// CheckGrants checks a token's grants: non-empty prefixes of valid UTF-8
// (an admin token reaches every key), known access levels, and no prefix
// within another (one grant per key: which would apply is then plain).
func CheckGrants(grants []Grant) error {
	for i, g := range grants {
		switch {
		case g.Access != AccessRead && g.Access != AccessWrite:
			return fmt.Errorf("%w: grant %q: access is %q or %q, not %q", kvd.ErrInvalid, g.Prefix, AccessRead, AccessWrite, g.Access)
		case g.Prefix == "":
			return fmt.Errorf("%w: a grant's prefix is empty: a token for every key is an admin token", kvd.ErrInvalid)
		case !utf8.ValidString(g.Prefix) || len(g.Prefix) > kvd.MaxKeyBytesLimit:
			return fmt.Errorf("%w: grant prefix %q: not UTF-8, or longer than a key", kvd.ErrInvalid, g.Prefix)
		}
		for _, o := range grants[:i] {
			if strings.HasPrefix(g.Prefix, o.Prefix) || strings.HasPrefix(o.Prefix, g.Prefix) {
				return fmt.Errorf("%w: grant prefixes %q and %q overlap: grant one", kvd.ErrInvalid, o.Prefix, g.Prefix)
			}
		}
	}
	return nil
}

// CheckTokenName checks a token's name.
func CheckTokenName(name string) error {
	if name == "root" {
		return fmt.Errorf("%w: the name root is the root token's", kvd.ErrInvalid)
	}
	if name == "" || len(name) > 63 {
		return fmt.Errorf("%w: a token's name is 1 to 63 characters, not %q", kvd.ErrInvalid, name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == '@') {
			return fmt.Errorf("%w: a token's name has letters, digits, '-', '_', '.' and '@' only, not %q", kvd.ErrInvalid, name)
		}
	}
	return nil
}

func checkTokenOp(op *TokenOp) error {
	switch op.Op {
	case TokenPut:
		if err := CheckTokenName(op.Token.Name); err != nil {
			return err
		}
		if len(op.Token.Hash) != 64 {
			return fmt.Errorf("%w: token %s: a hash is 64 hex digits", kvd.ErrInvalid, op.Token.Name)
		}
		return CheckGrants(op.Token.Grants)
	case TokenDelete:
		return CheckTokenName(op.Name)
	}
	return fmt.Errorf("%w: tokens: unknown op %q", kvd.ErrInvalid, op.Op)
}

// loadTokens reads the token table from meta.
func loadTokens(meta bucket) ([]TokenRecord, error) {
	raw, err := meta.get(metaTokens)
	if err != nil || raw == nil {
		return nil, err
	}
	var ts []TokenRecord
	if err := json.Unmarshal(raw, &ts); err != nil {
		return nil, corruptf("meta tokens: %v", err)
	}
	return ts, nil
}

// tokens applies a CmdTokens. Putting a name that exists is a conflict
// (a token is revoked, then made again), unless it is the same token (a
// repeat).
func (a *applier) tokens(op *TokenOp) (Result, error) {
	ts, err := loadTokens(a.meta)
	if err != nil {
		return Result{}, err
	}
	name := op.Name
	if op.Op == TokenPut {
		name = op.Token.Name
		// Expired tokens go when a token is made (at the entry's time,
		// the same on every replica): they no longer count toward the
		// cap, and their names are free again.
		ts = slices.DeleteFunc(ts, func(t TokenRecord) bool {
			return t.Expires != 0 && t.Expires <= a.now && t.Hash != op.Token.Hash
		})
	}
	i := slices.IndexFunc(ts, func(t TokenRecord) bool { return t.Name == name })
	switch op.Op {
	case TokenPut:
		switch {
		case i >= 0 && ts[i].Hash == op.Token.Hash:
			return Result{Version: a.index}, nil
		case i >= 0:
			return Result{Err: fmt.Errorf("%w: a token named %s exists: revoke it first", kvd.ErrConflict, op.Token.Name)}, nil
		case len(ts) >= MaxTokens:
			return Result{Err: fmt.Errorf("%w: the cluster keeps at most %d tokens", kvd.ErrTooLarge, MaxTokens)}, nil
		}
		ts = append(ts, op.Token)
	case TokenDelete:
		if i < 0 {
			return Result{Err: fmt.Errorf("%w: no token named %s", kvd.ErrNotFound, op.Name)}, nil
		}
		ts = slices.Delete(ts, i, i+1)
	}
	doc, err := json.Marshal(ts)
	if err != nil {
		return Result{}, err
	}
	if err := putMeta(a.meta, metaTokens, doc); err != nil {
		return Result{}, err
	}
	a.newTokens = &ts
	return Result{Version: a.index}, nil
}

// Tokens returns the token table.
func (db *DB) Tokens() []TokenRecord {
	if t := db.tokenTable.Load(); t != nil {
		return *t
	}
	return nil
}
