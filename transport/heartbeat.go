package transport

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// HeartbeatGuard wraps the RaftTransport of one group so that raft's
// heartbeat fast path only runs when it cannot change raft's term or role.
//
// hashicorp/raft (v1.8.0, issue hashicorp/raft#695) hands heartbeats to
// processHeartbeat on the transport's goroutine, and appendEntries, which
// it calls, sets the node's term and role when the heartbeat carries a
// newer term — without synchronising with raft's main goroutine. An old
// leader that is still in its leader loop (a paused process, just resumed)
// can then take a heartbeat of the new leader's term T', and dispatch the
// proposals waiting for it stamped with T' at indexes where the new leader
// has other entries of term T'. Raft's log matching compares terms only:
// the old leader keeps its own entries as "duplicates", commits and applies
// them, and its state machine silently diverges (chaos F5: leases of job
// ids whose specs were other jobs').
//
// The guard passes a heartbeat to raft's fast path only when raft is a
// follower in the heartbeat's term (then appendEntries only records the
// leader and the contact time). Any other heartbeat goes through
// Consumer(), like every other RPC, so raft's main goroutine handles the
// term change between two of its own steps. Every RPC then takes one extra
// channel hop (a forwarding goroutine).
type HeartbeatGuard struct {
	RaftTransport

	rpcs chan raft.RPC // what raft consumes
	r    atomic.Pointer[raft.Raft]

	hbMu sync.Mutex
	hb   func(raft.RPC) // raft's fast-path handler

	timeout  time.Duration // how long a diverted heartbeat waits for raft
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

var errHeartbeatNotTaken = errors.New("raft did not take the heartbeat in time")

// GuardHeartbeats wraps inner (see HeartbeatGuard). Give the result to
// raft.NewRaft, then call Bind with the raft it returned; until then every
// heartbeat goes through Consumer().
func GuardHeartbeats(inner RaftTransport) *HeartbeatGuard {
	g := &HeartbeatGuard{
		RaftTransport: inner,
		rpcs:          make(chan raft.RPC),
		timeout:       DefaultRaftTimeout,
		stop:          make(chan struct{}),
	}
	inner.SetHeartbeatHandler(g.heartbeat)
	g.wg.Add(1)
	go g.forward(inner.Consumer())
	return g
}

// Bind tells the guard which raft consumes it.
func (g *HeartbeatGuard) Bind(r *raft.Raft) { g.r.Store(r) }

// Consumer implements raft.Transport.
func (g *HeartbeatGuard) Consumer() <-chan raft.RPC { return g.rpcs }

// SetHeartbeatHandler implements raft.Transport.
func (g *HeartbeatGuard) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	g.hbMu.Lock()
	g.hb = cb
	g.hbMu.Unlock()
}

// Close implements raft.WithClose: it stops the forwarding and closes the
// wrapped transport. Idempotent.
func (g *HeartbeatGuard) Close() error {
	g.stopOnce.Do(func() { close(g.stop) })
	err := g.RaftTransport.Close()
	g.wg.Wait()
	return err
}

func (g *HeartbeatGuard) forward(in <-chan raft.RPC) {
	defer g.wg.Done()
	for {
		select {
		case rpc := <-in:
			select {
			case g.rpcs <- rpc:
			case <-g.stop:
				rpc.Respond(nil, raft.ErrTransportShutdown)
				return
			}
		case <-g.stop:
			return
		}
	}
}

// heartbeat is the wrapped transport's fast path.
func (g *HeartbeatGuard) heartbeat(rpc raft.RPC) {
	g.hbMu.Lock()
	fn := g.hb
	g.hbMu.Unlock()
	if fn != nil && g.fastPathSafe(rpc) {
		fn(rpc)
		return
	}
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	select {
	case g.rpcs <- rpc:
	case <-g.stop:
		rpc.Respond(nil, raft.ErrTransportShutdown)
	case <-t.C:
		rpc.Respond(nil, errHeartbeatNotTaken)
	}
}

// fastPathSafe reports whether raft may handle rpc off its main goroutine:
// it is a follower already in the heartbeat's term. (Terms only grow, so
// if raft moves on before handling it, the heartbeat is just stale.)
func (g *HeartbeatGuard) fastPathSafe(rpc raft.RPC) bool {
	r := g.r.Load()
	req, ok := rpc.Command.(*raft.AppendEntriesRequest)
	if r == nil || !ok {
		return false
	}
	return r.State() == raft.Follower && req.Term == r.CurrentTerm()
}
