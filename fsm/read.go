package fsm

import (
	"sort"

	"github.com/google/btree"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Read methods take the read lock and return deep clones: callers may keep
// and modify them.

const (
	// DefaultListLimit is used by ListJobs when limit <= 0.
	DefaultListLimit = 100
	// MaxListLimit caps ListJobs' limit.
	MaxListLimit = 10000
)

// Stats are the FSM's counters.
type Stats struct {
	Jobs, Ready, Delayed, Running, Succeeded, Failed, Cancelled int
	Dead                                                        int // issue 11
	Tenants                                                     int
	AppliedIndex                                                uint64
	LastNowMs                                                   int64
}

// GetJob returns a copy of the job with this id.
func (f *FSM) GetJob(id string) (*hodeiv1.Job, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	j, ok := f.st.lookup(id)
	if !ok {
		return nil, false
	}
	return cloneJob(j), true
}

// ListJobs returns up to limit jobs with seq > afterSeq, in seq order,
// filtered by tenant ("" = all) and state (UNSPECIFIED = all), using the
// tenant and state indexes. nextAfterSeq is the seq to pass to get the next
// page, or 0 when there are no more.
func (f *FSM) ListJobs(tenant string, state hodeiv1.JobState, afterSeq uint64, limit int) ([]*hodeiv1.Job, uint64) {
	if limit <= 0 {
		limit = DefaultListLimit
	}
	if limit > MaxListLimit {
		limit = MaxListLimit
	}
	if state < hodeiv1.JobState_JOB_STATE_UNSPECIFIED || int(state) >= numStates {
		return nil, 0
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st
	var trees []*btree.BTreeG[uint64]
	var src *[numStates]*btree.BTreeG[uint64]
	if tenant == "" {
		src = &s.byState
	} else {
		t := s.tenants[tenant]
		if t == nil {
			return nil, 0
		}
		src = &t.byState
	}
	if state != hodeiv1.JobState_JOB_STATE_UNSPECIFIED {
		trees = append(trees, src[state])
	} else {
		trees = append(trees, src[1:]...)
	}
	// Take up to limit+1 seqs > afterSeq from each tree and merge.
	var seqs []uint64
	for _, tr := range trees {
		if tr == nil {
			continue
		}
		n := 0
		tr.AscendGreaterOrEqual(afterSeq+1, func(seq uint64) bool {
			seqs = append(seqs, seq)
			n++
			return n <= limit
		})
	}
	if len(trees) > 1 {
		sort.Slice(seqs, func(a, b int) bool { return seqs[a] < seqs[b] })
	}
	var next uint64
	if len(seqs) > limit {
		seqs = seqs[:limit]
		next = seqs[limit-1]
	}
	out := make([]*hodeiv1.Job, len(seqs))
	for i, seq := range seqs {
		out[i] = cloneJob(s.jobs[seq])
	}
	return out, next
}

// Stats returns the FSM's counters (exact).
func (f *FSM) Stats() Stats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st
	return Stats{
		Jobs:         len(s.jobs),
		Ready:        s.sched.ready,
		Delayed:      s.delayed.Len(),
		Running:      s.byState[hodeiv1.JobState_JOB_STATE_RUNNING].Len(),
		Succeeded:    s.byState[hodeiv1.JobState_JOB_STATE_SUCCEEDED].Len(),
		Failed:       s.byState[hodeiv1.JobState_JOB_STATE_FAILED].Len(),
		Cancelled:    s.byState[hodeiv1.JobState_JOB_STATE_CANCELLED].Len(),
		Dead:         s.byState[hodeiv1.JobState_JOB_STATE_DEAD].Len(),
		Tenants:      len(s.tenants),
		AppliedIndex: s.appliedIndex,
		LastNowMs:    s.lastNowMs,
	}
}

// ReadyCount is the number of jobs leasable now (PENDING and not delayed).
func (f *FSM) ReadyCount() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.sched.ready
}

// HasReadyFor reports whether a worker with these labels and kinds (empty =
// every kind) would be leased a job now. Bounded: at most maxSkipScan queue
// entries per tenant with ready jobs, the same bound LeaseJobs uses.
func (f *FSM) HasReadyFor(labels []*hodeiv1.KeyValue, kinds []string) bool {
	return f.HasReadyForTenants(labels, kinds, nil)
}

// HasReadyForTenants is HasReadyFor for a worker limited to tenants (nil or
// empty: every tenant), as a worker token limits it (auth, issue 12).
func (f *FSM) HasReadyForTenants(labels []*hodeiv1.KeyValue, kinds []string, tenants []string) bool {
	ls := newMatcher(labels, kinds).withTenants(tenants)
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.hasReadyFor(ls)
}

// NextDelayedAt returns the earliest ready_at_ms among delayed PENDING jobs.
func (f *FSM) NextDelayedAt() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.st.delayed.Min()
	return k.at, ok
}

// ExpiredLeases returns up to max leases of RUNNING jobs whose
// lease_expires_at_ms <= nowMs, earliest expiry first.
func (f *FSM) ExpiredLeases(nowMs int64, max int) []*hodeiv1.LeaseRef {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []*hodeiv1.LeaseRef
	if max <= 0 {
		return nil
	}
	f.st.leases.Ascend(func(k timeKey) bool {
		if k.at > nowMs {
			return false
		}
		j := f.st.jobs[k.seq]
		out = append(out, &hodeiv1.LeaseRef{JobId: j.GetId(), Token: j.GetLeaseToken()})
		return len(out) < max
	})
	return out
}

// NextLeaseExpiry returns the earliest lease_expires_at_ms of RUNNING jobs.
func (f *FSM) NextLeaseExpiry() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.st.leases.Min()
	return k.at, ok
}

// OldestFinishedAt returns the earliest finished_at_ms among terminal jobs.
func (f *FSM) OldestFinishedAt() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.st.finished.Min()
	return k.at, ok
}

// AppliedIndex is the index of the last applied log entry.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.appliedIndex
}

// oldestReadyScan bounds OldestReadySince's walk over PENDING jobs in seq
// order.
const oldestReadyScan = 64

// OldestReadySince is the earliest time a job that is leasable now became
// leasable (the later of its creation and its ready time, entry-time ms),
// among the oldestReadyScan PENDING jobs submitted first; ok is false when
// none of those is leasable. A queue age for alerting, in bounded work: a
// job submitted later that waited longer (behind many delayed or retried
// older ones) is not seen, so the age can only be under-estimated.
func (f *FSM) OldestReadySince() (ms int64, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st
	steps := 0
	s.byState[hodeiv1.JobState_JOB_STATE_PENDING].Ascend(func(seq uint64) bool {
		steps++
		j := s.jobs[seq]
		if r := j.GetReadyAtMs(); r <= s.lastNowMs {
			since := max(j.GetCreatedAtMs(), r)
			if !ok || since < ms {
				ms, ok = since, true
			}
		}
		return steps < oldestReadyScan
	})
	return ms, ok
}
