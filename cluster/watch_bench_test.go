package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/transport"
)

// BenchmarkWatchFollowerLatency measures, on an idle 3-node cluster (1
// shard), the time from a submit's apply on the shard leader (just after
// its commit) until a WatchJobs stream on a follower delivers the event to
// the client, with the default Raft timing and with Config.CommitNudge.
// One submit at a time; reports p50 and p99. Run with:
//
//	go test -run '^$' -bench WatchFollowerLatency -benchtime 200x ./cluster
func BenchmarkWatchFollowerLatency(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchWatchFollowerLatency(b, false) })
	b.Run("nudge", func(b *testing.B) { benchWatchFollowerLatency(b, true) })
}

func benchWatchFollowerLatency(b *testing.B, nudge bool) {
	tc := startClusterWith(b, 3, 1, func(c *Config) { c.CommitNudge = nudge })
	ld := tc.leader()
	f := followerOf(tc, ld)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The leader's own bus tells when each submit was applied there.
	lsub, err := tc.nodes[ld].bus.subscribe([]uint32{0}, transport.WatchFilter{}, nil, func(uint32) uint64 { return 1 << 62 })
	if err != nil {
		b.Fatal(err)
	}
	defer lsub.Close()
	wc := newClient(b, tc.peers[f].Addr)
	w := wc.WatchJobs(ctx, client.WatchFilter{}, "")
	defer w.Close()
	if _, err := w.Next(); err != nil { // the first bookmark: the stream is live
		b.Fatal(err)
	}
	c := newClient(b, tc.peers[ld].Addr)
	var lat []time.Duration
	var buf []transport.WatchEvent
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got := make(chan time.Time, 1)
		go func() {
			for {
				m, err := w.Next()
				if err != nil {
					b.Error(err)
					close(got)
					return
				}
				if m.GetEvent() != nil {
					got <- time.Now()
					return
				}
			}
		}()
		if _, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: "lat", Command: []string{"true"}}); err != nil {
			b.Fatal(err)
		}
		var applied time.Time
		for applied.IsZero() {
			buf, err = lsub.Poll(buf[:0])
			if err != nil {
				b.Fatal(err)
			}
			if len(buf) > 0 {
				applied = time.Now()
				break
			}
			lsub.Wait(ctx.Done(), nil)
		}
		at, ok := <-got
		if !ok {
			b.FailNow()
		}
		lat = append(lat, max(at.Sub(applied), 0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
