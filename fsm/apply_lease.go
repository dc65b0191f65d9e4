package fsm

import (
	"fmt"

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

// MaxLeaseDemands bounds the demands of one LeaseBatch.
const MaxLeaseDemands = 1000

// checkLease validates one lease demand.
func (s *state) checkLease(c *internalpb.LeaseJobs) *internalpb.CommandResult {
	if c.GetWorkerId() == "" {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: worker_id is empty")
	}
	if c.GetCapacity() < 1 || c.GetCapacity() > MaxLeaseCapacity {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: capacity %d is outside 1..%d", c.GetCapacity(), MaxLeaseCapacity)
	}
	if c.GetTtlMs() < 0 {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: ttl_ms is negative (%d)", c.GetTtlMs())
	}
	if len(c.GetKinds()) > 0 && s.curVersion < EntryVersionDispatch {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: kinds need an entry of version %d, this one has version %d", EntryVersionDispatch, s.curVersion)
	}
	for _, k := range c.GetKinds() {
		if err := ValidateKind(k); err != nil {
			return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease: %v", err)
		}
	}
	return s.checkLeaseTenants(c) // auth (issue 12), meta_tokens.go
}

// applyLease pops up to capacity ready jobs the worker may run, by fair
// share over tenants, and leases each with a fresh token.
func (s *state) applyLease(now int64, c *internalpb.LeaseJobs) *internalpb.CommandResult {
	if bad := s.checkLease(c); bad != nil {
		return bad
	}
	return &internalpb.CommandResult{Leases: s.grant(now, c)}
}

// applyLeaseBatch serves every demand in order, each as a LeaseJobs would
// be. Validation is all or nothing: one bad demand rejects the command.
func (s *state) applyLeaseBatch(now int64, c *internalpb.LeaseBatch) *internalpb.CommandResult {
	if s.curVersion < EntryVersionDispatch {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease_batch needs an entry of version %d, this one has version %d", EntryVersionDispatch, s.curVersion)
	}
	ds := c.GetDemands()
	if len(ds) == 0 || len(ds) > MaxLeaseDemands {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "lease_batch: %d demands, want 1..%d", len(ds), MaxLeaseDemands)
	}
	for i, d := range ds {
		if bad := s.checkLease(d); bad != nil {
			bad.Message = fmt.Sprintf("demand %d: %s", i, bad.GetMessage())
			return bad
		}
	}
	out := &internalpb.CommandResult{Grants: make([]*hodeiv1.LeaseGrant, len(ds))}
	for i, d := range ds {
		out.Grants[i] = &hodeiv1.LeaseGrant{WorkerId: d.GetWorkerId(), Leases: s.grant(now, d)}
	}
	return out
}

// grant leases up to c.capacity ready jobs to c's worker.
func (s *state) grant(now int64, c *internalpb.LeaseJobs) []*hodeiv1.Lease {
	ttl := s.leaseTTL(c.GetTtlMs())
	picked := s.pickReady(int(c.GetCapacity()), newMatcher(c.GetLabels(), c.GetKinds()).withTenants(c.GetTenants()))
	out := make([]*hodeiv1.Lease, 0, len(picked))
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
		out = append(out, &hodeiv1.Lease{
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
		s.keepAttempt(j)
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
