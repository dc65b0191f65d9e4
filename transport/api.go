package transport

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Backend is what the public gRPC services need from a server node, by
// service; the cluster package implements it. This package owns routing
// between nodes (at most one forwarding hop to a shard leader) and error
// mapping. The worker stream's needs are WorkerBackend (api_stream.go).
type Backend interface {
	Router
	JobBackend
	LeaseBackend
	AdminBackend
	DeadBackend // issue 11, api_dead.go
}

// Router tells where a shard's requests run.
type Router interface {
	NodeID() string
	ShardCount() int
	ShardOfTenant(tenant string) uint32
	ShardOfJob(id string) (uint32, error)
	// LeaderOf reports whether this node leads the shard, and otherwise the
	// leader's gRPC address ("" while unknown).
	LeaderOf(shard uint32) (local bool, addr string)
}

// JobBackend serves JobService. Writes are called only on the shard
// leader; reads use the local replica, ReadIndex first making them
// linearizable.
type JobBackend interface {
	ValidateSpec(spec *hodeiv1.JobSpec) error
	Submit(ctx context.Context, shard uint32, specs []*hodeiv1.JobSpec, requestID string) ([]*hodeiv1.SubmitJobResponse, error)
	Cancel(ctx context.Context, shard uint32, id, reason, requestID string) (*hodeiv1.Job, error)
	ReadIndex(ctx context.Context, shard uint32) error
	GetJob(shard uint32, id string) (*hodeiv1.Job, bool)
	ListJobs(shard uint32, tenant string, state hodeiv1.JobState, afterSeq uint64, limit int) ([]*hodeiv1.Job, uint64)
}

// LeaseBackend serves the unary ExtendLeases and CompleteJob calls on the
// shard leader.
type LeaseBackend interface {
	Extend(ctx context.Context, shard uint32, req *hodeiv1.ExtendLeasesRequest) ([]*hodeiv1.ExtendResult, error)
	Complete(ctx context.Context, shard uint32, req *hodeiv1.CompleteJobRequest) (*hodeiv1.Job, error)
}

// AdminBackend serves AdminService: membership, backups, tenant settings.
type AdminBackend interface {
	Status(ctx context.Context, req *hodeiv1.StatusRequest) (*hodeiv1.StatusResponse, error)
	Join(ctx context.Context, req *hodeiv1.JoinRequest) error
	Remove(ctx context.Context, req *hodeiv1.RemoveRequest) error
	// JoinGroup / RemoveGroup change one group this node leads.
	JoinGroup(ctx context.Context, group uint32, req *hodeiv1.JoinRequest) error
	RemoveGroup(ctx context.Context, group uint32, req *hodeiv1.RemoveRequest) error
	TransferLeader(ctx context.Context, req *hodeiv1.TransferLeaderRequest) error

	// Backups. SnapshotSave writes an archive of every group to w, and
	// SnapshotRestore installs one; the node receiving them coordinates.
	// SnapshotGroup / RestoreGroup act on one group this node leads.
	SnapshotSave(ctx context.Context, w io.Writer) error
	SnapshotRestore(ctx context.Context, archive []byte, force bool) (*hodeiv1.SnapshotRestoreResponse, error)
	SnapshotGroup(ctx context.Context, group uint32) (*hodeiv1.GroupSnapshotInfo, []byte, error)
	RestoreGroup(ctx context.Context, group uint32, req *hodeiv1.RestoreGroupRequest) (*hodeiv1.RestoreGroupResponse, error)

	// Tenant settings, held by the meta group. SetTenant and ListTenants
	// run on any node, which reaches the meta group's leader;
	// PutTenantGroup and ListTenantsGroup act on the group (the meta
	// group) this node leads.
	SetTenant(ctx context.Context, req *hodeiv1.SetTenantRequest) (*hodeiv1.TenantStatus, error)
	ListTenants(ctx context.Context) ([]*hodeiv1.TenantStatus, error)
	PutTenantGroup(ctx context.Context, group uint32, req *hodeiv1.SetTenantRequest) error
	ListTenantsGroup(ctx context.Context, group uint32) ([]*hodeiv1.TenantStatus, error)
}

const (
	mdForwarded = "x-hodei-forwarded"
	mdShard     = "x-hodei-shard"
	// maxLeaderWait bounds how long a request waits for an election.
	maxLeaderWait = 5 * time.Second
	maxLeaseWait  = 60 * time.Second
	recheckEvery  = 250 * time.Millisecond
)

// API serves the public JobService, WorkerService and AdminService.
type API struct {
	b       Backend
	workers WorkerBackend // the worker stream and batched worker calls
	logs    LogBackend    // live logs (api_logs.go); nil: not served
	auth    AuthBackend   // tokens and job tenants (api_auth.go); nil: AuthService not served
	pool    *Pool
	log     *slog.Logger
}

// NewAPI returns the public services over b and w; pool is used to forward.
func NewAPI(b Backend, w WorkerBackend, pool *Pool, log *slog.Logger) *API {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &API{b: b, workers: w, pool: pool, log: log}
}

// Register adds the services to s.
func (a *API) Register(s *grpc.Server) {
	hodeiv1.RegisterJobServiceServer(s, &jobService{a: a})
	hodeiv1.RegisterWorkerServiceServer(s, &workerService{a: a})
	hodeiv1.RegisterAdminServiceServer(s, &adminService{a: a})
	if sb, ok := a.b.(ScheduleBackend); ok { // issue 11 cron
		hodeiv1.RegisterScheduleServiceServer(s, &scheduleService{a: a, b: sb})
	}
	if pb, ok := a.b.(PipelineBackend); ok { // issue 13 pipelines
		hodeiv1.RegisterPipelineServiceServer(s, &pipelineService{a: a, b: pb})
	}
	if a.auth != nil { // issue 12 auth
		hodeiv1.RegisterAuthServiceServer(s, &authService{a: a})
	}
}

func isForwarded(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(mdForwarded)) > 0
}

// pinnedShard returns the shard a forwarded request is pinned to, if any.
func pinnedShard(ctx context.Context) (uint32, bool) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return 0, false
	}
	v := md.Get(mdShard)
	if len(v) == 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[0], 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

func forwardCtx(ctx context.Context, shard uint32) context.Context {
	return metadata.AppendToOutgoingContext(ctx, mdForwarded, "1", mdShard, strconv.FormatUint(uint64(shard), 10))
}

// route finds where a request for shard must run: here (local) or at the
// leader's address. During an election it waits, within the request's
// deadline and at most maxLeaderWait, instead of failing at once.
func (a *API) route(ctx context.Context, shard uint32) (bool, string, error) {
	forwarded := isForwarded(ctx)
	wait := time.NewTimer(maxLeaderWait)
	defer wait.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		local, addr := a.b.LeaderOf(shard)
		if local {
			return true, "", nil
		}
		if addr != "" && !forwarded {
			return false, addr, nil
		}
		select {
		case <-ctx.Done():
			return false, "", ctx.Err()
		case <-wait.C:
			if addr != "" {
				return false, "", status.Errorf(codes.Unavailable, "node %s is not the leader of shard %d (leader: %s)", a.b.NodeID(), shard, addr)
			}
			return false, "", fmt.Errorf("shard %d: %w", shard, ErrNoLeader)
		case <-tick.C:
		}
	}
}

func (a *API) conn(addr string) (*grpc.ClientConn, error) {
	c, err := a.pool.Get(addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "connect to leader %s: %v", addr, err)
	}
	return c, nil
}

// forwardErr keeps status errors of the leader as they are.
func forwardErr(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unavailable, err.Error())
}

// forward sends a request for shard sh to its leader when this node does
// not lead it. done is false when the caller must serve the request here.
func forward[R any](a *API, ctx context.Context, sh uint32, call func(context.Context, *grpc.ClientConn) (R, error)) (resp R, done bool, err error) {
	local, addr, err := a.route(ctx, sh)
	if err != nil {
		return resp, true, ToStatus(err)
	}
	if local {
		return resp, false, nil
	}
	cc, err := a.conn(addr)
	if err != nil {
		return resp, true, err
	}
	if resp, err = call(forwardCtx(ctx, sh), cc); err != nil {
		return resp, true, forwardErr(err)
	}
	return resp, true, nil
}

// ---- JobService ----

type jobService struct {
	hodeiv1.UnimplementedJobServiceServer
	a *API
}

func (s *jobService) SubmitJob(ctx context.Context, req *hodeiv1.SubmitJobRequest) (*hodeiv1.SubmitJobResponse, error) {
	if req.GetSpec() == nil {
		return nil, invalid("spec is required")
	}
	res, err := s.a.submit(ctx, []*hodeiv1.JobSpec{req.GetSpec()}, req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	if err := ItemError(res[0]); err != nil {
		return nil, err // a tenant limit refused it (issue 11 quota)
	}
	return res[0], nil
}

func (s *jobService) SubmitJobs(ctx context.Context, req *hodeiv1.SubmitJobsRequest) (*hodeiv1.SubmitJobsResponse, error) {
	if len(req.GetSpecs()) == 0 {
		return nil, invalid("specs is empty")
	}
	if len(req.GetSpecs()) > 10000 {
		return nil, invalid("too many specs: %d, limit is 10000", len(req.GetSpecs()))
	}
	res, err := s.a.submit(ctx, req.GetSpecs(), req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.SubmitJobsResponse{Results: res}, nil
}

func (a *API) submit(ctx context.Context, specs []*hodeiv1.JobSpec, requestID string) ([]*hodeiv1.SubmitJobResponse, error) {
	for i, sp := range specs {
		if sp == nil {
			return nil, invalid("spec %d is empty", i)
		}
		if err := requireSubmit(ctx, sp.GetTenant()); err != nil { // auth: before anything changes
			return nil, err
		}
		if err := a.b.ValidateSpec(sp); err != nil {
			if len(specs) == 1 {
				return nil, invalid("%v", err)
			}
			return nil, invalid("spec %d: %v", i, err)
		}
	}
	// Group by shard, keeping the caller's order in the reply.
	groups := map[uint32][]int{}
	var order []uint32
	for i, sp := range specs {
		sh := a.b.ShardOfTenant(sp.GetTenant())
		if _, ok := groups[sh]; !ok {
			order = append(order, sh)
		}
		groups[sh] = append(groups[sh], i)
	}
	out := make([]*hodeiv1.SubmitJobResponse, len(specs))
	for _, sh := range order {
		idx := groups[sh]
		sub := make([]*hodeiv1.JobSpec, len(idx))
		for j, i := range idx {
			sub[j] = specs[i]
		}
		rid := requestID
		if rid != "" && len(order) > 1 {
			rid = fmt.Sprintf("%s/%d", requestID, sh)
		}
		res, err := a.submitShard(ctx, sh, sub, rid)
		if err != nil {
			return nil, err
		}
		if len(res) != len(idx) {
			return nil, status.Errorf(codes.Internal, "shard %d returned %d results for %d specs", sh, len(res), len(idx))
		}
		for j, i := range idx {
			out[i] = res[j]
		}
	}
	return out, nil
}

func (a *API) submitShard(ctx context.Context, shard uint32, specs []*hodeiv1.JobSpec, rid string) ([]*hodeiv1.SubmitJobResponse, error) {
	resp, done, err := forward(a, ctx, shard, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.SubmitJobsResponse, error) {
		return hodeiv1.NewJobServiceClient(cc).SubmitJobs(ctx, &hodeiv1.SubmitJobsRequest{Specs: specs, RequestId: rid})
	})
	if done {
		return resp.GetResults(), err
	}
	return a.b.Submit(ctx, shard, specs, rid)
}

func (s *jobService) GetJob(ctx context.Context, req *hodeiv1.GetJobRequest) (*hodeiv1.GetJobResponse, error) {
	a := s.a
	sh, err := a.b.ShardOfJob(req.GetId())
	if err != nil {
		return nil, invalid("job id %q: %v", req.GetId(), err)
	}
	if !req.GetStale() {
		resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.GetJobResponse, error) {
			return hodeiv1.NewJobServiceClient(cc).GetJob(ctx, req)
		})
		if done {
			if err == nil {
				err = readableJob(ctx, req.GetId(), resp.GetJob()) // the leader checked too
			}
			if err != nil {
				return nil, err
			}
			return resp, nil
		}
		if err := a.b.ReadIndex(ctx, sh); err != nil {
			return nil, ToStatus(err)
		}
	}
	job, ok := a.b.GetJob(sh, req.GetId())
	if !ok {
		return nil, jobNotFound(req.GetId())
	}
	if err := readableJob(ctx, req.GetId(), job); err != nil { // auth: another tenant's job is not found
		return nil, err
	}
	return &hodeiv1.GetJobResponse{Job: job}, nil
}

const (
	defaultListLimit = 100
	maxListLimit     = 10000
)

// page tokens are "shard:afterSeq".
func parsePageToken(tok string) (uint32, uint64, error) {
	if tok == "" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(tok, ":")
	if !ok {
		return 0, 0, fmt.Errorf("malformed page token %q", tok)
	}
	sh, err := strconv.ParseUint(a, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed page token %q", tok)
	}
	seq, err := strconv.ParseUint(b, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed page token %q", tok)
	}
	return uint32(sh), seq, nil
}

func (s *jobService) ListJobs(ctx context.Context, req *hodeiv1.ListJobsRequest) (*hodeiv1.ListJobsResponse, error) {
	a := s.a
	if _, ok := hodeiv1.JobState_name[int32(req.GetState())]; !ok {
		return nil, invalid("unknown state %d", req.GetState())
	}
	limit := int(req.GetLimit())
	if limit < 0 {
		return nil, invalid("limit must be >= 0, got %d", limit)
	}
	if limit == 0 {
		limit = defaultListLimit
	}
	if limit > maxListLimit {
		return nil, invalid("limit %d is over the maximum %d", limit, maxListLimit)
	}
	startShard, after, err := parsePageToken(req.GetPageToken())
	if err != nil {
		return nil, invalid("%v", err)
	}
	if req.GetTenant() != "" {
		if err := requireRead(ctx, req.GetTenant()); err != nil {
			return nil, err
		}
	}
	// A forwarded list is pinned to one shard.
	if sh, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		return a.listShard(ctx, sh, req, after, limit)
	}
	var shards []uint32
	if req.GetTenant() != "" {
		shards = []uint32{a.b.ShardOfTenant(req.GetTenant())}
	} else {
		for i := 0; i < a.b.ShardCount(); i++ {
			shards = append(shards, uint32(i))
		}
	}
	out := &hodeiv1.ListJobsResponse{}
	for _, sh := range shards {
		if sh < startShard {
			continue
		}
		from := uint64(0)
		if sh == startShard {
			from = after
		}
		resp, err := a.listShard(ctx, sh, req, from, limit-len(out.Jobs))
		if err != nil {
			return nil, err
		}
		out.Jobs = append(out.Jobs, resp.Jobs...)
		if resp.NextPageToken != "" {
			out.NextPageToken = resp.NextPageToken
			return out, nil
		}
		if len(out.Jobs) >= limit {
			// The next page starts at the next shard.
			if next := nextShard(shards, sh); next >= 0 {
				out.NextPageToken = fmt.Sprintf("%d:0", next)
			}
			return out, nil
		}
	}
	return out, nil
}

func nextShard(shards []uint32, cur uint32) int {
	for i, s := range shards {
		if s == cur && i+1 < len(shards) {
			return int(shards[i+1])
		}
	}
	return -1
}

func (a *API) listShard(ctx context.Context, sh uint32, req *hodeiv1.ListJobsRequest, after uint64, limit int) (*hodeiv1.ListJobsResponse, error) {
	if !req.GetStale() {
		fwd := &hodeiv1.ListJobsRequest{Tenant: req.GetTenant(), State: req.GetState(), Limit: int32(limit), PageToken: fmt.Sprintf("%d:%d", sh, after)}
		resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ListJobsResponse, error) {
			return hodeiv1.NewJobServiceClient(cc).ListJobs(ctx, fwd)
		})
		if done {
			if resp != nil {
				resp.Jobs = readableJobs(ctx, resp.Jobs) // the leader filtered too
			}
			return resp, err
		}
		if err := a.b.ReadIndex(ctx, sh); err != nil {
			return nil, ToStatus(err)
		}
	}
	jobs, next := a.b.ListJobs(sh, req.GetTenant(), req.GetState(), after, limit)
	jobs = readableJobs(ctx, jobs) // auth: a wildcard list shows only the caller's tenants
	resp := &hodeiv1.ListJobsResponse{Jobs: jobs}
	if next != 0 {
		resp.NextPageToken = fmt.Sprintf("%d:%d", sh, next)
	}
	return resp, nil
}

func (s *jobService) CancelJob(ctx context.Context, req *hodeiv1.CancelJobRequest) (*hodeiv1.CancelJobResponse, error) {
	a := s.a
	sh, err := a.b.ShardOfJob(req.GetId())
	if err != nil {
		return nil, invalid("job id %q: %v", req.GetId(), err)
	}
	resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.CancelJobResponse, error) {
		return hodeiv1.NewJobServiceClient(cc).CancelJob(ctx, req)
	})
	if done {
		return resp, err
	}
	if err := a.leaderJobWritable(ctx, sh, req.GetId()); err != nil {
		return nil, err
	}
	job, err := a.b.Cancel(ctx, sh, req.GetId(), req.GetReason(), req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.CancelJobResponse{Job: job}, nil
}
