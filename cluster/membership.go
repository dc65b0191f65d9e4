package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

// groupRaft returns the Raft of a group id (a shard or the meta group).
func (n *Node) groupRaft(id uint32) (*raft.Raft, error) {
	if id == MetaGroup {
		return n.meta.raft, nil
	}
	s, err := n.shard(id)
	if err != nil {
		return nil, err
	}
	return s.raft, nil
}

// groups lists every group id: the meta group first, then the shards.
func (n *Node) groups() []uint32 {
	out := []uint32{MetaGroup}
	for _, s := range n.shards {
		out = append(out, s.id)
	}
	return out
}

// alive reports whether a member is believed up. Without gossip every
// member is assumed alive (Raft copes with a transfer to a dead node).
func (n *Node) alive(id string) bool {
	if n.gossip == nil {
		return true
	}
	return n.gossipAlive(id)
}

// forwardAdmin sends an admin call to the leader of group, pinned to it.
func (n *Node) leaderConn(group uint32) (hodeiv1.AdminServiceClient, error) {
	r, err := n.groupRaft(group)
	if err != nil {
		return nil, err
	}
	addr, _ := r.LeaderWithID()
	if addr == "" {
		return nil, fmt.Errorf("%s: %w", GroupName(group), transport.ErrNoLeader)
	}
	cc, err := n.pool.Get(string(addr))
	if err != nil {
		return nil, err
	}
	return hodeiv1.NewAdminServiceClient(cc), nil
}

func pinned(ctx context.Context, group uint32) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-hodei-forwarded", "1", "x-hodei-shard", fmt.Sprint(group))
}

// transferShard moves a shard's leadership to node to.
func (n *Node) transferShard(ctx context.Context, sh uint32, to string) error {
	s, err := n.shard(sh)
	if err != nil {
		return err
	}
	if s.isLeader() {
		return n.TransferLeader(ctx, &hodeiv1.TransferLeaderRequest{Shard: sh, ToNodeId: to})
	}
	c, err := n.leaderConn(sh)
	if err != nil {
		return err
	}
	_, err = c.TransferLeader(pinned(ctx, sh), &hodeiv1.TransferLeaderRequest{Shard: sh, ToNodeId: to})
	return err
}

// Join adds a node to every group: the meta group, then each shard, each on
// that group's leader (forwarded, pinned to the group, when it is not here).
// In each group the node is added as a non-voter and promoted once caught up.
func (n *Node) Join(ctx context.Context, req *hodeiv1.JoinRequest) error {
	st, err := n.probe(ctx, req.GetAddress())
	if err != nil {
		return fmt.Errorf("cannot reach the joining node at %s: %w", req.GetAddress(), err)
	}
	if st.GetNodeId() != req.GetNodeId() {
		return &fsm.CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: fmt.Sprintf("the node at %s is %q, not %q", req.GetAddress(), st.GetNodeId(), req.GetNodeId())}
	}
	if err := checkJoiner(n.ClusterID(), st, req.GetAddress()); err != nil {
		return err
	}
	if len(st.GetShards()) != len(n.shards) {
		return &fsm.CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: fmt.Sprintf("the node at %s hosts %d shards, the cluster has %d (start it with --shards %d or --join)", req.GetAddress(), len(st.GetShards()), len(n.shards), len(n.shards))}
	}
	for _, g := range n.groups() {
		n.cfg.Logger.Info("join: adding node to group", "node", req.GetNodeId(), "group", g)
		if err := n.onGroupLeader(ctx, g, func(ctx context.Context) error { return n.JoinGroup(ctx, g, req) },
			func(ctx context.Context, c hodeiv1.AdminServiceClient) error {
				_, err := c.Join(ctx, req)
				return err
			}); err != nil {
			return err
		}
	}
	return nil
}

// tryOnLeader runs local on this node if it leads group g, else remote on
// g's leader (the context pinned to g), once.
func (n *Node) tryOnLeader(ctx context.Context, g uint32, local func(context.Context) error, remote func(context.Context, hodeiv1.AdminServiceClient) error) error {
	r, err := n.groupRaft(g)
	if err != nil {
		return err
	}
	if r.State() == raft.Leader {
		return local(ctx)
	}
	c, err := n.leaderConn(g)
	if err != nil {
		return err
	}
	return remote(pinned(ctx, g), c)
}

// onGroupLeader runs local on this node if it leads group, else remote on
// the leader, retrying through elections within ctx.
func (n *Node) onGroupLeader(ctx context.Context, g uint32, local func(context.Context) error, remote func(context.Context, hodeiv1.AdminServiceClient) error) error {
	for {
		err := n.tryOnLeader(ctx, g, local, remote)
		if err == nil || !retryableMembership(err) {
			return err
		}
		n.cfg.Logger.Info("membership change retrying", "group", g, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("group %d: %w (last error: %v)", g, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func retryableMembership(err error) bool {
	if _, ok := err.(*fsm.CodeError); ok {
		return false
	}
	// A remote leader's refusal (the same CodeErrors, as gRPC codes) is
	// final and returned at once instead of being retried until the
	// deadline; "not the leader / no leader yet / unreachable"
	// (Unavailable), timeouts and unexpected errors are retried.
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.FailedPrecondition, codes.AlreadyExists, codes.NotFound,
			codes.ResourceExhausted, codes.OutOfRange, codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated:
			return false
		}
	}
	return true
}

// JoinGroup adds a node to one group this node leads.
func (n *Node) JoinGroup(ctx context.Context, g uint32, req *hodeiv1.JoinRequest) error {
	r, err := n.groupRaft(g)
	if err != nil {
		return err
	}
	if r.State() != raft.Leader {
		return raft.ErrNotLeader
	}
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == raft.ServerID(req.GetNodeId()) {
			if srv.Address != raft.ServerAddress(req.GetAddress()) {
				return &fsm.CodeError{C: internalpb.Code_CODE_ALREADY_EXISTS, Msg: fmt.Sprintf("node %s is already a member at %s", srv.ID, srv.Address)}
			}
			if srv.Suffrage == raft.Voter || !req.GetVoter() {
				return nil
			}
		}
	}
	target := r.CommitIndex()
	if err := configChange(ctx, func(enqueue time.Duration) raft.IndexFuture {
		return r.AddNonvoter(raft.ServerID(req.GetNodeId()), raft.ServerAddress(req.GetAddress()), 0, enqueue)
	}); err != nil {
		return fmt.Errorf("add %s as non-voter to group %d: %w", req.GetNodeId(), g, err)
	}
	if !req.GetVoter() {
		return nil
	}
	if err := n.waitCaughtUp(ctx, g, req.GetAddress(), target); err != nil {
		return err
	}
	if err := configChange(ctx, func(enqueue time.Duration) raft.IndexFuture {
		return r.AddVoter(raft.ServerID(req.GetNodeId()), raft.ServerAddress(req.GetAddress()), 0, enqueue)
	}); err != nil {
		return fmt.Errorf("promote %s in group %d: %w", req.GetNodeId(), g, err)
	}
	return nil
}

// configChangeAttempt bounds one configuration change on a group leader:
// queueing it and waiting for it to commit. hashicorp/raft's AddVoter,
// AddNonvoter and RemoveServer block without limit (they are not context
// aware) when given no enqueue timeout, and a leader only takes a change
// once its latest configuration is committed, so a leader that cannot
// commit (it lost its quorum and has not stepped down yet, or an earlier
// change is still uncommitted) would hold the caller until its whole
// deadline. A bounded attempt fails instead, and onGroupLeader retries it on
// whichever node leads the group by then. Changes are idempotent (JoinGroup
// and RemoveGroup first look at the current configuration), so a retry after
// an attempt that did commit late is harmless.
const configChangeAttempt = 10 * time.Second

// configChange runs one configuration change, bounded by configChangeAttempt
// and by ctx. change gets the enqueue timeout to pass to raft.
func configChange(ctx context.Context, change func(enqueue time.Duration) raft.IndexFuture) error {
	ctx, cancel := context.WithTimeout(ctx, configChangeAttempt)
	defer cancel()
	enqueue := configChangeAttempt
	if dl, ok := ctx.Deadline(); ok {
		enqueue = max(time.Until(dl), time.Millisecond)
	}
	return waitFuture(ctx, change(enqueue))
}

// waitCaughtUp polls the new node's status until its replica of the group
// has applied target.
func (n *Node) waitCaughtUp(ctx context.Context, g uint32, addr string, target uint64) error {
	for {
		st, err := n.probe(ctx, addr)
		if err == nil && appliedOf(st, g) >= target {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node at %s did not catch up on group %d: %w", addr, g, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func appliedOf(st *hodeiv1.StatusResponse, g uint32) uint64 {
	if g == MetaGroup {
		return st.GetMetaAppliedIndex()
	}
	for _, s := range st.GetShards() {
		if s.GetShard() == g {
			return s.GetAppliedIndex()
		}
	}
	return 0
}

// Remove takes a node out of every group. It refuses, changing nothing,
// when in some group the remaining voters that answer now could not form a
// quorum of the new configuration.
func (n *Node) Remove(ctx context.Context, req *hodeiv1.RemoveRequest) error {
	id := raft.ServerID(req.GetNodeId())
	probed := map[raft.ServerAddress]bool{}
	up := func(srv raft.Server) bool {
		if srv.ID == raft.ServerID(n.cfg.NodeID) {
			return true
		}
		if v, ok := probed[srv.Address]; ok {
			return v
		}
		_, err := n.probe(ctx, string(srv.Address))
		probed[srv.Address] = err == nil
		return err == nil
	}
	member := false
	for _, g := range n.groups() {
		r, _ := n.groupRaft(g)
		cf := r.GetConfiguration()
		if err := cf.Error(); err != nil {
			return err
		}
		voters, live := 0, 0
		for _, srv := range cf.Configuration().Servers {
			if srv.ID == id {
				member = true
				continue
			}
			if srv.Suffrage == raft.Voter {
				voters++
				if up(srv) {
					live++
				}
			}
		}
		if voters == 0 {
			return &fsm.CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: "cannot remove the last voter"}
		}
		if live < voters/2+1 {
			return &fsm.CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: fmt.Sprintf(
				"removing %s would leave group %d with %d voters of which only %d answer: below quorum (%d); bring nodes back first", id, g, voters, live, voters/2+1)}
		}
	}
	if !member {
		return &fsm.CodeError{C: internalpb.Code_CODE_NOT_FOUND, Msg: fmt.Sprintf("node %s is not a member", id)}
	}
	// Shards first, the meta group last: the member list follows the meta configuration.
	gs := n.groups()
	order := append(gs[1:], MetaGroup)
	for _, g := range order {
		if err := n.onGroupLeader(ctx, g, func(ctx context.Context) error { return n.RemoveGroup(ctx, g, req) },
			func(ctx context.Context, c hodeiv1.AdminServiceClient) error {
				_, err := c.Remove(ctx, req)
				return err
			}); err != nil {
			return err
		}
	}
	return nil
}

// RemoveGroup removes a node from one group this node leads.
func (n *Node) RemoveGroup(ctx context.Context, g uint32, req *hodeiv1.RemoveRequest) error {
	r, err := n.groupRaft(g)
	if err != nil {
		return err
	}
	if r.State() != raft.Leader {
		return raft.ErrNotLeader
	}
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == raft.ServerID(req.GetNodeId()) {
			return configChange(ctx, func(enqueue time.Duration) raft.IndexFuture {
				return r.RemoveServer(srv.ID, 0, enqueue)
			})
		}
	}
	return nil // already gone
}

// removeDeadNodes (meta leader) removes members gossip has seen dead for
// longer than DeadNodeTimeout, while at least 3 voters would remain.
func (n *Node) removeDeadNodes(ctx context.Context) {
	if n.gossip == nil || n.cfg.DeadNodeTimeout <= 0 {
		return
	}
	cf := n.meta.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	voters := 0
	for _, srv := range cf.Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			voters++
		}
	}
	for _, srv := range cf.Configuration().Servers {
		since, dead := n.gossipDeadSince(string(srv.ID))
		if !dead || time.Since(since) < n.cfg.DeadNodeTimeout || voters-1 < 3 {
			continue
		}
		n.cfg.Logger.Warn("removing dead node", "node", srv.ID, "dead_for", time.Since(since).Round(time.Second))
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.Remove(cctx, &hodeiv1.RemoveRequest{NodeId: string(srv.ID)})
		cancel()
		if err != nil {
			n.cfg.Logger.Warn("automatic removal failed", "node", srv.ID, "err", err)
		}
		return // one change per round
	}
}
