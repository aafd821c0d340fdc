package server_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
	"github.com/kvd-project/kvd/server"
)

func batchCall(t *testing.T, url string, req any) (int, api.BatchResponse, string) {
	t.Helper()
	body, err := json.Marshal(req)
	require.NoError(t, err)
	r := testcluster.Do(t, "POST", url+"/v1/batch", body)
	var out api.BatchResponse
	if r.Status == 200 {
		require.NoError(t, json.Unmarshal(r.Body, &out))
	}
	return r.Status, out, string(r.Body)
}

// POST /v1/batch: independent ops over every group, sent to any node (the
// ops another node leads go there, one request per leader), each with
// its own result; a bad op fails alone; a bad batch fails whole.
func TestBatch_OpsAcrossGroupsEachWithItsOwnResult(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	c.WaitReady()
	var puts []api.BatchOp
	for i := range 300 {
		puts = append(puts, api.BatchOp{Op: "put", Key: fmt.Sprintf("b%03d", i), Value: []byte(fmt.Sprintf("v%d", i))})
	}
	status, out, body := batchCall(t, c.URL(1), api.BatchRequest{Ops: puts})
	require.Equal(t, 200, status, body)
	require.Len(t, out.Results, 300)
	for i, r := range out.Results {
		require.Equal(t, 200, r.Status, "op %d: %+v", i, r.Error)
		require.Positive(t, r.Version)
	}
	var gets []api.BatchOp
	for i := range 300 {
		gets = append(gets, api.BatchOp{Op: "get", Key: fmt.Sprintf("b%03d", i)})
	}
	status, got, body := batchCall(t, c.URL(2), api.BatchRequest{Ops: gets})
	require.Equal(t, 200, status, body)
	for i, r := range got.Results {
		require.Equal(t, 200, r.Status, "op %d: %+v", i, r.Error)
		require.Equal(t, fmt.Sprintf("v%d", i), string(r.Value))
		require.Equal(t, out.Results[i].Version, r.Version)
	}

	// Each op stands alone.
	status, mixed, body := batchCall(t, c.URL(0), api.BatchRequest{Ops: []api.BatchOp{
		{Op: "put", Key: "ok", Value: []byte("x"), TTL: "1h"},
		{Op: "put", Key: "", Value: []byte("x")},
		{Op: "get", Key: "missing"},
		{Op: "frob", Key: "k"},
		{Op: "put", Key: "k", Value: []byte("x"), TTL: "forever"},
		{Op: "delete", Key: "b000"},
		{Op: "delete", Key: "b000x"},
		{Op: "get", Key: "b001", Consistency: "stale"},
		{Op: "get", Key: "b001", Consistency: "sometimes"},
		{Op: "delete", Key: "b002", Value: []byte("x")},
	}})
	require.Equal(t, 200, status, body)
	want := []int{200, 400, 404, 400, 400, 200, 200, 200, 400, 400}
	for i, r := range mixed.Results {
		require.Equal(t, want[i], r.Status, "op %d: %+v", i, r.Error)
		if r.Status != 200 {
			require.NotNil(t, r.Error, "op %d", i)
			require.NotEmpty(t, r.Error.Code)
		}
	}
	require.True(t, *mixed.Results[5].Deleted)
	require.False(t, *mixed.Results[6].Deleted)
	require.Equal(t, "v1", string(mixed.Results[7].Value))
	require.Equal(t, api.CodeNotFound, mixed.Results[2].Error.Code)

	// The gets of a batch answer at most 16 MiB of values: the rest
	// answer 413, each alone.
	big := strings.Repeat("z", 1<<20-64)
	var bigGets []api.BatchOp
	for i := range 20 {
		k := fmt.Sprintf("big%02d", i)
		r := testcluster.Do(t, "PUT", c.URL(i%3)+"/v1/kv/"+k, []byte(big))
		require.Equal(t, 200, r.Status, "%s", r.Body)
		bigGets = append(bigGets, api.BatchOp{Op: "get", Key: k})
	}
	status, bigOut, body := batchCall(t, c.URL(0), api.BatchRequest{Ops: bigGets})
	require.Equal(t, 200, status, body[:min(len(body), 300)])
	answered, refused := 0, 0
	for _, r := range bigOut.Results {
		switch r.Status {
		case 200:
			require.Len(t, r.Value, len(big))
			answered++
		case 413:
			require.Equal(t, api.CodeTooLarge, r.Error.Code)
			refused++
		default:
			t.Fatalf("status %d: %+v", r.Status, r.Error)
		}
	}
	require.Equal(t, 16, answered, "16 values of just under 1 MiB fit")
	require.Equal(t, 4, refused)

	// A batch takes no Idempotency-Key: its ops are requests of their own.
	req, _ := json.Marshal(api.BatchRequest{Ops: []api.BatchOp{{Op: "put", Key: "k", Value: []byte("x")}}})
	r := testcluster.Do(t, "POST", c.URL(0)+"/v1/batch", req, "Idempotency-Key", "once")
	require.Equal(t, 400, r.Status, "%s", r.Body)
	require.Contains(t, string(r.Body), "Idempotency-Key")

	// A bad batch is refused whole.
	for name, tc := range map[string]struct {
		body   string
		status int
	}{
		"empty":        {`{"ops":[]}`, 400},
		"no ops":       {`{}`, 400},
		"not json":     {`{"ops":[`, 400},
		"unknown":      {`{"ops":[{"op":"get","key":"a"}],"atomic":true}`, 400},
		"1001 ops":     {`{"ops":[` + strings.Repeat(`{"op":"get","key":"a"},`, 1000) + `{"op":"get","key":"a"}]}`, 400},
		"over the cap": {`{"ops":[{"op":"put","key":"a","value":"` + strings.Repeat("QUFB", 3<<20) + `"}]}`, 413},
	} {
		r := testcluster.Do(t, "POST", c.URL(0)+"/v1/batch", []byte(tc.body))
		require.Equal(t, tc.status, r.Status, "%s: %s", name, r.Body)
		require.NotEmpty(t, r.ErrCode(t), name)
	}
}

// What a batch's gets answer counts against the node's cap on the bytes
// requests hold: past it a get answers 429 in its result, and the bytes
// are given back once the answer is sent.
func TestBatch_AnswersCountAgainstTheNodesByteCap(t *testing.T) {
	c := testcluster.New(t, 1, 1, func(cfg *server.Config) { cfg.MaxInflightBytes = 4 << 20 })
	c.WaitReady()
	big := strings.Repeat("z", 1<<20-64)
	var gets []api.BatchOp
	for i := range 8 {
		k := fmt.Sprintf("big%d", i)
		r := testcluster.Do(t, "PUT", c.URL(0)+"/v1/kv/"+k, []byte(big))
		require.Equal(t, 200, r.Status, "%s", r.Body)
		gets = append(gets, api.BatchOp{Op: "get", Key: k})
	}
	for range 2 { // the second finds the cap free again
		status, out, body := batchCall(t, c.URL(0), api.BatchRequest{Ops: gets})
		require.Equal(t, 200, status, body[:min(len(body), 300)])
		answered, refused := 0, 0
		for _, r := range out.Results {
			switch r.Status {
			case 200:
				answered++
			case 429:
				require.Equal(t, api.CodeOverloaded, r.Error.Code)
				refused++
			default:
				t.Fatalf("status %d: %+v", r.Status, r.Error)
			}
		}
		require.Equal(t, 8, answered+refused)
		require.Positive(t, refused, "4 MiB cannot hold 8 values of 1 MiB")
		require.GreaterOrEqual(t, answered, 3)
	}
}
