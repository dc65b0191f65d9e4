package fsm

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"pgregory.net/rapid"

	"github.com/hodei-io/hodei/fsm/pipeline"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// applyV applies cmds in one entry of the given version.
func (h *harness) applyV(version uint32, cmds ...*internalpb.Command) []*internalpb.CommandResult {
	h.index++
	e := &internalpb.Entry{Version: version, NowMs: h.now, Commands: cmds}
	h.log = append(h.log, e)
	return h.f.ApplyEntry(h.index, e)
}

func (h *harness) p5(c *internalpb.Command) *internalpb.CommandResult {
	h.t.Helper()
	r := h.applyV(EntryVersionPipelines, c)[0]
	if err := ResultError(r); err != nil {
		h.t.Fatalf("command %v: %v", c, err)
	}
	return r
}

func submitPipelineCmd(sp *hodeiv1.PipelineSpec) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_SubmitPipeline{SubmitPipeline: &internalpb.SubmitPipeline{Spec: sp}}}
}

func cancelPipelineCmd(id, reason string) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_CancelPipeline{CancelPipeline: &internalpb.CancelPipeline{Id: id, Reason: reason}}}
}

func retryPipelineCmd(id, from string) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_RetryPipeline{RetryPipeline: &internalpb.RetryPipeline{Id: id, FromStep: from}}}
}

// pstep is a step whose job runs once (max_attempts 1), so a failed
// completion fails the step.
func pstep(id string, rule hodeiv1.TriggerRule, deps ...string) *hodeiv1.PipelineStepSpec {
	return &hodeiv1.PipelineStepSpec{Id: id, DependsOn: deps, TriggerRule: rule, Job: &hodeiv1.JobSpec{Command: []string{"run", id}, MaxAttempts: 1}}
}

const (
	ruleAllSuccess = hodeiv1.TriggerRule_TRIGGER_RULE_ALL_SUCCESS
	ruleAllDone    = hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE
	ruleOneSuccess = hodeiv1.TriggerRule_TRIGGER_RULE_ONE_SUCCESS
	ruleOneFailed  = hodeiv1.TriggerRule_TRIGGER_RULE_ONE_FAILED
	ruleNoneFailed = hodeiv1.TriggerRule_TRIGGER_RULE_NONE_FAILED
)

// pipe returns the pipeline as GetPipeline shows it.
func (h *harness) pipe(id string) *hodeiv1.Pipeline {
	h.t.Helper()
	p, ok := h.f.GetPipeline(id, false)
	if !ok {
		h.t.Fatalf("pipeline %s not found", id)
	}
	return p
}

// steps renders "id=STATE" for every step, in order.
func steps(p *hodeiv1.Pipeline) string {
	var b []string
	for _, s := range p.GetSteps() {
		b = append(b, s.GetId()+"="+strings.TrimPrefix(s.GetState().String(), "STEP_STATE_"))
	}
	return strings.Join(b, " ")
}

// run leases every ready job and completes each one whose pipeline step is
// in outcome (true = success, false = failure); the others stay RUNNING.
// It returns the number of jobs completed.
func (h *harness) run(outcome map[string]bool) int {
	h.t.Helper()
	leases := h.applyV(EntryVersionPipelines, leaseCmd("w", 1000))[0].GetLeases()
	for _, l := range leases {
		h.held[l.GetJob().GetPipelineStep()] = l
	}
	n := 0
	for stepID, ok := range outcome {
		l, held := h.held[stepID]
		if !held {
			continue
		}
		delete(h.held, stepID)
		r := h.applyV(EntryVersionPipelines, completeCmd(l.GetJob().GetId(), l.GetToken(), ok, true))[0]
		if err := ResultError(r); err != nil {
			h.t.Fatalf("complete %s: %v", stepID, err)
		}
		n++
	}
	return n
}

func newPipeHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.held = map[string]*hodeiv1.Lease{}
	return h
}

func TestPipelineSubmitInvalidStoresNothing(t *testing.T) {
	h := newPipeHarness(t)
	h.ok(promoteCmd()) // the first entry sets the replicated time
	before := h.digest()
	r := h.applyV(EntryVersionPipelines, submitPipelineCmd(&hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		pstep("a", 0, "c"), pstep("b", 0, "a"), pstep("c", 0, "b"), pstep("d", 0, "zz"),
		{Id: "e", Job: &hodeiv1.JobSpec{Command: []string{"x"}, Priority: 101}},
	}}))[0]
	wantCode(t, r, internalpb.Code_CODE_INVALID_ARGUMENT, "cycle: a → c → b → a")
	for _, want := range []string{`step "d" depends on unknown step "zz"`, `step "e": job: invalid job spec: priority 101`} {
		if !strings.Contains(r.GetMessage(), want) {
			t.Errorf("message %q lacks %q", r.GetMessage(), want)
		}
	}
	// In an entry older than version 5 the command is refused.
	r = h.applyV(EntryVersionSemantics, submitPipelineCmd(&hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{pstep("a", 0)}}))[0]
	wantCode(t, r, internalpb.Code_CODE_INVALID_ARGUMENT, "need an entry of version 5")
	if h.digest() != before {
		t.Fatal("a rejected pipeline changed the state")
	}
	if v := EntryVersionFor([]*internalpb.Command{completeCmd("0-1", 1, true, true), submitPipelineCmd(nil)}); v != EntryVersionPipelines {
		t.Fatalf("EntryVersionFor = %d", v)
	}
	if v := EntryVersionForCluster([]*internalpb.Command{completeCmd("0-1", 1, true, true), cancelPipelineCmd("p0-1", "")}, true); v != EntryVersionPipelines {
		t.Fatalf("EntryVersionForCluster = %d", v)
	}
}

// TestPipelineRulesAndContinue runs a DAG with every trigger rule under
// the continue policy: a fails, and each rule takes its documented path.
func TestPipelineRulesAndContinue(t *testing.T) {
	h := newPipeHarness(t)
	var events []Event
	h.f.opts.OnApply = func(_ uint64, ev []Event) { events = append(events, ev...) }
	r := h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{Name: "rules", Tenant: "t", FailurePolicy: hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE,
		Steps: []*hodeiv1.PipelineStepSpec{
			pstep("a", 0), pstep("b", 0),
			pstep("all_success", ruleAllSuccess, "a", "b"),
			pstep("all_done", ruleAllDone, "a", "b"),
			pstep("one_success", ruleOneSuccess, "a", "b"),
			pstep("one_failed", ruleOneFailed, "a", "b"),
			pstep("none_failed", ruleNoneFailed, "a", "b"),
			pstep("after_skip", ruleNoneFailed, "all_success"), // a skipped parent is not a failure
			pstep("after_skip_all", ruleAllSuccess, "all_success"),
		}}))
	id := r.GetPipeline().GetId()
	if id != "p0-1" || r.GetPipeline().GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		t.Fatalf("submitted %v", r.GetPipeline())
	}
	if got := steps(h.pipe(id)); !strings.HasPrefix(got, "a=PENDING b=PENDING all_success=WAITING") {
		t.Fatalf("after submit: %s", got)
	}
	// b succeeds first: one_success runs at once, without waiting for a.
	h.run(map[string]bool{"b": true})
	if got := steps(h.pipe(id)); !strings.Contains(got, "one_success=PENDING") || !strings.Contains(got, "all_done=WAITING") {
		t.Fatalf("after b: %s", got)
	}
	h.run(map[string]bool{"a": false})
	want := "a=FAILED b=SUCCEEDED all_success=SKIPPED all_done=PENDING one_success=RUNNING one_failed=PENDING none_failed=SKIPPED after_skip=PENDING after_skip_all=SKIPPED"
	if got := steps(h.pipe(id)); got != want {
		t.Fatalf("after a failed:\n got %s\nwant %s", got, want)
	}
	if h.pipe(id).GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		t.Fatal("ended while steps run")
	}
	h.run(map[string]bool{"all_done": true, "one_success": true, "one_failed": true, "after_skip": true})
	p := h.pipe(id)
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_FAILED || !strings.HasPrefix(p.GetReason(), "step a failed: "+DeadExhausted) {
		t.Fatalf("end: %v %q", p.GetState(), p.GetReason())
	}
	if p.GetSucceeded() != 5 || p.GetFailed() != 1 || p.GetSkipped() != 3 || p.GetFinishedAtMs() == 0 {
		t.Fatalf("counters %d/%d/%d", p.GetSucceeded(), p.GetFailed(), p.GetSkipped())
	}
	for _, s := range p.GetSteps() {
		if s.GetState() == hodeiv1.StepState_STEP_STATE_SKIPPED && s.GetReason() == "" {
			t.Errorf("step %s skipped without a reason", s.GetId())
		}
		if s.GetJobId() != "" {
			j := h.job(s.GetJobId())
			if j.GetPipelineId() != id || j.GetPipelineStep() != s.GetId() || j.GetSpec().GetTenant() != "t" {
				t.Errorf("job %s does not name its step: %v", j.GetId(), j)
			}
		}
	}
	if len(events) == 0 {
		t.Fatal("no job events")
	}
}

// TestPipelineFailFast: after a failure nothing new is released, the
// running step finishes, and only then does the pipeline end FAILED.
func TestPipelineFailFast(t *testing.T) {
	h := newPipeHarness(t)
	id := h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		pstep("a", 0), pstep("slow", 0), pstep("b", 0, "a"), pstep("cleanup", ruleOneFailed, "a"), pstep("c", 0, "slow"),
	}})).GetPipeline().GetId()
	h.run(map[string]bool{"a": false})
	p := h.pipe(id)
	if got := steps(p); got != "a=FAILED slow=RUNNING b=SKIPPED cleanup=SKIPPED c=SKIPPED" || p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		t.Fatalf("after the failure: %s (%v)", got, p.GetState())
	}
	if !strings.Contains(p.GetSteps()[2].GetReason(), "fail-fast: step a failed") {
		t.Fatalf("skip reason %q", p.GetSteps()[2].GetReason())
	}
	h.run(map[string]bool{"slow": true})
	if p := h.pipe(id); p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_FAILED || steps(p) != "a=FAILED slow=SUCCEEDED b=SKIPPED cleanup=SKIPPED c=SKIPPED" {
		t.Fatalf("end: %v %s", p.GetState(), steps(p))
	}
}

// TestPipelineCancel cancels a pipeline with a running, a pending and a
// waiting step: every job is cancelled (the RUNNING one through the event
// the dispatcher turns into a cancel notice), the pipeline is CANCELLED in
// the same apply, and a second cancel is refused.
func TestPipelineCancel(t *testing.T) {
	h := newPipeHarness(t)
	var events []Event
	h.f.opts.OnApply = func(_ uint64, ev []Event) { events = append(events, ev...) }
	id := h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		pstep("run", 0), pstep("wait", 0, "run"),
	}})).GetPipeline().GetId()
	h.run(nil) // leases "run"
	h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{pstep("other", 0)}}))
	events = nil
	r := h.p5(cancelPipelineCmd(id, "operator said so"))
	p := r.GetPipeline()
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_CANCELLED || p.GetReason() != "cancelled: operator said so" || steps(p) != "run=CANCELLED wait=SKIPPED" {
		t.Fatalf("cancel: %v %q %s", p.GetState(), p.GetReason(), steps(p))
	}
	running := h.job(p.GetSteps()[0].GetJobId())
	if running.GetState() != hodeiv1.JobState_JOB_STATE_CANCELLED || !strings.Contains(running.GetCancelReason(), "operator said so") {
		t.Fatalf("job %v", running)
	}
	if len(events) != 1 || events[0].From != hodeiv1.JobState_JOB_STATE_RUNNING || events[0].To != hodeiv1.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("events %v", events)
	}
	wantCode(t, h.applyV(EntryVersionPipelines, cancelPipelineCmd(id, ""))[0], internalpb.Code_CODE_FAILED_PRECONDITION, "already CANCELLED")
	wantCode(t, h.applyV(EntryVersionPipelines, cancelPipelineCmd("p0-99", ""))[0], internalpb.Code_CODE_NOT_FOUND, "not found")
	// The other pipeline is untouched.
	if p2 := h.pipe("p0-2"); p2.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING || steps(p2) != "other=PENDING" {
		t.Fatalf("other pipeline %s", steps(p2))
	}
	// A step job cancelled on its own fails its pipeline (fail-fast).
	h.p5(cancelCmd(h.pipe("p0-2").GetSteps()[0].GetJobId(), "by hand"))
	if p2 := h.pipe("p0-2"); p2.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_FAILED || !strings.Contains(p2.GetReason(), "step other was cancelled: job cancelled: by hand") {
		t.Fatalf("other pipeline %v %q", p2.GetState(), p2.GetReason())
	}
}

// TestPipelineRetry: a retry re-runs the failed and skipped steps only;
// --from re-runs a step and its downstream even when they succeeded;
// bad retries change nothing.
func TestPipelineRetry(t *testing.T) {
	h := newPipeHarness(t)
	id := h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{FailurePolicy: hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE, Steps: []*hodeiv1.PipelineStepSpec{
		pstep("setup", 0), pstep("ok", 0, "setup"), pstep("flaky", 0, "setup"), pstep("after", 0, "flaky"), pstep("join", ruleAllDone, "ok", "after"),
	}})).GetPipeline().GetId()
	wantCode(t, h.applyV(EntryVersionPipelines, retryPipelineCmd(id, ""))[0], internalpb.Code_CODE_FAILED_PRECONDITION, "still RUNNING")
	h.run(map[string]bool{"setup": true})
	h.run(map[string]bool{"ok": true, "flaky": false})
	h.run(map[string]bool{"join": true})
	p := h.pipe(id)
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_FAILED || steps(p) != "setup=SUCCEEDED ok=SUCCEEDED flaky=FAILED after=SKIPPED join=SUCCEEDED" {
		t.Fatalf("first run: %v %s", p.GetState(), steps(p))
	}
	before := h.digest()
	wantCode(t, h.applyV(EntryVersionPipelines, retryPipelineCmd(id, "nope"))[0], internalpb.Code_CODE_INVALID_ARGUMENT, `has no step "nope"`)
	if h.digest() != before {
		t.Fatal("a refused retry changed the state")
	}
	firstSetupJob := p.GetSteps()[0].GetJobId()
	r := h.p5(retryPipelineCmd(id, ""))
	if got := steps(r.GetPipeline()); got != "setup=SUCCEEDED ok=SUCCEEDED flaky=PENDING after=WAITING join=SUCCEEDED" || r.GetPipeline().GetRetries() != 1 {
		t.Fatalf("after retry: %s", got)
	}
	h.run(map[string]bool{"flaky": true})
	h.run(map[string]bool{"after": true})
	p = h.pipe(id)
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED || p.GetSteps()[0].GetJobId() != firstSetupJob || p.GetSteps()[0].GetRuns() != 1 || p.GetSteps()[2].GetRuns() != 2 {
		t.Fatalf("second run: %v %s runs %d/%d", p.GetState(), steps(p), p.GetSteps()[0].GetRuns(), p.GetSteps()[2].GetRuns())
	}
	wantCode(t, h.applyV(EntryVersionPipelines, retryPipelineCmd(id, ""))[0], internalpb.Code_CODE_FAILED_PRECONDITION, "every step succeeded")
	// --from ok: ok and join run again, the rest keeps its results.
	r = h.p5(retryPipelineCmd(id, "ok"))
	if got := steps(r.GetPipeline()); got != "setup=SUCCEEDED ok=PENDING flaky=SUCCEEDED after=SUCCEEDED join=WAITING" {
		t.Fatalf("retry --from ok: %s", got)
	}
	h.run(map[string]bool{"ok": true})
	h.run(map[string]bool{"join": true})
	if p := h.pipe(id); p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED || p.GetSteps()[4].GetRuns() != 2 || p.GetSteps()[1].GetRuns() != 2 {
		t.Fatalf("third run: %v %s", p.GetState(), steps(p))
	}
	// A step job is retried through its pipeline, not on its own.
	wantCode(t, h.applyV(EntryVersionPipelines, &internalpb.Command{Kind: &internalpb.Command_RetryJobs{RetryJobs: &internalpb.RetryJobs{JobId: firstSetupJob}}})[0],
		internalpb.Code_CODE_FAILED_PRECONDITION, "retry the pipeline")
}

// TestPipelineRetryFromFanOutAndUpstream: --from names a fan-out step (all
// its instances), and a failed step upstream of it runs again too.
func TestPipelineRetryFromFanOutAndUpstream(t *testing.T) {
	h := newPipeHarness(t)
	fan := pstep("fan", 0, "root")
	fan.ForEach = []string{"x", "y"}
	id := h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{FailurePolicy: hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE, Steps: []*hodeiv1.PipelineStepSpec{
		pstep("root", 0), pstep("bad", 0), fan, pstep("join", ruleAllDone, "fan", "bad"),
	}})).GetPipeline().GetId()
	h.run(map[string]bool{"root": true, "bad": false})
	h.run(map[string]bool{"fan[0]": true, "fan[1]": true})
	h.run(map[string]bool{"join": true})
	if p := h.pipe(id); steps(p) != "root=SUCCEEDED bad=FAILED fan[0]=SUCCEEDED fan[1]=SUCCEEDED join=SUCCEEDED" {
		t.Fatalf("first run %s", steps(p))
	}
	r := h.p5(retryPipelineCmd(id, "fan"))
	if got := steps(r.GetPipeline()); got != "root=SUCCEEDED bad=PENDING fan[0]=PENDING fan[1]=PENDING join=WAITING" {
		t.Fatalf("retry --from fan: %s", got)
	}
}

// TestPipelineLeaseExpiryFailsStep: the last attempt's lease expiring ends
// the job DEAD (die), and its step FAILED, through the same hook.
func TestPipelineLeaseExpiryFailsStep(t *testing.T) {
	h := newPipeHarness(t)
	id := h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{pstep("a", 0), pstep("b", 0, "a")}})).GetPipeline().GetId()
	h.run(nil)
	l := h.held["a"]
	h.now += DefaultConfig().DefaultLeaseTTLMs + 1
	h.p5(expireCmd(&hodeiv1.LeaseRef{JobId: l.GetJob().GetId(), Token: l.GetToken()}))
	p := h.pipe(id)
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_FAILED || steps(p) != "a=FAILED b=SKIPPED" || !strings.Contains(p.GetSteps()[0].GetReason(), DeadLeaseExpired) {
		t.Fatalf("%v %s %q", p.GetState(), steps(p), p.GetSteps()[0].GetReason())
	}
}

func TestPipelineRequestIDReplayAndGC(t *testing.T) {
	h := newPipeHarness(t)
	sp := &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{pstep("a", 0)}}
	first := h.p5(withRID("r1", submitPipelineCmd(sp)))
	again := h.p5(withRID("r1", submitPipelineCmd(sp)))
	if first.GetPipeline().GetId() != again.GetPipeline().GetId() || h.f.PipelineCount() != 1 {
		t.Fatalf("a retried submit stored a second pipeline: %s %s (%d)", first.GetPipeline().GetId(), again.GetPipeline().GetId(), h.f.PipelineCount())
	}
	bad := &hodeiv1.PipelineSpec{}
	e1 := h.applyV(EntryVersionPipelines, withRID("r2", submitPipelineCmd(bad)))[0]
	e2 := h.applyV(EntryVersionPipelines, withRID("r2", submitPipelineCmd(bad)))[0]
	if e1.GetMessage() != e2.GetMessage() || e2.GetCode() != internalpb.Code_CODE_INVALID_ARGUMENT {
		t.Fatalf("error replay: %v vs %v", e1, e2)
	}
	id := first.GetPipeline().GetId()
	h.run(map[string]bool{"a": true})
	end := h.pipe(id).GetFinishedAtMs()
	if at, ok := h.f.OldestPipelineEndedAt(); !ok || at != end {
		t.Fatalf("oldest ended %d %v, want %d", at, ok, end)
	}
	// A GC before the end keeps it; one after removes the pipeline.
	h.p5(gcCmd(end, 100))
	if h.f.PipelineCount() != 1 {
		t.Fatal("GC removed a pipeline that ended at the cutoff")
	}
	h.p5(gcCmd(end+1, 100))
	if _, ok := h.f.GetPipeline(id, false); ok || h.f.PipelineCount() != 0 {
		t.Fatal("GC kept an ended pipeline past the retention")
	}
	// The request record outlives the pipeline: the replay answers without it.
	if r := h.p5(withRID("r1", submitPipelineCmd(sp))); r.GetPipeline() != nil {
		t.Fatalf("replay after GC: %v", r.GetPipeline())
	}
}

func TestPipelineListAndView(t *testing.T) {
	h := newPipeHarness(t)
	for i := 0; i < 5; i++ {
		tn := "a"
		if i%2 == 1 {
			tn = "b"
		}
		h.p5(submitPipelineCmd(&hodeiv1.PipelineSpec{Tenant: tn, Name: fmt.Sprint("n", i), Steps: []*hodeiv1.PipelineStepSpec{pstep("s", 0)}}))
	}
	ps, next := h.f.ListPipelines("a", 0, 0, 2)
	if len(ps) != 2 || ps[0].GetName() != "n0" || ps[1].GetName() != "n2" || next != ps[1].GetSeq() || len(ps[0].GetSteps()) != 0 {
		t.Fatalf("page 1: %v next %d", ps, next)
	}
	ps, next = h.f.ListPipelines("a", 0, next, 2)
	if len(ps) != 1 || ps[0].GetName() != "n4" || next != 0 {
		t.Fatalf("page 2: %v next %d", ps, next)
	}
	if ps, _ := h.f.ListPipelines("", hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED, 0, 10); len(ps) != 0 {
		t.Fatalf("state filter: %v", ps)
	}
	if ps, _ := h.f.ListPipelines("zz", 0, 0, 10); len(ps) != 0 {
		t.Fatal("unknown tenant listed pipelines")
	}
	p, _ := h.f.GetPipeline("p0-1", true)
	if p.GetSteps()[0].GetJob().GetCommand()[1] != "s" {
		t.Fatal("include_specs did not include the template")
	}
	if p, _ := h.f.GetPipeline("p0-1", false); p.GetSteps()[0].GetJob() != nil {
		t.Fatal("a view without specs carries the template")
	}
}

// TestPipelineSnapshotRestoreDeterminism snapshots mid-run, restores into
// a fresh FSM, applies the rest of the log to both and compares: the
// derived counters rebuilt on restore decide exactly as the live ones.
// Two FSMs fed the same log produce identical snapshots.
func TestPipelineSnapshotRestoreDeterminism(t *testing.T) {
	h := newPipeHarness(t)
	fan := pstep("work", 0, "setup")
	fan.ForEach = []string{"1", "2", "3", "4"}
	h.p5(withRID("sub", submitPipelineCmd(&hodeiv1.PipelineSpec{FailurePolicy: hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE, Steps: []*hodeiv1.PipelineStepSpec{
		pstep("setup", 0), fan, pstep("join", ruleOneSuccess, "work"), pstep("fin", ruleAllDone, "work", "join"),
	}})))
	h.run(map[string]bool{"setup": true})
	h.run(map[string]bool{"work[0]": false})
	mid := snapshotBytes(t, h.f)
	if v := mid[len(snapshotMagic)+3]; v != snapshotVersionPipelines {
		t.Fatalf("snapshot version %d", v)
	}
	restored := restoreInto(t, mid)
	if !bytes.Equal(snapshotBytes(t, restored), mid) {
		t.Fatal("restore does not re-encode to the same bytes")
	}
	n := len(h.log)
	h.run(map[string]bool{"work[1]": true, "work[2]": false})
	h.run(map[string]bool{"work[3]": true, "join": true})
	h.run(map[string]bool{"fin": true})
	if p := h.pipe("p0-1"); p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_FAILED {
		t.Fatalf("end %v %s", p.GetState(), steps(p))
	}
	for i, e := range h.log[n:] {
		restored.ApplyEntry(uint64(n+i+1), e)
	}
	_, d1 := h.f.Digest()
	_, d2 := restored.Digest()
	if d1 != d2 {
		t.Fatal("a restored replica diverged from the live one")
	}
	fresh, _ := New(DefaultConfig(), Options{})
	for i, e := range h.log {
		fresh.ApplyEntry(uint64(i+1), e)
	}
	if !bytes.Equal(snapshotBytes(t, fresh), snapshotBytes(t, h.f)) {
		t.Fatal("two FSMs fed the same log differ")
	}
	// A version 4 snapshot carrying a pipeline is corrupt.
	bad := append([]byte(nil), mid...)
	bad[len(snapshotMagic)+3] = snapshotVersionSemantics
	if _, err := decodeSnapshot(bad, DefaultConfig()); err == nil {
		t.Fatal("a version 4 snapshot with pipelines restored")
	}
}

// TestPipelineOldSnapshotStillLoads: a state without pipelines is written
// as before (not version 5) and restores.
func TestPipelineOldSnapshotStillLoads(t *testing.T) {
	h := newPipeHarness(t)
	h.ok(submitCmd(spec("x")))
	data := snapshotBytes(t, h.f)
	if v := data[len(snapshotMagic)+3]; v >= snapshotVersionPipelines {
		t.Fatalf("a state without pipelines was written as version %d", v)
	}
	restoreInto(t, data)
}

// BenchmarkFanInReleasePerParent is the cost of one finished parent of a
// fan-in step (completion + counts + decision), for fan-ins of 10 to
// 9,999 parents (with the join, the 10,000-step limit): flat, since a parent's end touches only its own
// children's counters. Each op completes one parent in its own entry.
func BenchmarkFanInReleasePerParent(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 9999} { // 9,999 parents + the join = MaxSteps
		b.Run(fmt.Sprintf("parents=%d", n), func(b *testing.B) {
			var h *harness
			var leases []*hodeiv1.Lease
			setup := func() {
				h = newHarness(b)
				sp := &hodeiv1.PipelineSpec{}
				deps := make([]string, n)
				for i := 0; i < n; i++ {
					deps[i] = fmt.Sprintf("p%d", i)
					sp.Steps = append(sp.Steps, &hodeiv1.PipelineStepSpec{Id: deps[i], Job: &hodeiv1.JobSpec{Kind: "k"}})
				}
				sp.Steps = append(sp.Steps, &hodeiv1.PipelineStepSpec{Id: "join", DependsOn: deps, Job: &hodeiv1.JobSpec{Kind: "k"}})
				h.applyV(EntryVersionPipelines, submitPipelineCmd(sp))
				leases = nil
				for len(leases) < n {
					got := h.applyV(EntryVersionPipelines, leaseCmd("w", MaxLeaseCapacity))[0].GetLeases()
					if len(got) == 0 {
						break
					}
					leases = append(leases, got...)
				}
				if len(leases) != n {
					b.Fatalf("leased %d of %d", len(leases), n)
				}
			}
			setup()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if len(leases) == 0 {
					b.StopTimer()
					setup()
					b.StartTimer()
				}
				l := leases[0]
				leases = leases[1:]
				h.applyV(EntryVersionPipelines, completeCmd(l.GetJob().GetId(), l.GetToken(), true, true))
			}
		})
	}
}

// checkPipelineInvariants: the derived pipeline indexes agree with the
// records (what restore rebuilds), and steps agree with their jobs.
func checkPipelineInvariants(t testing.TB, s *state) {
	t.Helper()
	for seq, p := range s.pipes.bySeq {
		r := p.rec
		if r.GetSeq() != seq || seq >= s.pipes.nextSeq || !s.pipes.all.Has(seq) || !s.pipes.byTenant[r.GetTenant()].Has(seq) {
			t.Fatalf("invariant: pipeline %s indexes", r.GetId())
		}
		open := 0
		for i, st := range r.GetSteps() {
			if stepOpen(st.GetState()) {
				open++
			}
			if st.GetState() == hodeiv1.StepState_STEP_STATE_WAITING {
				want := p.counts[i]
				p.recount(int32(i))
				if p.counts[i] != want {
					t.Fatalf("invariant: pipeline %s step %s counts %+v, recomputed %+v", r.GetId(), st.GetId(), want, p.counts[i])
				}
			}
			if st.GetState() == hodeiv1.StepState_STEP_STATE_PENDING {
				j, ok := s.lookup(st.GetJobId())
				if !ok || isTerminal(j.GetState()) || j.GetPipelineStep() != st.GetId() {
					t.Fatalf("invariant: pipeline %s step %s PENDING with job %v", r.GetId(), st.GetId(), j)
				}
			}
		}
		running := r.GetState() == hodeiv1.PipelineState_PIPELINE_STATE_RUNNING
		if open != p.open || (open > 0) != running || running == s.pipes.ended.Has(timeKey{r.GetFinishedAtMs(), seq}) {
			t.Fatalf("invariant: pipeline %s open %d/%d state %v", r.GetId(), open, p.open, r.GetState())
		}
	}
}

// TestPipelineRulesProperty runs random DAGs with random trigger rules and
// random job outcomes (continue policy) to the end, and checks each step
// against its rule applied to its parents' final outcomes (decisions are
// final, so the final counts decide as the counts did when the step was
// decided): run exactly once when the rule says run, SKIPPED when it says
// skip; the pipeline ends FAILED exactly when a step failed. The invariants
// and a snapshot round trip are checked along the way.
func TestPipelineRulesProperty(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		h := newPipeHarness(t)
		n := rapid.IntRange(1, 12).Draw(rt, "n")
		sp := &hodeiv1.PipelineSpec{FailurePolicy: hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE}
		for i := 0; i < n; i++ {
			var deps []string
			for j := 0; j < i; j++ {
				if rapid.IntRange(0, 2).Draw(rt, "edge") == 0 {
					deps = append(deps, fmt.Sprint("s", j)) // only earlier steps: acyclic
				}
			}
			sp.Steps = append(sp.Steps, pstep(fmt.Sprint("s", i), hodeiv1.TriggerRule(rapid.IntRange(1, 5).Draw(rt, "rule")), deps...))
		}
		outcome := map[string]bool{}
		for i := 0; i < n; i++ {
			outcome[fmt.Sprint("s", i)] = rapid.Bool().Draw(rt, "ok")
		}
		id := h.p5(submitPipelineCmd(sp)).GetPipeline().GetId()
		for round := 0; round <= n; round++ {
			if h.run(outcome) == 0 {
				break
			}
			checkInvariants(t, h.f)
			if !bytes.Equal(snapshotBytes(t, restoreInto(t, snapshotBytes(t, h.f))), snapshotBytes(t, h.f)) {
				rt.Fatal("snapshot round trip differs")
			}
		}
		p := h.pipe(id)
		if p.GetState() == hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
			rt.Fatalf("pipeline still running: %s", steps(p))
		}
		state := map[string]hodeiv1.StepState{}
		anyFailed := false
		for _, st := range p.GetSteps() {
			state[st.GetId()] = st.GetState()
		}
		for i, st := range p.GetSteps() {
			c := pipeline.Counts{Parents: int32(len(st.GetDependsOn()))}
			for _, d := range st.GetDependsOn() {
				addOutcome(&c, state[d])
			}
			switch pipeline.Decide(sp.Steps[i].GetTriggerRule(), c) {
			case pipeline.Run:
				want := hodeiv1.StepState_STEP_STATE_SUCCEEDED
				if !outcome[st.GetId()] {
					want, anyFailed = hodeiv1.StepState_STEP_STATE_FAILED, true
				}
				if st.GetState() != want || st.GetRuns() != 1 {
					rt.Fatalf("step %s: %v runs %d, want %v once (%s)", st.GetId(), st.GetState(), st.GetRuns(), want, steps(p))
				}
			case pipeline.Skip:
				if st.GetState() != hodeiv1.StepState_STEP_STATE_SKIPPED || st.GetRuns() != 0 {
					rt.Fatalf("step %s: %v runs %d, want SKIPPED (%s)", st.GetId(), st.GetState(), st.GetRuns(), steps(p))
				}
			default:
				rt.Fatalf("step %s still undecided at the end", st.GetId())
			}
		}
		if anyFailed != (p.GetState() == hodeiv1.PipelineState_PIPELINE_STATE_FAILED) {
			rt.Fatalf("pipeline %v with failed=%v", p.GetState(), anyFailed)
		}
	})
}
