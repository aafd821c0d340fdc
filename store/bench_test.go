package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

func benchBatch(n int, value []byte) *Batch {
	b := &Batch{Time: 1, Origin: 7, Seq: 1}
	for i := range n {
		b.Cmds = append(b.Cmds, Cmd{Kind: CmdPut, Key: fmt.Sprintf("bench/%08d", i), Value: value})
	}
	return b
}

// BenchmarkBatchEncodeDecode measures a 64-put batch (256-byte values)
// through the log encoding and back, as the proposer and the FSM do.
func BenchmarkBatchEncodeDecode(b *testing.B) {
	batch := benchBatch(64, bytes.Repeat([]byte("v"), 256))
	buf := batch.AppendEncode(nil)
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			buf = batch.AppendEncode(buf[:0])
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			if _, err := DecodeBatch(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkApplyBatch measures applying a batch of 64 puts (256-byte
// values) to a store holding 20 000 keys, in one bbolt transaction:
// with an fsync per batch (--state-sync always) or without (lazy, the
// default); keys in order (neighbours share pages) or at random (about
// one page dirtied per put, as under real load); and with the watch
// history kept (the default) or reduced to one event, to show its share.
func BenchmarkApplyBatch(b *testing.B) {
	value := bytes.Repeat([]byte("v"), 256)
	for _, bc := range []struct {
		name    string
		sync    bool
		random  bool
		history int
	}{
		{"sync/sequential", true, false, 0},
		{"lazy/sequential", false, false, 0},
		{"lazy/random", false, true, 0},
		{"lazy/random/no-history", false, true, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opts := DefaultOptions()
			opts.NoSync = !bc.sync
			if bc.history > 0 {
				opts.HistoryMax = bc.history
			}
			db, err := Open(filepath.Join(b.TempDir(), "state.db"), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			index := uint64(0)
			apply := func(keys func(j int) int) {
				index++
				batch := &Batch{Time: int64(index)}
				for j := range 64 {
					batch.Cmds = append(batch.Cmds, Cmd{Kind: CmdPut, Key: fmt.Sprintf("bench/%08d", keys(j)), Value: value})
				}
				if _, err := db.Apply([]Entry{{Index: index, Term: 1, Batch: batch}}); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; i < 20000; i += 64 {
				apply(func(j int) int { return (i + j) % 20000 })
			}
			rng := rand.New(rand.NewPCG(1, 2))
			b.ReportAllocs()
			b.ResetTimer()
			for n := 0; b.Loop(); n++ {
				if bc.random {
					// distinct keys, as the proposer packs them
					picked := make(map[int]bool, 64)
					keys := make([]int, 0, 64)
					for len(keys) < 64 {
						if k := rng.IntN(20000); !picked[k] {
							picked[k] = true
							keys = append(keys, k)
						}
					}
					apply(func(j int) int { return keys[j] })
				} else {
					apply(func(j int) int { return (n*64 + j) % 20000 })
				}
			}
			b.ReportMetric(float64(64*b.N)/b.Elapsed().Seconds(), "puts/s")
		})
	}
}
