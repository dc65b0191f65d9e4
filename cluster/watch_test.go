package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/transport"
)

// watchCollector reads a watch in the background and records its events.
type watchCollector struct {
	mu     sync.Mutex
	events []*hodeiv1.JobEvent
	cursor string // after the last message
	err    error
	done   chan struct{}
}

func collect(w *client.Watch) *watchCollector {
	c := &watchCollector{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			m, err := w.Next()
			c.mu.Lock()
			if err != nil {
				c.err = err
				c.mu.Unlock()
				return
			}
			if m.GetEvent() != nil {
				c.events = append(c.events, m.GetEvent())
			}
			c.cursor = m.GetCursor()
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *watchCollector) snapshot() ([]*hodeiv1.JobEvent, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events), c.cursor, c.err
}

func (c *watchCollector) count(to hodeiv1.JobState) int {
	evs, _, _ := c.snapshot()
	n := 0
	for _, e := range evs {
		if e.GetTo() == to {
			n++
		}
	}
	return n
}

// startWatch opens a watch on the node at addr and waits for its first
// message (a bookmark: the stream is live).
func startWatch(t *testing.T, ctx context.Context, addr string, f client.WatchFilter, from string) (*client.Watch, *watchCollector) {
	t.Helper()
	c := newClient(t, addr)
	w := c.WatchJobs(ctx, f, from)
	wc := collect(w)
	waitFor(t, 10*time.Second, "the watch's first bookmark", func() bool {
		_, cur, err := wc.snapshot()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		return cur != ""
	})
	return w, wc
}

func submitN(t *testing.T, ctx context.Context, c *client.Client, tenant string, n int) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i++ {
		r, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"true"}})
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids = append(ids, r.GetJob().GetId())
	}
	return ids
}

// TestWatchOnFollower: a watcher on a node that leads no shard sees every
// state change of a job, in order, with its tenant, index and time.
func TestWatchOnFollower(t *testing.T) {
	tc := startCluster(t, 3, 1)
	ld := tc.leader()
	f := followerOf(tc, ld)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, all := startWatch(t, ctx, tc.peers[f].Addr, client.WatchFilter{}, "")
	_, mine := startWatch(t, ctx, tc.peers[f].Addr, client.WatchFilter{Tenant: "blue", IncludeJob: true}, "")
	c := newClient(t, tc.peers[ld].Addr)
	red := submitN(t, ctx, c, "red", 1)[0]
	blue := submitN(t, ctx, c, "blue", 1)[0]
	if _, err := c.Cancel(ctx, blue, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the follower's watch to see the cancel", func() bool {
		return all.count(hodeiv1.JobState_JOB_STATE_CANCELLED) == 1 && mine.count(hodeiv1.JobState_JOB_STATE_CANCELLED) == 1
	})
	evs, _, _ := all.snapshot()
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s %s->%s", e.GetJobId(), e.GetFrom(), e.GetTo()))
		if e.GetIndex() == 0 || e.GetTimeMs() == 0 || e.GetTenant() == "" {
			t.Fatalf("event without index, time or tenant: %v", e)
		}
	}
	want := []string{
		red + " JOB_STATE_UNSPECIFIED->JOB_STATE_PENDING",
		blue + " JOB_STATE_UNSPECIFIED->JOB_STATE_PENDING",
		blue + " JOB_STATE_PENDING->JOB_STATE_CANCELLED",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	bevs, _, _ := mine.snapshot()
	if len(bevs) != 2 || bevs[0].GetJobId() != blue || bevs[1].GetJob().GetId() != blue {
		t.Fatalf("tenant watch: %v", bevs)
	}
	if m := tc.nodes[f].bus.m; m.watchers.Load() != 2 || m.published.Load() < 3 {
		t.Fatalf("metrics: %d watchers, %d published; want 2, >= 3", m.watchers.Load(), m.published.Load())
	}
}

// TestWatchResumeAcrossLeaderChange: a watcher reads part of the stream on
// one follower, the shard leader is killed, and the watcher resumes from
// its last cursor on another node: together with the part before, it sees
// exactly the events of an uninterrupted watch, no gap and no repeat.
func TestWatchResumeAcrossLeaderChange(t *testing.T) {
	tc := startCluster(t, 3, 2)
	ld := tc.leader()
	f1 := followerOf(tc, ld)
	f2 := followerOf(tc, ld, f1)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The reference watch runs through on f1; the resumed one starts on f2.
	_, ref := startWatch(t, ctx, tc.peers[f1].Addr, client.WatchFilter{}, "")
	wctx, wcancel := context.WithCancel(ctx)
	w1, part1 := startWatch(t, wctx, tc.peers[f2].Addr, client.WatchFilter{}, "")
	_, start, _ := part1.snapshot()
	_ = w1

	c := newClient(t, tc.addrs()...)
	tenants := []string{"a", "b", "c", "d"}
	const perRound = 10
	for i := range perRound {
		submitN(t, ctx, c, tenants[i%len(tenants)], 1)
	}
	waitFor(t, 10*time.Second, "the first part", func() bool {
		return part1.count(hodeiv1.JobState_JOB_STATE_PENDING) >= perRound/2
	})
	wcancel()
	<-part1.done
	before, cursor, _ := part1.snapshot()
	if cursor == start {
		t.Fatal("the cursor did not move")
	}

	// Kill the leader of shard 0 and keep submitting.
	tc.nodes[ld].Close()
	tc.nodes[ld] = nil
	c2 := newClient(t, tc.peers[f1].Addr, tc.peers[f2].Addr)
	for i := range perRound {
		submitN(t, ctx, c2, tenants[i%len(tenants)], 1)
	}
	// Resume on f1 (another node than the first part's).
	_, part2 := startWatch(t, ctx, tc.peers[f1].Addr, client.WatchFilter{}, cursor)
	waitFor(t, 30*time.Second, "every submit in the reference and the resumed watch", func() bool {
		return ref.count(hodeiv1.JobState_JOB_STATE_PENDING) >= 2*perRound &&
			len(before)+part2.count(hodeiv1.JobState_JOB_STATE_PENDING) >= 2*perRound
	})
	refEvs, _, _ := ref.snapshot()
	after, _, _ := part2.snapshot()
	key := func(e *hodeiv1.JobEvent) string {
		return fmt.Sprintf("%d/%d.%d %s %s", e.GetShard(), e.GetIndex(), e.GetPosition(), e.GetJobId(), e.GetTo())
	}
	var got, want []string
	for _, e := range append(before, after...) {
		got = append(got, key(e))
	}
	for _, e := range refEvs {
		want = append(want, key(e))
	}
	// Compare per shard: the order across shards is not defined.
	perShard := func(keys []string, sh int) []string {
		var out []string
		for _, k := range keys {
			if strings.HasPrefix(k, fmt.Sprintf("%d/", sh)) {
				out = append(out, k)
			}
		}
		return out
	}
	for sh := range 2 {
		g, w := perShard(got, sh), perShard(want, sh)
		n := min(len(g), len(w))
		if !slices.Equal(g[:n], w[:n]) {
			t.Fatalf("shard %d: resumed watch %v\nreference %v", sh, g, w)
		}
	}
	// Indexes strictly increase per shard: no repeat.
	last := map[uint32][2]uint64{}
	for _, e := range append(before, after...) {
		p := [2]uint64{e.GetIndex(), uint64(e.GetPosition())}
		if l, ok := last[e.GetShard()]; ok && !(p[0] > l[0] || p[0] == l[0] && p[1] > l[1]) {
			t.Fatalf("shard %d: event at %v after %v", e.GetShard(), p, l)
		}
		last[e.GetShard()] = p
	}
}

// TestWatchStaleCursor: a cursor older than the node's retention gets
// OUT_OF_RANGE saying to resync; a slow reader is cut off the same way.
func TestWatchStaleCursor(t *testing.T) {
	tc := startClusterWith(t, 3, 1, func(c *Config) { c.Watch = EventBusConfig{MaxEvents: 8, MaxBytes: 1 << 20} })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	addr := tc.peers[followerOf(tc, tc.leader())].Addr
	wctx, wcancel := context.WithCancel(ctx)
	_, wc := startWatch(t, wctx, addr, client.WatchFilter{}, "")
	_, cursor, _ := wc.snapshot()
	wcancel()
	<-wc.done
	c := newClient(t, tc.addrs()...)
	submitN(t, ctx, c, "t", 12)
	waitFor(t, 10*time.Second, "the follower to apply the submits", func() bool {
		f := tc.nodes[followerOf(tc, tc.leader())]
		return f.bus.m.evicted.Load() > 0
	})
	w := newClient(t, addr).WatchJobs(ctx, client.WatchFilter{}, cursor)
	_, err := w.Next()
	if !errors.Is(err, client.ErrWatchResync) || status.Code(err) != codes.OutOfRange {
		t.Fatalf("stale cursor: %v, want OutOfRange / ErrWatchResync", err)
	}
	if !strings.Contains(err.Error(), "resync") || !strings.Contains(err.Error(), "list") {
		t.Fatalf("the error does not say to resync: %v", err)
	}
}

// TestWatchBadRequests: malformed cursors and filters are InvalidArgument.
func TestWatchBadRequests(t *testing.T) {
	tc := startCluster(t, 3, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newClient(t, tc.peers[0].Addr)
	_, wc := startWatch(t, ctx, tc.peers[0].Addr, client.WatchFilter{}, "")
	_, good, _ := wc.snapshot()
	goodCur, err := transport.ParseWatchCursor(good)
	if err != nil {
		t.Fatal(err)
	}
	future := transport.WatchCursor{Pos: slices.Clone(goodCur.Pos)}
	future.Pos[1].Index += 1_000_000
	for _, tt := range []struct {
		name   string
		f      client.WatchFilter
		cursor string
		want   string
	}{
		{"garbage cursor", client.WatchFilter{}, "not-a-cursor!", "cursor"},
		{"other shard layout", client.WatchFilter{}, transport.WatchCursor{Pos: make([]transport.WatchPos, 3)}.Encode(), "3 shards"},
		{"future index", client.WatchFilter{}, future.Encode(), "ahead"},
		{"malformed job id", client.WatchFilter{JobID: "nope"}, "", "job_id"},
		{"unknown shard in job id", client.WatchFilter{JobID: "9-1"}, "", "job_id"},
		{"bad tenant", client.WatchFilter{Tenant: "no spaces"}, "", "tenant"},
		{"bad kind", client.WatchFilter{Kind: "a b"}, "", "kind"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.WatchJobs(ctx, tt.f, tt.cursor).Next()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want InvalidArgument naming %q", err, tt.want)
			}
		})
	}
}

// TestWatchCutOffByRestore: a backup restore replaces a shard's state
// without events; watchers of the shard are cut off with the resync error,
// and their old cursors are refused.
func TestWatchCutOffByRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src := startCluster(t, 3, 1)
	submitN(t, ctx, newClient(t, src.addrs()...), "t", 3)
	archive := saveArchive(t, ctx, src.addrs()[0])

	dst := startCluster(t, 3, 1)
	addr := dst.peers[followerOf(dst, dst.leader())].Addr
	c := newClient(t, dst.addrs()...)
	_, wc := startWatch(t, ctx, addr, client.WatchFilter{}, "")
	submitN(t, ctx, c, "t", 2)
	waitFor(t, 10*time.Second, "the watch to see the submits", func() bool { return wc.count(hodeiv1.JobState_JOB_STATE_PENDING) == 2 })
	_, cursor, _ := wc.snapshot()
	if _, err := restoreArchive(t, ctx, dst.addrs()[0], archive, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the watch to be cut off", func() bool {
		_, _, err := wc.snapshot()
		return err != nil
	})
	if _, _, err := wc.snapshot(); !errors.Is(err, client.ErrWatchResync) {
		t.Fatalf("watch after restore: %v, want ErrWatchResync", err)
	}
	if _, err := newClient(t, addr).WatchJobs(ctx, client.WatchFilter{}, cursor).Next(); status.Code(err) != codes.OutOfRange {
		t.Fatalf("old cursor after restore: %v, want OutOfRange", err)
	}
}

// TestWatchClientReconnects: the node serving a Go client's watch stops;
// the client reopens the stream on another node from its last cursor and
// the caller sees every event once.
func TestWatchClientReconnects(t *testing.T) {
	tc := startCluster(t, 3, 1)
	ld := tc.leader()
	f1 := followerOf(tc, ld)
	f2 := followerOf(tc, ld, f1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wcl := newClient(t, tc.peers[f2].Addr, tc.peers[f1].Addr)
	w := wcl.WatchJobs(ctx, client.WatchFilter{Tenant: "r"}, "")
	wc := collect(w)
	waitFor(t, 10*time.Second, "the first bookmark", func() bool { _, cur, _ := wc.snapshot(); return cur != "" })
	c := newClient(t, tc.peers[ld].Addr)
	ids := submitN(t, ctx, c, "r", 5)
	waitFor(t, 10*time.Second, "the first submits", func() bool { return wc.count(hodeiv1.JobState_JOB_STATE_PENDING) == 5 })
	tc.nodes[f2].Close()
	tc.nodes[f2] = nil
	ids = append(ids, submitN(t, ctx, c, "r", 5)...)
	waitFor(t, 30*time.Second, "the submits after the reconnect", func() bool { return wc.count(hodeiv1.JobState_JOB_STATE_PENDING) >= 10 })
	evs, _, err := wc.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.GetJobId())
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("events for %v, submitted %v", got, ids)
	}
}
