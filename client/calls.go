package client

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// ReadOption modifies a read.
type ReadOption func(*readOpts)

type readOpts struct{ stale bool }

// Stale lets any replica serve the read without a linearizable read-index
// round trip: faster, possibly behind the leader.
func Stale() ReadOption { return func(o *readOpts) { o.stale = true } }

func (c *Client) jobs(cc *grpc.ClientConn) hodeiv1.JobServiceClient {
	return hodeiv1.NewJobServiceClient(cc)
}

func (c *Client) workers(cc *grpc.ClientConn) hodeiv1.WorkerServiceClient {
	return hodeiv1.NewWorkerServiceClient(cc)
}

// Submit submits one job, to its tenant's shard leader when routing knows
// it. A spec without an idempotency key is covered by the request id on
// retries; with one, resubmitting returns the first job
// (SubmitJobResponse.Duplicate). For many concurrent submits, a Submitter
// makes fewer, larger calls.
func (c *Client) Submit(ctx context.Context, spec *hodeiv1.JobSpec) (*hodeiv1.SubmitJobResponse, error) {
	req := &hodeiv1.SubmitJobRequest{Spec: spec, RequestId: NewRequestID()}
	var resp *hodeiv1.SubmitJobResponse
	err := c.invokeShard(ctx, c.cfg.CallTimeout, c.tenantShard(ctx, spec.GetTenant()), func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).SubmitJob(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Get returns one job. Reads are linearizable (and go to the job's shard
// leader, which serves them) unless Stale() is given (then the current node
// answers).
func (c *Client) Get(ctx context.Context, id string, opts ...ReadOption) (*hodeiv1.Job, error) {
	var o readOpts
	for _, f := range opts {
		f(&o)
	}
	req := &hodeiv1.GetJobRequest{Id: id, Stale: o.stale}
	shard := noShard
	if !o.stale {
		shard = c.jobShard(ctx, id)
	}
	var resp *hodeiv1.GetJobResponse
	err := c.invokeShard(ctx, c.cfg.CallTimeout, shard, func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).GetJob(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// List lists jobs (one page; follow NextPageToken for more).
func (c *Client) List(ctx context.Context, req *hodeiv1.ListJobsRequest) (*hodeiv1.ListJobsResponse, error) {
	var resp *hodeiv1.ListJobsResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).ListJobs(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Cancel cancels a job (on its shard leader) and returns it.
func (c *Client) Cancel(ctx context.Context, id, reason string) (*hodeiv1.Job, error) {
	req := &hodeiv1.CancelJobRequest{Id: id, Reason: reason, RequestId: NewRequestID()}
	var resp *hodeiv1.CancelJobResponse
	err := c.invokeShard(ctx, c.cfg.CallTimeout, c.jobShard(ctx, id), func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).CancelJob(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// withRequestID returns msg itself when its request id is set, else a clone
// with a fresh one (the caller's message is never modified).
func withRequestID[M proto.Message](msg M, get func(M) string, set func(M, string)) M {
	if get(msg) != "" {
		return msg
	}
	m := proto.Clone(msg).(M)
	set(m, NewRequestID())
	return m
}

// Lease long-polls for up to req.WaitMs for jobs to run. Each attempt is
// bounded by the wait plus 5s. A request id is added if req has none.
func (c *Client) Lease(ctx context.Context, req *hodeiv1.LeaseRequest) (*hodeiv1.LeaseResponse, error) {
	req = withRequestID(req, (*hodeiv1.LeaseRequest).GetRequestId, func(m *hodeiv1.LeaseRequest, id string) { m.RequestId = id })
	timeout := time.Duration(req.GetWaitMs())*time.Millisecond + leaseSlack
	var resp *hodeiv1.LeaseResponse
	err := c.invoke(ctx, timeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.workers(cc).Lease(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ExtendLeases heartbeats leases; a result with ok=false means that lease is lost.
func (c *Client) ExtendLeases(ctx context.Context, req *hodeiv1.ExtendLeasesRequest) (*hodeiv1.ExtendLeasesResponse, error) {
	var resp *hodeiv1.ExtendLeasesResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.workers(cc).ExtendLeases(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Complete reports the outcome of a leased attempt, to the job's shard
// leader. A request id is added if req has none; callers that retry
// Complete themselves should set one and keep it.
func (c *Client) Complete(ctx context.Context, req *hodeiv1.CompleteJobRequest) (*hodeiv1.CompleteJobResponse, error) {
	req = withRequestID(req, (*hodeiv1.CompleteJobRequest).GetRequestId, func(m *hodeiv1.CompleteJobRequest, id string) { m.RequestId = id })
	var resp *hodeiv1.CompleteJobResponse
	err := c.invokeShard(ctx, c.cfg.CallTimeout, c.jobShard(ctx, req.GetJobId()), func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.workers(cc).CompleteJob(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Status returns a node's status: the node at addr, or any node if addr is
// empty. addr need not be one of Config.Addrs.
func (c *Client) Status(ctx context.Context, addr string) (*hodeiv1.StatusResponse, error) {
	var resp *hodeiv1.StatusResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, addr, func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := hodeiv1.NewAdminServiceClient(cc).Status(ctx, &hodeiv1.StatusRequest{})
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// SetTenant sets a tenant's fair-share weight (1..1000; 1 is the default)
// and returns the tenant's settings, with the weight its shard applies when
// the reply was sent. Setting an absolute value is idempotent, so the call is
// retried like the others.
func (c *Client) SetTenant(ctx context.Context, tenant string, weight uint32) (*hodeiv1.TenantStatus, error) {
	var resp *hodeiv1.SetTenantResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := hodeiv1.NewAdminServiceClient(cc).SetTenant(ctx, &hodeiv1.SetTenantRequest{Tenant: tenant, Weight: weight})
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetTenant(), nil
}

// SetTenantSettings sets a tenant's weight and limits (issue 11 quota):
// limit fields present in req replace the current ones (0 = unlimited),
// absent ones are kept; weight 0 keeps the weight when a limit is given.
func (c *Client) SetTenantSettings(ctx context.Context, req *hodeiv1.SetTenantRequest) (*hodeiv1.TenantStatus, error) {
	var resp *hodeiv1.SetTenantResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := hodeiv1.NewAdminServiceClient(cc).SetTenant(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetTenant(), nil
}

// ListTenants returns the tenant settings, sorted by tenant.
func (c *Client) ListTenants(ctx context.Context) ([]*hodeiv1.TenantStatus, error) {
	var resp *hodeiv1.ListTenantsResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := hodeiv1.NewAdminServiceClient(cc).ListTenants(ctx, &hodeiv1.ListTenantsRequest{})
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetTenants(), nil
}

// Admin returns a raw AdminService client on the current node, for operator
// commands. Its calls are not retried. It fails only after Close, in which
// case every call returns ErrClosed.
func (c *Client) Admin() hodeiv1.AdminServiceClient {
	_, addr := c.current()
	cc, err := c.conn(addr)
	if err != nil {
		return hodeiv1.NewAdminServiceClient(closedConn{})
	}
	return hodeiv1.NewAdminServiceClient(cc)
}

// closedConn is a grpc.ClientConnInterface whose calls fail with ErrClosed.
type closedConn struct{}

func (closedConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return ErrClosed
}

func (closedConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, ErrClosed
}
