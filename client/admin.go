package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// admin sends an operator's request to the first node that answers (any
// node serves the admin API) and decodes a 200 answer into out.
func (c *Client) admin(ctx context.Context, method, path string, out any) error {
	var targets []*node
	seen := map[string]bool{}
	for _, g := range c.route.Load().order {
		for _, n := range g.members {
			if !seen[n.id] {
				seen[n.id] = true
				targets = append(targets, n)
			}
		}
	}
	return c.askNodes(ctx, targets, method, path, out)
}

// askNodes sends a request to targets in turn until one answers, and
// decodes a 200 answer into out. The requests are safe to repeat, so a
// node that cannot be reached, or answers 503, is followed by the next.
func (c *Client) askNodes(ctx context.Context, targets []*node, method, path string, out any) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var lastErr error
	for _, n := range targets {
		req, err := http.NewRequestWithContext(ctx, method, n.url+path, nil)
		if err != nil {
			return fmt.Errorf("%w: %v", kvd.ErrInvalid, err)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			lastErr = fmt.Errorf("node %s: %v: %w", n.id, err, kvd.ErrUnavailable)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			lastErr = fmt.Errorf("node %s: %v: %w", n.id, err, kvd.ErrUnavailable)
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			lastErr = errorFrom(resp.StatusCode, resp.Header, b)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return errorFrom(resp.StatusCode, resp.Header, b)
		}
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode: %v: %w", method, path, err, kvd.ErrUnavailable)
		}
		return nil
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no node to ask: %w", kvd.ErrUnavailable)
	}
	return fmt.Errorf("%s %s: %w", method, path, lastErr)
}

// Txns lists the transactions that hold locks or records anywhere in the
// cluster, with their state: what an operator looks at when keys stay
// locked.
func (c *Client) Txns(ctx context.Context) (api.TxnList, error) {
	var out api.TxnList
	err := c.admin(ctx, http.MethodGet, "/v1/admin/txns", &out)
	return out, err
}

// AbortTxn aborts transaction id unless it has already committed, then
// finishes it in every group (a committed one is applied, an aborted one
// releases its locks). It answers the transaction's final state;
// kvd.ErrNotFound if no group holds anything of it.
func (c *Client) AbortTxn(ctx context.Context, id string) (api.TxnInfo, error) {
	var out api.TxnInfo
	err := c.admin(ctx, http.MethodPost, "/v1/admin/txns/"+url.PathEscape(id)+"/abort", &out)
	return out, err
}
