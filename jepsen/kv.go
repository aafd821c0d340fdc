package jepsen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd/api"
)

// kvClient speaks the HTTP API to any node and classifies each answer as
// the history needs: ok, fail (certainly no effect) or unknown.
type kvClient struct {
	hc      *http.Client
	timeout time.Duration
}

func newKVClient(timeout time.Duration) *kvClient {
	return &kvClient{timeout: timeout, hc: &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 64,
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
	}}}
}

func (k *kvClient) close() { k.hc.CloseIdleConnections() }

type answer struct {
	status  int
	body    []byte
	header  http.Header
	err     error
	dialErr bool
}

func (k *kvClient) do(ctx context.Context, method, url string, body []byte, hdr ...string) answer {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return answer{err: err, dialErr: true}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		var op *net.OpError
		return answer{err: err, dialErr: errors.As(err, &op) && op.Op == "dial"}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{err: err}
	}
	return answer{status: resp.StatusCode, body: b, header: resp.Header}
}

// errCode returns the contract error code of an error answer.
func (a answer) errCode() string {
	var e api.Error
	if json.Unmarshal(a.body, &e) == nil && e.Error.Code != "" {
		return e.Error.Code
	}
	return http.StatusText(a.status)
}

// classifyWrite sets op's status from a write's answer. A write fails
// definitely on a refused connection, a 4xx or a 503; any other failure
// after the request was sent leaves its outcome unknown.
func classifyWrite(op *Op, a answer) bool {
	switch {
	case a.err != nil && a.dialErr:
		op.Status, op.Error = Fail, a.err.Error()
	case a.err != nil:
		op.Status, op.Error = Unknown, a.err.Error()
	case a.status >= 200 && a.status < 300:
		op.Status = OK
		op.Served = a.header.Get(api.HeaderNode)
		return true
	case a.status < 500 || a.status == http.StatusServiceUnavailable:
		op.Status, op.Error = Fail, a.errCode()
	default:
		op.Status, op.Error = Unknown, a.errCode()
	}
	return false
}

func keyURL(node, key string) string { return node + "/v1/kv/" + url.PathEscape(key) }

func (k *kvClient) put(ctx context.Context, op *Op, node string, hdr ...string) {
	op.Node = node
	a := k.do(ctx, http.MethodPut, keyURL(node, op.Key), []byte(op.Value), hdr...)
	if classifyWrite(op, a) {
		var pr api.PutResponse
		if err := json.Unmarshal(a.body, &pr); err != nil {
			op.Status, op.Error = Unknown, "undecodable answer"
			return
		}
		op.Version = pr.Version
	}
}

func (k *kvClient) del(ctx context.Context, op *Op, node string) {
	op.Node = node
	a := k.do(ctx, http.MethodDelete, keyURL(node, op.Key), nil)
	if classifyWrite(op, a) {
		var dr api.DeleteResponse
		if err := json.Unmarshal(a.body, &dr); err != nil {
			op.Status, op.Error = Unknown, "undecodable answer"
			return
		}
		op.Deleted = dr.Deleted
	}
}

// get reads a key. A read that gets no answer failed: it had no effect.
func (k *kvClient) get(ctx context.Context, op *Op, node, consistency string) {
	op.Node, op.Consistency = node, consistency
	a := k.do(ctx, http.MethodGet, keyURL(node, op.Key)+"?consistency="+consistency, nil)
	switch {
	case a.err != nil:
		op.Status, op.Error = Fail, a.err.Error()
	case a.status == http.StatusOK:
		op.Status, op.Found, op.Value = OK, true, string(a.body)
		op.Served = a.header.Get(api.HeaderNode)
		v, err := strconv.ParseUint(strings.Trim(a.header.Get("ETag"), `"`), 10, 64)
		if err != nil {
			op.Status, op.Error = Fail, "bad ETag"
			return
		}
		op.Version = v
	case a.status == http.StatusNotFound:
		op.Status, op.Found = OK, false
		op.Served = a.header.Get(api.HeaderNode)
	default:
		op.Status, op.Error = Fail, a.errCode()
	}
}

// scanAll reads every key with prefix, page by page, linearizably.
func (k *kvClient) scanAll(ctx context.Context, node, prefix string) ([]api.Item, error) {
	var all []api.Item
	start := ""
	for {
		q := url.Values{"prefix": {prefix}, "limit": {"10000"}}
		if start != "" {
			q.Set("start", start)
		}
		a := k.do(ctx, http.MethodGet, node+"/v1/kv?"+q.Encode(), nil)
		if a.err != nil {
			return nil, a.err
		}
		if a.status != http.StatusOK {
			return nil, errors.New(a.errCode())
		}
		var sr api.ScanResponse
		if err := json.Unmarshal(a.body, &sr); err != nil {
			return nil, err
		}
		all = append(all, sr.Items...)
		if !sr.More {
			return all, nil
		}
		start = sr.Next
	}
}
