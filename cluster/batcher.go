package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

// ErrClosed is returned by a proposal made after the node started shutting down.
// It is Unavailable to callers: they retry on another node.
var ErrClosed = fmt.Errorf("cluster: node is shutting down (%w)", transport.ErrUnavailable)

type propResult struct {
	res *internalpb.CommandResult
	err error
}

type proposal struct {
	cmd  *internalpb.Command
	size int
	done chan propResult // buffered 1
	at   time.Time       // when Propose queued it
}

type inflight struct {
	fut   raft.ApplyFuture
	props []*proposal
	start time.Time
	wave  *wave // nil without a wave gate
}

// batcher is the group-commit path of one shard: concurrent proposals are
// collected into one Raft log entry (internalpb.Entry) so that many commands
// share one fsync and one replication round. Up to maxInflight entries are in
// Raft at once, and with a wave gate (wave.go) the shards of a node cut
// their entries together; while an entry waits, new proposals keep
// accumulating and join it.
type batcher struct {
	r           *raft.Raft
	maxCommands int
	maxBytes    int
	timeout     time.Duration
	clockOffset time.Duration // Config.ClockOffset (test only)
	nudge       bool          // Config.CommitNudge (watch, issue 11)
	semantics   bool          // Config.DeadLetters: version 4 entries for completions (fsm.EntryVersionForCluster)
	observe     func(entryCommands int, d time.Duration)

	in       chan *proposal
	inflight chan inflight
	slots    chan struct{} // one token per entry in Raft (BatchMaxInflight)
	waves    *waveGate
	stop     chan struct{}
	wg       sync.WaitGroup
	closeMu  sync.Once

	// Counters for BatchStats.
	entries, commands atomic.Uint64
	fullNanos         atomic.Int64 // collector blocked on a full in-flight window
	waveNanos         atomic.Int64 // collector waiting for the node's next wave
	queueNanos        atomic.Int64 // proposals' time from Propose to raft.Apply
	raftNanos         atomic.Int64 // entries' time from raft.Apply to applied here
}

// BatchStats counts one shard batcher's work since start.
type BatchStats struct {
	Entries  uint64        // log entries proposed
	Commands uint64        // commands in them
	Full     time.Duration // time the collector waited for an in-flight slot
	Wave     time.Duration // time the collector waited for the node's next wave
	// Queue sums over commands the time from Propose to the raft.Apply of
	// their entry; Raft sums over entries the time from raft.Apply until
	// the entry was committed and applied on this node.
	Queue, Raft time.Duration
}

func (b *batcher) stats() BatchStats {
	return BatchStats{
		Entries: b.entries.Load(), Commands: b.commands.Load(), Full: time.Duration(b.fullNanos.Load()), Wave: time.Duration(b.waveNanos.Load()),
		Queue: time.Duration(b.queueNanos.Load()), Raft: time.Duration(b.raftNanos.Load()),
	}
}

func newBatcher(r *raft.Raft, cfg Config, waves *waveGate, observe func(int, time.Duration)) *batcher {
	b := &batcher{
		waves:       waves,
		r:           r,
		maxCommands: cfg.BatchMaxCommands,
		maxBytes:    cfg.BatchMaxBytes,
		timeout:     cfg.ApplyTimeout,
		clockOffset: cfg.ClockOffset,
		nudge:       cfg.CommitNudge,
		semantics:   cfg.DeadLetters,
		observe:     observe,
		in:          make(chan *proposal, 4096),
		inflight:    make(chan inflight, cfg.BatchMaxInflight),
		slots:       make(chan struct{}, cfg.BatchMaxInflight),
		stop:        make(chan struct{}),
	}
	b.wg.Add(2)
	go b.collect()
	go b.complete()
	return b
}

// Propose replicates one command and returns its deterministic result once
// the entry is committed and applied on this node. An error means the outcome
// is unknown (the command may or may not have been applied): callers retry
// with the same request id.
func (b *batcher) Propose(ctx context.Context, cmd *internalpb.Command) (*internalpb.CommandResult, error) {
	p := &proposal{cmd: cmd, size: proto.Size(cmd), done: make(chan propResult, 1), at: time.Now()}
	select {
	case b.in <- p:
	case <-b.stop:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *batcher) collect() {
	defer b.wg.Done()
	defer close(b.inflight)
	for {
		var first *proposal
		select {
		case first = <-b.in:
		case <-b.stop:
			b.drainRejected()
			return
		}
		// Take an in-flight slot before collecting the rest: while the
		// window is full, proposals keep queueing and join this entry.
		select {
		case b.slots <- struct{}{}:
		default:
			t0 := time.Now()
			select {
			case b.slots <- struct{}{}:
				b.fullNanos.Add(int64(time.Since(t0)))
			case <-b.stop:
				failAll([]*proposal{first}, ErrClosed)
				b.drainRejected()
				return
			}
		}
		// Then wait for the node's next wave (wave.go): the shards this
		// node leads cut their entries together.
		var w *wave
		if b.waves != nil {
			t0 := time.Now()
			var ok bool
			if w, ok = b.waves.enter(b.stop); !ok {
				<-b.slots
				failAll([]*proposal{first}, ErrClosed)
				b.drainRejected()
				return
			}
			b.waveNanos.Add(int64(time.Since(t0)))
		}
		props := []*proposal{first}
		size := first.size
	fill:
		for len(props) < b.maxCommands && size < b.maxBytes {
			select {
			case p := <-b.in:
				props = append(props, p)
				size += p.size
			default:
				break fill
			}
		}
		entry := &internalpb.Entry{NowMs: time.Now().Add(b.clockOffset).UnixMilli()}
		entry.Commands = make([]*internalpb.Command, len(props))
		for i, p := range props {
			entry.Commands[i] = p.cmd
		}
		entry.Version = fsm.EntryVersionForCluster(entry.Commands, b.semantics)
		data, err := proto.Marshal(entry)
		if err != nil {
			b.release(w)
			failAll(props, fmt.Errorf("cluster: encode entry: %w", err))
			continue
		}
		applied := time.Now()
		var queued time.Duration
		for _, p := range props {
			queued += applied.Sub(p.at)
		}
		fut := b.r.Apply(data, b.timeout)
		b.entries.Add(1)
		b.commands.Add(uint64(len(props)))
		b.queueNanos.Add(int64(queued))
		b.inflight <- inflight{fut: fut, props: props, start: applied, wave: w} // never blocks: a slot is held
	}
}

// release gives back an entry's in-flight slot and its place in its wave.
func (b *batcher) release(w *wave) {
	<-b.slots
	if w != nil {
		b.waves.leave(w)
	}
}

func (b *batcher) drainRejected() {
	for {
		select {
		case p := <-b.in:
			p.done <- propResult{err: ErrClosed}
		default:
			return
		}
	}
}

func (b *batcher) complete() {
	defer b.wg.Done()
	for in := range b.inflight {
		err := in.fut.Error()
		b.release(in.wave)
		if err != nil {
			failAll(in.props, err)
			continue
		}
		d := time.Since(in.start)
		b.raftNanos.Add(int64(d))
		if b.observe != nil {
			b.observe(len(in.props), d)
		}
		results, ok := in.fut.Response().([]*internalpb.CommandResult)
		if !ok || len(results) != len(in.props) {
			failAll(in.props, fmt.Errorf("cluster: unexpected apply response %T", in.fut.Response()))
			continue
		}
		for i, p := range in.props {
			p.done <- propResult{res: results[i]}
		}
		// With CommitNudge, the last entry of a burst is followed by a
		// Raft barrier entry (not applied to the FSM): replicating it
		// carries the new commit index to the followers at once, instead
		// of on the next CommitTimeout round (watchers on followers see
		// the change within a round trip). Not awaited.
		if b.nudge && len(b.inflight) == 0 && len(b.in) == 0 {
			b.r.Barrier(b.timeout)
		}
	}
}

func failAll(props []*proposal, err error) {
	for _, p := range props {
		p.done <- propResult{err: err}
	}
}

// Stop stops accepting proposals; proposals already in Raft complete, or
// fail when Raft shuts down.
func (b *batcher) Stop() { b.closeMu.Do(func() { close(b.stop) }) }

// Wait waits for the batcher's goroutines. Call it after Raft has shut
// down: a future of a node that lost its place in the cluster may
// otherwise never resolve.
func (b *batcher) Wait() { b.wg.Wait() }
