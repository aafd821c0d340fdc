package store

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

func TestTokens_PutRevokeAndRefusals(t *testing.T) {
	db := openTest(t)
	hash := strings.Repeat("ab", 32)
	tok := TokenRecord{Name: "app", Hash: hash, Grants: []Grant{{Prefix: "app/", Access: AccessWrite}}, Created: 1}
	require.NoError(t, applyAt(t, db, 1, 1, txnCmd(t, CmdTokens, TokenOp{Op: TokenPut, Token: tok})).Err)
	require.Equal(t, []TokenRecord{tok}, db.Tokens())
	require.NoError(t, applyAt(t, db, 2, 1, txnCmd(t, CmdTokens, TokenOp{Op: TokenPut, Token: tok})).Err, "a repeat")
	other := tok
	other.Hash = strings.Repeat("cd", 32)
	require.ErrorIs(t, applyAt(t, db, 3, 1, txnCmd(t, CmdTokens, TokenOp{Op: TokenPut, Token: other})).Err, kvd.ErrConflict)
	require.NoError(t, db.Reopen())
	require.Len(t, db.Tokens(), 1, "the table survives a restart")
	require.NoError(t, applyAt(t, db, 4, 1, txnCmd(t, CmdTokens, TokenOp{Op: TokenDelete, Name: "app"})).Err)
	require.Empty(t, db.Tokens())
	require.ErrorIs(t, applyAt(t, db, 5, 1, txnCmd(t, CmdTokens, TokenOp{Op: TokenDelete, Name: "app"})).Err, kvd.ErrNotFound)
	idx := uint64(5)
	for _, bad := range []TokenOp{
		{Op: TokenPut, Token: TokenRecord{Name: "", Hash: hash}},
		{Op: TokenPut, Token: TokenRecord{Name: "a/b", Hash: hash}},
		{Op: TokenPut, Token: TokenRecord{Name: "x", Hash: "short"}},
		{Op: TokenPut, Token: TokenRecord{Name: "x", Hash: hash, Grants: []Grant{{Prefix: "a", Access: "all"}}}},
		{Op: TokenPut, Token: TokenRecord{Name: "x", Hash: hash, Grants: []Grant{{Prefix: "a", Access: AccessRead}, {Prefix: "a", Access: AccessWrite}}}},
		{Op: "grant"},
	} {
		idx++
		require.ErrorIs(t, applyAt(t, db, idx, 1, txnCmd(t, CmdTokens, bad)).Err, kvd.ErrInvalid, "%+v", bad)
	}
}

// Expired tokens go when a token is made: they do not count toward the
// cap, and their names can be taken again.
func TestTokens_ExpiredOnesLeaveRoom(t *testing.T) {
	db := openTest(t)
	hash := func(i int) string { return fmt.Sprintf("%064x", i+1) }
	idx := uint64(0)
	put := func(now int64, tok TokenRecord) Result {
		idx++
		return applyAt(t, db, idx, now, txnCmd(t, CmdTokens, TokenOp{Op: TokenPut, Token: tok}))
	}
	grants := []Grant{{Prefix: "a/", Access: AccessRead}}
	for i := range MaxTokens {
		require.NoError(t, put(10, TokenRecord{Name: fmt.Sprintf("t%d", i), Hash: hash(i), Grants: grants, Created: 10, Expires: 100}).Err)
	}
	require.ErrorIs(t, put(50, TokenRecord{Name: "late", Hash: hash(MaxTokens), Grants: grants}).Err, kvd.ErrTooLarge, "full while they live")
	require.NoError(t, put(200, TokenRecord{Name: "late", Hash: hash(MaxTokens), Grants: grants}).Err, "room once they expired")
	require.Len(t, db.Tokens(), 1)
	require.NoError(t, put(300, TokenRecord{Name: "t3", Hash: hash(MaxTokens + 1), Grants: grants}).Err, "an expired token's name is free")
}
