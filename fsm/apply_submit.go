package fsm

import (
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// applySubmit validates every spec first; one invalid spec rejects the whole
// command and nothing changes. Then each spec either matches an existing
// (tenant, idempotency key) and returns that job with duplicate=true, or is
// refused on its own by a tenant limit (quota.go: code and reason in its
// result, nothing stored), or creates a new PENDING job.
func (s *state) applySubmit(now int64, c *internalpb.SubmitJobs) *internalpb.CommandResult {
	specs := c.GetSpecs()
	if len(specs) == 0 {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "submit has no specs")
	}
	norm := make([]*hodeiv1.JobSpec, len(specs))
	for i, sp := range specs {
		if s.curVersion < EntryVersionDispatch && (sp.GetKind() != "" || len(sp.GetPayload()) > 0) {
			// What a binary that predates kinds would not store: refused.
			return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "spec %d: kind and payload need an entry of version %d, this one has version %d", i, EntryVersionDispatch, s.curVersion)
		}
		if s.curVersion < EntryVersionSemantics && len(sp.GetConstraints()) > 0 {
			return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "spec %d: constraints need an entry of version %d, this one has version %d", i, EntryVersionSemantics, s.curVersion)
		}
		n, err := NormalizeSpec(sp, s.cfg)
		if err != nil {
			return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "spec %d: %v", i, err)
		}
		norm[i] = n
	}
	out := &internalpb.CommandResult{Submitted: make([]*hodeiv1.SubmitJobResponse, len(norm))}
	for i, sp := range norm {
		if k := sp.GetIdempotencyKey(); k != "" {
			if seq, ok := s.idem[idemKey(sp.GetTenant(), k)]; ok {
				out.Submitted[i] = &hodeiv1.SubmitJobResponse{Job: cloneJob(s.jobs[seq]), Duplicate: true}
				continue
			}
		}
		if why := s.admit(now, sp.GetTenant()); why != "" {
			out.Submitted[i] = &hodeiv1.SubmitJobResponse{Code: codeResourceExhaust, Reason: why}
			continue
		}
		j := s.createJob(now, sp)
		out.Submitted[i] = &hodeiv1.SubmitJobResponse{Job: cloneJob(j)}
	}
	return out
}

func (s *state) createJob(now int64, sp *hodeiv1.JobSpec) *hodeiv1.Job {
	seq := s.nextSeq
	s.nextSeq++
	j := &hodeiv1.Job{
		Id:          FormatJobID(s.cfg.Shard, seq),
		Spec:        sp,
		Shard:       s.cfg.Shard,
		Seq:         seq,
		CreatedAtMs: now,
		UpdatedAtMs: now,
		ReadyAtMs:   satAdd(now, sp.GetDelayMs()),
	}
	s.jobs[seq] = j
	t := s.tenant(sp.GetTenant(), true)
	t.jobs++
	if k := sp.GetIdempotencyKey(); k != "" {
		s.idem[idemKey(sp.GetTenant(), k)] = seq
	}
	s.setState(j, hodeiv1.JobState_JOB_STATE_PENDING)
	if sp.GetDelayMs() > 0 {
		s.delayed.ReplaceOrInsert(timeKey{j.GetReadyAtMs(), seq})
	} else {
		s.sched.push(t, j)
	}
	return j
}

// applyPromote moves every delayed job with ready_at <= now to its ready
// queue, in (ready_at, seq) order.
func (s *state) applyPromote(now int64) *internalpb.CommandResult {
	var due []timeKey
	s.delayed.Ascend(func(k timeKey) bool {
		if k.at > now {
			return false
		}
		due = append(due, k)
		return true
	})
	for _, k := range due {
		s.delayed.Delete(k)
		j := s.jobs[k.seq]
		s.sched.push(s.tenant(j.GetSpec().GetTenant(), false), j)
		// PENDING -> PENDING: not a state change, but it tells listeners
		// (workers' long-polls) that a job became leasable.
		s.events = append(s.events, Event{Index: s.curIndex, JobID: j.GetId(), Tenant: j.GetSpec().GetTenant(),
			Kind: j.GetSpec().GetKind(), NowMs: s.lastNowMs, From: hodeiv1.JobState_JOB_STATE_PENDING, To: hodeiv1.JobState_JOB_STATE_PENDING})
	}
	s.lastPromoteMs = now
	return &internalpb.CommandResult{Count: uint32(len(due))}
}

// applyGC removes up to max terminal jobs that finished before the cutoff,
// oldest first, with their idempotency keys and index entries.
func (s *state) applyGC(c *internalpb.GCJobs) *internalpb.CommandResult {
	if c.GetMax() == 0 {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "gc max must be > 0")
	}
	var victims []timeKey
	s.finished.Ascend(func(k timeKey) bool {
		if k.at >= c.GetFinishedBeforeMs() || uint32(len(victims)) >= c.GetMax() {
			return false
		}
		victims = append(victims, k)
		return true
	})
	for _, k := range victims {
		s.finished.Delete(k)
		s.removeJob(s.jobs[k.seq])
	}
	return &internalpb.CommandResult{Count: uint32(len(victims))}
}

func (s *state) removeJob(j *hodeiv1.Job) {
	seq := j.GetSeq()
	tn := j.GetSpec().GetTenant()
	t := s.tenant(tn, false)
	st := j.GetState()
	s.byState[st].Delete(seq)
	t.byState[st].Delete(seq)
	if t.byState[st].Len() == 0 {
		t.byState[st] = nil
	}
	if k := j.GetSpec().GetIdempotencyKey(); k != "" {
		ik := idemKey(tn, k)
		if s.idem[ik] == seq {
			delete(s.idem, ik)
		}
	}
	delete(s.jobs, seq)
	t.jobs--
	if t.jobs == 0 {
		delete(s.tenants, tn)
	}
	s.events = append(s.events, Event{Index: s.curIndex, JobID: j.GetId(), Tenant: tn, Kind: j.GetSpec().GetKind(), NowMs: s.lastNowMs, From: st})
}
