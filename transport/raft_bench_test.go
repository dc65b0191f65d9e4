package transport

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// BenchmarkRaftApply3Nodes measures raw raft.Apply throughput of one group
// over this transport: 3 nodes in one process on loopback gRPC, raft-boltdb
// (fsync on) wrapped in raft.NewLogCache, 200-byte commands, K concurrent
// appliers. Compare with the NetworkTransport figures in DESIGN.md.
//
//	go test -run '^$' -bench BenchmarkRaftApply3Nodes -benchtime 20000x ./transport
func BenchmarkRaftApply3Nodes(b *testing.B) {
	for _, k := range []int{64, 256} {
		b.Run(fmt.Sprintf("appliers=%d", k), func(b *testing.B) {
			c := newTestCluster(b, 3, []uint32{1}, clusterOpts{
				bolt: true,
				tweakConf: func(conf *raft.Config) {
					conf.HeartbeatTimeout = time.Second
					conf.ElectionTimeout = time.Second
					conf.LeaderLeaseTimeout = 500 * time.Millisecond
					conf.SnapshotThreshold = 1 << 30
				},
			})
			r := c.leader(1).raft(1)
			b.ResetTimer()
			var wg sync.WaitGroup
			var next atomic.Int64
			var failed atomic.Int64
			for w := 0; w < k; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := r.Apply(make([]byte, 200), 10*time.Second).Error(); err != nil {
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d applies failed", n)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "applies/s")
		})
	}
}
