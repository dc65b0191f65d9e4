package fsm

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Dead letters (issue 11). In entries of version 4 (EntryVersionSemantics):
//
//   - A failed attempt that is not retried — attempts exhausted, the
//     completion said retryable=false (client.NoRetry), or the lease of the
//     last attempt expired — ends the job DEAD instead of FAILED. FAILED is
//     then only reached through entries of versions 1-3 (and stays in
//     snapshots that hold such jobs); it keeps its meaning and its 24 h GC.
//   - Each completion or expiry first moves the job's previous last_result
//     into Job.history as a small AttemptSummary (at most
//     MaxHistoryAttempts kept, oldest dropped first; error cut to
//     maxSummaryError bytes, output to its last maxSummaryOutput bytes), so
//     a job's attempt record is bounded at about 32 * 800 bytes plus its
//     last result. The cost per completion is one small allocation and a
//     copy of at most 256 output bytes; the full output is never copied.
//   - DEAD jobs are on their own timeline (state.dead, tenant.dead), not on
//     the finished-job timeline: the finished-job GC never removes them. A
//     GCJobs in a version 4 entry also removes up to max DEAD jobs that died
//     more than Config.DeadRetentionMs before the entry's now (7 days by
//     default). A tenant keeps at most Config.MaxDeadPerTenant DEAD jobs in
//     a shard: a new death beyond it evicts that tenant's oldest dead job.
//     Both removals are reported through Options.OnDeadEvicted (the cluster
//     counts and logs them).
//   - RetryJobs puts a DEAD, FAILED or CANCELLED job (by id), or the DEAD
//     jobs matching a filter, back to PENDING: attempts restart at 0 (a
//     fresh max_attempts; the spec is never changed), retries counts the
//     times, and history and last_result are kept.
//
// Entries of versions 1-3 apply exactly as before: no history, FAILED on
// exhaustion, GC of finished jobs only, RetryJobs refused.

// Attempt-history bounds.
const (
	// MaxHistoryAttempts is the number of earlier attempts a job keeps.
	MaxHistoryAttempts = 32
	maxSummaryError    = 512
	maxSummaryOutput   = 256
	// MaxRequeue bounds the jobs one RetryJobs by filter puts back.
	MaxRequeue = 10000
)

// Dead reasons (Job.dead_reason).
const (
	DeadExhausted    = "attempts exhausted"
	DeadNotRetryable = "not retryable"
	DeadLeaseExpired = "lease expired on the last attempt"
)

// Eviction causes (DeadEviction.Cause).
const (
	EvictBound     = "bound"     // the tenant's MaxDeadPerTenant was reached
	EvictRetention = "retention" // older than DeadRetentionMs
)

// DeadEviction is one DEAD job removed by the FSM without a user asking.
type DeadEviction struct {
	Tenant string
	JobID  string
	Cause  string // EvictBound or EvictRetention
}

// ErrInvalidRequeue is wrapped by ValidateRequeue errors.
var ErrInvalidRequeue = errors.New("invalid requeue filter")

// ValidateRequeue checks a requeue filter; the API and the FSM both use it.
func ValidateRequeue(tenant, kind string, sinceMs, untilMs int64, limit uint32) error {
	switch {
	case tenant != "" && (len(tenant) > MaxNameBytes || !validTenant(tenant)):
		return fmt.Errorf("%w: tenant %q must match [A-Za-z0-9._-]+ (at most %d bytes)", ErrInvalidRequeue, tenant, MaxNameBytes)
	case sinceMs < 0:
		return fmt.Errorf("%w: since is negative (%d)", ErrInvalidRequeue, sinceMs)
	case untilMs < 0:
		return fmt.Errorf("%w: until is negative (%d)", ErrInvalidRequeue, untilMs)
	case untilMs != 0 && untilMs <= sinceMs:
		return fmt.Errorf("%w: until (%d) must be after since (%d)", ErrInvalidRequeue, untilMs, sinceMs)
	case limit < 1 || limit > MaxRequeue:
		return fmt.Errorf("%w: limit %d is outside 1..%d", ErrInvalidRequeue, limit, MaxRequeue)
	}
	if kind != "" && kind != ShellKind {
		if err := ValidateKind(kind); err != nil {
			return fmt.Errorf("%w: kind: %v", ErrInvalidRequeue, err)
		}
	}
	return nil
}

// changedBySemantics reports whether c applies differently in an entry of
// version 4: completions and expiries (DEAD, history) and GC (dead retention).
func changedBySemantics(c *internalpb.Command) bool {
	switch c.GetKind().(type) {
	case *internalpb.Command_Complete, *internalpb.Command_CompleteJobs, *internalpb.Command_Expire, *internalpb.Command_Gc:
		return true
	}
	return false
}

// EntryVersionForCluster is the version an entry carrying cmds gets from a
// proposer: EntryVersionFor, raised to EntryVersionSemantics for the
// commands the issue 11 rules change when semantics is on (every node of
// the cluster runs a binary with them; see cluster.Config.DeadLetters).
// (RetryJobs always needs version 4: EntryVersionFor says so.)
func EntryVersionForCluster(cmds []*internalpb.Command, semantics bool) uint32 {
	v := EntryVersionFor(cmds)
	for _, c := range cmds {
		if semantics && changedBySemantics(c) && v < EntryVersionSemantics {
			return EntryVersionSemantics
		}
	}
	return v
}

// keepAttempt moves j's last result into its history (version 4 entries
// only), before a new result replaces it. The history slice is shared with
// replies (cloneJob): it is appended to (readers see only their length) or
// replaced, never changed in place.
func (s *state) keepAttempt(j *hodeiv1.Job) {
	if s.curVersion < EntryVersionSemantics || j.GetLastResult() == nil {
		return
	}
	sum := summarize(j.GetLastResult())
	h := j.GetHistory()
	if len(h) >= MaxHistoryAttempts {
		n := make([]*hodeiv1.AttemptSummary, 0, MaxHistoryAttempts)
		n = append(n, h[len(h)-MaxHistoryAttempts+1:]...)
		h = n
	}
	j.History = append(h, sum)
}

// summarize is the bounded summary of a finished attempt.
func summarize(r *hodeiv1.JobResult) *hodeiv1.AttemptSummary {
	sum := &hodeiv1.AttemptSummary{
		Attempt:      r.GetAttempt(),
		WorkerId:     r.GetWorkerId(),
		LeaseToken:   r.GetLeaseToken(),
		StartedAtMs:  r.GetStartedAtMs(),
		FinishedAtMs: r.GetFinishedAtMs(),
		ExitCode:     r.GetExitCode(),
		Error:        cutUTF8(r.GetError(), maxSummaryError),
		LeaseExpired: r.GetLeaseExpired(),
	}
	if out := r.GetOutput(); len(out) > 0 {
		if len(out) > maxSummaryOutput {
			out = out[len(out)-maxSummaryOutput:]
		}
		sum.OutputTail = append([]byte(nil), out...) // a copy: the full output is not kept alive
	}
	return sum
}

// cutUTF8 cuts s to at most n bytes at a rune boundary (strings in protos
// must stay valid UTF-8).
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func deadReason(j *hodeiv1.Job, retryable bool) string {
	switch {
	case !retryable:
		return DeadNotRetryable
	case j.GetLastResult().GetLeaseExpired():
		return DeadLeaseExpired
	}
	return DeadExhausted
}

// die moves a non-terminal job to DEAD at now and enforces its tenant's bound.
func (s *state) die(j *hodeiv1.Job, reason string, now int64) {
	switch j.GetState() {
	case hodeiv1.JobState_JOB_STATE_RUNNING:
		s.clearLease(j)
	case hodeiv1.JobState_JOB_STATE_PENDING:
		s.unqueue(j)
	}
	s.setState(j, hodeiv1.JobState_JOB_STATE_DEAD)
	j.FinishedAtMs = now
	j.UpdatedAtMs = now
	j.DeadAtMs = now
	j.DeadReason = reason
	if j.GetScheduleId() != "" {
		s.scheduledJobFinished(j, now) // a buffer-one slot waits for this run
	}
	k := timeKey{now, j.GetSeq()}
	s.dead.ReplaceOrInsert(k)
	t := s.tenant(j.GetSpec().GetTenant(), false)
	if t.dead == nil {
		t.dead = newTimeTree()
	}
	t.dead.ReplaceOrInsert(k)
	for t.dead.Len() > s.cfg.MaxDeadPerTenant {
		oldest, _ := t.dead.Min()
		s.removeDead(s.jobs[oldest.seq], EvictBound)
	}
}

// removeDead removes a DEAD job and records the eviction.
func (s *state) removeDead(j *hodeiv1.Job, cause string) {
	if j == nil || j.GetState() != hodeiv1.JobState_JOB_STATE_DEAD {
		panic(fmt.Sprintf("fsm: dead timeline holds a job that is not DEAD (%v)", j.GetId()))
	}
	s.unlinkDead(j)
	tn := j.GetSpec().GetTenant()
	s.removeJob(j)
	s.evicted = append(s.evicted, DeadEviction{Tenant: tn, JobID: j.GetId(), Cause: cause})
}

// unlinkDead takes a DEAD job off the dead timelines.
func (s *state) unlinkDead(j *hodeiv1.Job) {
	k := timeKey{j.GetDeadAtMs(), j.GetSeq()}
	s.dead.Delete(k)
	if t := s.tenant(j.GetSpec().GetTenant(), false); t != nil && t.dead != nil {
		t.dead.Delete(k)
		if t.dead.Len() == 0 {
			t.dead = nil
		}
	}
}

// gcDead removes up to max DEAD jobs that died more than DeadRetentionMs
// before now, oldest first.
func (s *state) gcDead(now int64, max uint32) uint32 {
	if s.cfg.DeadRetentionMs == 0 || max == 0 {
		return 0
	}
	cutoff := now - s.cfg.DeadRetentionMs
	var victims []uint64
	s.dead.Ascend(func(k timeKey) bool {
		if k.at >= cutoff || uint32(len(victims)) >= max {
			return false
		}
		victims = append(victims, k.seq)
		return true
	})
	for _, seq := range victims {
		s.removeDead(s.jobs[seq], EvictRetention)
	}
	return uint32(len(victims))
}

func retryable(st hodeiv1.JobState) bool {
	return st == hodeiv1.JobState_JOB_STATE_DEAD || st == hodeiv1.JobState_JOB_STATE_FAILED || st == hodeiv1.JobState_JOB_STATE_CANCELLED
}

// applyRetryJobs puts one job (by id) or the matching DEAD jobs back.
func (s *state) applyRetryJobs(now int64, c *internalpb.RetryJobs) *internalpb.CommandResult {
	if s.curVersion < EntryVersionSemantics {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "retry_jobs needs an entry of version %d, this one has version %d", EntryVersionSemantics, s.curVersion)
	}
	if id := c.GetJobId(); id != "" {
		if c.GetTenant() != "" || c.GetKind() != "" || c.GetSinceMs() != 0 || c.GetUntilMs() != 0 || c.GetLimit() != 0 {
			return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "retry_jobs: job_id and a filter are exclusive")
		}
		j, ok := s.lookup(id)
		if !ok {
			return errResult(internalpb.Code_CODE_NOT_FOUND, "job %s not found", id)
		}
		if !retryable(j.GetState()) {
			return errResult(internalpb.Code_CODE_FAILED_PRECONDITION, "job %s is %s: only DEAD, FAILED or CANCELLED jobs can be retried", j.GetId(), stateName(j.GetState()))
		}
		s.revive(j, now)
		return &internalpb.CommandResult{Job: cloneJob(j)}
	}
	if err := ValidateRequeue(c.GetTenant(), c.GetKind(), c.GetSinceMs(), c.GetUntilMs(), c.GetLimit()); err != nil {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "retry_jobs: %v", err)
	}
	tl := s.dead
	if c.GetTenant() != "" {
		t := s.tenant(c.GetTenant(), false)
		if t == nil || t.dead == nil {
			return &internalpb.CommandResult{}
		}
		tl = t.dead
	}
	var picked []uint64
	tl.AscendGreaterOrEqual(timeKey{c.GetSinceMs(), 0}, func(k timeKey) bool {
		if c.GetUntilMs() != 0 && k.at >= c.GetUntilMs() {
			return false
		}
		if kind := c.GetKind(); kind == "" || JobKind(s.jobs[k.seq].GetSpec()) == kind {
			picked = append(picked, k.seq)
		}
		return uint32(len(picked)) < c.GetLimit()
	})
	for _, seq := range picked {
		s.revive(s.jobs[seq], now)
	}
	return &internalpb.CommandResult{Count: uint32(len(picked))}
}

// revive moves a DEAD, FAILED or CANCELLED job back to PENDING, at the head
// of its priority in its tenant's ready queue (it keeps its seq). ready_at
// is the last promote time (<= now), so that isDelayed says "ready" for it
// after a snapshot restore too.
func (s *state) revive(j *hodeiv1.Job, now int64) {
	from := j.GetState()
	if from == hodeiv1.JobState_JOB_STATE_DEAD {
		s.unlinkDead(j)
	} else {
		s.finished.Delete(timeKey{j.GetFinishedAtMs(), j.GetSeq()})
	}
	t := s.tenant(j.GetSpec().GetTenant(), false)
	to := hodeiv1.JobState_JOB_STATE_PENDING
	// The one transition out of a terminal state (setState refuses them).
	s.byState[from].Delete(j.GetSeq())
	t.byState[from].Delete(j.GetSeq())
	s.byState[to].ReplaceOrInsert(j.GetSeq())
	if t.byState[to] == nil {
		t.byState[to] = newSeqTree()
	}
	t.byState[to].ReplaceOrInsert(j.GetSeq())
	j.State = to
	s.events = append(s.events, Event{Index: s.curIndex, JobID: j.GetId(), Tenant: t.name, From: from, To: to})

	j.Attempts = 0
	j.Retries++
	j.DeadAtMs = 0
	j.DeadReason = ""
	j.FinishedAtMs = 0
	j.CancelReason = ""
	j.UpdatedAtMs = now
	j.ReadyAtMs = s.lastPromoteMs
	s.sched.push(t, j)
}

// DeadCounts returns the number of DEAD jobs per tenant in this shard.
func (f *FSM) DeadCounts() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]int)
	for name, t := range f.st.tenants {
		if t.dead != nil {
			out[name] = t.dead.Len()
		}
	}
	return out
}

// hasSemanticsState reports whether a job carries issue 11 state, which
// only a version 4 snapshot represents.
func hasSemanticsState(j *hodeiv1.Job) bool {
	return j.GetState() == hodeiv1.JobState_JOB_STATE_DEAD || len(j.GetHistory()) > 0 || j.GetRetries() != 0 ||
		j.GetDeadAtMs() != 0 || j.GetDeadReason() != ""
}

// OldestDeadAt is when the longest-dead DEAD job of the shard died.
func (f *FSM) OldestDeadAt() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.st.dead.Min()
	return k.at, ok
}
