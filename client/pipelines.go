package client

import (
	"context"
	"strings"

	"google.golang.org/grpc"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Pipelines (issue 13): DAGs of jobs. A pipeline lives in its tenant's
// shard; calls go to that shard's leader when routing knows it (any node
// forwards them there). Writes carry a request id, so a retry after a lost
// reply (timeout, leader change) answers the first result instead of
// submitting, cancelling or retrying twice.

// maxPipelineMsg is the largest reply accepted from a pipeline call: a
// pipeline of 10,000 steps with their templates (include_specs) can pass
// gRPC's default 4 MiB.
const maxPipelineMsg = 64 << 20

func (c *Client) pipelines(cc *grpc.ClientConn) hodeiv1.PipelineServiceClient {
	return hodeiv1.NewPipelineServiceClient(cc)
}

// pipelineShard is the shard in pipeline id "p<shard>-<seq>", or noShard.
func (c *Client) pipelineShard(ctx context.Context, id string) int {
	if !strings.HasPrefix(id, "p") {
		return noShard
	}
	return c.jobShard(ctx, id[1:])
}

func pipelineCall(c *Client, ctx context.Context, shard int, call func(context.Context, hodeiv1.PipelineServiceClient) (*hodeiv1.PipelineResponse, error)) (*hodeiv1.Pipeline, error) {
	var resp *hodeiv1.PipelineResponse
	err := c.invokeShard(ctx, c.cfg.CallTimeout, shard, func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := call(ctx, c.pipelines(cc))
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetPipeline(), nil
}

// SubmitPipeline submits a pipeline spec (see fsm/pipeline.File for the
// file format; fsm.DecodePipeline turns a file into a spec). The reply is
// the pipeline with its root steps released. Invalid specs are
// InvalidArgument naming every problem; nothing is stored.
func (c *Client) SubmitPipeline(ctx context.Context, spec *hodeiv1.PipelineSpec) (*hodeiv1.Pipeline, error) {
	req := &hodeiv1.SubmitPipelineRequest{Spec: spec, RequestId: NewRequestID()}
	return pipelineCall(c, ctx, c.tenantShard(ctx, spec.GetTenant()), func(ctx context.Context, s hodeiv1.PipelineServiceClient) (*hodeiv1.PipelineResponse, error) {
		return s.SubmitPipeline(ctx, req, grpc.MaxCallRecvMsgSize(maxPipelineMsg))
	})
}

// SubmitPipelineFile submits a pipeline file (YAML or JSON) as it is: the
// server decodes it (errors name the line and column).
func (c *Client) SubmitPipelineFile(ctx context.Context, source []byte) (*hodeiv1.Pipeline, error) {
	req := &hodeiv1.SubmitPipelineRequest{Source: source, RequestId: NewRequestID()}
	return pipelineCall(c, ctx, noShard, func(ctx context.Context, s hodeiv1.PipelineServiceClient) (*hodeiv1.PipelineResponse, error) {
		return s.SubmitPipeline(ctx, req, grpc.MaxCallRecvMsgSize(maxPipelineMsg))
	})
}

// GetPipeline returns a pipeline with every step's state, job id and
// attempts (linearizable unless stale; templates with includeSpecs).
func (c *Client) GetPipeline(ctx context.Context, id string, includeSpecs, stale bool) (*hodeiv1.Pipeline, error) {
	req := &hodeiv1.GetPipelineRequest{Id: id, IncludeSpecs: includeSpecs, Stale: stale}
	return pipelineCall(c, ctx, c.pipelineShard(ctx, id), func(ctx context.Context, s hodeiv1.PipelineServiceClient) (*hodeiv1.PipelineResponse, error) {
		return s.GetPipeline(ctx, req, grpc.MaxCallRecvMsgSize(maxPipelineMsg))
	})
}

// ListPipelines returns one page of pipeline summaries (no steps) and the
// token of the next page ("" at the end).
func (c *Client) ListPipelines(ctx context.Context, req *hodeiv1.ListPipelinesRequest) ([]*hodeiv1.Pipeline, string, error) {
	var resp *hodeiv1.ListPipelinesResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.pipelines(cc).ListPipelines(ctx, req)
		resp = r
		return err
	})
	return resp.GetPipelines(), resp.GetNextPageToken(), err
}

// CancelPipeline cancels every pending and running step job; the
// pipeline ends CANCELLED.
func (c *Client) CancelPipeline(ctx context.Context, id, reason string) (*hodeiv1.Pipeline, error) {
	req := &hodeiv1.CancelPipelineRequest{Id: id, Reason: reason, RequestId: NewRequestID()}
	return pipelineCall(c, ctx, c.pipelineShard(ctx, id), func(ctx context.Context, s hodeiv1.PipelineServiceClient) (*hodeiv1.PipelineResponse, error) {
		return s.CancelPipeline(ctx, req, grpc.MaxCallRecvMsgSize(maxPipelineMsg))
	})
}

// RetryPipeline re-runs an ended pipeline's failed, cancelled and skipped
// steps, and with fromStep that step and everything downstream of it.
func (c *Client) RetryPipeline(ctx context.Context, id, fromStep string) (*hodeiv1.Pipeline, error) {
	req := &hodeiv1.RetryPipelineRequest{Id: id, FromStep: fromStep, RequestId: NewRequestID()}
	return pipelineCall(c, ctx, c.pipelineShard(ctx, id), func(ctx context.Context, s hodeiv1.PipelineServiceClient) (*hodeiv1.PipelineResponse, error) {
		return s.RetryPipeline(ctx, req, grpc.MaxCallRecvMsgSize(maxPipelineMsg))
	})
}
