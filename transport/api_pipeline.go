package transport

// PipelineService (issue 13): every node serves it. A pipeline lives in
// its tenant's shard; writes run on that shard's leader (forwarded there,
// one hop, like job writes), reads are linearizable reads of the shard
// unless stale. This file only decodes, validates, calls the backend and
// maps errors: what a pipeline is and does is decided by the FSM.

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// PipelineBackend serves PipelineService. Writes are called only on the
// shard leader; reads use the local replica (after ReadIndex unless stale).
type PipelineBackend interface {
	// DecodePipeline parses a pipeline file (YAML or JSON); errors name the
	// line and column.
	DecodePipeline(source []byte) (*hodeiv1.PipelineSpec, error)
	// ValidatePipeline checks a spec as the FSM will (so that bad input
	// costs no log entry); the tenant it returns is the spec's, defaulted.
	ValidatePipeline(spec *hodeiv1.PipelineSpec) (tenant string, err error)
	// PipelineShard is the shard holding pipeline id (from the id alone).
	PipelineShard(id string) (uint32, error)
	SubmitPipeline(ctx context.Context, shard uint32, spec *hodeiv1.PipelineSpec, requestID string) (*hodeiv1.Pipeline, error)
	CancelPipeline(ctx context.Context, shard uint32, id, reason, requestID string) (*hodeiv1.Pipeline, error)
	RetryPipeline(ctx context.Context, shard uint32, id, fromStep, requestID string) (*hodeiv1.Pipeline, error)
	GetPipeline(shard uint32, id string, includeSpecs bool) (*hodeiv1.Pipeline, bool)
	// ListPipelines lists summaries with seq > afterSeq; next is the seq to
	// continue after, 0 when the shard has no more.
	ListPipelines(shard uint32, tenant string, state hodeiv1.PipelineState, afterSeq uint64, limit int) (out []*hodeiv1.Pipeline, next uint64)
}

// bigReply lets a forwarded call take a reply past gRPC's default 4 MiB: a
// pipeline of 10,000 steps (with templates on include_specs) can be larger.
var bigReply = grpc.MaxCallRecvMsgSize(64 << 20)

const (
	defaultPipelineList = 100
	maxPipelineList     = 1000
)

type pipelineService struct {
	hodeiv1.UnimplementedPipelineServiceServer
	a *API
	b PipelineBackend
}

func (s *pipelineService) SubmitPipeline(ctx context.Context, req *hodeiv1.SubmitPipelineRequest) (*hodeiv1.PipelineResponse, error) {
	spec := req.GetSpec()
	switch {
	case spec != nil && len(req.GetSource()) > 0:
		return nil, invalid("give spec or source, not both")
	case spec == nil && len(req.GetSource()) == 0:
		return nil, invalid("spec or source is required")
	case spec == nil:
		var err error
		if spec, err = s.b.DecodePipeline(req.GetSource()); err != nil {
			return nil, invalid("%v", err)
		}
	}
	tenant, err := s.b.ValidatePipeline(spec)
	if err != nil {
		return nil, invalid("%v", err)
	}
	if err := requireSubmit(ctx, tenant); err != nil { // auth
		return nil, err
	}
	sh := s.a.b.ShardOfTenant(tenant)
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.PipelineResponse, error) {
		// Forward the decoded spec: the leader need not parse the file again.
		return hodeiv1.NewPipelineServiceClient(cc).SubmitPipeline(ctx, &hodeiv1.SubmitPipelineRequest{Spec: spec, RequestId: req.GetRequestId()}, bigReply)
	})
	if done {
		return resp, err
	}
	p, err := s.b.SubmitPipeline(ctx, sh, spec, req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.PipelineResponse{Pipeline: p}, nil
}

// pipelineShard validates a pipeline id and returns its shard.
func (s *pipelineService) pipelineShard(id string) (uint32, error) {
	if id == "" {
		return 0, invalid("id is required")
	}
	sh, err := s.b.PipelineShard(id)
	if err != nil {
		return 0, invalid("%v", err)
	}
	if int(sh) >= s.a.b.ShardCount() {
		return 0, status.Errorf(codes.NotFound, "pipeline %s not found: shard %d does not exist", id, sh)
	}
	return sh, nil
}

// readPipelineShard makes a read of shard sh linearizable (forwarded to its
// leader, or served here after ReadIndex) unless stale (the local replica
// answers). done means resp/err are the answer.
func readPipelineShard[R any](a *API, ctx context.Context, sh uint32, stale bool, call func(context.Context, *grpc.ClientConn) (R, error)) (resp R, done bool, err error) {
	if stale {
		return resp, false, nil
	}
	if p, ok := pinnedShard(ctx); ok && isForwarded(ctx) && p == sh {
		if err := a.b.ReadIndex(ctx, sh); err != nil {
			return resp, true, ToStatus(err)
		}
		return resp, false, nil
	}
	resp, done, err = forward(a, ctx, sh, call)
	if done {
		return resp, done, err
	}
	if err := a.b.ReadIndex(ctx, sh); err != nil {
		return resp, true, ToStatus(err)
	}
	return resp, false, nil
}

func (s *pipelineService) GetPipeline(ctx context.Context, req *hodeiv1.GetPipelineRequest) (*hodeiv1.PipelineResponse, error) {
	sh, err := s.pipelineShard(req.GetId())
	if err != nil {
		return nil, err
	}
	resp, done, err := readPipelineShard(s.a, ctx, sh, req.GetStale(), func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.PipelineResponse, error) {
		return hodeiv1.NewPipelineServiceClient(cc).GetPipeline(ctx, req, bigReply)
	})
	if done {
		return resp, err
	}
	p, ok := s.b.GetPipeline(sh, req.GetId(), req.GetIncludeSpecs())
	if !ok || !mayRead(ctx, p.GetTenant()) { // auth: another tenant's answers as a missing one
		return nil, pipelineNotFound(req.GetId())
	}
	return &hodeiv1.PipelineResponse{Pipeline: p}, nil
}

// ListPipelines walks the shards in order (the tenant's one, or all), each
// read on its leader; the page token is "<shard>:<seq>", the last pipeline
// shown.
func (s *pipelineService) ListPipelines(ctx context.Context, req *hodeiv1.ListPipelinesRequest) (*hodeiv1.ListPipelinesResponse, error) {
	if req.GetTenant() != "" {
		if err := requireRead(ctx, req.GetTenant()); err != nil { // auth
			return nil, err
		}
	}
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = defaultPipelineList
	case limit < 0 || limit > maxPipelineList:
		return nil, invalid("limit %d is outside 1..%d", limit, maxPipelineList)
	}
	if st := req.GetState(); st < 0 || st > hodeiv1.PipelineState_PIPELINE_STATE_CANCELLED {
		return nil, invalid("state %d is unknown", st)
	}
	n := s.a.b.ShardCount()
	first, after := uint32(0), uint64(0)
	if tok := req.GetPageToken(); tok != "" {
		sh, seq, err := parsePipelineToken(tok)
		if err != nil || int(sh) >= n {
			return nil, invalid("page_token %q is not one this service made", tok)
		}
		first, after = sh, seq
	}
	var shards []uint32
	switch p, pinned := pinnedShard(ctx); {
	case pinned && isForwarded(ctx):
		shards = []uint32{p}
	case req.GetTenant() != "":
		if t := s.a.b.ShardOfTenant(req.GetTenant()); t >= first {
			shards = []uint32{t}
		}
	default:
		for sh := first; int(sh) < n; sh++ {
			shards = append(shards, sh)
		}
	}
	out := &hodeiv1.ListPipelinesResponse{}
	for _, sh := range shards {
		if sh != first {
			after = 0
		}
		part := &hodeiv1.ListPipelinesRequest{Tenant: req.GetTenant(), State: req.GetState(), Limit: int32(limit - len(out.Pipelines)),
			PageToken: pipelineToken(sh, after)}
		resp, done, err := readPipelineShard(s.a, ctx, sh, false, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ListPipelinesResponse, error) {
			return hodeiv1.NewPipelineServiceClient(cc).ListPipelines(ctx, part, bigReply)
		})
		if err != nil {
			return nil, err
		}
		var page []*hodeiv1.Pipeline
		var next uint64
		if done {
			page = resp.GetPipelines()
			if t := resp.GetNextPageToken(); t != "" {
				if _, next, err = parsePipelineToken(t); err != nil {
					return nil, status.Errorf(codes.Internal, "shard %d answered page token %q", sh, t)
				}
			}
		} else {
			page, next = s.b.ListPipelines(sh, req.GetTenant(), req.GetState(), after, limit-len(out.Pipelines))
		}
		for _, p := range page {
			if mayRead(ctx, p.GetTenant()) { // auth: a wildcard list shows only the caller's tenants
				out.Pipelines = append(out.Pipelines, p)
			}
		}
		if next != 0 {
			out.NextPageToken = pipelineToken(sh, next)
			return out, nil
		}
		if len(out.Pipelines) >= limit && len(shards) > 1 && int(sh)+1 < n {
			out.NextPageToken = pipelineToken(sh+1, 0)
			return out, nil
		}
	}
	return out, nil
}

func pipelineToken(sh uint32, seq uint64) string {
	return strconv.FormatUint(uint64(sh), 10) + ":" + strconv.FormatUint(seq, 10)
}

func parsePipelineToken(t string) (uint32, uint64, error) {
	a, b, ok := strings.Cut(t, ":")
	if !ok {
		return 0, 0, fmt.Errorf("no ':'")
	}
	sh, err1 := strconv.ParseUint(a, 10, 32)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("not numbers")
	}
	return uint32(sh), seq, nil
}

func (s *pipelineService) CancelPipeline(ctx context.Context, req *hodeiv1.CancelPipelineRequest) (*hodeiv1.PipelineResponse, error) {
	sh, err := s.pipelineShard(req.GetId())
	if err != nil {
		return nil, err
	}
	if len(req.GetReason()) > 1024 {
		return nil, invalid("reason is %d bytes, limit 1024", len(req.GetReason()))
	}
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.PipelineResponse, error) {
		return hodeiv1.NewPipelineServiceClient(cc).CancelPipeline(ctx, req, bigReply)
	})
	if done {
		return resp, err
	}
	if err := s.writable(ctx, sh, req.GetId()); err != nil {
		return nil, err
	}
	p, err := s.b.CancelPipeline(ctx, sh, req.GetId(), req.GetReason(), req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.PipelineResponse{Pipeline: p}, nil
}

func (s *pipelineService) RetryPipeline(ctx context.Context, req *hodeiv1.RetryPipelineRequest) (*hodeiv1.PipelineResponse, error) {
	sh, err := s.pipelineShard(req.GetId())
	if err != nil {
		return nil, err
	}
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.PipelineResponse, error) {
		return hodeiv1.NewPipelineServiceClient(cc).RetryPipeline(ctx, req, bigReply)
	})
	if done {
		return resp, err
	}
	if err := s.writable(ctx, sh, req.GetId()); err != nil {
		return nil, err
	}
	p, err := s.b.RetryPipeline(ctx, sh, req.GetId(), req.GetFromStep(), req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.PipelineResponse{Pipeline: p}, nil
}

// pipelineNotFound is the answer for a missing pipeline and for another
// tenant's (auth: no existence leak).
func pipelineNotFound(id string) error {
	return status.Errorf(codes.NotFound, "pipeline %s not found", id)
}

// writable checks, on the shard leader, that the caller may change
// pipeline id: a pipeline of a tenant it may not submit to is not found.
// Without auth it checks nothing (the command reports a missing pipeline).
func (s *pipelineService) writable(ctx context.Context, sh uint32, id string) error {
	if PrincipalFrom(ctx) == nil {
		return nil
	}
	p, ok := s.b.GetPipeline(sh, id, false)
	if !ok || !maySubmit(ctx, p.GetTenant()) {
		return pipelineNotFound(id)
	}
	return nil
}
