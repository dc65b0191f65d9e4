package transport

import (
	"context"

	"google.golang.org/grpc"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// DeadBackend serves the dead-letter calls of JobService (issue 11) on the
// shard leader.
type DeadBackend interface {
	// ValidateRequeue checks a requeue filter (the FSM's rules) before any
	// shard is asked.
	ValidateRequeue(tenant, kind string, sinceMs, untilMs int64, limit uint32) error
	RetryJob(ctx context.Context, shard uint32, id, requestID string) (*hodeiv1.Job, error)
	RequeueJobs(ctx context.Context, shard uint32, req *hodeiv1.RequeueJobsRequest, limit uint32) (uint32, error)
}

// defaultRequeueLimit is the limit of a RequeueJobs that names none.
const defaultRequeueLimit = 1000

func (s *jobService) RetryJob(ctx context.Context, req *hodeiv1.RetryJobRequest) (*hodeiv1.RetryJobResponse, error) {
	a := s.a
	if req.GetId() == "" {
		return nil, invalid("id is required")
	}
	sh, err := a.b.ShardOfJob(req.GetId())
	if err != nil {
		return nil, invalid("job id %q: %v", req.GetId(), err)
	}
	resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.RetryJobResponse, error) {
		return hodeiv1.NewJobServiceClient(cc).RetryJob(ctx, req)
	})
	if done {
		return resp, err
	}
	if err := a.leaderJobWritable(ctx, sh, req.GetId()); err != nil {
		return nil, err
	}
	job, err := a.b.RetryJob(ctx, sh, req.GetId(), req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.RetryJobResponse{Job: job}, nil
}

// RequeueJobs asks the tenant's shard (or every shard, in order) to put
// DEAD jobs back, until limit jobs are requeued. The filter is checked
// before any shard is asked, so a bad filter changes nothing; a shard that
// fails ends the call with its error (the shards before it are done).
func (s *jobService) RequeueJobs(ctx context.Context, req *hodeiv1.RequeueJobsRequest) (*hodeiv1.RequeueJobsResponse, error) {
	a := s.a
	if req.GetLimit() < 0 {
		return nil, invalid("limit must be >= 0, got %d", req.GetLimit())
	}
	limit := uint32(req.GetLimit())
	if limit == 0 {
		limit = defaultRequeueLimit
	}
	if err := a.b.ValidateRequeue(req.GetTenant(), req.GetKind(), req.GetSinceMs(), req.GetUntilMs(), limit); err != nil {
		return nil, invalid("%v", err)
	}
	// auth: a requeue names its tenant, or is an admin's (every tenant).
	if req.GetTenant() != "" {
		if err := requireSubmit(ctx, req.GetTenant()); err != nil {
			return nil, err
		}
	} else if !isAdmin(ctx) {
		return nil, permissionDenied(PrincipalFrom(ctx), "requeue the dead jobs of every tenant (name a tenant)")
	}
	var shards []uint32
	if sh, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		shards = []uint32{sh}
	} else if req.GetTenant() != "" {
		shards = []uint32{a.b.ShardOfTenant(req.GetTenant())}
	} else {
		for i := 0; i < a.b.ShardCount(); i++ {
			shards = append(shards, uint32(i))
		}
	}
	out := &hodeiv1.RequeueJobsResponse{}
	for _, sh := range shards {
		left := limit - out.Requeued
		if left == 0 {
			break
		}
		fwd := &hodeiv1.RequeueJobsRequest{Tenant: req.GetTenant(), Kind: req.GetKind(), SinceMs: req.GetSinceMs(), UntilMs: req.GetUntilMs(), Limit: int32(left), RequestId: req.GetRequestId()}
		resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.RequeueJobsResponse, error) {
			return hodeiv1.NewJobServiceClient(cc).RequeueJobs(ctx, fwd)
		})
		if !done {
			var n uint32
			n, err = a.b.RequeueJobs(ctx, sh, fwd, left)
			err = ToStatus(err)
			resp = &hodeiv1.RequeueJobsResponse{Requeued: n}
		}
		if err != nil {
			return nil, err
		}
		out.Requeued += resp.GetRequeued()
	}
	return out, nil
}
