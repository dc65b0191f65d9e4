package logdb

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

const (
	benchBatch   = 16
	benchLogSize = 200
)

// BenchmarkStoreLogs compares one shared logdb (group commit across groups)
// with one raft-boltdb file per group (how cluster/ stores shards today, with
// the same bbolt options), fsync on. One op = every group stores one batch
// of 16 200-byte entries, all groups concurrently.
//
//	go test -run '^$' -bench StoreLogs -benchtime 3s ./cluster/logdb
func BenchmarkStoreLogs(b *testing.B) {
	for _, groups := range []int{1, 8} {
		b.Run(fmt.Sprintf("groups=%d/logdb", groups), func(b *testing.B) {
			benchLogDB(b, groups, 0)
		})
		b.Run(fmt.Sprintf("groups=%d/logdb-nolinger", groups), func(b *testing.B) {
			benchLogDB(b, groups, -1)
		})
		b.Run(fmt.Sprintf("groups=%d/raftboltdb", groups), func(b *testing.B) {
			runRaftBoltDB(b, groups)
		})
	}
}

func benchLogDB(b *testing.B, groups int, linger time.Duration) {
	db, err := Open(Options{Path: filepath.Join(b.TempDir(), "raft.db"), MaxLinger: linger})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	stores := make([]raft.LogStore, groups)
	for g := range stores {
		stores[g] = db.Group(uint32(g))
	}
	before := db.Stats()
	ops := runStoreLogs(b, stores)
	after := db.Stats()
	b.ReportMetric(float64(after.Commits-before.Commits)/float64(ops), "commits/op")
	if c := after.Commits - before.Commits; c > 0 {
		b.ReportMetric((after.CommitTime-before.CommitTime).Seconds()*1000/float64(c), "ms/commit")
	}
}

func runRaftBoltDB(b *testing.B, groups int) {
	dir := b.TempDir()
	stores := make([]raft.LogStore, groups)
	for g := range stores {
		s, err := raftboltdb.New(raftboltdb.Options{
			Path: filepath.Join(dir, fmt.Sprintf("raft-%d.db", g)),
			BoltOptions: &bbolt.Options{
				Timeout:        openTimeout,
				NoFreelistSync: true,
				FreelistType:   bbolt.FreelistMapType,
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		stores[g] = s
	}
	runStoreLogs(b, stores)
}

func runStoreLogs(b *testing.B, stores []raft.LogStore) (ops int) {
	batches := make([][]*raft.Log, len(stores))
	now := time.Now()
	for g := range batches {
		for i := 0; i < benchBatch; i++ {
			batches[g] = append(batches[g], &raft.Log{
				Type: raft.LogCommand, Term: 1, AppendedAt: now,
				Data: bytes.Repeat([]byte{byte('a' + g)}, benchLogSize),
			})
		}
	}
	next := uint64(1)
	errs := make([]error, len(stores))
	b.ResetTimer()
	for b.Loop() {
		for g := range batches {
			for i, l := range batches[g] {
				l.Index = next + uint64(i)
			}
		}
		next += benchBatch
		var wg sync.WaitGroup
		for g := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[g] = stores[g].StoreLogs(batches[g])
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		ops++
	}
	b.ReportMetric(float64(ops*len(stores)*benchBatch)/b.Elapsed().Seconds(), "logs/s")
	return ops
}
