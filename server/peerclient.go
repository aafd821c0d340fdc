package server

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/internal/wire"
)

// peerCall is one node-to-node request. Every call a node makes to
// another goes through call (or open, for a stream), so that requests
// carry the same credential and answers map to the same errors.
type peerCall struct {
	// op names the call in errors ("propose at", "ask").
	op           string
	method, node string
	// path is the path and query.
	path   string
	header http.Header
	body   []byte
	// group is the group a not-leader answer concerns when the answer
	// names none.
	group kvd.GroupID
	// write is set for a call that may change state (a proposal): a
	// failure once the request has left, or a server error, leaves its
	// outcome unknown.
	write bool
	// retryRefusals makes every refusal other than not-leader mean
	// unavailable (to be tried again), whatever its status: a read for
	// the coordinator, which a node that no longer hosts the group, or
	// is short of disk, may refuse for now.
	retryRefusals bool
	// keepCodes keeps the code of a refusal (4xx) the peer names, for a
	// call whose refusals mean what they say to the caller too (a map
	// edit's conflict or not found), where a proposal's mean invalid.
	keepCodes bool
	// limit caps the answer read (64 MiB if 0).
	limit int64
}

// call sends c and returns the body of a 200 answer. Errors carry the kvd
// sentinel of the answer (see refused); a failed write whose request
// left carries kvd.ErrUnknownOutcome.
func (s *Server) call(ctx context.Context, c peerCall) ([]byte, error) {
	resp, err := s.send(ctx, c)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, cmp.Or(c.limit, 64<<20)))
	if err != nil {
		return nil, c.failed(err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, c.refused(resp, body)
	}
	return body, nil
}

// open sends c and returns the body of a 200 answer to stream; the
// caller closes it.
func (s *Server) open(ctx context.Context, c peerCall) (io.ReadCloser, error) {
	resp, err := s.send(ctx, c)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, c.refused(resp, body)
	}
	return resp.Body, nil
}

// send builds c's request, naming this node as the sender with the
// cluster's credential, and sends it.
func (s *Server) send(ctx context.Context, c peerCall) (*http.Response, error) {
	addr, ok := s.PeerHTTP(c.node)
	if !ok {
		return nil, fmt.Errorf("%s %s: no address: %w", c.op, c.node, kvd.ErrUnavailable)
	}
	req, err := http.NewRequestWithContext(ctx, c.method, s.tls.scheme()+"://"+addr+c.path, bytes.NewReader(c.body))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v: %w", c.op, c.node, err, kvd.ErrUnavailable)
	}
	for k, vs := range c.header {
		req.Header[k] = vs
	}
	req.Header.Set(api.HeaderForwarded, s.id)
	req.Header.Set(api.HeaderPeerAuth, s.keys.http)
	resp, err := s.peerHTTP.Do(req)
	if err != nil {
		if wire.NeverSent(err) {
			return nil, fmt.Errorf("%s %s: %v: %w", c.op, c.node, err, kvd.ErrUnavailable)
		}
		return nil, c.failed(err)
	}
	return resp, nil
}

// failed explains a call that failed once its request had left.
func (c peerCall) failed(err error) error {
	if c.write {
		return fmt.Errorf("%s %s: %v: %w", c.op, c.node, err, kvd.ErrUnknownOutcome)
	}
	return fmt.Errorf("%s %s: %v: %w", c.op, c.node, err, kvd.ErrUnavailable)
}

// refused turns an answer other than 200 into an error carrying the
// matching sentinel. 503 is a not-leader answer (with the leader it
// names, if any); 403 means the peer does not share this cluster's
// secret. Wrong group, overload and a full disk refuse before anything
// is proposed; a read's bad request and not found keep their codes.
// Anything else makes a read unavailable, and a write invalid (4xx) or
// of unknown outcome (5xx).
func (c peerCall) refused(resp *http.Response, body []byte) error {
	var e api.Error
	_ = json.Unmarshal(body, &e)
	msg := e.Error.Message
	switch st := resp.StatusCode; {
	case st == http.StatusServiceUnavailable:
		g := kvd.GroupID(e.Error.Group)
		if g == 0 {
			g = c.group
		}
		return &kvd.NotLeaderError{Group: g, Leader: e.Error.Leader}
	case c.retryRefusals && st != http.StatusForbidden:
		return fmt.Errorf("%s %s: %s %s: %w", c.op, c.node, resp.Status, msg, kvd.ErrUnavailable)
	case st == http.StatusForbidden:
		return fmt.Errorf("%s %s: %s (does it hold this cluster's peer secret?): %w", c.op, c.node, msg, kvd.ErrUnavailable)
	case st == http.StatusMisdirectedRequest || st == http.StatusTooManyRequests || st == http.StatusInsufficientStorage ||
		(!c.write && (st == http.StatusBadRequest || st == http.StatusNotFound)):
		return fmt.Errorf("%s %s: %s: %w", c.op, c.node, msg, api.ErrOfCode(api.CodeOfStatus(st)))
	case c.keepCodes && st < 500 && api.ErrOfCode(e.Error.Code) != nil:
		return fmt.Errorf("%s %s: %s: %w", c.op, c.node, msg, api.ErrOfCode(e.Error.Code))
	case c.write && st < 500:
		return fmt.Errorf("%s %s: %s: %w", c.op, c.node, msg, kvd.ErrInvalid)
	case c.write:
		return fmt.Errorf("%s %s: %s %s: %w", c.op, c.node, resp.Status, msg, kvd.ErrUnknownOutcome)
	}
	return fmt.Errorf("%s %s: %s %s: %w", c.op, c.node, resp.Status, msg, kvd.ErrUnavailable)
}

// peerGet performs a node-to-node GET and decodes a 200 answer into out.
func (s *Server) peerGet(ctx context.Context, node, pathAndQuery string, hdr http.Header, out any) error {
	body, err := s.call(ctx, peerCall{op: "ask", method: http.MethodGet, node: node, path: pathAndQuery, header: hdr})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("ask %s: decode: %v: %w", node, err, kvd.ErrUnavailable)
	}
	return nil
}

// askMembers GETs pathAndQuery from group g's members other than this
// node, its leader first, and decodes the first 200 answer into out.
func (s *Server) askMembers(ctx context.Context, g kvd.GroupID, pathAndQuery string, out any) error {
	grp, ok := s.Map().Group(g)
	if !ok {
		return fmt.Errorf("group %d is not in the map: %w", g, kvd.ErrUnavailable)
	}
	asked := map[string]bool{s.id: true, "": true}
	var errs []error
	for _, m := range append([]string{s.leaderOrPreferred(ctx, g)}, grp.Members...) {
		if asked[m] {
			continue
		}
		asked[m] = true
		err := s.peerGet(ctx, m, pathAndQuery, nil, out)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("no other member of group %d to ask: %w", g, kvd.ErrUnavailable)
	}
	return errors.Join(errs...)
}

// statusTimeout bounds one request for a peer's status.
const statusTimeout = time.Second

// peerStatus returns node's status (this node's own without a request),
// asked within statusTimeout.
func (s *Server) peerStatus(ctx context.Context, node string) (api.Status, error) {
	if node == s.id {
		return s.Status(ctx), nil
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	var st api.Status
	err := s.peerGet(ctx, node, "/v1/status", nil, &st)
	return st, err
}

// groupQuery is the query of a node-to-node call about group g, with
// more parameters as name, value pairs.
func groupQuery(g kvd.GroupID, kv ...string) string {
	q := url.Values{"group": {strconv.FormatUint(uint64(g), 10)}}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q.Encode()
}
