package fsm

import (
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// applyComplete records the outcome of the current attempt of a RUNNING
// job, fenced by its lease token.
func (s *state) applyComplete(now int64, c *internalpb.CompleteJob) *internalpb.CommandResult {
	j, ok := s.lookup(c.GetJobId())
	if !ok {
		return errResult(internalpb.Code_CODE_NOT_FOUND, "job %s not found", c.GetJobId())
	}
	if j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING {
		return errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "job %s is %s", j.GetId(), stateName(j.GetState()))
	}
	if j.GetLeaseToken() != c.GetToken() {
		return errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "stale lease token: job %s has token %d, got %d",
			j.GetId(), j.GetLeaseToken(), c.GetToken())
	}
	res := s.truncateResult(c.GetResult())
	if res.GetWorkerId() == "" {
		res.WorkerId = j.GetLeaseWorker()
	}
	res.LeaseToken = j.GetLeaseToken() // set by the server, whatever the worker sent
	res.Attempt = j.GetAttempts()
	res.LeaseExpired = false // set by the server only, on expiry
	j.LastResult = res
	if c.GetSuccess() {
		s.finish(j, hodeiv1.JobState_JOB_STATE_SUCCEEDED, now)
	} else {
		s.retryOrFail(j, c.GetRetryable(), now)
	}
	return &internalpb.CommandResult{Job: cloneJob(j)}
}

// truncateResult clones r, keeping only the last MaxOutputBytes of output.
func (s *state) truncateResult(r *hodeiv1.JobResult) *hodeiv1.JobResult {
	if r == nil {
		return &hodeiv1.JobResult{}
	}
	out := proto.Clone(r).(*hodeiv1.JobResult)
	if max := s.cfg.MaxOutputBytes; len(out.Output) > max {
		out.Output = append([]byte(nil), out.Output[len(out.Output)-max:]...)
	}
	return out
}

// applyCancel cancels a PENDING or RUNNING job; its lease (if any) is void.
func (s *state) applyCancel(now int64, c *internalpb.CancelJob) *internalpb.CommandResult {
	j, ok := s.lookup(c.GetJobId())
	if !ok {
		return errResult(internalpb.Code_CODE_NOT_FOUND, "job %s not found", c.GetJobId())
	}
	if isTerminal(j.GetState()) {
		return errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "job %s is already %s", j.GetId(), stateName(j.GetState()))
	}
	j.CancelReason = c.GetReason()
	s.finish(j, hodeiv1.JobState_JOB_STATE_CANCELLED, now)
	return &internalpb.CommandResult{Job: cloneJob(j)}
}
