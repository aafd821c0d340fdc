package httpapi

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheckJSON(t *testing.T) {
	good := []string{
		`{"ops":[{"op":"get","key":"\ud83d\ude00"}]}`,     // a pair: one emoji
		`{"ops":[{"op":"get","key":"a\\ud800"}]}`,         // an escaped backslash, then text
		`{"ops":[{"op":"get","key":"\"\\\ud83d\ude00"}]}`, // escapes before a pair
		`{"ops":[{"op":"get","key":"é"}],"compare":[]}`,
		`{"a":{"ops":1},"ops":2}`, // one name in two objects
	}
	for _, doc := range good {
		require.NoError(t, checkJSON([]byte(doc)), doc)
	}
	bad := []string{
		`{"ops":1,"Ops":2}`,
		"{\"key\":1,\"\u212aey\":2}", // Kelvin sign
		"{\"ops\":1,\"op\u017f\":2}", // long s
		`{"key":"\ud800"}`,
		`{"key":"\ud800\u0041"}`,
		`{"key":"\udfff"}`,
		`{"key":"\ud800`,
		"{\"key\":\"\xc3\"}",
	}
	for _, doc := range bad {
		require.Error(t, checkJSON([]byte(doc)), doc)
	}
}
