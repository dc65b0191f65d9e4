package client

import (
	"context"

	"google.golang.org/grpc"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// RetryJob puts a DEAD, FAILED or CANCELLED job back to PENDING with a
// fresh set of attempts (its attempt history is kept) and returns it. A
// job in another state is refused with FailedPrecondition naming the
// state; an unknown id with NotFound.
func (c *Client) RetryJob(ctx context.Context, id string) (*hodeiv1.Job, error) {
	req := &hodeiv1.RetryJobRequest{Id: id, RequestId: NewRequestID()}
	var resp *hodeiv1.RetryJobResponse
	err := c.invokeShard(ctx, c.cfg.CallTimeout, c.jobShard(ctx, id), func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).RetryJob(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// RequeueJobs puts DEAD jobs matching the filter back to PENDING, at most
// req.limit (default 1000, max 10000) per call, and returns how many. Call
// again until it returns 0 to requeue them all. Both calls carry a request
// id (a fresh one unless set), so a retry after a lost reply answers the
// first result instead of acting twice.
func (c *Client) RequeueJobs(ctx context.Context, req *hodeiv1.RequeueJobsRequest) (uint32, error) {
	req = withRequestID(req, (*hodeiv1.RequeueJobsRequest).GetRequestId, func(m *hodeiv1.RequeueJobsRequest, id string) { m.RequestId = id })
	var resp *hodeiv1.RequeueJobsResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).RequeueJobs(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return 0, err
	}
	return resp.GetRequeued(), nil
}
