package cluster

import (
	"sync"
	"testing"
	"time"
)

// enterAsync starts an enter and returns a channel that yields its wave.
func enterAsync(g *waveGate, stop <-chan struct{}) <-chan *wave {
	ch := make(chan *wave, 1)
	go func() {
		w, ok := g.enter(stop)
		if !ok {
			w = nil
		}
		ch <- w
	}()
	return ch
}

func waitWaiters(t *testing.T, g *waveGate, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		got := 0
		if g.next != nil {
			got = g.next.waiters
		}
		g.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiters = %d, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWaveGateDisabled(t *testing.T) {
	if g := newWaveGate(0, time.Second); g != nil {
		t.Fatal("ProposeWaves 0 must give no gate")
	}
	if (*waveGate)(nil).stats() != (WaveStats{}) {
		t.Fatal("a nil gate has zero stats")
	}
}

// The shards that queue while a wave is in flight all go out together in
// the next one, and it opens only when the previous one is finished.
func TestWaveGateAlignsWaiters(t *testing.T) {
	g := newWaveGate(1, time.Hour)
	stop := make(chan struct{})
	first, ok := g.enter(stop)
	if !ok || first.members != 1 {
		t.Fatalf("first enter: %v %+v", ok, first)
	}
	var chans []<-chan *wave
	for range 3 {
		chans = append(chans, enterAsync(g, stop))
	}
	waitWaiters(t, g, 3)
	for _, ch := range chans {
		select {
		case <-ch:
			t.Fatal("a waiter went ahead while the only wave was in flight")
		default:
		}
	}
	g.leave(first)
	var second *wave
	for _, ch := range chans {
		w := <-ch
		if w == nil {
			t.Fatal("waiter refused")
		}
		if second == nil {
			second = w
		} else if w != second {
			t.Fatal("waiters ended up in different waves")
		}
	}
	if second.members != 3 {
		t.Fatalf("wave members = %d, want 3", second.members)
	}
	st := g.stats()
	if st.Waves != 2 || st.Entries != 4 || st.InFlight != 1 {
		t.Fatalf("stats %+v, want 2 waves, 4 entries, 1 in flight", st)
	}
	// The wave finishes only with its last member.
	g.leave(second)
	g.leave(second)
	if g.stats().InFlight != 1 {
		t.Fatal("wave finished before its last member")
	}
	g.leave(second)
	if g.stats().InFlight != 0 {
		t.Fatal("wave not finished after its last member")
	}
	// An idle gate admits at once.
	w, ok := g.enter(stop)
	if !ok || w.members != 1 {
		t.Fatal("idle gate did not admit")
	}
}

// A wave that never finishes (a shard that cannot commit) holds the next
// one back for at most the stall time.
func TestWaveGateStall(t *testing.T) {
	stall := 50 * time.Millisecond
	g := newWaveGate(1, stall)
	stop := make(chan struct{})
	stuck, _ := g.enter(stop)
	t0 := time.Now()
	ch := enterAsync(g, stop)
	w := <-ch
	if w == nil || w == stuck {
		t.Fatal("waiter did not get a wave of its own")
	}
	if d := time.Since(t0); d < stall/2 {
		t.Fatalf("waiter admitted after %v, before the stall time %v", d, stall)
	}
	// The stalled wave still counts as in flight until it finishes, and
	// finishing it late is harmless.
	if g.stats().InFlight != 2 {
		t.Fatalf("in flight %d, want 2", g.stats().InFlight)
	}
	g.leave(stuck)
	g.leave(w)
	if g.stats().InFlight != 0 {
		t.Fatal("waves left in flight")
	}
}

// A waiter that gives up (shutdown) leaves no member behind, and one that
// gives up just as its wave opened hands its place back.
func TestWaveGateStop(t *testing.T) {
	g := newWaveGate(1, time.Hour)
	stop := make(chan struct{})
	first, _ := g.enter(stop)
	quit := make(chan struct{})
	ch := enterAsync(g, quit)
	other := enterAsync(g, stop)
	waitWaiters(t, g, 2)
	close(quit)
	if w := <-ch; w != nil {
		t.Fatal("stopped waiter got a wave")
	}
	waitWaiters(t, g, 1)
	g.leave(first)
	w := <-other
	if w == nil || w.members != 1 {
		t.Fatalf("remaining waiter's wave %+v, want 1 member", w)
	}
	g.leave(w)
	if g.stats().InFlight != 0 {
		t.Fatal("waves left in flight")
	}
}

// Many shards entering and leaving concurrently: never more than max live
// waves, and everything finishes (run with -race).
func TestWaveGateConcurrent(t *testing.T) {
	const max = 2
	g := newWaveGate(max, time.Hour)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for s := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				w, ok := g.enter(stop)
				if !ok {
					t.Error("enter refused")
					return
				}
				if n := g.stats().InFlight; n > max {
					t.Errorf("%d waves in flight, max %d", n, max)
				}
				if (s+i)%7 == 0 {
					time.Sleep(50 * time.Microsecond) // a slower commit
				}
				g.leave(w)
			}
		}()
	}
	wg.Wait()
	st := g.stats()
	if st.InFlight != 0 || st.Entries != 8*300 {
		t.Fatalf("stats %+v, want 0 in flight and 2400 entries", st)
	}
}

// In a real 3-node, 8-shard cluster under concurrent submits, the shards a
// node leads do share waves (the gate is wired into every shard's batcher),
// and every submit is acknowledged.
func TestWavesAlignShardsOfANode(t *testing.T) {
	tc := startCluster(t, 3, 8)
	waitFor(t, 30*time.Second, "shard leadership spread over 3 nodes", func() bool { return tc.balanced(3) })
	before := make([]WaveStats, len(tc.nodes))
	for i, n := range tc.nodes {
		before[i] = n.DebugStats().Waves
	}
	l := startLoad(t, tc, 64, 48, 1500)
	l.wg.Wait()
	if acked := l.finish(); len(acked) != 1500 {
		t.Fatalf("acknowledged %d of 1500", len(acked))
	}
	var waves, entries uint64
	for i, n := range tc.nodes {
		st := n.DebugStats().Waves
		waves += st.Waves - before[i].Waves
		entries += st.Entries - before[i].Entries
	}
	t.Logf("%d waves carried %d shard entries", waves, entries)
	if waves == 0 || entries <= waves {
		t.Fatalf("%d waves carried %d shard entries: no wave held more than one shard's entry", waves, entries)
	}
}
