package fsm

import (
	"fmt"

	"github.com/google/btree"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

const btreeDegree = 16

// numStates is the size of per-state index arrays (indexed by JobState).
const numStates = int(hodeiv1.JobState_JOB_STATE_DEAD) + 1

// timeKey orders jobs on a timeline (delayed ready_at, lease expiry,
// finished_at), ties broken by seq.
type timeKey struct {
	at  int64
	seq uint64
}

func timeLess(a, b timeKey) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}

func newTimeTree() *btree.BTreeG[timeKey] { return btree.NewG(btreeDegree, timeLess) }

func newSeqTree() *btree.BTreeG[uint64] { return btree.NewOrderedG[uint64](btreeDegree) }

// state is everything that is replicated. It is guarded by FSM.mu.
type state struct {
	cfg Config

	// Replicated scalars (all in the snapshot header).
	nextSeq       uint64 // seq of the next job (starts at 1)
	nextToken     uint64 // last lease token handed out; the next is nextToken+1
	lastNowMs     int64  // effective now of the last applied entry (monotone)
	lastPromoteMs int64  // effective now of the last PromoteDelayed
	appliedIndex  uint64
	chain         uint64 // apply-chain hash at appliedIndex (see chain.go)

	jobs    map[uint64]*hodeiv1.Job // by seq
	tenants map[string]*tenant      // tenants with at least one job
	idem    map[string]uint64       // tenant+"\x00"+idempotency key -> seq

	byState  [numStates]*btree.BTreeG[uint64] // seqs per state, all tenants
	delayed  *btree.BTreeG[timeKey]           // delayed PENDING jobs by ready_at
	leases   *btree.BTreeG[timeKey]           // RUNNING jobs by lease_expires_at
	finished *btree.BTreeG[timeKey]           // terminal jobs but DEAD by finished_at
	dead     *btree.BTreeG[timeKey]           // DEAD jobs by dead_at (dead.go)

	sched scheduler // per-tenant ready queues and fair sharing
	reqs  requestTable
	// quota (issue 11): per-tenant limits, buckets and refusal counters,
	// looked up by name only (the snapshot sorts them).
	quotas map[string]*tenantQuota

	// cron (issue 11): schedules by tenant+"\x00"+id, and the active ones
	// by next fire time (apply_schedule.go).
	schedules map[string]*schedEntry
	schedDue  *btree.BTreeG[dueKey]

	// pipelines (issue 13): pipeline_state.go, apply_pipeline.go.
	pipes pipelineState

	// per-entry scratch
	curIndex   uint64
	curVersion uint32 // the entry's version
	events     []Event
	evicted    []DeadEviction // DEAD jobs removed by this entry (dead.go)
}

func newState(cfg Config) *state {
	s := &state{
		cfg:      cfg,
		nextSeq:  1,
		jobs:     make(map[uint64]*hodeiv1.Job),
		tenants:  make(map[string]*tenant),
		idem:     make(map[string]uint64),
		delayed:  newTimeTree(),
		leases:   newTimeTree(),
		finished: newTimeTree(),
		dead:     newTimeTree(),
		sched:    newScheduler(),
		reqs:     newRequestTable(),

		schedules: make(map[string]*schedEntry),
		schedDue:  newDueTree(),
		quotas:    make(map[string]*tenantQuota),
		pipes:     newPipelineState(),
	}
	for i := range s.byState {
		s.byState[i] = newSeqTree()
	}
	return s
}

// tenant holds one tenant's indexes.
type tenant struct {
	name    string
	jobs    int                              // all jobs of the tenant in the FSM
	byState [numStates]*btree.BTreeG[uint64] // lazily created
	ready   *btree.BTreeG[readyKey]          // leasable jobs: priority desc, seq asc
	deficit int64                            // deficit round robin credit
	picked  int                              // scratch of pickReady: jobs picked, not yet RUNNING (0 between commands)
	dead    *btree.BTreeG[timeKey]           // the tenant's DEAD jobs by dead_at; lazily created
}

func (s *state) tenant(name string, create bool) *tenant {
	t := s.tenants[name]
	if t == nil && create {
		t = &tenant{name: name, ready: btree.NewG(btreeDegree, readyLess)}
		s.tenants[name] = t
	}
	return t
}

func idemKey(tenant, key string) string { return tenant + "\x00" + key }

// setState moves a job between the state indexes and records an event. It
// does not touch queues/timelines; callers do.
func (s *state) setState(j *hodeiv1.Job, to hodeiv1.JobState) {
	from := j.GetState()
	if from == to {
		return
	}
	if isTerminal(from) {
		panic(fmt.Sprintf("fsm: job %s: terminal state %s cannot change to %s", j.GetId(), stateName(from), stateName(to)))
	}
	t := s.tenant(j.GetSpec().GetTenant(), false)
	if t == nil {
		panic(fmt.Sprintf("fsm: job %s has no tenant record", j.GetId()))
	}
	if from != hodeiv1.JobState_JOB_STATE_UNSPECIFIED {
		s.byState[from].Delete(j.GetSeq())
		t.byState[from].Delete(j.GetSeq())
	}
	s.byState[to].ReplaceOrInsert(j.GetSeq())
	if t.byState[to] == nil {
		t.byState[to] = newSeqTree()
	}
	t.byState[to].ReplaceOrInsert(j.GetSeq())
	j.State = to
	ev := Event{Index: s.curIndex, JobID: j.GetId(), Tenant: t.name, Kind: j.GetSpec().GetKind(), NowMs: s.lastNowMs, From: from, To: to}
	if to == hodeiv1.JobState_JOB_STATE_RUNNING {
		ev.ReadySinceMs = max(j.GetCreatedAtMs(), j.GetReadyAtMs())
	}
	s.events = append(s.events, ev)
}

func isTerminal(st hodeiv1.JobState) bool {
	return st == hodeiv1.JobState_JOB_STATE_SUCCEEDED ||
		st == hodeiv1.JobState_JOB_STATE_FAILED ||
		st == hodeiv1.JobState_JOB_STATE_CANCELLED ||
		st == hodeiv1.JobState_JOB_STATE_DEAD
}

// lookup finds a job by its id string.
func (s *state) lookup(id string) (*hodeiv1.Job, bool) {
	shard, seq, err := ParseJobID(id)
	if err != nil || shard != s.cfg.Shard {
		return nil, false
	}
	j, ok := s.jobs[seq]
	return j, ok
}

// applyEntry applies every command of e. The caller holds the write lock.
func (s *state) applyEntry(index uint64, e *internalpb.Entry) ([]*internalpb.CommandResult, []Event) {
	if index != 0 && index <= s.appliedIndex {
		panic(fmt.Sprintf("fsm: entry index %d is not after applied index %d", index, s.appliedIndex))
	}
	s.curIndex = index
	s.curVersion = e.GetVersion()
	s.events = nil
	// Time in the FSM is monotone: a new leader's clock may be behind the
	// old one's; we never let replicated time go backwards.
	now := e.GetNowMs()
	if now < s.lastNowMs {
		now = s.lastNowMs
	}
	s.lastNowMs = now
	s.reqs.evict(now, s.cfg)

	results := make([]*internalpb.CommandResult, len(e.GetCommands()))
	for i, c := range e.GetCommands() {
		results[i] = s.applyCommand(now, c)
	}
	if index != 0 {
		s.appliedIndex = index
	}
	ev := s.events
	s.events = nil
	return results, ev
}

func (s *state) applyCommand(now int64, c *internalpb.Command) *internalpb.CommandResult {
	rid := c.GetRequestId()
	if rid != "" {
		if rec, ok := s.reqs.get(rid); ok {
			return s.replay(rec, c, now)
		}
	}
	var r *internalpb.CommandResult
	switch k := c.GetKind().(type) {
	case *internalpb.Command_Submit:
		r = s.applySubmit(now, k.Submit)
	case *internalpb.Command_Lease:
		r = s.applyLease(now, k.Lease)
	case *internalpb.Command_LeaseBatch:
		r = s.applyLeaseBatch(now, k.LeaseBatch)
	case *internalpb.Command_CompleteJobs:
		r = s.applyCompleteJobs(now, k.CompleteJobs)
	case *internalpb.Command_Extend:
		r = s.applyExtend(now, k.Extend)
	case *internalpb.Command_Complete:
		r = s.applyComplete(now, k.Complete)
	case *internalpb.Command_Cancel:
		r = s.applyCancel(now, k.Cancel)
	case *internalpb.Command_Expire:
		r = s.applyExpire(now, k.Expire)
	case *internalpb.Command_Promote:
		r = s.applyPromote(now)
	case *internalpb.Command_Gc:
		r = s.applyGC(k.Gc)
		if s.curVersion >= EntryVersionSemantics && r.GetCode() == internalpb.Code_CODE_OK {
			r.Count += s.gcDead(now, k.Gc.GetMax())
		}
		if r.GetCode() == internalpb.Code_CODE_OK {
			// Ended pipelines share the finished jobs' retention. Not keyed
			// on the entry version: a replica holding a pipeline applied a
			// version 5 entry, so every replica of this shard knows them.
			r.Count += s.gcPipelines(k.Gc.GetFinishedBeforeMs(), k.Gc.GetMax())
		}
	case *internalpb.Command_RetryJobs:
		r = s.applyRetryJobs(now, k.RetryJobs)
	case *internalpb.Command_SetTenantWeight:
		r = s.applySetTenantWeight(k.SetTenantWeight)
	case *internalpb.Command_CreateSchedule, *internalpb.Command_PauseSchedule, *internalpb.Command_TriggerSchedule,
		*internalpb.Command_BackfillSchedule, *internalpb.Command_DeleteSchedule, *internalpb.Command_FireSchedules:
		r = s.applySchedule(now, c)
	case *internalpb.Command_SetTenantLimits:
		r = s.applySetTenantLimits(now, k.SetTenantLimits)
	case *internalpb.Command_SubmitPipeline, *internalpb.Command_CancelPipeline, *internalpb.Command_RetryPipeline:
		r = s.applyPipeline(now, c)
	case *internalpb.Command_Checkpoint:
		// Verified by the FSM wrapper against its local chain record; it
		// changes no replicated state.
		r = &internalpb.CommandResult{}
	case nil:
		r = errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "empty command")
	default:
		// Unknown oneof cases cannot be produced by proto.Unmarshal of this
		// binary's schema (they decode as unknown fields => kind nil).
		panic(fmt.Sprintf("fsm: unknown command kind %T", k))
	}
	if rid != "" && s.cfg.MaxRequests > 0 {
		s.reqs.put(s.requestRecord(rid, now, r), s.cfg.MaxRequests)
	}
	return r
}

func errResult(code internalpb.Code, format string, args ...any) *internalpb.CommandResult {
	return &internalpb.CommandResult{Code: code, Message: fmt.Sprintf(format, args...)}
}

// cloneJob copies j for a reply or a reader. The spec and the last result
// are shared, not copied: the FSM never changes either in place (a new
// result replaces the old one), and replies are only read and marshalled
// (protobuf marshalling of a shared message is safe concurrently). This
// keeps a copy at one small allocation instead of a reflective deep clone
// of the spec and payload, on every replica, for every job in every reply.
// TestCloneJobCopiesEveryField fails when Job gains a field this misses.
func cloneJob(j *hodeiv1.Job) *hodeiv1.Job {
	return &hodeiv1.Job{
		Id:               j.GetId(),
		Spec:             j.GetSpec(),
		State:            j.GetState(),
		Attempts:         j.GetAttempts(),
		Shard:            j.GetShard(),
		Seq:              j.GetSeq(),
		CreatedAtMs:      j.GetCreatedAtMs(),
		UpdatedAtMs:      j.GetUpdatedAtMs(),
		ReadyAtMs:        j.GetReadyAtMs(),
		LeaseToken:       j.GetLeaseToken(),
		LeaseWorker:      j.GetLeaseWorker(),
		LeaseExpiresAtMs: j.GetLeaseExpiresAtMs(),
		LastResult:       j.GetLastResult(),
		FinishedAtMs:     j.GetFinishedAtMs(),
		CancelReason:     j.GetCancelReason(),
		ScheduleId:       j.GetScheduleId(),
		ScheduleSlotMs:   j.GetScheduleSlotMs(),
		Unmatched:        j.GetUnmatched(),
		History:          j.GetHistory(), // shared: replaced, never changed in place (dead.go)
		DeadAtMs:         j.GetDeadAtMs(),
		DeadReason:       j.GetDeadReason(),
		Retries:          j.GetRetries(),
		PipelineId:       j.GetPipelineId(),
		PipelineStep:     j.GetPipelineStep(),
	}
}

// clearLease drops the lease fields and the lease-timeline entry of j.
func (s *state) clearLease(j *hodeiv1.Job) {
	if j.GetState() == hodeiv1.JobState_JOB_STATE_RUNNING {
		s.leases.Delete(timeKey{j.GetLeaseExpiresAtMs(), j.GetSeq()})
	}
	j.LeaseToken = 0
	j.LeaseWorker = ""
	j.LeaseExpiresAtMs = 0
}

// finish moves a non-terminal job to a terminal state at now.
func (s *state) finish(j *hodeiv1.Job, to hodeiv1.JobState, now int64) {
	switch j.GetState() {
	case hodeiv1.JobState_JOB_STATE_RUNNING:
		s.clearLease(j)
	case hodeiv1.JobState_JOB_STATE_PENDING:
		s.unqueue(j)
	}
	s.setState(j, to)
	j.FinishedAtMs = now
	j.UpdatedAtMs = now
	s.finished.ReplaceOrInsert(timeKey{now, j.GetSeq()})
	if j.GetScheduleId() != "" {
		s.scheduledJobFinished(j, now)
	}
	if j.GetPipelineId() != "" {
		s.pipelineJobFinished(j, now) // its step ends; children are decided (apply_pipeline.go)
	}
}

// retryOrFail handles a failed attempt of a RUNNING job. In an entry of
// version 4 a job that is not retried ends DEAD instead of FAILED.
func (s *state) retryOrFail(j *hodeiv1.Job, retryable bool, now int64) {
	spec := j.GetSpec()
	if retryable && j.GetAttempts() < spec.GetMaxAttempts() {
		s.clearLease(j)
		s.setState(j, hodeiv1.JobState_JOB_STATE_PENDING)
		j.UpdatedAtMs = now
		j.ReadyAtMs = satAdd(now, backoffMs(spec.GetBackoffBaseMs(), spec.GetBackoffMaxMs(), j.GetAttempts()))
		s.delayed.ReplaceOrInsert(timeKey{j.GetReadyAtMs(), j.GetSeq()})
		return
	}
	if s.curVersion >= EntryVersionSemantics {
		s.die(j, deadReason(j, retryable), now)
		return
	}
	s.finish(j, hodeiv1.JobState_JOB_STATE_FAILED, now)
}

// unqueue removes a PENDING job from the ready queue or the delayed timeline.
func (s *state) unqueue(j *hodeiv1.Job) {
	if s.delayed.Has(timeKey{j.GetReadyAtMs(), j.GetSeq()}) {
		s.delayed.Delete(timeKey{j.GetReadyAtMs(), j.GetSeq()})
		return
	}
	t := s.tenant(j.GetSpec().GetTenant(), false)
	if !s.sched.remove(t, j) {
		panic(fmt.Sprintf("fsm: PENDING job %s is in neither the ready queue nor the delayed timeline", j.GetId()))
	}
}

// backoffMs is base * 2^(attempts-1), capped at max; attempts < 1 counts as 1.
// Deterministic: no jitter.
func backoffMs(base, max int64, attempts int32) int64 {
	if base <= 0 {
		base = 1
	}
	if max < base {
		max = base
	}
	d := base
	for i := int32(1); i < attempts; i++ {
		if d >= max/2+1 {
			return max
		}
		d *= 2
	}
	if d > max {
		return max
	}
	return d
}

// satAdd adds b >= 0 to a without overflowing.
func satAdd(a, b int64) int64 {
	const maxInt64 = int64(^uint64(0) >> 1)
	if b > 0 && a > maxInt64-b {
		return maxInt64
	}
	return a + b
}
