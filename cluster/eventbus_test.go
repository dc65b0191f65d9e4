package cluster

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/transport"
)

const (
	stPending = hodeiv1.JobState_JOB_STATE_PENDING
	stRunning = hodeiv1.JobState_JOB_STATE_RUNNING
	stDone    = hodeiv1.JobState_JOB_STATE_SUCCEEDED
)

func testEvent(index uint64, job, tenant, kind string, from, to hodeiv1.JobState) fsm.Event {
	return fsm.Event{Index: index, JobID: job, Tenant: tenant, Kind: kind, NowMs: int64(index) * 10, From: from, To: to}
}

func noLimit(uint32) uint64 { return 1 << 62 }

func mustSub(t *testing.T, b *eventBus, shards []uint32, f transport.WatchFilter, from []transport.WatchPos) *subscription {
	t.Helper()
	s, err := b.subscribe(shards, f, from, noLimit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func poll(t *testing.T, s *subscription) []transport.WatchEvent {
	t.Helper()
	evs, err := s.Poll(nil)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func positions(evs []transport.WatchEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, fmt.Sprintf("%d/%d.%d:%s", e.Shard, e.Index, e.Pos, e.JobID))
	}
	return out
}

func TestEventBusOrderAndFilters(t *testing.T) {
	b := newEventBus(DefaultEventBusConfig(), 2)
	all := mustSub(t, b, []uint32{0, 1}, transport.WatchFilter{}, nil)
	tenant := mustSub(t, b, []uint32{0}, transport.WatchFilter{Tenant: "a"}, nil)
	job := mustSub(t, b, []uint32{0}, transport.WatchFilter{JobID: "j2"}, nil)
	kind := mustSub(t, b, []uint32{0, 1}, transport.WatchFilter{Kind: "shell"}, nil)
	email := mustSub(t, b, []uint32{0, 1}, transport.WatchFilter{Kind: "email"}, nil)

	b.rings[0].publish(5, []fsm.Event{
		testEvent(5, "j1", "a", "", 0, stPending),
		testEvent(5, "j2", "b", "email", 0, stPending),
	})
	b.rings[1].publish(3, []fsm.Event{testEvent(3, "k1", "c", "email", 0, stPending)})
	// A promotion (PENDING -> PENDING) takes a position but is not a state change.
	b.rings[0].publish(7, []fsm.Event{
		testEvent(7, "j1", "a", "", stPending, stPending),
		testEvent(7, "j1", "a", "", stPending, stRunning),
		testEvent(7, "j2", "b", "email", stPending, stRunning),
	})

	if got, want := positions(poll(t, all)), []string{"0/5.0:j1", "0/5.1:j2", "0/7.1:j1", "0/7.2:j2", "1/3.0:k1"}; !slices.Equal(got, want) {
		t.Fatalf("all: got %v, want %v", got, want)
	}
	if got, want := positions(poll(t, tenant)), []string{"0/5.0:j1", "0/7.1:j1"}; !slices.Equal(got, want) {
		t.Fatalf("tenant a: got %v, want %v", got, want)
	}
	if got, want := positions(poll(t, job)), []string{"0/5.1:j2", "0/7.2:j2"}; !slices.Equal(got, want) {
		t.Fatalf("job j2: got %v, want %v", got, want)
	}
	if got, want := positions(poll(t, kind)), []string{"0/5.0:j1", "0/7.1:j1"}; !slices.Equal(got, want) {
		t.Fatalf("kind shell: got %v, want %v", got, want)
	}
	if got, want := positions(poll(t, email)), []string{"0/5.1:j2", "0/7.2:j2", "1/3.0:k1"}; !slices.Equal(got, want) {
		t.Fatalf("kind email: got %v, want %v", got, want)
	}
	// Filtered-out events still move the position: the tenant watcher is
	// past entry 7 of shard 0.
	if got, want := tenant.Positions(nil), []transport.WatchPos{{Index: 7, N: 3}}; !slices.Equal(got, want) {
		t.Fatalf("tenant positions %v, want %v", got, want)
	}
	if got := poll(t, all); len(got) != 0 {
		t.Fatalf("second poll returned %v", positions(got))
	}
}

func TestEventBusResumeNoGapNoRepeat(t *testing.T) {
	b := newEventBus(DefaultEventBusConfig(), 1)
	for i := uint64(1); i <= 20; i++ {
		b.rings[0].publish(i, []fsm.Event{testEvent(i, "a", "t", "", 0, stPending), testEvent(i, "b", "t", "", 0, stPending)})
	}
	for _, from := range []transport.WatchPos{{Index: 1}, {Index: 7, N: 1}, {Index: 7, N: 2}, {Index: 21}} {
		s := mustSub(t, b, []uint32{0}, transport.WatchFilter{}, []transport.WatchPos{from})
		evs := poll(t, s)
		want := 0
		for i := uint64(1); i <= 20; i++ {
			for p := uint32(0); p < 2; p++ {
				if !(transport.WatchPos{Index: i, N: p}).Less(from) {
					want++
				}
			}
		}
		if len(evs) != want {
			t.Fatalf("from %v: %d events, want %d", from, len(evs), want)
		}
		if len(evs) > 0 && (transport.WatchPos{Index: evs[0].Index, N: evs[0].Pos}).Less(from) {
			t.Fatalf("from %v: first event at %d.%d", from, evs[0].Index, evs[0].Pos)
		}
	}
	// A position in the future of the shard's log is refused.
	if _, err := b.subscribe([]uint32{0}, transport.WatchFilter{}, []transport.WatchPos{{Index: 30}}, func(uint32) uint64 { return 20 }); !errors.Is(err, transport.ErrWatchCursor) {
		t.Fatalf("future cursor: %v, want ErrWatchCursor", err)
	}
}

func TestEventBusRetention(t *testing.T) {
	b := newEventBus(EventBusConfig{MaxEvents: 8, MaxBytes: 1 << 20}, 1)
	for i := uint64(1); i <= 10; i++ {
		b.rings[0].publish(i, []fsm.Event{testEvent(i, "a", "t", "", 0, stPending)})
	}
	// Entries 1-2 were dropped: the floor is after entry 2.
	if _, err := b.subscribe([]uint32{0}, transport.WatchFilter{}, []transport.WatchPos{{Index: 2}}, noLimit); !errors.Is(err, transport.ErrWatchResync) {
		t.Fatalf("stale cursor: %v, want ErrWatchResync", err)
	}
	s := mustSub(t, b, []uint32{0}, transport.WatchFilter{}, []transport.WatchPos{{Index: 2, N: 1}})
	if n := len(poll(t, s)); n != 8 {
		t.Fatalf("%d events from the floor, want 8", n)
	}
	if got := b.m.evicted.Load(); got != 2 {
		t.Fatalf("evicted %d, want 2", got)
	}
	// By bytes: each record is eventOverhead+2 bytes; room for 3.
	bb := newEventBus(EventBusConfig{MaxEvents: 100, MaxBytes: 3*(eventOverhead+2) + 1}, 1)
	for i := uint64(1); i <= 10; i++ {
		bb.rings[0].publish(i, []fsm.Event{testEvent(i, "a", "t", "", 0, stPending)})
	}
	r := bb.rings[0]
	if n := r.head - r.tail; n != 3 || r.floor != (transport.WatchPos{Index: 7, N: 1}) {
		t.Fatalf("byte-bounded ring holds %d records, floor %v; want 3, 7.1", n, r.floor)
	}
}

func TestEventBusSlowSubscriberCutOff(t *testing.T) {
	b := newEventBus(EventBusConfig{MaxEvents: 4, MaxBytes: 1 << 20}, 1)
	slow := mustSub(t, b, []uint32{0}, transport.WatchFilter{}, nil)
	fast := mustSub(t, b, []uint32{0}, transport.WatchFilter{}, nil)
	for i := uint64(1); i <= 10; i++ {
		b.rings[0].publish(i, []fsm.Event{testEvent(i, "a", "t", "", 0, stPending)})
		poll(t, fast)
	}
	if _, err := slow.Poll(nil); !errors.Is(err, transport.ErrWatchResync) {
		t.Fatalf("slow subscriber: %v, want ErrWatchResync", err)
	}
	if _, err := slow.Poll(nil); !errors.Is(err, transport.ErrWatchResync) {
		t.Fatalf("slow subscriber stays cut off: %v", err)
	}
	if got := b.m.cutOff.Load(); got != 1 {
		t.Fatalf("cut off %d, want 1", got)
	}
	// A snapshot install cuts off every subscriber of the shard and moves the floor.
	b.rings[0].reset(50)
	if _, err := fast.Poll(nil); !errors.Is(err, transport.ErrWatchResync) {
		t.Fatalf("after a snapshot install: %v, want ErrWatchResync", err)
	}
	if _, err := b.subscribe([]uint32{0}, transport.WatchFilter{}, []transport.WatchPos{{Index: 11}}, noLimit); !errors.Is(err, transport.ErrWatchResync) {
		t.Fatalf("cursor before the installed snapshot: %v, want ErrWatchResync", err)
	}
	s := mustSub(t, b, []uint32{0}, transport.WatchFilter{}, []transport.WatchPos{{Index: 51}})
	b.rings[0].publish(51, []fsm.Event{testEvent(51, "a", "t", "", 0, stPending)})
	if n := len(poll(t, s)); n != 1 {
		t.Fatalf("%d events after the snapshot, want 1", n)
	}
}

// TestEventBusNeverBlocksPublisher: subscribers that never read do not
// slow or stop publishing.
func TestEventBusNeverBlocksPublisher(t *testing.T) {
	b := newEventBus(EventBusConfig{MaxEvents: 64, MaxBytes: 1 << 20}, 1)
	for range 16 {
		mustSub(t, b, []uint32{0}, transport.WatchFilter{}, nil)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ev := []fsm.Event{testEvent(0, "a", "t", "", 0, stPending)}
		for i := uint64(1); i <= 100_000; i++ {
			ev[0].Index = i
			b.rings[0].publish(i, ev)
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("publishing 100,000 entries to 16 subscribers that never read did not finish")
	}
	if allocs := testing.AllocsPerRun(100, func() {
		b.rings[0].publish(1<<40, []fsm.Event{testEvent(1<<40, "a", "t", "", 0, stPending)})
	}); allocs != 0 {
		t.Fatalf("publish allocates %.1f times per entry", allocs)
	}
}

// BenchmarkEventBusLatency measures publish -> receive with 16 subscribers
// waiting on their wake channels: each entry (one event) is published once
// every subscriber received the previous one. It reports the p50 and p99 of
// (receive time - publish start) over every (event, subscriber).
func BenchmarkEventBusLatency(b *testing.B) {
	const subs = 16
	bus := newEventBus(DefaultEventBusConfig(), 1)
	pubAt := make([]int64, b.N+2)
	lat := make([][]int64, subs)
	var received atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	base := time.Now()
	for i := range subs {
		s, err := bus.subscribe([]uint32{0}, transport.WatchFilter{}, nil, noLimit)
		if err != nil {
			b.Fatal(err)
		}
		lat[i] = make([]int64, 0, b.N)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.Close()
			var buf []transport.WatchEvent
			for {
				if !s.Wait(stop, nil) {
					return
				}
				var perr error
				buf, perr = s.Poll(buf[:0])
				if perr != nil {
					panic(perr)
				}
				now := int64(time.Since(base))
				for _, e := range buf {
					lat[i] = append(lat[i], now-atomic.LoadInt64(&pubAt[e.Index]))
				}
				received.Add(int64(len(buf)))
			}
		}()
	}
	ev := []fsm.Event{testEvent(0, "job", "tenant", "", 0, stPending)}
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		ev[0].Index = uint64(i)
		atomic.StoreInt64(&pubAt[i], int64(time.Since(base)))
		bus.rings[0].publish(uint64(i), ev)
		for received.Load() < int64(i*subs) {
			runtime.Gosched()
		}
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	var all []int64
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2]), "p50-ns")
		b.ReportMetric(float64(all[len(all)*99/100]), "p99-ns")
	}
}

// BenchmarkEventBusPublish is the cost on the apply path: one entry of one
// event published to a shard with 16 subscribers that never read.
func BenchmarkEventBusPublish(b *testing.B) {
	bus := newEventBus(DefaultEventBusConfig(), 1)
	for range 16 {
		s, err := bus.subscribe([]uint32{0}, transport.WatchFilter{}, nil, noLimit)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
	}
	ev := []fsm.Event{testEvent(0, "job", "tenant", "", 0, stPending)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		ev[0].Index = uint64(i)
		bus.rings[0].publish(uint64(i), ev)
	}
}
