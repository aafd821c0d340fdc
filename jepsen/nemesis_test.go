package jepsen

import (
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
)

func TestDeposedProbe_Judge(t *testing.T) {
	p := &deposedProbe{writes: map[string]probeWrite{"k": {value: "window-2", version: 10}}}
	for _, tc := range []struct {
		name  string
		a     probeAnswer
		stale bool
	}{
		{"the acknowledged write", probeAnswer{key: "k", status: http.StatusOK, value: "window-2", version: 10}, false},
		{"a later write", probeAnswer{key: "k", status: http.StatusOK, value: "window-3", version: 12}, false},
		{"an older version", probeAnswer{key: "k", status: http.StatusOK, value: "window-1", version: 7}, true},
		{"another value at the acknowledged version", probeAnswer{key: "k", status: http.StatusOK, value: "window-1", version: 10}, true},
		{"absent after the write", probeAnswer{key: "k", status: http.StatusNotFound}, true},
		{"refused", probeAnswer{key: "k", status: http.StatusServiceUnavailable}, false},
		{"no answer", probeAnswer{key: "k", err: errors.New("timeout")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason := p.judge(tc.a)
			require.Equal(t, tc.stale, reason != "", "judge said %q", reason)
		})
	}
}

func TestUnfinished_DecidedWithoutLocksIsFinished(t *testing.T) {
	list := api.TxnList{Txns: []api.TxnInfo{
		{ID: "pending", State: "pending"},
		{ID: "absent", State: "absent", Locks: []api.TxnLock{{Group: 1, Key: "a"}}},
		{ID: "committed-unresolved", State: "committed", Locks: []api.TxnLock{{Group: 2, Key: "b"}}},
		{ID: "committed", State: "committed"},
		{ID: "aborted", State: "aborted"},
	}}
	require.Equal(t, map[string]bool{"pending": true, "absent": true, "committed-unresolved": true}, unfinished(list))
}

func TestNemesisByName_KnowsEveryName(t *testing.T) {
	for _, name := range NemesisNames() {
		_, err := NemesisByName(name)
		require.NoError(t, err, name)
	}
	m, err := NemesisByName("mixed")
	require.NoError(t, err)
	require.Len(t, m.(*mixedNemesis).all, len(NemesisNames())-len(notMixed), "mixed draws every nemesis but itself, none and membership")
	for _, n := range m.(*mixedNemesis).all {
		require.NotEqual(t, "membership", n.Name())
	}
}
