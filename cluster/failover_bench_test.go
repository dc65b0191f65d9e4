package cluster

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// BenchmarkKillFailover measures, over 10 kills of the node leading the
// most shards (3 nodes, 8 shards), the time from the kill until every shard
// acknowledged a write again. Run with:
//
//	go test -run '^$' -bench KillFailover -benchtime 1x ./cluster
func BenchmarkKillFailover(b *testing.B) {
	looseRaftTiming = false // measure the default Raft timing (500 ms)
	defer func() { looseRaftTiming = true }()
	for i := 0; i < b.N; i++ {
		tc := startCluster(b, 3, 8)
		// One tenant per shard.
		tenants := map[uint32]string{}
		for k := 0; len(tenants) < 8; k++ {
			name := fmt.Sprintf("fo-%d", k)
			if _, ok := tenants[ShardOf(name, 8)]; !ok {
				tenants[ShardOf(name, 8)] = name
			}
		}
		c := newClient(b, tc.addrs()...)
		var times []time.Duration
		for kill := 0; kill < 10; kill++ {
			waitFor(b, 60*time.Second, "balanced leadership", func() bool { return tc.balanced(3) })
			counts := tc.leaderCounts()
			victim := 0
			for j, p := range tc.peers {
				if counts[p.ID] > counts[tc.peers[victim].ID] {
					victim = j
				}
			}
			tc.nodes[victim].Kill()
			start := time.Now()
			var wg sync.WaitGroup
			var mu sync.Mutex
			var worst time.Duration
			for _, tenant := range tenants {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if _, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"true"}}); err != nil {
						b.Errorf("write to %s after kill: %v", tenant, err)
						return
					}
					mu.Lock()
					if d := time.Since(start); d > worst {
						worst = d
					}
					mu.Unlock()
				}()
			}
			wg.Wait()
			times = append(times, worst)
			tc.restart(victim)
			waitFor(b, 60*time.Second, "restarted node ready", func() bool { return tc.nodes[victim].Ready() == nil })
		}
		sort.Slice(times, func(a, c int) bool { return times[a] < times[c] })
		b.Logf("time to every shard accepting writes after a kill, sorted: %v", times)
		b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "p50-ms")
		b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "max-ms")
	}
}
