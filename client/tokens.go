package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// The access tokens of a cluster that requires them (kvd --auth). Every
// call here is an admin's: the client's Config.Token must be an admin
// token (the root token of a node's root token file, or one made with
// Admin set), else it is kvd.ErrForbidden. Any node serves them.

// CreateToken makes an access token named req.Name that may read, or
// read and write, the keys under each of req.Grants' prefixes (or every
// key and the operations API, with req.Admin), valid for req.TTL (a Go
// duration such as "720h"; "" for ever). The answer carries the token's
// secret: the cluster keeps only its hash, so it is shown this once.
// Every node accepts the token within a second.
//
// The request is not repeated on another node when one fails to answer:
// a repeat would make a second secret. Errors: kvd.ErrInvalid for a bad
// name, grant or TTL, or a token with neither grants nor Admin;
// kvd.ErrConflict when a token of that name exists; kvd.ErrTooLarge when
// the cluster holds as many tokens as it keeps; kvd.ErrForbidden unless
// the client's token is an admin's; kvd.ErrUnknownOutcome if the request
// may have reached a node that did not answer (list the tokens: if it is
// there, its secret is lost: revoke it and create it again).
func (c *Client) CreateToken(ctx context.Context, req api.TokenRequest) (api.TokenCreated, error) {
	var out api.TokenCreated
	if _, err := c.admin(ctx, adminCall{method: http.MethodPost, path: "/v1/admin/tokens", body: req}, &out); err != nil {
		return api.TokenCreated{}, fmt.Errorf("create token %q: %w", req.Name, err)
	}
	return out, nil
}

// Tokens lists the cluster's tokens by name, without their secrets (the
// root token, which lives in the nodes' root token files, is not among
// them). Errors: kvd.ErrForbidden unless the client's token is an
// admin's.
func (c *Client) Tokens(ctx context.Context) (api.TokenList, error) {
	var out api.TokenList
	if _, err := c.admin(ctx, adminCall{method: http.MethodGet, path: "/v1/admin/tokens"}, &out); err != nil {
		return api.TokenList{}, fmt.Errorf("list tokens: %w", err)
	}
	return out, nil
}

// RevokeToken deletes the token named name: every node refuses it
// (kvd.ErrUnauthenticated) within a second. Errors: kvd.ErrNotFound when
// no token has that name (a revocation already made included);
// kvd.ErrInvalid for an empty name; kvd.ErrForbidden unless the client's
// token is an admin's; kvd.ErrUnknownOutcome if the request may have
// reached a node that did not answer (list the tokens before repeating
// it).
func (c *Client) RevokeToken(ctx context.Context, name string) error {
	if name == "" {
		return fmt.Errorf("revoke token: %w: no token name", kvd.ErrInvalid)
	}
	var out struct {
		Revoked string `json:"revoked"`
	}
	if _, err := c.admin(ctx, adminCall{method: http.MethodDelete, path: "/v1/admin/tokens/" + url.PathEscape(name)}, &out); err != nil {
		return fmt.Errorf("revoke token %q: %w", name, err)
	}
	return nil
}
