package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/cluster/gossip"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

var _ transport.Backend = (*Node)(nil)

// ErrUnknownShard is returned for a shard number this cluster does not have.
var ErrUnknownShard = errors.New("unknown shard")

func invalidErr(format string, args ...any) error {
	return &fsm.CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: fmt.Sprintf(format, args...)}
}

func (n *Node) NodeID() string  { return n.cfg.NodeID }
func (n *Node) ShardCount() int { return len(n.shards) }

func (n *Node) ShardOfTenant(tenant string) uint32 { return ShardOf(tenant, len(n.shards)) }

func (n *Node) ShardOfJob(id string) (uint32, error) {
	sh, _, err := fsm.ParseJobID(id)
	if err != nil {
		return 0, err
	}
	if int(sh) >= len(n.shards) {
		return 0, fmt.Errorf("%w %d", ErrUnknownShard, sh)
	}
	return sh, nil
}

func (n *Node) shard(id uint32) (*shard, error) {
	if int(id) >= len(n.shards) {
		return nil, invalidErr("unknown shard %d", id)
	}
	return n.shards[id], nil
}

func (n *Node) LeaderOf(id uint32) (bool, string) {
	r, err := n.groupRaft(id)
	if err != nil {
		return false, ""
	}
	if r.State() == raft.Leader {
		return true, ""
	}
	addr, leader := r.LeaderWithID()
	// Forwarding dials this address: with TLS the handshake verifies that
	// the node there is the leader Raft names (transport.Pool.NotePeer).
	n.pool.NotePeer(string(addr), string(leader))
	return false, string(addr)
}

func (n *Node) ValidateSpec(spec *hodeiv1.JobSpec) error {
	_, err := fsm.NormalizeSpec(spec, n.cfg.FSM)
	return err
}

// propose runs one command on the shard leader and turns a non-OK result into an error.
func (n *Node) propose(ctx context.Context, id uint32, cmd *internalpb.Command) (*internalpb.CommandResult, error) {
	s, err := n.shard(id)
	if err != nil {
		return nil, err
	}
	if !s.isLeader() {
		return nil, raft.ErrNotLeader
	}
	res, err := s.batch.Propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if err := fsm.ResultError(res); err != nil {
		return nil, err
	}
	return res, nil
}

func (n *Node) Submit(ctx context.Context, id uint32, specs []*hodeiv1.JobSpec, requestID string) ([]*hodeiv1.SubmitJobResponse, error) {
	cmd := &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_Submit{Submit: &internalpb.SubmitJobs{Specs: specs}}}
	if n.cfg.UnsafeAckBeforeCommit {
		// Deliberately broken (test-only): acknowledge before the entry is
		// committed. A leader crash now loses acknowledged jobs.
		s, err := n.shard(id)
		if err != nil {
			return nil, err
		}
		if !s.isLeader() {
			return nil, raft.ErrNotLeader
		}
		go s.batch.Propose(context.Background(), cmd) //nolint:errcheck // the point is not to wait
		out := make([]*hodeiv1.SubmitJobResponse, len(specs))
		for i, sp := range specs {
			out[i] = &hodeiv1.SubmitJobResponse{Job: &hodeiv1.Job{Spec: sp, State: hodeiv1.JobState_JOB_STATE_PENDING, Shard: id}}
		}
		return out, nil
	}
	res, err := n.propose(ctx, id, cmd)
	if err != nil {
		return nil, err
	}
	return res.GetSubmitted(), nil
}

func (n *Node) Cancel(ctx context.Context, id uint32, jobID, reason, requestID string) (*hodeiv1.Job, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_Cancel{Cancel: &internalpb.CancelJob{JobId: jobID, Reason: reason}}})
	if err != nil {
		return nil, err
	}
	return res.GetJob(), nil
}

func (n *Node) Extend(ctx context.Context, id uint32, req *hodeiv1.ExtendLeasesRequest) ([]*hodeiv1.ExtendResult, error) {
	ttl := req.GetTtlMs()
	if ttl == 0 {
		ttl = n.cfg.LeaseTTL.Milliseconds()
	}
	res, err := n.propose(ctx, id, &internalpb.Command{Kind: &internalpb.Command_Extend{Extend: &internalpb.ExtendLeases{
		WorkerId: req.GetWorkerId(), Leases: req.GetLeases(), TtlMs: ttl}}})
	if err != nil {
		return nil, err
	}
	return res.GetExtended(), nil
}

func (n *Node) Complete(ctx context.Context, id uint32, req *hodeiv1.CompleteJobRequest) (*hodeiv1.Job, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: req.GetRequestId(), Kind: &internalpb.Command_Complete{Complete: &internalpb.CompleteJob{
		JobId: req.GetJobId(), Token: req.GetToken(), Success: req.GetSuccess(), Result: req.GetResult(), Retryable: req.GetRetryable()}}})
	if err != nil {
		return nil, err
	}
	return res.GetJob(), nil
}

func (n *Node) ReadIndex(ctx context.Context, id uint32) error {
	s, err := n.shard(id)
	if err != nil {
		return err
	}
	return s.readIndex(ctx)
}

func (n *Node) GetJob(id uint32, jobID string) (*hodeiv1.Job, bool) {
	s, err := n.shard(id)
	if err != nil {
		return nil, false
	}
	j, ok := s.fsm.GetJob(jobID)
	if ok {
		j.Unmatched = n.unmatched(j) // issue 11 quota: see profiles.go
	}
	return j, ok
}

func (n *Node) ListJobs(id uint32, tenant string, state hodeiv1.JobState, after uint64, limit int) ([]*hodeiv1.Job, uint64) {
	s, err := n.shard(id)
	if err != nil {
		return nil, 0
	}
	return s.fsm.ListJobs(tenant, state, after, limit)
}

func (n *Node) Status(ctx context.Context, req *hodeiv1.StatusRequest) (*hodeiv1.StatusResponse, error) {
	resp := &hodeiv1.StatusResponse{NodeId: n.cfg.NodeID, Address: n.addr, Version: "dev", ClusterId: n.ClusterID(), MetaVersion: fsm.MetaVersion, AuthEnabled: n.cfg.Auth.Enabled}
	if n.gossipImpl != nil {
		resp.GossipAddress = n.gossipImpl.LocalAddr()
		for _, m := range n.gossipImpl.Members() {
			state := m.State.String()
			switch {
			case m.State != gossip.Alive:
			case m.Meta.LogStoreErrors:
				state += " (log store failing)"
			case m.Meta.LogStoreFailing:
				state += " (log store recovering)"
			}
			resp.Members = append(resp.Members, &hodeiv1.Member{Id: m.Name, GrpcAddress: m.Meta.GRPCAddr, GossipAddress: m.GossipAddr, State: state})
		}
	}
	_, mlid := n.meta.raft.LeaderWithID()
	resp.MetaLeaderId = string(mlid)
	resp.MetaAppliedIndex = n.meta.raft.AppliedIndex()
	if cf := n.meta.raft.GetConfiguration(); cf.Error() == nil {
		for _, srv := range cf.Configuration().Servers {
			resp.MetaServers = append(resp.MetaServers, &hodeiv1.RaftServer{Id: string(srv.ID), Address: string(srv.Address), Suffrage: srv.Suffrage.String(), Leader: srv.ID == mlid})
		}
	}
	for _, s := range n.shards {
		addr, lid := s.raft.LeaderWithID()
		st := s.fsm.Stats()
		// Without a digest: Raft's applied index (it also counts entries
		// the FSM ignores); with one: the FSM's, consistent with the digest.
		idx, digest := s.raft.AppliedIndex(), ""
		if req.GetIncludeDigest() {
			idx, digest = s.fsm.Digest()
		}
		ss := &hodeiv1.ShardStatus{
			Shard: s.id, LeaderId: string(lid), LeaderAddress: string(addr),
			AppliedIndex: idx, CommitIndex: s.raft.CommitIndex(), LastLogIndex: s.raft.LastIndex(),
			State: s.raft.State().String(), PendingJobs: int64(st.Ready + st.Delayed), RunningJobs: int64(st.Running),
			Term: s.raft.CurrentTerm(), FsmDigest: digest,
			FinishedJobs: int64(st.Succeeded + st.Failed + st.Cancelled + st.Dead), Jobs: int64(st.Jobs),
		}
		if cf := s.raft.GetConfiguration(); cf.Error() == nil {
			for _, srv := range cf.Configuration().Servers {
				ss.Servers = append(ss.Servers, &hodeiv1.RaftServer{Id: string(srv.ID), Address: string(srv.Address), Suffrage: srv.Suffrage.String(), Leader: srv.ID == lid})
			}
		}
		resp.Shards = append(resp.Shards, ss)
	}
	return resp, nil
}

func (n *Node) TransferLeader(ctx context.Context, req *hodeiv1.TransferLeaderRequest) error {
	s, err := n.shard(req.GetShard())
	if err != nil {
		return err
	}
	if !s.isLeader() {
		return raft.ErrNotLeader
	}
	if req.GetToNodeId() == "" {
		return waitFuture(ctx, s.raft.LeadershipTransfer())
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == raft.ServerID(req.GetToNodeId()) {
			return waitFuture(ctx, s.raft.LeadershipTransferToServer(srv.ID, srv.Address))
		}
	}
	return &fsm.CodeError{C: internalpb.Code_CODE_NOT_FOUND, Msg: fmt.Sprintf("node %s is not a member of shard %d", req.GetToNodeId(), s.id)}
}
