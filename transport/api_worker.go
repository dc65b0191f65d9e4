package transport

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// forwardLeaseTimeout bounds one work-stealing call to another shard's leader.
const forwardLeaseTimeout = 2 * time.Second

type workerService struct {
	hodeiv1.UnimplementedWorkerServiceServer
	a     *API
	start atomic.Uint32 // rotates the first shard tried, for fairness across shards
}

// Lease is a long-poll. The node looks at its own replica of every shard
// (every node applies every entry, so it knows, slightly stale on
// followers, where ready work is): shards it leads are leased locally, the
// others through one hop to their leader (work stealing). When nothing is
// ready it waits for the next apply that makes work ready, up to wait_ms.
func (s *workerService) Lease(ctx context.Context, req *hodeiv1.LeaseRequest) (*hodeiv1.LeaseResponse, error) {
	a := s.a
	if req.GetWorkerId() == "" {
		return nil, invalid("worker_id is required")
	}
	if req.GetCapacity() < 1 || req.GetCapacity() > 1000 {
		return nil, invalid("capacity must be in 1..1000, got %d", req.GetCapacity())
	}
	if req.GetWaitMs() < 0 || req.GetTtlMs() < 0 {
		return nil, invalid("wait_ms and ttl_ms must be >= 0")
	}
	wait := time.Duration(req.GetWaitMs()) * time.Millisecond
	if wait > maxLeaseWait {
		wait = maxLeaseWait
	}
	deadline := time.Now().Add(wait)
	if sh, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		// A stealing node asks this leader for work of one shard, without waiting.
		leases, err := s.leaseShard(ctx, sh, req)
		if err != nil {
			return nil, ToStatus(err)
		}
		return &hodeiv1.LeaseResponse{Leases: leases}, nil
	}
	n := a.b.ShardCount()
	for attempt := 0; ; attempt++ {
		sig := a.b.WorkSignal()
		first := int(s.start.Add(1))
		// Two passes: shards led here first, then the others.
		for pass := 0; pass < 2; pass++ {
			for i := 0; i < n; i++ {
				sh := uint32((first + i) % n)
				local, _ := a.b.LeaderOf(sh)
				if local != (pass == 0) {
					continue
				}
				if !a.b.HasReadyFor(sh, req.GetLabels()) {
					continue
				}
				leases, err := s.leaseShard(ctx, sh, req)
				if err != nil {
					if ctx.Err() != nil {
						return nil, ToStatus(err)
					}
					a.log.Debug("lease attempt failed", "shard", sh, "err", err)
					continue
				}
				if len(leases) > 0 {
					return &hodeiv1.LeaseResponse{Leases: leases}, nil
				}
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return &hodeiv1.LeaseResponse{}, nil
		}
		if left > recheckEvery {
			left = recheckEvery
		}
		t := time.NewTimer(left)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ToStatus(ctx.Err())
		case <-sig:
		case <-t.C:
		}
		t.Stop()
	}
}

func (s *workerService) leaseShard(ctx context.Context, sh uint32, req *hodeiv1.LeaseRequest) ([]*hodeiv1.Lease, error) {
	a := s.a
	rid := req.GetRequestId()
	if rid != "" {
		rid = fmt.Sprintf("%s/%d", rid, sh)
	}
	local, addr := a.b.LeaderOf(sh)
	if local {
		r := proto.Clone(req).(*hodeiv1.LeaseRequest)
		r.RequestId = rid
		return a.b.Lease(ctx, sh, r)
	}
	if addr == "" || isForwarded(ctx) {
		return nil, fmt.Errorf("shard %d: %w", sh, ErrNoLeader)
	}
	cc, err := a.conn(addr)
	if err != nil {
		return nil, err
	}
	fwd := &hodeiv1.LeaseRequest{WorkerId: req.GetWorkerId(), Capacity: req.GetCapacity(), Labels: req.GetLabels(), TtlMs: req.GetTtlMs(), RequestId: rid}
	// The forwarded lease does not wait (wait_ms 0), so it gets a short
	// deadline of its own: a leader behind a partition must not hold the
	// worker's whole long-poll (chaos F4: jobs ready for ~30 s, unleased).
	fctx, cancel := context.WithTimeout(ctx, forwardLeaseTimeout)
	defer cancel()
	resp, err := hodeiv1.NewWorkerServiceClient(cc).Lease(forwardCtx(fctx, sh), fwd)
	if err != nil {
		return nil, forwardErr(err)
	}
	return resp.GetLeases(), nil
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
