package txn

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
)

func TestValidate(t *testing.T) {
	l := kvd.DefaultLimits()
	l.MaxTxnKeys = 3
	bad := []Request{
		{},
		{Ops: []Op{{Op: "incr", Key: "a"}}},
		{Ops: []Op{put("a", "1"), put("a", "2")}},
		{Ops: []Op{put("", "1")}},
		{Compares: []Compare{{Key: "a"}}},
		{Compares: []Compare{{Key: "a", Version: ver(1), Exists: new(bool)}}},
		{Ops: []Op{get("a"), get("b"), get("c"), get("d")}},
		{Ops: []Op{put(strings.Repeat("k", 2000), "1")}},
		{Ops: []Op{get("a"), get("a")}},                                                         // one get answers for both: a repeat only multiplies the answer
		{Ops: []Op{{Op: "put", Key: "a", Value: []byte("1"), TTL: 200 * 365 * 24 * time.Hour}}}, // past kvd.MaxTTL
	}
	for i, r := range bad {
		require.Error(t, Validate(r, l), "request %d", i)
	}
	require.NoError(t, Validate(Request{Ops: []Op{get("a"), put("b", "1"), {Op: "delete", Key: "c"}}}, l))
	require.NoError(t, Validate(Request{Ops: []Op{get("a"), put("a", "1")}}, l), "a key may be read and written")
}
