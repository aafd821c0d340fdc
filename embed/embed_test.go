package embed_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/embed"
	"github.com/kvd-project/kvd/internal/testkit/kvtest"
	"github.com/kvd-project/kvd/node"
)

func TestEmbedded_Conformance(t *testing.T) {
	st, err := embed.Open(t.TempDir(), embed.Options{})
	require.NoError(t, err)
	defer st.Close()
	require.Empty(t, st.HTTPAddr(), "no network listener unless asked for")
	kvtest.Run(t, st)
}

func TestEmbedded_KeepsDataAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	st, err := embed.Open(dir, embed.Options{})
	require.NoError(t, err)
	ctx := context.Background()
	v, err := st.Put(ctx, "k", []byte("v"))
	require.NoError(t, err)
	require.NoError(t, st.Close())
	st, err = embed.Open(dir, embed.Options{})
	require.NoError(t, err)
	defer st.Close()
	it, err := st.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, v, it.Version)
}

func TestEmbedded_ServesHTTPWhenAsked(t *testing.T) {
	st, err := embed.Open(t.TempDir(), embed.Options{HTTPAddr: "127.0.0.1:0", Frontend: node.HTTP, TTLInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	defer st.Close()
	require.NotEmpty(t, st.HTTPAddr())
	var _ kvd.KV = st
}

func TestOpen_ADirectoryInUseIsRefusedNotWaitedOn(t *testing.T) {
	dir := t.TempDir()
	st, err := embed.Open(dir, embed.Options{})
	require.NoError(t, err)
	start := time.Now()
	_, err = embed.Open(dir, embed.Options{})
	require.ErrorContains(t, err, "in use")
	require.Less(t, time.Since(start), 5*time.Second)
	require.NoError(t, st.Close())
	st, err = embed.Open(dir, embed.Options{})
	require.NoError(t, err, "free again once closed")
	require.NoError(t, st.Close())
}
