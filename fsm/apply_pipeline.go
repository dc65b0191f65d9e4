package fsm

import (
	"fmt"

	"github.com/hodei-io/hodei/fsm/pipeline"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// MaxPipelinesPerShard bounds the pipelines (running and ended, until GC)
// one shard holds.
const MaxPipelinesPerShard = 100_000

// isPipelineCommand reports whether c is one of the issue 13 commands,
// which need an entry of version EntryVersionPipelines.
func isPipelineCommand(c *internalpb.Command) bool {
	switch c.GetKind().(type) {
	case *internalpb.Command_SubmitPipeline, *internalpb.Command_CancelPipeline, *internalpb.Command_RetryPipeline:
		return true
	}
	return false
}

func (s *state) applyPipeline(now int64, c *internalpb.Command) *internalpb.CommandResult {
	if s.curVersion < EntryVersionPipelines {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "pipeline commands need an entry of version %d, this one has version %d", EntryVersionPipelines, s.curVersion)
	}
	switch k := c.GetKind().(type) {
	case *internalpb.Command_SubmitPipeline:
		return s.applySubmitPipeline(now, k.SubmitPipeline)
	case *internalpb.Command_CancelPipeline:
		return s.applyCancelPipeline(now, k.CancelPipeline)
	case *internalpb.Command_RetryPipeline:
		return s.applyRetryPipeline(now, k.RetryPipeline)
	}
	panic(fmt.Sprintf("fsm: applyPipeline called with %T", c.GetKind()))
}

// applySubmitPipeline compiles (expands and validates) the spec, stores
// the pipeline and releases its root steps as jobs, all in this apply.
// Any problem rejects the command with every problem named; nothing is
// stored.
func (s *state) applySubmitPipeline(now int64, c *internalpb.SubmitPipeline) *internalpb.CommandResult {
	plan, err := pipeline.Compile(c.GetSpec(), func(js *hodeiv1.JobSpec) (*hodeiv1.JobSpec, error) {
		return NormalizeSpec(js, s.cfg)
	})
	if err != nil {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "%v", err)
	}
	if len(s.pipes.bySeq) >= MaxPipelinesPerShard {
		return errResult(internalpb.Code_CODE_RESOURCE_EXHAUSTED, "shard %d holds %d pipelines, limit %d", s.cfg.Shard, len(s.pipes.bySeq), MaxPipelinesPerShard)
	}
	seq := s.pipes.nextSeq
	s.pipes.nextSeq++
	rec := &hodeiv1.Pipeline{
		Id: FormatPipelineID(s.cfg.Shard, seq), Tenant: plan.Tenant, Name: plan.Name,
		State: hodeiv1.PipelineState_PIPELINE_STATE_RUNNING, FailurePolicy: plan.Policy,
		Shard: s.cfg.Shard, Seq: seq, CreatedAtMs: now, UpdatedAtMs: now,
		StepCount: uint32(len(plan.Steps)), Steps: make([]*hodeiv1.PipelineStep, len(plan.Steps)),
	}
	all := make([]int32, len(plan.Steps))
	for i := range plan.Steps {
		ps := &plan.Steps[i]
		deps := make([]string, len(ps.Parents))
		for k, q := range ps.Parents {
			deps[k] = plan.Steps[q].ID
		}
		rec.Steps[i] = &hodeiv1.PipelineStep{Id: ps.ID, DependsOn: deps, TriggerRule: ps.Rule, Job: ps.Job, Item: ps.Item,
			State: hodeiv1.StepState_STEP_STATE_WAITING}
		all[i] = int32(i)
	}
	p := fromPlan(rec, plan)
	s.addPipe(p)
	s.startRun(p, all, now)
	return &internalpb.CommandResult{Pipeline: s.pipelineView(p, true, false)}
}

// startRun decides each of steps (all WAITING with fresh counts) once, in
// index order: roots and steps whose rule is already satisfied are
// released, those it can no longer satisfy skipped; then the skips are
// settled.
func (s *state) startRun(p *pipe, steps []int32, now int64) {
	var ended []int32
	for _, i := range steps {
		st := p.rec.Steps[i]
		if st.GetState() != hodeiv1.StepState_STEP_STATE_WAITING {
			continue
		}
		switch pipeline.Decide(st.GetTriggerRule(), p.counts[i]) {
		case pipeline.Run:
			s.releaseStep(p, i, now)
		case pipeline.Skip:
			s.skipStep(p, i, skipReason(st.GetTriggerRule(), p.counts[i]), now)
			ended = append(ended, i)
		}
	}
	s.settle(p, ended, now)
}

// settle adds the outcome of each ended step to its children's counts and
// decides every WAITING child again: released, skipped (which ends it in
// turn: a worklist, not recursion, so a long chain of skips is no deep
// stack), or left waiting. Work is O(1) per edge out of an ended step.
// Then the pipeline ends if no step is open.
func (s *state) settle(p *pipe, ended []int32, now int64) {
	for k := 0; k < len(ended); k++ {
		i := ended[k]
		out := p.rec.Steps[i].GetState()
		for _, c := range p.children(i) {
			addOutcome(&p.counts[c], out)
			st := p.rec.Steps[c]
			if st.GetState() != hodeiv1.StepState_STEP_STATE_WAITING {
				continue
			}
			switch pipeline.Decide(st.GetTriggerRule(), p.counts[c]) {
			case pipeline.Run:
				s.releaseStep(p, c, now)
			case pipeline.Skip:
				s.skipStep(p, c, skipReason(st.GetTriggerRule(), p.counts[c]), now)
				ended = append(ended, c)
			}
		}
	}
	s.maybeEndPipeline(p, now)
}

// releaseStep creates step i's job (PENDING, queued like any job).
func (s *state) releaseStep(p *pipe, i int32, now int64) {
	st := p.rec.Steps[i]
	j := s.createJob(now, st.GetJob())
	j.PipelineId = p.rec.GetId()
	j.PipelineStep = st.GetId()
	st.JobId = j.GetId()
	st.Runs++
	st.Attempts = 0
	st.Reason = ""
	st.ReleasedAtMs = now
	st.FinishedAtMs = 0
	p.setStep(i, hodeiv1.StepState_STEP_STATE_PENDING)
	p.rec.UpdatedAtMs = now
}

func (s *state) skipStep(p *pipe, i int32, reason string, now int64) {
	st := p.rec.Steps[i]
	st.Reason = reason
	st.FinishedAtMs = now
	p.setStep(i, hodeiv1.StepState_STEP_STATE_SKIPPED)
	p.rec.UpdatedAtMs = now
}

func skipReason(rule hodeiv1.TriggerRule, c pipeline.Counts) string {
	return fmt.Sprintf("%s can no longer be satisfied (%d succeeded, %d failed, %d skipped of %d parents)",
		pipeline.RuleName(rule), c.Succeeded, c.Failed, c.Skipped, c.Parents)
}

// maxReasonBytes bounds the error text a failed step keeps as its reason.
const maxReasonBytes = 256

// pipelineJobFinished is called by finish and die for a job with a
// pipeline id, in the apply that ended it (completion, expiry, cancel,
// whatever the command): the step takes the job's outcome and its
// children are decided.
func (s *state) pipelineJobFinished(j *hodeiv1.Job, now int64) {
	p, ok := s.pipeByID(j.GetPipelineId())
	if !ok {
		return
	}
	i, ok := p.index[j.GetPipelineStep()]
	if !ok {
		return
	}
	st := p.rec.Steps[i]
	if st.GetJobId() != j.GetId() || st.GetState() != hodeiv1.StepState_STEP_STATE_PENDING {
		return // an earlier run's job: the step has moved on
	}
	var to hodeiv1.StepState
	switch j.GetState() {
	case hodeiv1.JobState_JOB_STATE_SUCCEEDED:
		to = hodeiv1.StepState_STEP_STATE_SUCCEEDED
		st.Reason = ""
	case hodeiv1.JobState_JOB_STATE_CANCELLED:
		to = hodeiv1.StepState_STEP_STATE_CANCELLED
		st.Reason = "job cancelled"
		if r := j.GetCancelReason(); r != "" {
			st.Reason += ": " + cutUTF8(r, maxReasonBytes)
		}
	default: // DEAD, FAILED
		to = hodeiv1.StepState_STEP_STATE_FAILED
		st.Reason = j.GetDeadReason()
		if st.Reason == "" {
			st.Reason = DeadExhausted
		}
		if e := j.GetLastResult().GetError(); e != "" {
			st.Reason += ": " + cutUTF8(e, maxReasonBytes)
		} else if code := j.GetLastResult().GetExitCode(); code != 0 {
			st.Reason += fmt.Sprintf(": exit code %d", code)
		}
	}
	st.Attempts = j.GetAttempts()
	st.FinishedAtMs = now
	p.setStep(i, to)
	p.rec.UpdatedAtMs = now
	if to != hodeiv1.StepState_STEP_STATE_SUCCEEDED && !p.cancelling && !p.stopped &&
		p.rec.GetFailurePolicy() == hodeiv1.FailurePolicy_FAILURE_POLICY_FAIL_FAST {
		// Fail-fast: nothing new after a failure; released steps finish.
		p.stopped = true
		why := "fail-fast: step " + st.GetId() + " failed"
		for k, other := range p.rec.Steps {
			if other.GetState() == hodeiv1.StepState_STEP_STATE_WAITING {
				s.skipStep(p, int32(k), why, now)
			}
		}
	}
	s.settle(p, []int32{i}, now)
}

// maybeEndPipeline ends a running pipeline once no step is open:
// CANCELLED while being cancelled, FAILED when a step failed or its job
// was cancelled, SUCCEEDED otherwise.
func (s *state) maybeEndPipeline(p *pipe, now int64) {
	r := p.rec
	if p.open > 0 || r.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		return
	}
	switch {
	case p.cancelling:
		r.State = hodeiv1.PipelineState_PIPELINE_STATE_CANCELLED
		r.Reason = "cancelled: " + p.cancelReason
	case r.GetFailed()+r.GetCancelled() > 0:
		r.State = hodeiv1.PipelineState_PIPELINE_STATE_FAILED
		for _, st := range r.GetSteps() { // the first failure in file order
			if st.GetState() == hodeiv1.StepState_STEP_STATE_FAILED || st.GetState() == hodeiv1.StepState_STEP_STATE_CANCELLED {
				r.Reason = fmt.Sprintf("step %s %s: %s", st.GetId(), stepWord(st.GetState()), st.GetReason())
				break
			}
		}
		if n := r.GetFailed() + r.GetCancelled(); n > 1 {
			r.Reason += fmt.Sprintf(" (%d steps failed or were cancelled)", n)
		}
	default:
		r.State = hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED
		r.Reason = fmt.Sprintf("%d steps succeeded, %d skipped", r.GetSucceeded(), r.GetSkipped())
	}
	r.FinishedAtMs = now
	r.UpdatedAtMs = now
	p.stopped = false
	s.pipes.ended.ReplaceOrInsert(timeKey{now, r.GetSeq()})
}

func stepWord(st hodeiv1.StepState) string {
	if st == hodeiv1.StepState_STEP_STATE_CANCELLED {
		return "was cancelled"
	}
	return "failed"
}

// applyCancelPipeline skips every step not released and cancels every
// released step's job (a RUNNING job's cancellation is what makes the
// dispatcher send its worker a cancel notice); the step hooks then end the
// pipeline CANCELLED in this same apply, so it is never left RUNNING
// (hatchet#4493).
func (s *state) applyCancelPipeline(now int64, c *internalpb.CancelPipeline) *internalpb.CommandResult {
	p, ok := s.pipeByID(c.GetId())
	if !ok {
		return errResult(internalpb.Code_CODE_NOT_FOUND, "pipeline %s not found", c.GetId())
	}
	if st := p.rec.GetState(); st != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		return errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "pipeline %s is already %s", c.GetId(), pipelineStateName(st))
	}
	reason := c.GetReason()
	if reason == "" {
		reason = "by request"
	}
	p.cancelling, p.cancelReason = true, cutUTF8(reason, maxReasonBytes)
	for i, st := range p.rec.Steps {
		if st.GetState() == hodeiv1.StepState_STEP_STATE_WAITING {
			s.skipStep(p, int32(i), "pipeline cancelled", now)
		}
	}
	for _, st := range p.rec.Steps {
		if st.GetState() != hodeiv1.StepState_STEP_STATE_PENDING {
			continue
		}
		j, ok := s.lookup(st.GetJobId())
		if !ok || isTerminal(j.GetState()) {
			panic(fmt.Sprintf("fsm: pipeline %s step %s is PENDING but its job %s is gone or ended", p.rec.GetId(), st.GetId(), st.GetJobId()))
		}
		j.CancelReason = "pipeline " + p.rec.GetId() + " cancelled: " + p.cancelReason
		s.finish(j, hodeiv1.JobState_JOB_STATE_CANCELLED, now) // the hook marks the step CANCELLED
	}
	s.maybeEndPipeline(p, now) // when no step was released
	p.cancelling, p.cancelReason = false, ""
	return &internalpb.CommandResult{Pipeline: s.pipelineView(p, true, false)}
}

// applyRetryPipeline runs an ended pipeline again: every step that did not
// succeed, and with from_step that step (a fan-out step: all its
// instances) and everything downstream of it, go back to WAITING and are
// decided afresh from their parents' outcomes; succeeded steps outside
// that set keep their result and are not run again. A failed ancestor of
// from_step is in the set too, so a step never re-runs without its
// upstream (argo#10425).
func (s *state) applyRetryPipeline(now int64, c *internalpb.RetryPipeline) *internalpb.CommandResult {
	p, ok := s.pipeByID(c.GetId())
	if !ok {
		return errResult(internalpb.Code_CODE_NOT_FOUND, "pipeline %s not found", c.GetId())
	}
	if st := p.rec.GetState(); st == hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		return errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "pipeline %s is still RUNNING", c.GetId())
	}
	steps := p.rec.GetSteps()
	mark := make([]bool, len(steps))
	if from := c.GetFromStep(); from != "" {
		var roots []int32
		if i, ok := p.index[from]; ok {
			roots = append(roots, i)
		} else {
			for k := 0; ; k++ {
				i, ok := p.index[pipeline.InstanceID(from, k)]
				if !ok {
					break
				}
				roots = append(roots, i)
			}
		}
		if len(roots) == 0 {
			return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "pipeline %s has no step %q", c.GetId(), from)
		}
		for _, r := range roots {
			mark[r] = true
		}
		for k := 0; k < len(roots); k++ { // downstream, each step once
			for _, ch := range p.children(roots[k]) {
				if !mark[ch] {
					mark[ch] = true
					roots = append(roots, ch)
				}
			}
		}
	}
	var reset []int32
	for i, st := range steps {
		if st.GetState() != hodeiv1.StepState_STEP_STATE_SUCCEEDED {
			mark[i] = true
		}
		if mark[i] {
			reset = append(reset, int32(i))
		}
	}
	if len(reset) == 0 {
		return errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "pipeline %s: every step succeeded; name a step to run again from", c.GetId())
	}
	for _, i := range reset {
		st := steps[i]
		st.Reason = ""
		st.FinishedAtMs = 0
		p.setStep(i, hodeiv1.StepState_STEP_STATE_WAITING)
	}
	for _, i := range reset {
		p.recount(i)
	}
	r := p.rec
	s.pipes.ended.Delete(timeKey{r.GetFinishedAtMs(), r.GetSeq()})
	r.State = hodeiv1.PipelineState_PIPELINE_STATE_RUNNING
	r.Reason = ""
	r.FinishedAtMs = 0
	r.UpdatedAtMs = now
	r.Retries++
	p.stopped = false
	s.startRun(p, reset, now)
	return &internalpb.CommandResult{Pipeline: s.pipelineView(p, true, false)}
}

// pipelineStateName is "SUCCEEDED" for PIPELINE_STATE_SUCCEEDED.
func pipelineStateName(st hodeiv1.PipelineState) string {
	n := st.String()
	const pre = "PIPELINE_STATE_"
	if len(n) > len(pre) && n[:len(pre)] == pre {
		return n[len(pre):]
	}
	return n
}

// pipelineJob reports whether j is a pipeline step's job: such jobs are
// retried through their pipeline, not on their own.
func pipelineJob(j *hodeiv1.Job) bool { return j.GetPipelineId() != "" }
