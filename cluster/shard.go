package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/scheduler"
	"github.com/hodei-io/hodei/transport"
)

// shard is one Raft group with its FSM, proposal batcher and leader timers.
type shard struct {
	id         uint32
	node       *Node
	log        *slog.Logger
	fsm        *fsm.FSM
	raft       *raft.Raft
	closeStore func() error
	trans      transport.RaftTransport
	batch      *batcher
	events     *shardRing // this shard's events on the node's bus (eventbus.go)

	notify chan bool
	// tenantSync wakes the tenant weight sync (tenants.go); buffered 1.
	tenantSync chan struct{}

	mu     sync.Mutex
	timers *scheduler.Timers
	// readyTerm is the term in which this node, as leader, has seen a
	// Barrier complete: only then does its commit index cover every entry
	// committed by earlier leaders.
	readyTerm atomic.Uint64
	// leading follows raft's leadership notifications (for metrics the
	// apply path observes only on the leader's replica).
	leading atomic.Bool

	stop chan struct{}
	wg   sync.WaitGroup
}

func openShard(n *Node, id uint32, dir string) (*shard, error) {
	cfg := n.cfg
	s := &shard{id: id, node: n, log: cfg.Logger.With("shard", id), notify: make(chan bool, 16), tenantSync: make(chan struct{}, 1), stop: make(chan struct{})}
	fcfg := cfg.FSM
	fcfg.Shard = id
	s.events = n.bus.rings[id]
	f, err := fsm.New(fcfg, fsm.Options{OnApply: s.onApply, OnDivergence: s.onDivergence, OnRestore: s.events.reset, OnDeadEvicted: s.onDeadEvicted})
	if err != nil {
		return nil, err
	}
	s.fsm = f
	g, err := openGroup(n, id, fmt.Sprintf("shard %d", id), dir, timedFSM{FSM: f, m: n.metrics.snapshots, group: "shard"}, s.notify)
	if err != nil {
		return nil, err
	}
	s.closeStore = g.closeStore
	s.trans = g.trans
	r := g.raft
	s.raft = r
	s.batch = newBatcher(r, cfg, n.waves, n.metrics.observeApply)
	s.wg.Add(2)
	go s.watchLeadership()
	go s.runTenantSync()
	return s, nil
}

func (s *shard) bootstrap(peers []Peer) error { return bootstrapGroup(s.raft, peers) }

// onApply runs on the FSM goroutine after every applied entry: it must not block.
func (s *shard) onApply(index uint64, events []fsm.Event) {
	ready := false
	for _, e := range events {
		if e.To == hodeiv1.JobState_JOB_STATE_PENDING {
			ready = true
		}
		s.node.metrics.event(e, s.leading.Load())
	}
	s.events.publish(index, events)
	if d := s.node.dispatch.Load(); d != nil {
		d.OnEvents(s.id, events)
	}
	s.mu.Lock()
	t := s.timers
	s.mu.Unlock()
	if t != nil && ready {
		t.Poke()
	}
}

// onDivergence runs on the FSM goroutine when a checkpoint shows that this
// replica and the leader that proposed it applied different logs. It is a
// consensus or storage bug, never expected: say so loudly, with what an
// investigation needs. (The replica cannot tell which side is wrong; the
// chaos harness fails a run on this line.)
func (s *shard) onDivergence(d fsm.Divergence) {
	s.log.Error("replica divergence: this replica's apply chain differs from the checkpoint's",
		"node", s.node.cfg.NodeID, "checkpoint_at", d.At, "index", d.Index,
		"want_chain", fmt.Sprintf("%016x", d.Want), "got_chain", fmt.Sprintf("%016x", d.Got),
		"raft_state", s.raft.State().String(), "term", s.raft.CurrentTerm())
}

func (s *shard) watchLeadership() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			s.stopTimers()
			return
		case leader := <-s.notify:
			s.leading.Store(leader)
			s.node.metrics.leaderChanges.Inc()
			if leader {
				s.becomeLeader()
			} else {
				s.stopTimers()
			}
			if d := s.node.dispatch.Load(); d != nil {
				d.Wake() // the shard's route changed
			}
		}
	}
}

// becomeLeader runs Barrier (so the FSM holds every committed entry), then
// starts the timers. Lease expiry waits for the grace period: leases were
// stamped with another node's clock.
func (s *shard) becomeLeader() {
	// Barrier can fail transiently (e.g. "leadership transfer in progress"
	// while a balancing transfer is under way): retry while still leader,
	// never leave a leader without timers and read readiness (chaos F3).
	term := s.raft.CurrentTerm()
	for attempt := 0; ; attempt++ {
		err := s.raft.Barrier(s.node.cfg.ApplyTimeout).Error()
		if err == nil {
			break
		}
		if s.raft.State() != raft.Leader || s.raft.CurrentTerm() != term {
			s.log.Info("lost leadership before the barrier completed", "err", err)
			return
		}
		s.log.Warn("barrier after election failed, retrying", "err", err, "attempt", attempt)
		select {
		case <-s.stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.readyTerm.Store(term)
	s.stopTimers()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.raft.State() != raft.Leader {
		return
	}
	s.log.Info("leading shard", "node", s.node.cfg.NodeID)
	s.timers = scheduler.Start(scheduler.Config{
		Shard:           s.id,
		Grace:           s.node.cfg.LeaderGrace,
		Retention:       s.node.cfg.Retention,
		DeadRetention:   time.Duration(s.node.cfg.FSM.DeadRetentionMs) * time.Millisecond,
		Tick:            s.node.cfg.TimerTick,
		Logger:          s.log,
		OnExpire:        func(n int) { s.node.metrics.leaseExpiries.Add(float64(n)) },
		CheckpointEvery: max(s.node.cfg.CheckpointEvery, 0),
		Now:             s.node.now,
		Schedules:       s.fsm, // cron (issue 11)
	}, s.batch, s.fsm)
	// The shard's tenant weights may lag the meta group's (a change the
	// previous leader did not propose before it lost leadership).
	s.wakeTenantSync()
}

func (s *shard) stopTimers() {
	s.mu.Lock()
	t := s.timers
	s.timers = nil
	s.mu.Unlock()
	if t != nil {
		t.Stop()
	}
}

func (s *shard) isLeader() bool { return s.raft.State() == raft.Leader }

// readIndex makes a following local read linearizable: it records the commit
// index, confirms leadership with a quorum, and waits until the FSM has
// applied up to the recorded index.
//
// A leader elected in this term may not yet know the commit index of the
// previous term (Raft §8: it learns it by committing an entry of its own),
// so until its Barrier has completed a read waits for one.
func (s *shard) readIndex(ctx context.Context) error {
	if term := s.raft.CurrentTerm(); s.readyTerm.Load() != term {
		if err := waitFuture(ctx, s.raft.Barrier(s.node.cfg.ApplyTimeout)); err != nil {
			return err
		}
		s.readyTerm.Store(term)
	}
	ci := s.raft.CommitIndex()
	if err := waitFuture(ctx, s.raft.VerifyLeader()); err != nil {
		return err
	}
	for s.raft.AppliedIndex() < ci {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// waitFuture waits for a raft future while honouring ctx.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *shard) close() error {
	close(s.stop)
	s.wg.Wait()
	s.batch.Stop()
	err := s.raft.Shutdown().Error()
	s.batch.Wait()
	if cerr := s.closeStore(); err == nil {
		err = cerr
	}
	return err
}
