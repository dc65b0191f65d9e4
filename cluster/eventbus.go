package cluster

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/transport"
)

// The event bus is this node's record of the job events its shard replicas
// applied, for WatchJobs. Contract:
//
//   - Publish runs on the FSM goroutine (shard.onApply) and never waits for
//     a subscriber: it copies the entry's events into the shard's ring under
//     the ring's lock (held by readers only for a bounded copy of at most
//     pollBatch records), then signals each subscriber of the shard with a
//     non-blocking send on its wake channel. No allocation per event: ring
//     slots are preallocated and the strings are the FSM's own.
//   - Each shard keeps a bounded ring of its newest events (retention by
//     count and by estimated bytes, EventBusConfig). An event is named by
//     (index, position among its entry's events), the same on every replica.
//   - A subscriber reads at its own pace from its place in the ring. When
//     the ring overwrote records it had not read (it fell behind), or a
//     snapshot install replaced the shard's state (the events it covers were
//     never produced here), its next Poll fails with
//     transport.ErrWatchResync: the subscriber is cut off, never silently
//     moved forward.
//   - A subscription starting from a position older than the ring's floor
//     (the oldest resumable position) fails with ErrWatchResync; from a
//     position ahead of the shard's log with ErrWatchCursor.

// EventBusConfig bounds each shard's ring of retained events.
type EventBusConfig struct {
	MaxEvents int // records per shard
	MaxBytes  int // estimated bytes per shard (eventBytes)
}

// DefaultEventBusConfig keeps up to 65,536 events or 16 MiB per shard.
func DefaultEventBusConfig() EventBusConfig {
	return EventBusConfig{MaxEvents: 1 << 16, MaxBytes: 16 << 20}
}

// Validate checks the bounds.
func (c EventBusConfig) Validate() error {
	var errs []error
	if c.MaxEvents < 1 {
		errs = append(errs, fmt.Errorf("watch max events must be >= 1, got %d", c.MaxEvents))
	}
	if c.MaxBytes < eventOverhead {
		errs = append(errs, fmt.Errorf("watch max bytes must be >= %d, got %d", eventOverhead, c.MaxBytes))
	}
	return errors.Join(errs...)
}

// eventOverhead is the estimated fixed size of one record; eventBytes adds
// the strings.
const eventOverhead = 96

func eventBytes(e *fsm.Event) int {
	return eventOverhead + len(e.JobID) + len(e.Tenant) + len(e.Kind)
}

// pollBatch bounds the records one Poll copies per shard, and so how long a
// reader holds a ring's lock.
const pollBatch = 256

type busRecord struct {
	ev   fsm.Event
	pos  uint32
	size int
}

// eventBus holds one ring per shard.
type eventBus struct {
	cfg   EventBusConfig
	rings []*shardRing
	m     *busMetrics
}

// busMetrics are the bus's counters (metrics.go registers them).
type busMetrics struct {
	watchers  atomic.Int64
	published atomic.Uint64
	evicted   atomic.Uint64 // records dropped from a ring by retention
	cutOff    atomic.Uint64 // subscribers cut off (fell behind or snapshot install)
}

func newEventBus(cfg EventBusConfig, shards int) *eventBus {
	b := &eventBus{cfg: cfg, m: &busMetrics{}}
	for i := 0; i < shards; i++ {
		r := &shardRing{bus: b, shard: uint32(i), recs: make([]busRecord, cfg.MaxEvents),
			floor: transport.WatchPos{Index: 1}}
		r.last = r.floor
		r.subs.Store(&[]*subscription{})
		b.rings = append(b.rings, r)
	}
	return b
}

// shardRing is one shard's retained events: records with sequence numbers
// [tail, head) live at recs[seq % len(recs)].
type shardRing struct {
	bus   *eventBus
	shard uint32

	mu         sync.RWMutex
	recs       []busRecord
	head, tail uint64
	bytes      int
	floor      transport.WatchPos // the oldest position resumable from here
	last       transport.WatchPos // the position after the newest record
	epoch      uint64             // bumped by reset: older subscribers are cut off
	// published mirrors head (and changes on reset) for lock-free checks.
	published atomic.Uint64

	subsMu sync.Mutex                      // serialises changes of subs
	subs   atomic.Pointer[[]*subscription] // copy on write: publish reads it lock-free
}

// publish appends one entry's events and wakes the shard's subscribers.
func (r *shardRing) publish(index uint64, events []fsm.Event) {
	if len(events) == 0 {
		return
	}
	r.mu.Lock()
	n := uint64(len(r.recs))
	for i := range events {
		e := &events[i]
		size := eventBytes(e)
		for r.head > r.tail && (r.head-r.tail >= n || r.bytes+size > r.bus.cfg.MaxBytes) {
			old := &r.recs[r.tail%n]
			r.floor = transport.WatchPos{Index: old.ev.Index, N: old.pos + 1}
			r.bytes -= old.size
			*old = busRecord{}
			r.tail++
			r.bus.m.evicted.Add(1)
		}
		r.recs[r.head%n] = busRecord{ev: *e, pos: uint32(i), size: size}
		r.head++
		r.bytes += size
	}
	r.last = transport.WatchPos{Index: index, N: uint32(len(events))}
	r.published.Store(r.head)
	r.mu.Unlock()
	r.bus.m.published.Add(uint64(len(events)))
	r.wake()
}

// reset drops the retained events after a snapshot install at index: the
// events of the entries it covers were not produced here.
func (r *shardRing) reset(index uint64) {
	r.mu.Lock()
	n := uint64(len(r.recs))
	for ; r.tail < r.head; r.tail++ {
		r.recs[r.tail%n] = busRecord{}
	}
	r.bytes = 0
	r.epoch++
	// Never below what was published here: a backup restore (raft.Restore)
	// installs a state whose applied index is the old cluster's, below
	// this shard's log; no cursor of this node may resume across it.
	floor := transport.WatchPos{Index: index + 1}
	if end := (transport.WatchPos{Index: r.last.Index + 1}); r.head > 0 && floor.Less(end) {
		floor = end
	}
	r.floor = floor
	r.last = r.floor
	r.mu.Unlock()
	r.wake()
}

func (r *shardRing) wake() {
	for _, s := range *r.subs.Load() {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (r *shardRing) addSub(s *subscription) {
	r.subsMu.Lock()
	defer r.subsMu.Unlock()
	old := *r.subs.Load()
	next := make([]*subscription, len(old), len(old)+1)
	copy(next, old)
	next = append(next, s)
	r.subs.Store(&next)
}

func (r *shardRing) removeSub(s *subscription) {
	r.subsMu.Lock()
	defer r.subsMu.Unlock()
	old := *r.subs.Load()
	next := make([]*subscription, 0, len(old))
	for _, o := range old {
		if o != s {
			next = append(next, o)
		}
	}
	r.subs.Store(&next)
}

// subscription is one watcher's place in the rings of the shards it watches.
type subscription struct {
	bus    *eventBus
	filter transport.WatchFilter
	shards []subShard
	wake   chan struct{} // buffered 1
	closed atomic.Bool
	cut    bool // Poll returned ErrWatchResync (counted once)
}

type subShard struct {
	ring  *shardRing
	seq   uint64             // next ring record to read
	epoch uint64             // the ring's epoch when subscribed
	pos   transport.WatchPos // position after everything consumed
}

// subscribe starts a subscription on the given shards, each from the
// position at the same index of from (nil: from now). appliedOrLast(i)
// reports the newest log index the shard may hold (for the future check).
func (b *eventBus) subscribe(shards []uint32, f transport.WatchFilter, from []transport.WatchPos, lastIndex func(shard uint32) uint64) (*subscription, error) {
	s := &subscription{bus: b, filter: f, wake: make(chan struct{}, 1)}
	for i, sh := range shards {
		if int(sh) >= len(b.rings) {
			return nil, fmt.Errorf("%w: shard %d does not exist", transport.ErrWatchCursor, sh)
		}
		r := b.rings[sh]
		r.mu.RLock()
		ss := subShard{ring: r, epoch: r.epoch}
		if from == nil {
			ss.seq, ss.pos = r.head, r.last
		} else {
			p := from[i]
			switch {
			case p.Less(r.floor):
				floor := r.floor.Index // read under the lock: publish moves the floor
				r.mu.RUnlock()
				return nil, fmt.Errorf("%w (shard %d: the cursor is at index %d, this node retains events from index %d)",
					transport.ErrWatchResync, sh, p.Index, floor)
			case p.Index > lastIndex(sh)+1:
				r.mu.RUnlock()
				return nil, fmt.Errorf("%w: shard %d: the cursor is at index %d, ahead of the shard's log (last index %d)",
					transport.ErrWatchCursor, sh, p.Index, lastIndex(sh))
			}
			ss.seq, ss.pos = r.search(p), p
		}
		r.mu.RUnlock()
		s.shards = append(s.shards, ss)
	}
	for _, ss := range s.shards {
		ss.ring.addSub(s)
	}
	b.m.watchers.Add(1)
	return s, nil
}

// search returns the sequence number of the first record at or after p.
// Callers hold r.mu.
func (r *shardRing) search(p transport.WatchPos) uint64 {
	n := uint64(len(r.recs))
	lo, hi := r.tail, r.head
	for lo < hi {
		mid := lo + (hi-lo)/2
		rec := &r.recs[mid%n]
		if (transport.WatchPos{Index: rec.ev.Index, N: rec.pos}).Less(p) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// Poll implements transport.WatchSubscription.
func (s *subscription) Poll(buf []transport.WatchEvent) ([]transport.WatchEvent, error) {
	for i := range s.shards {
		ss := &s.shards[i]
		r := ss.ring
		r.mu.RLock()
		if ss.epoch != r.epoch || ss.seq < r.tail {
			lost := ss.epoch != r.epoch
			r.mu.RUnlock()
			if !s.cut {
				s.cut = true
				s.bus.m.cutOff.Add(1)
			}
			if lost {
				return buf, fmt.Errorf("%w (shard %d installed a snapshot)", transport.ErrWatchResync, r.shard)
			}
			return buf, fmt.Errorf("%w (shard %d: this watcher fell behind the %d retained events)", transport.ErrWatchResync, r.shard, len(r.recs))
		}
		n := uint64(len(r.recs))
		end := min(r.head, ss.seq+pollBatch)
		for ; ss.seq < end; ss.seq++ {
			rec := &r.recs[ss.seq%n]
			p := transport.WatchPos{Index: rec.ev.Index, N: rec.pos}
			if p.Less(ss.pos) {
				continue // before the start position (a record published late on this node)
			}
			ss.pos = transport.WatchPos{Index: p.Index, N: p.N + 1}
			if rec.ev.From == rec.ev.To {
				continue // a delayed job became leasable: not a state change
			}
			we := transport.WatchEvent{Shard: r.shard, Pos: rec.pos, Index: rec.ev.Index, NowMs: rec.ev.NowMs,
				JobID: rec.ev.JobID, Tenant: rec.ev.Tenant, Kind: rec.ev.Kind, From: rec.ev.From, To: rec.ev.To}
			if s.filter.Match(&we) {
				buf = append(buf, we)
			}
		}
		if ss.seq == r.head && ss.pos.Less(r.last) {
			ss.pos = r.last
		}
		more := ss.seq < r.head
		r.mu.RUnlock()
		if more {
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}
	}
	return buf, nil
}

// pending reports, without locking, whether a ring may have records this
// subscriber has not polled.
func (s *subscription) pending() bool {
	for i := range s.shards {
		if s.shards[i].ring.published.Load() != s.shards[i].seq {
			return true
		}
	}
	return false
}

// spinPolls bounds Wait's spinning before it parks on the wake channel.
const spinPolls = 64

// Wait implements transport.WatchSubscription: it returns when Poll may
// have more (after spinning briefly with runtime.Gosched, which keeps the
// wake-up off the OS scheduler when events come close together), or when
// stop or the timer fires (false).
func (s *subscription) Wait(stop <-chan struct{}, timer <-chan time.Time) bool {
	select {
	case <-timer: // first, so that a busy shard does not starve bookmarks
		return false
	case <-stop:
		return false
	default:
	}
	for range spinPolls {
		if s.pending() {
			select {
			case <-s.wake:
			default:
			}
			return true
		}
		runtime.Gosched()
	}
	select {
	case <-s.wake:
		return true
	case <-stop:
	case <-timer:
	}
	return false
}

// Positions implements transport.WatchSubscription.
func (s *subscription) Positions(dst []transport.WatchPos) []transport.WatchPos {
	for i := range s.shards {
		dst = append(dst, s.shards[i].pos)
	}
	return dst
}

// Close implements transport.WatchSubscription.
func (s *subscription) Close() {
	if s.closed.Swap(true) {
		return
	}
	for _, ss := range s.shards {
		ss.ring.removeSub(s)
	}
	s.bus.m.watchers.Add(-1)
}

// futureWait bounds how long Watch waits for this node's copy of a shard's
// log to reach a cursor's index (a cursor taken on a node that is ahead).
const futureWait = 2 * time.Second

// Watch implements transport.WatchBackend over this node's event bus.
func (n *Node) Watch(shards []uint32, f transport.WatchFilter, from []transport.WatchPos) (transport.WatchSubscription, error) {
	lastIndex := func(sh uint32) uint64 { return n.shards[sh].raft.LastIndex() }
	for i, sh := range shards {
		if from == nil || int(sh) >= len(n.shards) {
			continue
		}
		deadline := time.Now().Add(futureWait)
		for from[i].Index > lastIndex(sh)+1 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	s, err := n.bus.subscribe(shards, f, from, lastIndex)
	if err != nil {
		return nil, err
	}
	return s, nil
}
