package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// BenchmarkWorkStealing runs 2,000 no-op jobs of one tenant (so one shard)
// on a 3-node, 8-shard cluster with two workers of 16 slots attached either
// both to that shard's leader ("on-leader") or only to the two nodes that do
// not lead it ("on-followers": every lease is stolen through one forwarded
// call to the leader). It reports jobs/s from the first submit to the last
// success, each iteration running both modes back to back (so that a noisy
// machine hits both alike; the order alternates):
//
//	go test -run '^$' -bench WorkStealing -benchtime 1x -count 5 ./cluster
func BenchmarkWorkStealing(b *testing.B) {
	const (
		tenant = "hot"
		jobs   = 2000
		batch  = 100
	)
	modes := []string{"on-leader", "on-followers"}
	for i := 0; i < b.N; i++ {
		if stealingRound%2 == 1 {
			modes[0], modes[1] = modes[1], modes[0]
		}
		stealingRound++
		for _, mode := range modes {
			func() {
				b.StopTimer()
				tc := startCluster(b, 3, 8)
				// Leadership settled first, so that the balancer does not move
				// the hot shard during the measurement.
				waitFor(b, 60*time.Second, "balanced leadership", func() bool { return tc.balanced(3) })
				sh := ShardOf(tenant, 8)
				lead := -1
				waitFor(b, 30*time.Second, "a leader of the hot shard", func() bool {
					for k, n := range tc.nodes {
						if n.shards[sh].isLeader() {
							lead = k
							return true
						}
					}
					return false
				})
				var addrs []string
				for k, p := range tc.peers {
					if (mode == "on-leader") == (k == lead) {
						addrs = append(addrs, p.Addr)
					}
				}
				if len(addrs) == 1 {
					addrs = append(addrs, addrs[0])
				}
				exec := &recordingExec{}
				startWorker(b, exec, 16, addrs[0])
				startWorker(b, exec, 16, addrs[1])
				c := newClient(b, tc.addrs()...)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				b.StartTimer()
				start := time.Now()
				for k := 0; k < jobs/batch; k++ {
					specs := make([]*hodeiv1.JobSpec, batch)
					for j := range specs {
						specs[j] = &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"true"}}
					}
					if _, err := c.SubmitBatch(ctx, specs); err != nil {
						b.Fatal(err)
					}
				}
				waitFor(b, 2*time.Minute, "every job to succeed", func() bool {
					for _, n := range tc.nodes {
						if n.shards[sh].isLeader() {
							return n.shards[sh].fsm.Stats().Succeeded == jobs
						}
					}
					return false
				})
				elapsed := time.Since(start)
				b.StopTimer()
				cancel()
				stolen := lead >= 0 && !tc.nodes[lead].shards[sh].isLeader()
				b.ReportMetric(float64(jobs)/elapsed.Seconds(), mode+"-jobs/s")
				b.Logf("%s: %d jobs in %v (leadership moved during the run: %v)", mode, jobs, elapsed.Round(time.Millisecond), stolen)
				tc.close()
			}()
		}
	}
}

// stealingRound alternates which mode goes first across -count runs.
var stealingRound int
