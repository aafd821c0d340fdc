package httpapi

import (
	"fmt"
	"strings"
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
		`{"a":"ops","ops":"a"}`,   // a value is no name
		`{"a":[{"x":1},{"x":2}]}`, // siblings in an array
		`{"a":"\"b\":1,\"a\":2"}`,
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
		`{"ops":1,"\u006fps":2}`, // an escape spells the same name
		`[{"a":{"b":1,"B":2}}]`,  // in a nested object
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"A":11}`, // past the first few names
	}
	for _, doc := range bad {
		require.Error(t, checkJSON([]byte(doc)), doc)
	}
}

func BenchmarkCheckJSON(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"compare":[{"key":"a","version":3}],"ops":[`)
	for i := range 10 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"op":"put","key":"k%d","value":"%s"}`, i, strings.Repeat("QUJD", 256))
	}
	sb.WriteString(`]}`)
	doc := []byte(sb.String())
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if err := checkJSON(doc); err != nil {
			b.Fatal(err)
		}
	}
}
