package testcluster

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd/api"
)

// Metric returns the sum of the samples of the metric name that the node
// at base URL url exports, over the samples whose labels include every
// given one (written as in the exposition format: `group="1"`).
func Metric(t testing.TB, url, name string, labels ...string) float64 {
	t.Helper()
	hc := http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		require.NoError(t, err)
		sum += v
	}
	require.NoError(t, sc.Err())
	return sum
}

// Response is a whole HTTP answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// ErrCode returns the code of the JSON error the answer carries, failing
// the test if it carries none.
func (r Response) ErrCode(t testing.TB) string {
	t.Helper()
	var e api.Error
	require.NoError(t, json.Unmarshal(r.Body, &e), "error body must be JSON: %s", r.Body)
	require.NotEmpty(t, e.Error.Message)
	return e.Error.Code
}

// testHTTP bounds every request, so a handler that never answers (a
// stream opened by mistake) fails the test instead of hanging it.
var testHTTP = &http.Client{Timeout: 20 * time.Second}

// Do sends a request with the given header name, value pairs and reads
// the whole answer.
func Do(t testing.TB, method, url string, body []byte, header ...string) Response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := testHTTP.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return Response{resp.StatusCode, resp.Header, b}
}
