package store

import (
	"bytes"
	"fmt"
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

// BenchmarkApplyBatch measures applying one Raft entry of 64 puts (one
// bbolt transaction), with the state fsynced per batch and lazily; ns/op
// is per batch, and puts/s is derived.
func BenchmarkApplyBatch(b *testing.B) {
	for _, lazy := range []bool{false, true} {
		b.Run(map[bool]string{false: "sync", true: "lazy"}[lazy], func(b *testing.B) {
			opts := DefaultOptions()
			opts.NoSync = lazy
			db, err := Open(filepath.Join(b.TempDir(), "state.db"), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			value := bytes.Repeat([]byte("v"), 256)
			index := uint64(0)
			b.ReportAllocs()
			for b.Loop() {
				index++
				batch := &Batch{Time: int64(index)}
				for j := range 64 {
					batch.Cmds = append(batch.Cmds, Cmd{Kind: CmdPut, Key: fmt.Sprintf("bench/%08d", (int(index)*64+j)%20000), Value: value})
				}
				if _, err := db.Apply([]Entry{{Index: index, Term: 1, Batch: batch}}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(64*b.N)/b.Elapsed().Seconds(), "puts/s")
		})
	}
}
