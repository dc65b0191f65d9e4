package cluster

import (
	"sync"
	"time"
)

// waveGate makes the shards one node leads propose together, in waves.
//
// Every shard's batcher (batcher.go) turns the proposals queued since its
// last entry into one Raft log entry. Left alone, the shards a node leads
// propose whenever their first command arrives, so under load their entries
// reach the node's shared log store (cluster/logdb) and the followers one at
// a time: every entry pays its own log-store commit on the leader, its own
// AppendEntries and its own commit on each follower, and carries only the
// one or two commands that arrived since the last. Measured on 3 nodes with
// 8 shards and 64 clients: 1.2 commands per entry, 0.8 log-store commits per
// submit, a Raft round of 12 ms.
//
// With the gate, a batcher waits before cutting its entry until the node
// opens a wave: at most max waves are in Raft at once, and when one
// completes, every shard with queued proposals cuts its entry at the same
// moment. The node's leaders then hit the log store together (one commit
// for all of them, see logdb's linger), their AppendEntries reach each
// follower together, and each entry carries everything that queued during
// the previous round. This is the multi-Raft "one ready loop per node"
// shape (TiKV's raftstore, dragonboat's step workers) on top of
// hashicorp/raft's one-goroutine-per-group design. Same run, same machine:
// docs/benchmarks.md.
//
// A wave older than stall no longer holds the next one back, so a shard
// that cannot commit (lost quorum, slow follower) delays the node's other
// shards by at most stall per wave instead of stopping them.
type waveGate struct {
	max   int
	stall time.Duration

	mu       sync.Mutex
	inflight []*wave // opened and not yet finished, oldest first
	next     *gateOpening
	now      func() time.Time // tests

	waves, entries uint64 // opened so far, and the entries they carried
}

type wave struct {
	members int
	opened  time.Time
}

// gateOpening is what waiters wait on: ch closes when the wave w opens.
type gateOpening struct {
	ch      chan struct{}
	w       *wave
	waiters int
}

// newWaveGate returns a gate that keeps at most max waves in flight; nil
// (no gate) if max < 1.
func newWaveGate(max int, stall time.Duration) *waveGate {
	if max < 1 {
		return nil
	}
	return &waveGate{max: max, stall: stall, now: time.Now}
}

// admissible reports whether a new wave may open: fewer than max waves in
// flight that are younger than stall. Callers hold g.mu.
func (g *waveGate) admissible(now time.Time) (bool, time.Duration) {
	live := 0
	var wait time.Duration = -1
	for _, w := range g.inflight {
		age := now.Sub(w.opened)
		if g.stall > 0 && age >= g.stall {
			continue
		}
		live++
		if left := g.stall - age; g.stall > 0 && (wait < 0 || left < wait) {
			wait = left
		}
	}
	return live < g.max, wait
}

// open starts a new wave for every current waiter. Callers hold g.mu and
// know g.next has waiters.
func (g *waveGate) open(now time.Time) *wave {
	o := g.next
	g.next = nil
	w := &wave{opened: now, members: o.waiters}
	o.w = w
	close(o.ch)
	g.inflight = append(g.inflight, w)
	g.waves++
	g.entries += uint64(o.waiters)
	return w
}

// enter blocks until the caller may cut its entry and returns the wave it
// belongs to; leave(w) must follow once the entry is resolved (committed,
// failed or abandoned). It returns nil, false if stop closes first.
func (g *waveGate) enter(stop <-chan struct{}) (*wave, bool) {
	g.mu.Lock()
	o := g.next
	if o == nil {
		o = &gateOpening{ch: make(chan struct{})}
		g.next = o
	}
	o.waiters++
	for {
		if o.w != nil {
			g.mu.Unlock()
			return o.w, true
		}
		now := g.now()
		ok, wait := g.admissible(now)
		if ok {
			w := g.open(now) // o.waiters counts the caller
			g.mu.Unlock()
			return w, true
		}
		g.mu.Unlock()
		var t *time.Timer
		var timer <-chan time.Time
		if wait >= 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-o.ch:
		case <-timer: // the oldest wave stalls: look again
		case <-stop:
			if t != nil {
				t.Stop()
			}
			g.mu.Lock()
			if w := o.w; w != nil { // opened meanwhile: give the place back
				g.mu.Unlock()
				g.leave(w)
				return nil, false
			}
			o.waiters--
			if o.waiters == 0 && g.next == o {
				g.next = nil
			}
			g.mu.Unlock()
			return nil, false
		}
		if t != nil {
			t.Stop()
		}
		g.mu.Lock()
	}
}

// leave resolves one member of w; the last one finishes the wave and, if
// that makes room, opens the next for whoever waits.
func (g *waveGate) leave(w *wave) {
	g.mu.Lock()
	defer g.mu.Unlock()
	w.members--
	if w.members > 0 {
		return
	}
	for i, x := range g.inflight {
		if x == w {
			g.inflight = append(g.inflight[:i], g.inflight[i+1:]...)
			break
		}
	}
	if g.next != nil && g.next.waiters > 0 {
		now := g.now()
		if ok, _ := g.admissible(now); ok {
			g.open(now)
		}
	}
}

// WaveStats counts a node's proposal waves since start.
type WaveStats struct {
	Waves, Entries uint64 // waves opened and the shard entries they carried
	InFlight       int    // unfinished waves now
}

func (g *waveGate) stats() WaveStats {
	if g == nil {
		return WaveStats{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return WaveStats{Waves: g.waves, Entries: g.entries, InFlight: len(g.inflight)}
}
