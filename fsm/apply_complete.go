package fsm

import (
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// applyComplete records the outcome of the current attempt of a RUNNING
// job, fenced by its lease token.
func (s *state) applyComplete(now int64, c *internalpb.CompleteJob) *internalpb.CommandResult {
	j, bad := s.completable(c.GetJobId(), c.GetToken())
	if bad != nil {
		return bad
	}
	s.accept(now, j, c.GetResult(), c.GetSuccess(), c.GetRetryable())
	return &internalpb.CommandResult{Job: cloneJob(j)}
}

// MaxCompletions bounds the items of one CompleteJobs.
const MaxCompletions = 10000

// applyCompleteJobs records each completion on its own: a stale token or an
// unknown job refuses that item alone. An item whose token is the one the
// job's last result was accepted under is a repeat of an accepted
// completion (a retry after a lost reply) and answers ok again, changing
// nothing — so completions need no request record.
func (s *state) applyCompleteJobs(now int64, c *internalpb.CompleteJobs) *internalpb.CommandResult {
	if s.curVersion < EntryVersionDispatch {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "complete_jobs needs an entry of version %d, this one has version %d", EntryVersionDispatch, s.curVersion)
	}
	items := c.GetItems()
	if len(items) > MaxCompletions {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "complete_jobs: %d items, limit %d", len(items), MaxCompletions)
	}
	out := &internalpb.CommandResult{Completed: make([]*hodeiv1.CompletionResult, len(items))}
	for i, it := range items {
		r := &hodeiv1.CompletionResult{JobId: it.GetJobId(), Token: it.GetToken()}
		out.Completed[i] = r
		if it.GetToken() == 0 {
			r.Code, r.Reason = "INVALID_ARGUMENT", "token is required"
			continue
		}
		j, bad := s.completable(it.GetJobId(), it.GetToken())
		if bad != nil {
			if j != nil && j.GetLastResult().GetLeaseToken() == it.GetToken() && !j.GetLastResult().GetLeaseExpired() {
				r.Ok, r.State = true, j.GetState() // already accepted under this token
				continue
			}
			r.Code, r.Reason = codeName(bad.GetCode()), bad.GetMessage()
			continue
		}
		if w := it.GetResult().GetWorkerId(); w != "" && w != j.GetLeaseWorker() {
			r.Code, r.Reason = "FAILED_PRECONDITION", "job "+j.GetId()+" is leased to another worker"
			continue
		}
		s.accept(now, j, it.GetResult(), it.GetSuccess(), it.GetRetryable())
		r.Ok, r.State = true, j.GetState()
	}
	return out
}

// codeName is the gRPC code name of an FSM code, as CompletionResult.code says it.
func codeName(c internalpb.Code) string {
	switch c {
	case internalpb.Code_CODE_NOT_FOUND:
		return "NOT_FOUND"
	case internalpb.Code_CODE_FAILED_PRECONDITION:
		return "FAILED_PRECONDITION"
	case internalpb.Code_CODE_ALREADY_EXISTS:
		return "ALREADY_EXISTS"
	case internalpb.Code_CODE_RESOURCE_EXHAUSTED:
		return "RESOURCE_EXHAUSTED"
	case internalpb.Code_CODE_OK:
		return "OK"
	}
	return "INVALID_ARGUMENT"
}

// completable finds the job a completion under token may finish: RUNNING
// under that token. Otherwise it returns the refusal (and the job, if any).
func (s *state) completable(id string, token uint64) (*hodeiv1.Job, *internalpb.CommandResult) {
	j, ok := s.lookup(id)
	if !ok {
		return nil, errResult(internalpb.Code_CODE_NOT_FOUND, "job %s not found", id)
	}
	if j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING {
		return j, errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "job %s is %s", j.GetId(), stateName(j.GetState()))
	}
	if j.GetLeaseToken() != token {
		return j, errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "stale lease token: job %s has token %d, got %d",
			j.GetId(), j.GetLeaseToken(), token)
	}
	return j, nil
}

// accept records the result of j's current attempt and moves it on.
func (s *state) accept(now int64, j *hodeiv1.Job, result *hodeiv1.JobResult, success, retryable bool) {
	res := s.truncateResult(result)
	if res.GetWorkerId() == "" {
		res.WorkerId = j.GetLeaseWorker()
	}
	res.LeaseToken = j.GetLeaseToken() // set by the server, whatever the worker sent
	res.Attempt = j.GetAttempts()
	res.LeaseExpired = false // set by the server only, on expiry
	s.keepAttempt(j)
	j.LastResult = res
	if success {
		s.finish(j, hodeiv1.JobState_JOB_STATE_SUCCEEDED, now)
	} else {
		s.retryOrFail(j, retryable, now)
	}
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
