package client

import (
	"context"
	"fmt"
	"net/http"

	"github.com/kvd-project/kvd/api"
)

// EncryptionStatus tells where encryption at rest stands on every node:
// the keys each holds, the active one, and whether each replica has
// re-encrypted what it holds under it. An admin token is needed.
func (c *Client) EncryptionStatus(ctx context.Context) (api.EncryptionStatus, error) {
	var out api.EncryptionStatus
	if _, err := c.admin(ctx, adminCall{method: http.MethodGet, path: "/v1/admin/encryption"}, &out); err != nil {
		return api.EncryptionStatus{}, fmt.Errorf("encryption status: %w", err)
	}
	return out, nil
}

// RotateKey makes a new encryption key active on every node: each adds
// it to its key file, then each makes it the active one; replicas then
// re-encrypt in the background (EncryptionStatus tells when done). It is
// safe to repeat after a failure: a node left on the old key keeps both.
// It needs peer TLS on a cluster of more than one node, and an admin
// token.
func (c *Client) RotateKey(ctx context.Context) (api.KeyRotation, error) {
	var out api.KeyRotation
	if _, err := c.admin(ctx, adminCall{method: http.MethodPost, path: "/v1/admin/encryption/rotate"}, &out); err != nil {
		return api.KeyRotation{}, fmt.Errorf("rotate the encryption key: %w", err)
	}
	return out, nil
}
