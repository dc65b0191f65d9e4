package fsm

import (
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// MaxLeaseCapacity bounds LeaseJobs.capacity.
const MaxLeaseCapacity = 1000

// leaseTTL applies the default and the clamp to a requested TTL.
func (s *state) leaseTTL(ttl int64) int64 {
	if ttl == 0 {
		ttl = s.cfg.DefaultLeaseTTLMs
	}
	if ttl > s.cfg.MaxLeaseTTLMs {
		ttl = s.cfg.MaxLeaseTTLMs
	}
	return ttl
}

// applyLease pops up to capacity ready jobs the worker may run, by fair
// share over tenants, and leases each with a fresh token.
func (s *state) applyLease(now int64, c *internalpb.LeaseJobs) *internalpb.CommandResult {
	if c.GetWorkerId() == "" {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: worker_id is empty")
	}
	if c.GetCapacity() < 1 || c.GetCapacity() > MaxLeaseCapacity {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: capacity %d is outside 1..%d", c.GetCapacity(), MaxLeaseCapacity)
	}
	if c.GetTtlMs() < 0 {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: ttl_ms is negative (%d)", c.GetTtlMs())
	}
	ttl := s.leaseTTL(c.GetTtlMs())
	picked := s.pickReady(int(c.GetCapacity()), newLabelSet(c.GetLabels()))
	out := &internalpb.CommandResult{Leases: make([]*hodeiv1.Lease, 0, len(picked))}
	for _, j := range picked {
		s.nextToken++
		j.Attempts++
		if j.GetAttempts() > j.GetSpec().GetMaxAttempts() {
			panic("fsm: job " + j.GetId() + " leased beyond max_attempts")
		}
		s.setState(j, hodeiv1.JobState_JOB_STATE_RUNNING)
		j.LeaseToken = s.nextToken
		j.LeaseWorker = c.GetWorkerId()
		j.LeaseExpiresAtMs = satAdd(now, ttl)
		j.UpdatedAtMs = now
		s.leases.ReplaceOrInsert(timeKey{j.GetLeaseExpiresAtMs(), j.GetSeq()})
		out.Leases = append(out.Leases, &hodeiv1.Lease{
			Job:         cloneJob(j),
			Token:       j.GetLeaseToken(),
			ExpiresAtMs: j.GetLeaseExpiresAtMs(),
			TtlMs:       ttl,
		})
	}
	return out
}

// applyExtend renews each lease whose job is RUNNING under the same token
// (and the same worker, when worker_id is given).
func (s *state) applyExtend(now int64, c *internalpb.ExtendLeases) *internalpb.CommandResult {
	if c.GetTtlMs() < 0 {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "extend: ttl_ms is negative (%d)", c.GetTtlMs())
	}
	ttl := s.leaseTTL(c.GetTtlMs())
	out := &internalpb.CommandResult{Extended: make([]*hodeiv1.ExtendResult, len(c.GetLeases()))}
	for i, ref := range c.GetLeases() {
		r := &hodeiv1.ExtendResult{JobId: ref.GetJobId()}
		out.Extended[i] = r
		j, ok := s.lookup(ref.GetJobId())
		switch {
		case !ok:
			r.Reason = "not found"
		case j.GetState() == hodeiv1.JobState_JOB_STATE_CANCELLED:
			r.Reason = "job cancelled"
		case j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING:
			r.Reason = "not running"
		case j.GetLeaseToken() != ref.GetToken():
			r.Reason = "stale token"
		case c.GetWorkerId() != "" && j.GetLeaseWorker() != c.GetWorkerId():
			r.Reason = "leased by another worker"
		default:
			s.leases.Delete(timeKey{j.GetLeaseExpiresAtMs(), j.GetSeq()})
			j.LeaseExpiresAtMs = satAdd(now, ttl)
			j.UpdatedAtMs = now
			s.leases.ReplaceOrInsert(timeKey{j.GetLeaseExpiresAtMs(), j.GetSeq()})
			r.Ok = true
			r.ExpiresAtMs = j.GetLeaseExpiresAtMs()
		}
	}
	return out
}

// applyExpire expires each listed lease that is still current and due.
func (s *state) applyExpire(now int64, c *internalpb.ExpireLeases) *internalpb.CommandResult {
	n := uint32(0)
	for _, ref := range c.GetLeases() {
		j, ok := s.lookup(ref.GetJobId())
		if !ok || j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING ||
			j.GetLeaseToken() != ref.GetToken() || j.GetLeaseExpiresAtMs() > now {
			continue
		}
		j.LastResult = &hodeiv1.JobResult{
			Error:        "lease expired",
			LeaseExpired: true,
			WorkerId:     j.GetLeaseWorker(),
			FinishedAtMs: now,
			LeaseToken:   j.GetLeaseToken(),
			Attempt:      j.GetAttempts(),
		}
		s.retryOrFail(j, true, now)
		n++
	}
	return &internalpb.CommandResult{Count: n}
}
