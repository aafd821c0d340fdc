package wire

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

func TestTxn_RoundTripsThroughTheWire(t *testing.T) {
	in := kvd.Txn{
		Compares: []kvd.Compare{kvd.VersionIs("a", 5), kvd.ValueIs("b", []byte("x"))},
		Ops:      []kvd.Op{kvd.OpGet("a"), kvd.OpPutTTL("b", []byte("y"), 30*time.Second), kvd.OpAdd("n", 2), kvd.OpDelete("c")},
	}
	out, err := Txn(FromTxn(in))
	require.NoError(t, err)
	require.Equal(t, in, out)

	for _, ttl := range []string{"soon", "0s", "-1s"} {
		_, err := Txn(api.TxnRequest{Ops: []api.TxnOp{{Op: "put", Key: "k", TTL: ttl}}})
		require.True(t, errors.Is(err, kvd.ErrInvalid), "ttl %q: %v", ttl, err)
	}

	resp := kvd.TxnResponse{Committed: true, Results: []kvd.OpResult{
		{Op: "get", Key: "a", Found: true, Value: []byte("v"), Version: 5},
		{Op: "put", Key: "b", Version: 9},
		{Op: "add", Key: "n", Found: true, Value: []byte("2"), Version: 9},
		{Op: "delete", Key: "c", Deleted: true},
	}}
	require.Equal(t, resp, TxnResponse(FromTxnResponse(resp)))
}
