package transport

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// mdLeaseNotProposed is a trailer of a forwarded lease's error: the leader
// proposed nothing (it was not the leader, knew none, or a leadership
// transfer was in progress).
const mdLeaseNotProposed = "x-hodei-lease-not-proposed"

// proposedNothing reports whether err says that nothing was proposed (no
// leader, not the leader, a leadership transfer, a node not serving): the
// calling node may move on instead of retrying under the same request id.
func proposedNothing(err error) bool {
	return errors.Is(err, ErrNoLeader) ||
		errors.Is(err, raft.ErrNotLeader) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) ||
		errors.Is(err, raft.ErrEnqueueTimeout) ||
		errors.Is(err, ErrUnavailable)
}

type workerService struct {
	hodeiv1.UnimplementedWorkerServiceServer
	a *API
}

// Lease is the unary long-poll for clients without a stream: the node's
// dispatcher serves it with the same lease lanes as the streams (one lease
// command per shard per round for every waiting worker, work stealing in
// bulk). A forwarded Lease pinned to a shard is a steal from a node of the
// previous release: it is proposed here as a one-demand LeaseFor under its
// request id.
func (s *workerService) Lease(ctx context.Context, req *hodeiv1.LeaseRequest) (*hodeiv1.LeaseResponse, error) {
	wb := s.a.workers
	if wb == nil {
		return nil, status.Error(codes.Unavailable, "this node is starting: no dispatcher yet")
	}
	if req.GetWorkerId() == "" {
		return nil, invalid("worker_id is required")
	}
	if req.GetCapacity() < 1 || req.GetCapacity() > 1000 {
		return nil, invalid("capacity must be in 1..1000, got %d", req.GetCapacity())
	}
	if req.GetWaitMs() < 0 || req.GetTtlMs() < 0 {
		return nil, invalid("wait_ms and ttl_ms must be >= 0")
	}
	// auth: lease only what the worker's token allows.
	tenants, kinds, err := workerLimits(ctx, req.GetKinds())
	if err != nil {
		return nil, err
	}
	if len(kinds) != len(req.GetKinds()) {
		req.Kinds = kinds
	}
	if sh, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		if req.GetRequestId() == "" {
			return nil, invalid("a forwarded lease needs a request_id")
		}
		grants, err := wb.LeaseFor(ctx, sh, &hodeiv1.LeaseForRequest{RequestId: req.GetRequestId(), Resolve: true, TtlMs: req.GetTtlMs(),
			Demands: []*hodeiv1.LeaseDemand{{WorkerId: req.GetWorkerId(), Capacity: req.GetCapacity(), Labels: req.GetLabels(), Kinds: req.GetKinds(), Tenants: tenants}}})
		if err != nil {
			return nil, s.notProposedTrailer(ctx, err)
		}
		return &hodeiv1.LeaseResponse{Leases: grants[0].GetLeases()}, nil
	}
	wait := min(time.Duration(req.GetWaitMs())*time.Millisecond, maxLeaseWait)
	leases, err := wb.Lease(ctx, req, wait, tenants)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.LeaseResponse{Leases: leases}, nil
}

func (s *workerService) ExtendLeases(ctx context.Context, req *hodeiv1.ExtendLeasesRequest) (*hodeiv1.ExtendLeasesResponse, error) {
	a := s.a
	if req.GetWorkerId() == "" {
		return nil, invalid("worker_id is required")
	}
	if req.GetTtlMs() < 0 {
		return nil, invalid("ttl_ms must be >= 0")
	}
	groups := map[uint32][]int{}
	var order []uint32
	out := make([]*hodeiv1.ExtendResult, len(req.GetLeases()))
	for i, ref := range req.GetLeases() {
		if !a.workerMayTouch(ctx, ref.GetJobId()) { // auth: another tenant's job
			out[i] = &hodeiv1.ExtendResult{JobId: ref.GetJobId(), Reason: refusedReason}
			continue
		}
		sh, err := a.b.ShardOfJob(ref.GetJobId())
		if err != nil {
			out[i] = &hodeiv1.ExtendResult{JobId: ref.GetJobId(), Ok: false, Reason: err.Error()}
			continue
		}
		if _, ok := groups[sh]; !ok {
			order = append(order, sh)
		}
		groups[sh] = append(groups[sh], i)
	}
	for _, sh := range order {
		idx := groups[sh]
		sub := &hodeiv1.ExtendLeasesRequest{WorkerId: req.GetWorkerId(), TtlMs: req.GetTtlMs()}
		for _, i := range idx {
			sub.Leases = append(sub.Leases, req.GetLeases()[i])
		}
		resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ExtendLeasesResponse, error) {
			return hodeiv1.NewWorkerServiceClient(cc).ExtendLeases(ctx, sub)
		})
		if err != nil {
			return nil, err
		}
		res := resp.GetResults()
		if !done {
			if res, err = a.b.Extend(ctx, sh, sub); err != nil {
				return nil, ToStatus(err)
			}
		}
		if len(res) != len(idx) {
			return nil, status.Errorf(codes.Internal, "shard %d returned %d extend results for %d leases", sh, len(res), len(idx))
		}
		for j, i := range idx {
			out[i] = res[j]
		}
	}
	return &hodeiv1.ExtendLeasesResponse{Results: out}, nil
}

func (s *workerService) CompleteJob(ctx context.Context, req *hodeiv1.CompleteJobRequest) (*hodeiv1.CompleteJobResponse, error) {
	a := s.a
	sh, err := a.b.ShardOfJob(req.GetJobId())
	if err != nil {
		return nil, invalid("job id %q: %v", req.GetJobId(), err)
	}
	if req.GetToken() == 0 {
		return nil, invalid("token is required")
	}
	if !a.workerMayTouch(ctx, req.GetJobId()) { // auth: another tenant's job
		return nil, jobNotFound(req.GetJobId())
	}
	resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.CompleteJobResponse, error) {
		return hodeiv1.NewWorkerServiceClient(cc).CompleteJob(ctx, req)
	})
	if done {
		return resp, err
	}
	job, err := a.b.Complete(ctx, sh, req)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.CompleteJobResponse{Job: job}, nil
}

// ---- AdminService ----

type adminService struct {
	hodeiv1.UnimplementedAdminServiceServer
	a *API
}

func (s *adminService) Status(ctx context.Context, req *hodeiv1.StatusRequest) (*hodeiv1.StatusResponse, error) {
	resp, err := s.a.b.Status(ctx, req)
	return resp, ToStatus(err)
}

// Membership changes are coordinated by the node that receives them: it
// applies the change to every Raft group on that group's leader, reaching
// it with a request pinned to the group (x-hodei-shard).
func (s *adminService) Join(ctx context.Context, req *hodeiv1.JoinRequest) (*hodeiv1.JoinResponse, error) {
	if req.GetNodeId() == "" || req.GetAddress() == "" {
		return nil, invalid("node_id and address are required")
	}
	if g, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		return &hodeiv1.JoinResponse{}, ToStatus(s.a.b.JoinGroup(ctx, g, req))
	}
	return &hodeiv1.JoinResponse{}, ToStatus(s.a.b.Join(ctx, req))
}

func (s *adminService) Remove(ctx context.Context, req *hodeiv1.RemoveRequest) (*hodeiv1.RemoveResponse, error) {
	if req.GetNodeId() == "" {
		return nil, invalid("node_id is required")
	}
	if g, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		return &hodeiv1.RemoveResponse{}, ToStatus(s.a.b.RemoveGroup(ctx, g, req))
	}
	return &hodeiv1.RemoveResponse{}, ToStatus(s.a.b.Remove(ctx, req))
}

func (s *adminService) TransferLeader(ctx context.Context, req *hodeiv1.TransferLeaderRequest) (*hodeiv1.TransferLeaderResponse, error) {
	if int(req.GetShard()) >= s.a.b.ShardCount() {
		return nil, invalid("unknown shard %d", req.GetShard())
	}
	if !isForwarded(ctx) {
		local, addr := s.a.b.LeaderOf(req.GetShard())
		if !local && addr != "" {
			cc, err := s.a.conn(addr)
			if err != nil {
				return nil, err
			}
			resp, err := hodeiv1.NewAdminServiceClient(cc).TransferLeader(forwardCtx(ctx, req.GetShard()), req)
			if err != nil {
				return nil, forwardErr(err)
			}
			return resp, nil
		}
	}
	return &hodeiv1.TransferLeaderResponse{}, ToStatus(s.a.b.TransferLeader(ctx, req))
}
