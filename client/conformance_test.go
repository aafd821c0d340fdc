package client_test

import (
	"testing"

	"github.com/kvd-project/kvd/internal/testkit/kvtest"
	"github.com/kvd-project/kvd/internal/testkit/testcluster"
)

func TestClient_Conformance(t *testing.T) {
	c := testcluster.New(t, 3, 3)
	kvtest.Run(t, newClient(t, c, nil))
}
