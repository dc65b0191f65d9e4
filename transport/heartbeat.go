package transport

import (
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// HeartbeatGuard is the RaftTransport of one group with raft's heartbeat
// fast path restricted to heartbeats that cannot change raft's term or role.
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
// With the guard, the group transport's server side (dispatch in
// raft_server.go) passes a heartbeat to raft's fast path only when raft is
// a follower already in the heartbeat's term (then appendEntries only
// records the leader and the contact time); any other heartbeat goes
// through Consumer(), like every other RPC, so raft's main goroutine
// handles the term change between two of its own steps. The check is two
// atomic loads on the heartbeat's own goroutine: no RPC takes an extra hop.
type HeartbeatGuard struct {
	RaftTransport
	r atomic.Pointer[raft.Raft]
}

// GuardHeartbeats guards inner, which must come from RaftNetwork.Transport
// (it panics otherwise: the gate lives in the group transport's dispatch).
// Give the result to raft.NewRaft, then call Bind with the raft it
// returned; until then every heartbeat goes through Consumer().
func GuardHeartbeats(inner RaftTransport) *HeartbeatGuard {
	gt, ok := inner.(*groupTransport)
	if !ok {
		panic("transport: GuardHeartbeats needs a transport from RaftNetwork.Transport")
	}
	g := &HeartbeatGuard{RaftTransport: inner}
	gate := g.fastPathSafe
	gt.hbGate.Store(&gate)
	return g
}

// Bind tells the guard which raft consumes it.
func (g *HeartbeatGuard) Bind(r *raft.Raft) { g.r.Store(r) }

// fastPathSafe reports whether raft may handle req off its main goroutine:
// it is a follower already in the heartbeat's term. (Terms only grow, so
// if raft moves on before handling it, the heartbeat is just stale.)
func (g *HeartbeatGuard) fastPathSafe(req *raft.AppendEntriesRequest) bool {
	r := g.r.Load()
	return r != nil && r.State() == raft.Follower && req.Term == r.CurrentTerm()
}
