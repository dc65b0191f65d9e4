package fsm

import (
	"fmt"
	"strings"

	"github.com/google/btree"

	"github.com/hodei-io/hodei/fsm/pipeline"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Pipelines (issue 13). A pipeline lives in its tenant's shard: its record
// (hodeiv1.Pipeline with every expanded step and its state) is replicated
// state, in the snapshot; everything else here is derived from the records
// and rebuilt on restore (restorePipelines):
//
//   - the graph: each step's parents (from depends_on) and children, in
//     compressed rows;
//   - per step, its parents' outcomes so far (pipeline.Counts): a parent
//     that ends adds its outcome to each child's counts, O(1) per edge, and
//     only the children of the step that ended are decided again. For a
//     WAITING step the counts equal the outcomes of its parents that have
//     ended (at a retry no step is WAITING, and every step the retry resets
//     gets its counts recomputed), which is what restore recomputes;
//   - how many steps are open (WAITING or PENDING).
//
// Step jobs carry Job.pipeline_id and Job.pipeline_step; when one ends (in
// finish or die, whatever command ended it) pipelineJobFinished updates its
// step in the same apply, so a step's state and its job's never disagree
// between entries.

// pipe is one pipeline and its derived indexes.
type pipe struct {
	rec        *hodeiv1.Pipeline
	index      map[string]int32 // step id -> index in rec.Steps
	parents    [][]int32
	childStart []int32
	child      []int32
	counts     []pipeline.Counts
	open       int // steps WAITING or PENDING
	// stopped: fail-fast engaged in this run (a step failed: nothing new
	// is released); derived on restore from the record.
	stopped bool
	// cancelling is set only inside applyCancelPipeline (never between
	// entries): the ending pipeline is CANCELLED, with cancelReason.
	cancelling   bool
	cancelReason string
}

func (p *pipe) children(i int32) []int32 { return p.child[p.childStart[i]:p.childStart[i+1]] }

// pipeKey orders pipelines of a tenant (or all) by seq.
func newPipeIndex() *btree.BTreeG[uint64] { return btree.NewOrderedG[uint64](btreeDegree) }

// pipelineState is the FSM's pipeline table.
type pipelineState struct {
	nextSeq  uint64                           // seq of the next pipeline (starts at 1)
	bySeq    map[uint64]*pipe                 // every pipeline
	all      *btree.BTreeG[uint64]            // seqs, for listing
	byTenant map[string]*btree.BTreeG[uint64] // seqs per tenant
	ended    *btree.BTreeG[timeKey]           // ended pipelines by finished_at (GC)
}

func newPipelineState() pipelineState {
	return pipelineState{nextSeq: 1, bySeq: make(map[uint64]*pipe), all: newPipeIndex(),
		byTenant: make(map[string]*btree.BTreeG[uint64]), ended: newTimeTree()}
}

// ErrInvalidPipelineID is returned by ParsePipelineID.
var ErrInvalidPipelineID = fmt.Errorf("invalid pipeline id")

// FormatPipelineID returns "p<shard>-<seq>".
func FormatPipelineID(shard uint32, seq uint64) string {
	return "p" + FormatJobID(shard, seq)
}

// ParsePipelineID parses an id made by FormatPipelineID (canonical form only).
func ParsePipelineID(id string) (shard uint32, seq uint64, err error) {
	if !strings.HasPrefix(id, "p") {
		return 0, 0, fmt.Errorf("%w: %q", ErrInvalidPipelineID, id)
	}
	shard, seq, err = ParseJobID(id[1:])
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %q", ErrInvalidPipelineID, id)
	}
	return shard, seq, nil
}

// newPipe builds the derived indexes of a record. The step ids are unique
// and every depends_on names a step (checked: a record that breaks this is
// a corrupt snapshot). Counts are recomputed from the parents' states.
func newPipe(rec *hodeiv1.Pipeline) (*pipe, error) {
	steps := rec.GetSteps()
	p := &pipe{rec: rec, index: make(map[string]int32, len(steps)), parents: make([][]int32, len(steps)),
		childStart: make([]int32, len(steps)+1), counts: make([]pipeline.Counts, len(steps))}
	for i, st := range steps {
		if _, dup := p.index[st.GetId()]; dup || st.GetId() == "" {
			return nil, fmt.Errorf("pipeline %s: duplicate or empty step id %q", rec.GetId(), st.GetId())
		}
		p.index[st.GetId()] = int32(i)
	}
	edges := 0
	for i, st := range steps {
		ps := make([]int32, len(st.GetDependsOn()))
		for k, d := range st.GetDependsOn() {
			j, ok := p.index[d]
			if !ok || int(j) == i {
				return nil, fmt.Errorf("pipeline %s: step %s depends on %q", rec.GetId(), st.GetId(), d)
			}
			ps[k] = j
			p.childStart[j+1]++
		}
		p.parents[i] = ps
		edges += len(ps)
	}
	for i := 1; i < len(p.childStart); i++ {
		p.childStart[i] += p.childStart[i-1]
	}
	p.child = make([]int32, edges)
	fill := append([]int32(nil), p.childStart[:len(steps)]...)
	for c, ps := range p.parents {
		for _, q := range ps {
			p.child[fill[q]] = int32(c)
			fill[q]++
		}
	}
	for i := range steps {
		p.recount(int32(i))
		if stepOpen(steps[i].GetState()) {
			p.open++
		}
	}
	p.stopped = rec.GetState() == hodeiv1.PipelineState_PIPELINE_STATE_RUNNING &&
		rec.GetFailurePolicy() == hodeiv1.FailurePolicy_FAILURE_POLICY_FAIL_FAST && rec.GetFailed()+rec.GetCancelled() > 0
	return p, nil
}

// fromPlan builds a pipe from a freshly compiled plan (the same indexes
// newPipe would rebuild from the record).
func fromPlan(rec *hodeiv1.Pipeline, plan *pipeline.Plan) *pipe {
	p := &pipe{rec: rec, index: make(map[string]int32, len(plan.Steps)), parents: make([][]int32, len(plan.Steps)),
		childStart: make([]int32, len(plan.Steps)+1), counts: make([]pipeline.Counts, len(plan.Steps))}
	k := int32(0)
	for i := range plan.Steps {
		s := &plan.Steps[i]
		p.index[s.ID] = int32(i)
		p.parents[i] = s.Parents
		p.counts[i].Parents = int32(len(s.Parents))
		p.childStart[i] = k
		k += int32(len(plan.Children(i)))
	}
	p.childStart[len(plan.Steps)] = k
	p.child = make([]int32, 0, k)
	for i := range plan.Steps {
		p.child = append(p.child, plan.Children(i)...)
	}
	p.open = len(plan.Steps)
	return p
}

// recount sets step i's counts from its parents' current states.
func (p *pipe) recount(i int32) {
	c := pipeline.Counts{Parents: int32(len(p.parents[i]))}
	for _, q := range p.parents[i] {
		addOutcome(&c, p.rec.Steps[q].GetState())
	}
	p.counts[i] = c
}

// addOutcome adds an ended step's outcome to counts (a cancelled step
// counts as failed).
func addOutcome(c *pipeline.Counts, st hodeiv1.StepState) {
	switch st {
	case hodeiv1.StepState_STEP_STATE_SUCCEEDED:
		c.Succeeded++
	case hodeiv1.StepState_STEP_STATE_FAILED, hodeiv1.StepState_STEP_STATE_CANCELLED:
		c.Failed++
	case hodeiv1.StepState_STEP_STATE_SKIPPED:
		c.Skipped++
	}
}

func stepOpen(st hodeiv1.StepState) bool {
	return st == hodeiv1.StepState_STEP_STATE_WAITING || st == hodeiv1.StepState_STEP_STATE_PENDING
}

// setStep moves step i to state to, keeping the record's counters and the
// open count.
func (p *pipe) setStep(i int32, to hodeiv1.StepState) {
	st := p.rec.Steps[i]
	from := st.GetState()
	if from == to {
		return
	}
	p.count(from, -1)
	p.count(to, +1)
	if stepOpen(from) {
		p.open--
	}
	if stepOpen(to) {
		p.open++
	}
	st.State = to
}

func (p *pipe) count(st hodeiv1.StepState, d int32) {
	r := p.rec
	switch st {
	case hodeiv1.StepState_STEP_STATE_SUCCEEDED:
		r.Succeeded = uint32(int32(r.Succeeded) + d)
	case hodeiv1.StepState_STEP_STATE_FAILED:
		r.Failed = uint32(int32(r.Failed) + d)
	case hodeiv1.StepState_STEP_STATE_CANCELLED:
		r.Cancelled = uint32(int32(r.Cancelled) + d)
	case hodeiv1.StepState_STEP_STATE_SKIPPED:
		r.Skipped = uint32(int32(r.Skipped) + d)
	}
}

// addPipe indexes p.
func (s *state) addPipe(p *pipe) {
	seq := p.rec.GetSeq()
	s.pipes.bySeq[seq] = p
	s.pipes.all.ReplaceOrInsert(seq)
	t := s.pipes.byTenant[p.rec.GetTenant()]
	if t == nil {
		t = newPipeIndex()
		s.pipes.byTenant[p.rec.GetTenant()] = t
	}
	t.ReplaceOrInsert(seq)
	if p.rec.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		s.pipes.ended.ReplaceOrInsert(timeKey{p.rec.GetFinishedAtMs(), seq})
	}
}

// removePipe drops an ended pipeline (GC).
func (s *state) removePipe(p *pipe) {
	seq := p.rec.GetSeq()
	s.pipes.ended.Delete(timeKey{p.rec.GetFinishedAtMs(), seq})
	delete(s.pipes.bySeq, seq)
	s.pipes.all.Delete(seq)
	if t := s.pipes.byTenant[p.rec.GetTenant()]; t != nil {
		t.Delete(seq)
		if t.Len() == 0 {
			delete(s.pipes.byTenant, p.rec.GetTenant())
		}
	}
}

// pipeByID finds a pipeline of this shard by id.
func (s *state) pipeByID(id string) (*pipe, bool) {
	sh, seq, err := ParsePipelineID(id)
	if err != nil || sh != s.cfg.Shard {
		return nil, false
	}
	p, ok := s.pipes.bySeq[seq]
	return p, ok
}

// gcPipelines removes up to max ended pipelines that finished before the
// cutoff, oldest first: the retention of finished jobs applies to them.
func (s *state) gcPipelines(before int64, max uint32) uint32 {
	var victims []timeKey
	s.pipes.ended.Ascend(func(k timeKey) bool {
		if k.at >= before || uint32(len(victims)) >= max {
			return false
		}
		victims = append(victims, k)
		return true
	})
	for _, k := range victims {
		s.removePipe(s.pipes.bySeq[k.seq])
	}
	return uint32(len(victims))
}

// pipelineView is a copy of p's record for a reply: steps with their
// shown state (a PENDING step whose job is leased shows RUNNING) and the
// job's attempts; job templates only with specs (and never for list
// summaries, withSteps false).
func (s *state) pipelineView(p *pipe, withSteps, specs bool) *hodeiv1.Pipeline {
	r := p.rec
	out := &hodeiv1.Pipeline{
		Id: r.GetId(), Tenant: r.GetTenant(), Name: r.GetName(), State: r.GetState(), Reason: r.GetReason(),
		FailurePolicy: r.GetFailurePolicy(), Shard: r.GetShard(), Seq: r.GetSeq(), CreatedAtMs: r.GetCreatedAtMs(),
		UpdatedAtMs: r.GetUpdatedAtMs(), FinishedAtMs: r.GetFinishedAtMs(), Retries: r.GetRetries(),
		StepCount: r.GetStepCount(), Succeeded: r.GetSucceeded(), Failed: r.GetFailed(), Skipped: r.GetSkipped(),
		Cancelled: r.GetCancelled(),
	}
	if !withSteps {
		return out
	}
	out.Steps = make([]*hodeiv1.PipelineStep, len(r.GetSteps()))
	for i, st := range r.GetSteps() {
		v := &hodeiv1.PipelineStep{
			Id: st.GetId(), DependsOn: st.GetDependsOn(), TriggerRule: st.GetTriggerRule(), Item: st.GetItem(),
			State: st.GetState(), JobId: st.GetJobId(), Attempts: st.GetAttempts(), Runs: st.GetRuns(),
			Reason: st.GetReason(), ReleasedAtMs: st.GetReleasedAtMs(), FinishedAtMs: st.GetFinishedAtMs(),
		}
		if specs {
			v.Job = st.GetJob()
		}
		if st.GetState() == hodeiv1.StepState_STEP_STATE_PENDING {
			if j, ok := s.lookup(st.GetJobId()); ok {
				v.Attempts = j.GetAttempts()
				if j.GetState() == hodeiv1.JobState_JOB_STATE_RUNNING {
					v.State = hodeiv1.StepState_STEP_STATE_RUNNING
				}
			}
		}
		out.Steps[i] = v
	}
	return out
}

// GetPipeline returns a pipeline of this shard by id, with its steps.
func (f *FSM) GetPipeline(id string, includeSpecs bool) (*hodeiv1.Pipeline, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p, ok := f.st.pipeByID(id)
	if !ok {
		return nil, false
	}
	return f.st.pipelineView(p, true, includeSpecs), true
}

// ListPipelines returns up to limit pipeline summaries (no steps) with seq
// > afterSeq, in seq order, of one tenant ("" = all) and state
// (UNSPECIFIED = all), and the seq to continue after (0 = no more).
func (f *FSM) ListPipelines(tenant string, state hodeiv1.PipelineState, afterSeq uint64, limit int) ([]*hodeiv1.Pipeline, uint64) {
	if limit <= 0 {
		return nil, 0
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	idx := f.st.pipes.all
	if tenant != "" {
		idx = f.st.pipes.byTenant[tenant]
		if idx == nil {
			return nil, 0
		}
	}
	var out []*hodeiv1.Pipeline
	var next uint64
	idx.AscendGreaterOrEqual(afterSeq+1, func(seq uint64) bool {
		p := f.st.pipes.bySeq[seq]
		if state != hodeiv1.PipelineState_PIPELINE_STATE_UNSPECIFIED && p.rec.GetState() != state {
			return true
		}
		if len(out) == limit {
			next = out[len(out)-1].GetSeq()
			return false
		}
		out = append(out, f.st.pipelineView(p, false, false))
		return true
	})
	return out, next
}

// OldestPipelineEndedAt is when the earliest-ended pipeline still held
// ended (the leader's GC timer proposes GCJobs when it is past retention).
func (f *FSM) OldestPipelineEndedAt() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.st.pipes.ended.Min()
	return k.at, ok
}

// PipelineCount is the number of pipelines held (running and ended).
func (f *FSM) PipelineCount() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.st.pipes.bySeq)
}

// sortedPipelineSeqs lists the pipelines in seq order (the snapshot's).
func (s *state) sortedPipelineSeqs() []uint64 {
	out := make([]uint64, 0, len(s.pipes.bySeq))
	s.pipes.all.Ascend(func(seq uint64) bool {
		out = append(out, seq)
		return true
	})
	return out
}

// restorePipelines installs a snapshot's pipeline records, checking what
// the live path guarantees: seqs in order below next_pipeline_seq, ids of
// this shard, a valid graph, a PENDING step's job present and not ended,
// and counters that match the steps. Derived indexes are rebuilt.
func (s *state) restorePipelines(recs []*hodeiv1.Pipeline) error {
	var prev uint64
	for _, r := range recs {
		seq := r.GetSeq()
		if seq <= prev || seq >= s.pipes.nextSeq || r.GetId() != FormatPipelineID(s.cfg.Shard, seq) || r.GetShard() != s.cfg.Shard {
			return corrupt("pipeline %q (seq %d) out of order, beyond next_pipeline_seq %d or not of shard %d", r.GetId(), seq, s.pipes.nextSeq, s.cfg.Shard)
		}
		prev = seq
		if r.GetState() < hodeiv1.PipelineState_PIPELINE_STATE_RUNNING || r.GetState() > hodeiv1.PipelineState_PIPELINE_STATE_CANCELLED ||
			int(r.GetStepCount()) != len(r.GetSteps()) || len(r.GetSteps()) == 0 {
			return corrupt("pipeline %s has state %v and %d steps (step_count %d)", r.GetId(), r.GetState(), len(r.GetSteps()), r.GetStepCount())
		}
		var n [8]uint32
		for _, st := range r.GetSteps() {
			if st.GetState() < hodeiv1.StepState_STEP_STATE_WAITING || st.GetState() > hodeiv1.StepState_STEP_STATE_SKIPPED ||
				st.GetState() == hodeiv1.StepState_STEP_STATE_RUNNING || st.GetJob() == nil {
				return corrupt("pipeline %s step %s has state %v or no job", r.GetId(), st.GetId(), st.GetState())
			}
			n[st.GetState()]++
			if st.GetState() == hodeiv1.StepState_STEP_STATE_PENDING {
				j, ok := s.lookup(st.GetJobId())
				if !ok || isTerminal(j.GetState()) || j.GetPipelineId() != r.GetId() || j.GetPipelineStep() != st.GetId() {
					return corrupt("pipeline %s step %s is PENDING without its unfinished job %q", r.GetId(), st.GetId(), st.GetJobId())
				}
			}
		}
		open := n[hodeiv1.StepState_STEP_STATE_WAITING] + n[hodeiv1.StepState_STEP_STATE_PENDING]
		if n[hodeiv1.StepState_STEP_STATE_SUCCEEDED] != r.GetSucceeded() || n[hodeiv1.StepState_STEP_STATE_FAILED] != r.GetFailed() ||
			n[hodeiv1.StepState_STEP_STATE_SKIPPED] != r.GetSkipped() || n[hodeiv1.StepState_STEP_STATE_CANCELLED] != r.GetCancelled() ||
			(open == 0) != (r.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING) {
			return corrupt("pipeline %s: step counters or state do not match its steps", r.GetId())
		}
		p, err := newPipe(r)
		if err != nil {
			return corrupt("%v", err)
		}
		s.addPipe(p)
	}
	return nil
}

// DecodePipeline parses a pipeline file (YAML or JSON) with the FSM's
// constraint parser (fsm/pipeline.Decode).
func DecodePipeline(data []byte) (*hodeiv1.PipelineSpec, error) {
	return pipeline.Decode(data, pipeline.DecodeOptions{ParseConstraint: ParseConstraint})
}

// ValidatePipeline checks spec exactly as SubmitPipeline will under cfg,
// and returns the pipeline's tenant (defaulted).
func ValidatePipeline(spec *hodeiv1.PipelineSpec, cfg Config) (string, error) {
	plan, err := pipeline.Compile(spec, func(js *hodeiv1.JobSpec) (*hodeiv1.JobSpec, error) { return NormalizeSpec(js, cfg) })
	if err != nil {
		return "", err
	}
	return plan.Tenant, nil
}
