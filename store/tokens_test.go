package store

import (
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
