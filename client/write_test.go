package client_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/client"
)

// A 507 promises nothing was applied: it is not an unknown outcome, and
// a write with an idempotency key is not repeated for it.
func TestClient_Put_InsufficientStorageIsNotAnUnknownOutcome(t *testing.T) {
	nodes := fakeCluster(t, "n1")
	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusInsufficientStorage, api.Error{Error: api.ErrorDetail{Code: api.CodeInsufficientStorage, Message: "disk nearly full"}})
	}
	c := fakeClient(t, nodes[0])
	_, err := c.Put(context.Background(), "k", []byte("v"), client.WithIdempotencyKey("t1"))
	require.ErrorIs(t, err, kvd.ErrInsufficientStorage)
	require.NotErrorIs(t, err, kvd.ErrUnknownOutcome)
	require.Len(t, nodes[0].requests(), 1, "not repeated")

	nodes[0].AdminFunc = func(w http.ResponseWriter, r adminRequest) {
		answer(w, http.StatusInternalServerError, api.Error{Error: api.ErrorDetail{Code: api.CodeInternal, Message: "boom"}})
	}
	_, err = c.Delete(context.Background(), "k")
	require.ErrorIs(t, err, kvd.ErrUnknownOutcome, "any other 5xx leaves the outcome unknown")
}
