package embed_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/embed"
)

// A backup of one embedded store restored into another brings back its
// keys, values and TTLs; a store that holds keys takes it only forced.
func TestEmbedded_BackupRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src, err := embed.Open(t.TempDir(), embed.Options{TTLInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	defer src.Close()
	dst, err := embed.Open(t.TempDir(), embed.Options{TTLInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	defer dst.Close()

	for i := range 100 {
		_, err := src.Put(ctx, fmt.Sprintf("k/%03d", i), []byte(fmt.Sprintf("v%d", i)))
		require.NoError(t, err)
	}
	_, err = src.Put(ctx, "ttl", []byte("brief"), kvd.WithTTL(1500*time.Millisecond))
	require.NoError(t, err)
	deadline := time.Now().Add(1500 * time.Millisecond)

	var file bytes.Buffer
	sum, err := src.Backup(ctx, &file)
	require.NoError(t, err)
	require.Equal(t, uint64(101), sum.Keys)
	_, check, err := backup.Verify(bytes.NewReader(file.Bytes()))
	require.NoError(t, err)
	require.Equal(t, sum, check)

	res, err := dst.Restore(ctx, bytes.NewReader(file.Bytes()), false)
	require.NoError(t, err)
	require.Equal(t, uint64(101), res.Keys)
	require.False(t, res.Replaced)
	for i := range 100 {
		it, err := dst.Get(ctx, fmt.Sprintf("k/%03d", i))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("v%d", i), string(it.Value))
	}
	it, err := dst.Get(ctx, "ttl")
	require.NoError(t, err)
	require.Equal(t, "brief", string(it.Value))
	for {
		_, err := dst.Get(ctx, "ttl")
		if err != nil {
			require.ErrorIs(t, err, kvd.ErrNotFound)
			break
		}
		require.Less(t, time.Now(), deadline.Add(time.Second), "the restored key keeps its TTL's deadline")
		time.Sleep(20 * time.Millisecond)
	}

	// dst holds keys now: a restore is refused unless forced.
	_, err = dst.Restore(ctx, bytes.NewReader(file.Bytes()), false)
	require.ErrorIs(t, err, kvd.ErrConflict)
	_, err = dst.Put(ctx, "extra", []byte("x"))
	require.NoError(t, err)
	res, err = dst.Restore(ctx, bytes.NewReader(file.Bytes()), true)
	require.NoError(t, err)
	require.True(t, res.Replaced)
	_, err = dst.Get(ctx, "extra")
	require.ErrorIs(t, err, kvd.ErrNotFound, "the keys it held were dropped")

	// A damaged file is refused, and changes nothing.
	damaged := bytes.Clone(file.Bytes())
	damaged[len(damaged)/2] ^= 1
	_, err = dst.Restore(ctx, bytes.NewReader(damaged), true)
	require.ErrorIs(t, err, kvd.ErrInvalid)
	require.Contains(t, err.Error(), "corrupt")
	_, err = dst.Get(ctx, "k/050")
	require.NoError(t, err)
}
