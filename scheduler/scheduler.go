// Package scheduler is where Hodei decides who runs what, and when: the
// live, leader-side work of each shard — the timers that turn time into
// replicated commands (lease expiry after a grace period, promotion of
// delayed and backed-off jobs, retention of finished jobs, checkpoints,
// cron schedule fires in cron.go) —
// and the node's dispatcher (dispatcher.go), which turns the demand of every
// worker connected to the node into batched lease proposals, steals work
// from other shards' leaders in bulk, and carries completions back.
//
// It never touches Raft or gRPC: it sees the node through the small
// Proposer, State and DispatchBackend interfaces declared here, which the
// cluster package satisfies.
package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Proposer replicates a command through the shard's Raft group.
type Proposer interface {
	Propose(ctx context.Context, cmd *internalpb.Command) (*internalpb.CommandResult, error)
}

// State is the read side of the shard's FSM the timers need.
type State interface {
	NextDelayedAt() (int64, bool)
	ExpiredLeases(nowMs int64, max int) []*hodeiv1.LeaseRef
	NextLeaseExpiry() (int64, bool)
	OldestFinishedAt() (int64, bool)
	// OldestDeadAt is when the longest-dead DEAD job died (issue 11).
	OldestDeadAt() (int64, bool)
	// OldestPipelineEndedAt is when the earliest-ended pipeline ended
	// (issue 13): ended pipelines share the finished jobs' retention.
	OldestPipelineEndedAt() (int64, bool)
	// LastChain is the newest applied index and apply-chain hash, for
	// replica consistency checkpoints (see fsm/chain.go).
	LastChain() (index, chain uint64, ok bool)
}

// Config configures the timers of one shard leader.
type Config struct {
	Shard     uint32
	Grace     time.Duration // no lease expires before leadership start + Grace
	Retention time.Duration // finished jobs are removed after this
	// DeadRetention: DEAD jobs are removed this long after they died (the
	// FSM's DeadRetentionMs decides which; this only says when a GC is
	// due). 0: never by age.
	DeadRetention time.Duration
	Tick          time.Duration // timer resolution
	MaxBatch      int           // max leases expired / jobs removed per command
	// CheckpointEvery is how often the leader proposes a replica
	// consistency Checkpoint when the shard has applied entries since the
	// last one; 0 disables checkpoints.
	CheckpointEvery time.Duration
	Now             func() time.Time
	Logger          *slog.Logger
	// OnExpire is called with the number of leases expired by this leader.
	OnExpire func(n int)
	// Schedules, if set, is the shard's cron schedule state: the timers
	// propose FireSchedules for its due slots (cron.go).
	Schedules ScheduleState
	// OnFire, if set, is called with the number of jobs schedule fires
	// created.
	OnFire func(n int)
	// OnRound, if set, is called after every timer round (tests use it to
	// know that the timers have looked at the state).
	OnRound func()
}

// Timers runs the leader-side timers of one shard. Create one per term of
// leadership and stop it when leadership is lost.
type Timers struct {
	cfg   Config
	p     Proposer
	s     State
	start time.Time

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Start launches the timers; call Stop to end them.
func Start(cfg Config, p Proposer, s State) *Timers {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 50 * time.Millisecond
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Timers{cfg: cfg, p: p, s: s, start: cfg.Now(), wake: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go t.run(ctx)
	return t
}

// Poke asks the timers to re-check state now (e.g. after an apply).
func (t *Timers) Poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Stop ends the timers and waits for them.
func (t *Timers) Stop() {
	t.once.Do(t.cancel)
	<-t.done
}

func (t *Timers) run(ctx context.Context) {
	defer close(t.done)
	tick := time.NewTicker(t.cfg.Tick)
	defer tick.Stop()
	lastGC := time.Time{}
	lastCp, cpIndex := t.cfg.Now(), uint64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.wake:
		}
		now := t.cfg.Now()
		nowMs := now.UnixMilli()
		if at, ok := t.s.NextDelayedAt(); ok && at <= nowMs {
			t.propose(ctx, &internalpb.Command{Kind: &internalpb.Command_Promote{Promote: &internalpb.PromoteDelayed{}}})
		}
		if now.Sub(t.start) >= t.cfg.Grace {
			if at, ok := t.s.NextLeaseExpiry(); ok && at <= nowMs {
				refs := t.s.ExpiredLeases(nowMs, t.cfg.MaxBatch)
				if len(refs) > 0 {
					res := t.propose(ctx, &internalpb.Command{Kind: &internalpb.Command_Expire{Expire: &internalpb.ExpireLeases{Leases: refs}}})
					if res != nil && t.cfg.OnExpire != nil {
						t.cfg.OnExpire(int(res.GetCount()))
					}
				}
			}
		}
		if now.Sub(lastGC) >= time.Second {
			lastGC = now
			cutoff := now.Add(-t.cfg.Retention).UnixMilli()
			due := false
			if at, ok := t.s.OldestFinishedAt(); ok && at < cutoff {
				due = true
			}
			if at, ok := t.s.OldestPipelineEndedAt(); ok && at < cutoff {
				due = true // the same GC command removes them (fsm/pipeline_state.go)
			}
			if at, ok := t.s.OldestDeadAt(); ok && t.cfg.DeadRetention > 0 && at < now.Add(-t.cfg.DeadRetention).UnixMilli() {
				due = true // the same GC command removes them (fsm/dead.go)
			}
			if due {
				t.propose(ctx, &internalpb.Command{Kind: &internalpb.Command_Gc{Gc: &internalpb.GCJobs{FinishedBeforeMs: cutoff, Max: uint32(t.cfg.MaxBatch)}}})
			}
		}
		if t.cfg.CheckpointEvery > 0 && now.Sub(lastCp) >= t.cfg.CheckpointEvery {
			lastCp = now
			// Only when something was applied since the last checkpoint
			// landed: an idle shard does not grow its log.
			if idx, chain, ok := t.s.LastChain(); ok && idx != cpIndex {
				if t.propose(ctx, &internalpb.Command{Kind: &internalpb.Command_Checkpoint{Checkpoint: &internalpb.Checkpoint{Index: idx, Chain: chain}}}) != nil {
					cpIndex, _, _ = t.s.LastChain()
				}
			}
		}
		t.fireSchedules(ctx, nowMs)
		if t.cfg.OnRound != nil {
			t.cfg.OnRound()
		}
	}
}

func (t *Timers) propose(ctx context.Context, cmd *internalpb.Command) *internalpb.CommandResult {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := t.p.Propose(pctx, cmd)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			t.cfg.Logger.Warn("timer proposal failed", "shard", t.cfg.Shard, "err", err)
		}
		return nil
	}
	return res
}

// Signal is a broadcast wake-up: waiters get a channel that is closed at the
// next Fire. It never blocks the firer (the FSM apply path).
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewSignal returns a ready Signal.
func NewSignal() *Signal { return &Signal{ch: make(chan struct{})} }

// Wait returns a channel closed by the next Fire.
func (s *Signal) Wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

// Fire wakes every current waiter.
func (s *Signal) Fire() {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}
