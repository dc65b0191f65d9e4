package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// stepRecorder is a Go handler for pipeline step jobs (kind "step") that
// records, per step, how often it ran and checks when each run starts that
// every parent step's handler had already finished (a step is released
// only after its parents' completions are committed). gate, when set for
// a step, holds its handler until the channel is closed.
type stepRecorder struct {
	t       *testing.T
	parents map[string][]string

	mu     sync.Mutex
	runs   map[string]int
	done   map[string]bool
	early  []string // steps that started before a parent finished
	gate   map[string]chan struct{}
	failN  map[string]int // fail the first n runs of a step (not retryable)
	ctxErr map[string]error
}

func newStepRecorder(t *testing.T, parents map[string][]string) *stepRecorder {
	return &stepRecorder{t: t, parents: parents, runs: map[string]int{}, done: map[string]bool{},
		gate: map[string]chan struct{}{}, failN: map[string]int{}, ctxErr: map[string]error{}}
}

func (r *stepRecorder) handle(ctx context.Context, job *client.Job) error {
	step := job.Proto().GetPipelineStep()
	r.mu.Lock()
	r.runs[step]++
	for _, p := range r.parents[step] {
		if !r.done[p] {
			r.early = append(r.early, step+" before "+p)
		}
	}
	gate := r.gate[step]
	fail := r.failN[step] > 0
	if fail {
		r.failN[step]--
	}
	r.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			r.mu.Lock()
			r.ctxErr[step] = context.Cause(ctx)
			r.mu.Unlock()
			return ctx.Err()
		}
	}
	if fail {
		return client.NoRetry(fmt.Errorf("step %s fails on purpose", step))
	}
	r.mu.Lock()
	r.done[step] = true
	r.mu.Unlock()
	return nil
}

func (r *stepRecorder) runsOf(step string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[step]
}

// startStepWorker runs a Go-handler worker for kind "step" on addrs until
// the test ends.
func startStepWorker(t *testing.T, r *stepRecorder, id string, addrs ...string) {
	c := newClient(t, addrs...)
	w, err := client.NewWorker(c, client.WorkerConfig{ID: id, Concurrency: 16, LeaseTTL: 2 * time.Second, DrainTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("step", r.handle)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func stepSpec(id string, rule hodeiv1.TriggerRule, deps ...string) *hodeiv1.PipelineStepSpec {
	return &hodeiv1.PipelineStepSpec{Id: id, DependsOn: deps, TriggerRule: rule, Job: &hodeiv1.JobSpec{Kind: "step", MaxAttempts: 5, BackoffBaseMs: 50}}
}

// pipelineState polls GetPipeline until cond holds (deadline d).
func waitPipelineState(t *testing.T, ctx context.Context, c *client.Client, id string, d time.Duration, what string, cond func(*hodeiv1.Pipeline) bool) *hodeiv1.Pipeline {
	t.Helper()
	var last *hodeiv1.Pipeline
	waitFor(t, d, what, func() bool {
		p, err := c.GetPipeline(ctx, id, false, false)
		if err != nil {
			return false
		}
		last = p
		return cond(p)
	})
	return last
}

func countState(p *hodeiv1.Pipeline, st hodeiv1.StepState) int {
	n := 0
	for _, s := range p.GetSteps() {
		if s.GetState() == st {
			n++
		}
	}
	return n
}

// TestPipeline200StepsThroughLeaderKill runs a 200-step pipeline (a root,
// a fan-out of 150, a fan-in, a chain of 47 and a one_failed handler) on a
// 3-node cluster with Go-handler workers, kills the shard leader while it
// runs (a step of the chain is held until the kill is over), and checks
// that every step ran as its rule says: released once, started only after
// its parents finished, the one_failed step skipped, the pipeline
// SUCCEEDED.
func TestPipeline200StepsThroughLeaderKill(t *testing.T) {
	tc := startCluster(t, 3, 1)
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	spec := &hodeiv1.PipelineSpec{Name: "big", Tenant: "pipes"}
	parents := map[string][]string{}
	add := func(s *hodeiv1.PipelineStepSpec, expanded ...string) {
		spec.Steps = append(spec.Steps, s)
		ids := []string{s.GetId()}
		if len(s.GetForEach()) > 0 {
			ids = nil
			for i := range s.GetForEach() {
				ids = append(ids, fmt.Sprintf("%s[%d]", s.GetId(), i))
			}
		}
		for _, id := range ids {
			parents[id] = expanded
		}
	}
	add(stepSpec("start", 0))
	work := stepSpec("work", 0, "start")
	var workIDs []string
	for i := 0; i < 150; i++ {
		work.ForEach = append(work.ForEach, fmt.Sprint(i))
		workIDs = append(workIDs, fmt.Sprintf("work[%d]", i))
	}
	add(work, "start")
	add(stepSpec("join", 0, "work"), workIDs...)
	prev := "join"
	for i := 1; i <= 47; i++ {
		id := fmt.Sprintf("c%d", i)
		add(stepSpec(id, 0, prev), prev)
		prev = id
	}
	add(stepSpec("onfail", hodeiv1.TriggerRule_TRIGGER_RULE_ONE_FAILED, "join"), "join")

	rec := newStepRecorder(t, parents)
	gate := make(chan struct{})
	rec.gate["c10"] = gate
	startStepWorker(t, rec, "w1", tc.addrs()...)
	startStepWorker(t, rec, "w2", tc.addrs()[1], tc.addrs()[2], tc.addrs()[0])

	p, err := c.SubmitPipeline(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if p.GetStepCount() != 200 {
		t.Fatalf("%d steps", p.GetStepCount())
	}
	id := p.GetId()
	// Mid-run: the held step is running, the fan-out is done.
	waitFor(t, 60*time.Second, "step c10 to run", func() bool { return rec.runsOf("c10") > 0 })
	ld := tc.leader()
	if ld < 0 {
		t.Fatal("no leader")
	}
	// A snapshot first: the killed node, restarted from its data dir,
	// restores the pipeline from it (derived counters rebuilt) and then
	// applies the rest of the run from the log.
	if err := tc.nodes[ld].shards[0].raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	t.Logf("killing shard leader n%d with the pipeline at step c10", ld+1)
	tc.nodes[ld].Kill()
	tc.nodes[ld] = nil
	waitFor(t, 30*time.Second, "a new leader", func() bool { return tc.leader() >= 0 })
	tc.restart(ld)
	close(gate)

	p = waitPipelineState(t, ctx, c, id, 90*time.Second, "the pipeline to end", func(p *hodeiv1.Pipeline) bool {
		return p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING
	})
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED {
		t.Fatalf("pipeline %v: %s", p.GetState(), p.GetReason())
	}
	jobs := map[string]string{}
	for _, s := range p.GetSteps() {
		if s.GetId() == "onfail" {
			if s.GetState() != hodeiv1.StepState_STEP_STATE_SKIPPED || s.GetRuns() != 0 || rec.runsOf("onfail") != 0 {
				t.Errorf("onfail: %v runs %d, handler %d", s.GetState(), s.GetRuns(), rec.runsOf("onfail"))
			}
			continue
		}
		if s.GetState() != hodeiv1.StepState_STEP_STATE_SUCCEEDED || s.GetRuns() != 1 || rec.runsOf(s.GetId()) < 1 {
			t.Errorf("step %s: %v released %d times, handler ran %d", s.GetId(), s.GetState(), s.GetRuns(), rec.runsOf(s.GetId()))
		}
		if other, dup := jobs[s.GetJobId()]; dup {
			t.Errorf("steps %s and %s share job %s", other, s.GetId(), s.GetJobId())
		}
		jobs[s.GetJobId()] = s.GetId()
		j, err := c.Get(ctx, s.GetJobId())
		if err != nil || j.GetPipelineId() != id || j.GetPipelineStep() != s.GetId() || j.GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job of step %s: %v %v", s.GetId(), j, err)
		}
	}
	rec.mu.Lock()
	early := rec.early
	rec.mu.Unlock()
	if len(early) > 0 {
		t.Fatalf("steps started before their parents finished: %v", early)
	}
	if p.GetSucceeded() != 199 || p.GetSkipped() != 1 {
		t.Fatalf("counters: %d succeeded, %d skipped", p.GetSucceeded(), p.GetSkipped())
	}
	// The restarted replica holds the same pipeline once it caught up.
	leader := tc.nodes[tc.leader()].shards[0]
	idx := leader.fsm.AppliedIndex()
	waitFor(t, 30*time.Second, "the restarted replica to catch up", func() bool { return tc.nodes[ld].shards[0].fsm.AppliedIndex() >= idx })
	rp, ok := tc.nodes[ld].shards[0].fsm.GetPipeline(id, false)
	if !ok || rp.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED || rp.GetSucceeded() != 199 {
		t.Fatalf("restarted replica: %v %v", ok, rp.GetState())
	}
}

// TestPipelineCancelRetryAndBadInput: cancelling mid-run ends the pipeline
// CANCELLED at once and the running step's handler gets the cancel notice;
// a failed pipeline retried runs only what did not succeed; --from re-runs
// a step and its downstream; bad input is InvalidArgument and stores
// nothing.
func TestPipelineCancelRetryAndBadInput(t *testing.T) {
	tc := startCluster(t, 3, 1)
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rec := newStepRecorder(t, nil)
	hold := make(chan struct{})
	defer close(hold)
	rec.gate["slow"] = hold
	rec.failN["flaky"] = 1
	startStepWorker(t, rec, "w1", tc.addrs()...)

	// Cancel mid-run.
	p, err := c.SubmitPipeline(ctx, &hodeiv1.PipelineSpec{Tenant: "pipes", Steps: []*hodeiv1.PipelineStepSpec{
		stepSpec("slow", 0), stepSpec("after", 0, "slow"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	waitPipelineState(t, ctx, c, p.GetId(), 30*time.Second, "slow to be RUNNING", func(p *hodeiv1.Pipeline) bool {
		return p.GetSteps()[0].GetState() == hodeiv1.StepState_STEP_STATE_RUNNING
	})
	cp, err := c.CancelPipeline(ctx, p.GetId(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if cp.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_CANCELLED || countState(cp, hodeiv1.StepState_STEP_STATE_CANCELLED) != 1 || countState(cp, hodeiv1.StepState_STEP_STATE_SKIPPED) != 1 {
		t.Fatalf("after cancel: %v", cp)
	}
	waitFor(t, 20*time.Second, "the running handler to be cancelled through its stream", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.ctxErr["slow"] != nil
	})
	if _, err := c.CancelPipeline(ctx, p.GetId(), ""); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second cancel: %v", err)
	}

	// Fail, retry, retry --from.
	p, err = c.SubmitPipeline(ctx, &hodeiv1.PipelineSpec{Tenant: "pipes", FailurePolicy: hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE, Steps: []*hodeiv1.PipelineStepSpec{
		stepSpec("setup", 0), stepSpec("flaky", 0, "setup"), stepSpec("other", 0, "setup"), stepSpec("final", 0, "flaky", "other"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := p.GetId()
	ended := func(p *hodeiv1.Pipeline) bool { return p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING }
	p = waitPipelineState(t, ctx, c, id, 30*time.Second, "the first run to end", ended)
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_FAILED || !strings.Contains(p.GetReason(), "step flaky failed") {
		t.Fatalf("first run: %v %q", p.GetState(), p.GetReason())
	}
	if _, err := c.RetryPipeline(ctx, id, "no-such-step"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "no-such-step") {
		t.Fatalf("retry --from an unknown step: %v", err)
	}
	if _, err := c.RetryPipeline(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	p = waitPipelineState(t, ctx, c, id, 30*time.Second, "the retry to end", ended)
	runs := map[string]int32{}
	for _, s := range p.GetSteps() {
		runs[s.GetId()] = s.GetRuns()
	}
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED || runs["setup"] != 1 || runs["other"] != 1 || runs["flaky"] != 2 || runs["final"] != 1 {
		t.Fatalf("retry: %v runs %v", p.GetState(), runs)
	}
	if rec.runsOf("setup") != 1 || rec.runsOf("other") != 1 {
		t.Fatalf("succeeded steps ran again: setup %d other %d", rec.runsOf("setup"), rec.runsOf("other"))
	}
	if _, err := c.RetryPipeline(ctx, id, "other"); err != nil {
		t.Fatal(err)
	}
	p = waitPipelineState(t, ctx, c, id, 30*time.Second, "the retry --from to end", ended)
	for _, s := range p.GetSteps() {
		runs[s.GetId()] = s.GetRuns()
	}
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED || runs["setup"] != 1 || runs["flaky"] != 2 || runs["other"] != 2 || runs["final"] != 2 || p.GetRetries() != 2 {
		t.Fatalf("retry --from other: %v runs %v", p.GetState(), runs)
	}

	// Bad input: nothing stored.
	before, _, err := c.ListPipelines(ctx, &hodeiv1.ListPipelinesRequest{Tenant: "pipes"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.SubmitPipeline(ctx, &hodeiv1.PipelineSpec{Tenant: "pipes", Steps: []*hodeiv1.PipelineStepSpec{
		stepSpec("a", 0, "b"), stepSpec("b", 0, "a"), stepSpec("c", 0, "ghost"),
	}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "cycle: a → b → a") || !strings.Contains(err.Error(), `step "c" depends on unknown step "ghost"`) {
		t.Fatalf("invalid pipeline: %v", err)
	}
	_, err = c.SubmitPipelineFile(ctx, []byte("steps:\n  - id: a\n    kind: step\n    depends_on: [x\n"))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "line 4, column") {
		t.Fatalf("bad YAML: %v", err)
	}
	after, _, err := c.ListPipelines(ctx, &hodeiv1.ListPipelinesRequest{Tenant: "pipes"})
	if err != nil || len(after) != len(before) || len(after) != 2 {
		t.Fatalf("pipelines before %d after %d (%v)", len(before), len(after), err)
	}
	// A file submitted as source runs like a spec.
	fp, err := c.SubmitPipelineFile(ctx, []byte("tenant: pipes\nsteps:\n  - id: one\n    kind: step\n  - id: two\n    kind: step\n    depends_on: [one]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p := waitPipelineState(t, ctx, c, fp.GetId(), 30*time.Second, "the file pipeline to end", ended); p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED {
		t.Fatalf("file pipeline %v %q", p.GetState(), p.GetReason())
	}
}
