package cluster

// Pipelines (issue 13): the PipelineService backend. A pipeline's state
// lives in the FSM of its tenant's shard (fsm/apply_pipeline.go), where
// step releases are decided; this file proposes the commands on the
// shard's leader and reads the local replica.

import (
	"context"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

var _ transport.PipelineBackend = (*Node)(nil)

// DecodePipeline parses a pipeline file (YAML or JSON).
func (n *Node) DecodePipeline(source []byte) (*hodeiv1.PipelineSpec, error) {
	return fsm.DecodePipeline(source)
}

// ValidatePipeline checks a spec with this node's FSM configuration (the
// same on every node), before anything is proposed.
func (n *Node) ValidatePipeline(spec *hodeiv1.PipelineSpec) (string, error) {
	return fsm.ValidatePipeline(spec, n.cfg.FSM)
}

// PipelineShard is the shard a pipeline id names.
func (n *Node) PipelineShard(id string) (uint32, error) {
	sh, _, err := fsm.ParsePipelineID(id)
	return sh, err
}

// pipelineResult is the pipeline of a command's result; a retried command
// whose pipeline GC removed since answers NotFound.
func pipelineResult(res *internalpb.CommandResult, id string) (*hodeiv1.Pipeline, error) {
	if p := res.GetPipeline(); p != nil {
		return p, nil
	}
	return nil, &fsm.CodeError{C: internalpb.Code_CODE_NOT_FOUND, Msg: "pipeline " + id + " no longer exists"}
}

func (n *Node) SubmitPipeline(ctx context.Context, id uint32, spec *hodeiv1.PipelineSpec, requestID string) (*hodeiv1.Pipeline, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_SubmitPipeline{SubmitPipeline: &internalpb.SubmitPipeline{Spec: spec}}})
	if err != nil {
		return nil, err
	}
	return pipelineResult(res, "of request "+requestID)
}

func (n *Node) CancelPipeline(ctx context.Context, id uint32, pid, reason, requestID string) (*hodeiv1.Pipeline, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_CancelPipeline{CancelPipeline: &internalpb.CancelPipeline{Id: pid, Reason: reason}}})
	if err != nil {
		return nil, err
	}
	return pipelineResult(res, pid)
}

func (n *Node) RetryPipeline(ctx context.Context, id uint32, pid, fromStep, requestID string) (*hodeiv1.Pipeline, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_RetryPipeline{RetryPipeline: &internalpb.RetryPipeline{Id: pid, FromStep: fromStep}}})
	if err != nil {
		return nil, err
	}
	return pipelineResult(res, pid)
}

func (n *Node) GetPipeline(id uint32, pid string, includeSpecs bool) (*hodeiv1.Pipeline, bool) {
	s, err := n.shard(id)
	if err != nil {
		return nil, false
	}
	return s.fsm.GetPipeline(pid, includeSpecs)
}

func (n *Node) ListPipelines(id uint32, tenant string, state hodeiv1.PipelineState, afterSeq uint64, limit int) ([]*hodeiv1.Pipeline, uint64) {
	s, err := n.shard(id)
	if err != nil {
		return nil, 0
	}
	return s.fsm.ListPipelines(tenant, state, afterSeq, limit)
}
