package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

func TestKvbench_EveryWorkloadRunsAndReports(t *testing.T) {
	c := testcluster.New(t, 3, 2)
	eps := strings.Join(c.URLs(), ",")
	for _, args := range [][]string{
		{"put"},
		{"get", "--consistency", "follower"},
		{"mixed", "--read-ratio", "0.5", "--consistency", "stale", "--policy", "round-robin"},
		{"txn"},
		{"txn", "--txn-groups", "same"},
	} {
		t.Run(args[0], func(t *testing.T) {
			var out, errOut bytes.Buffer
			full := append([]string{"--endpoints", eps, "--total", "300", "--clients", "8", "--conns", "2", "--keys", "200", "--warmup", "0", "--json"}, args[1:]...)
			full = append(full, args[0])
			code := run(full, &out, &errOut)
			require.Equal(t, 0, code, errOut.String())
			var r report
			require.NoError(t, json.Unmarshal(out.Bytes(), &r), out.String())
			require.Equal(t, args[0], r.Workload)
			require.Equal(t, int64(300), r.Ops+r.Errors)
			require.Zero(t, r.Errors, r.FirstError)
			require.Positive(t, r.OpsPerSec)
			require.LessOrEqual(t, r.P50ms, r.P99ms)
			require.LessOrEqual(t, r.P99ms, r.Maxms)
			require.Contains(t, errOut.String(), "ops/s", "a progress line")
		})
	}
	// The table.
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"--endpoints", eps, "--total", "50", "--warmup", "0", "--quiet", "put"}, &out, &errOut), errOut.String())
	require.Contains(t, out.String(), "p99.9 ms")
	require.Empty(t, errOut.String(), "--quiet prints no progress")
}

func TestKvbench_BadInputIsAUsageError(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"fly"},
		{"--clients", "0", "put"},
		{"--consistency", "maybe", "get"},
		{"--policy", "best", "get"},
		{"--read-ratio", "2", "mixed"},
		{"--value-size", "-1", "put"},
		{"put", "get"},
	} {
		var out, errOut bytes.Buffer
		require.Equal(t, 2, run(args, &out, &errOut), "%v", args)
		require.Contains(t, errOut.String(), "kvbench:", "%v", args)
	}
	var out, errOut bytes.Buffer
	require.Equal(t, 1, run([]string{"--endpoints", "http://127.0.0.1:1", "--total", "1", "put"}, &out, &errOut))
	require.Contains(t, errOut.String(), "connect")
}

// On a cluster on TLS (client certificates required) and auth, kvbench
// runs with --cacert, --cert and --key and a token from --token or
// KVD_TOKEN, one with grants on --prefix only enough; without a token it
// cannot connect.
func TestKvbench_SecureClusterNeedsCertificatesAndToken(t *testing.T) {
	sec := testcluster.NewSecure(t)
	c := testcluster.New(t, 3, 2, sec.Option())
	r := sec.Do(t, "POST", c.SecureURL(0)+"/v1/admin/tokens",
		[]byte(`{"name":"bench","grants":[{"prefix":"bench/","access":"write"}]}`), "Authorization", "Bearer "+sec.RootToken(t))
	require.Equal(t, 200, r.Status, string(r.Body))
	var created struct{ Token string }
	require.NoError(t, json.Unmarshal(r.Body, &created))
	base := []string{"--endpoints", strings.Join(c.SecureURLs(), ","), "--cacert", sec.CAFile, "--cert", sec.CertFile, "--key", sec.KeyFile,
		"--total", "100", "--clients", "4", "--keys", "50", "--warmup", "0", "--json", "--quiet"}
	bench := func(args ...string) (int, report, string) {
		var out, errOut bytes.Buffer
		code := run(append(append([]string(nil), base...), args...), &out, &errOut)
		var rep report
		if code == 0 {
			require.NoError(t, json.Unmarshal(out.Bytes(), &rep), out.String())
		}
		return code, rep, errOut.String()
	}

	// Every node learns the token within a second.
	require.Eventually(t, func() bool {
		code, rep, _ := bench("--token", created.Token, "put")
		return code == 0 && rep.Errors == 0
	}, 10*time.Second, 200*time.Millisecond)
	code, rep, errOut := bench("--token", created.Token, "txn")
	require.Equal(t, 0, code, errOut)
	require.Zero(t, rep.Errors, rep.FirstError)

	t.Setenv("KVD_TOKEN", created.Token)
	code, rep, errOut = bench("get")
	require.Equal(t, 0, code, errOut)
	require.Zero(t, rep.Errors, rep.FirstError)

	t.Setenv("KVD_TOKEN", "")
	code, _, errOut = bench("put")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "connect")
	// The token's wait above spent some of the address's allowance of
	// failed attempts: the refusal may be the limiter's.
	require.Regexp(t, "requires a token|too many failed authentications", errOut)
}
