package fsm

import (
	"fmt"
	"math"
	"sort"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Tenant quotas (issue 11). Each tenant's jobs live in one shard (ShardOf),
// so the shard's FSM enforces the tenant's limits alone, deterministically:
//
//   - max_queued: a submit of a new job is refused while the tenant has
//     max_queued PENDING jobs (ready or delayed) in the shard;
//   - submit_rate_milli and burst: a token bucket of burst jobs refilled at
//     submit_rate_milli/1000 jobs per second of replicated time (the
//     entries' stamped now_ms); each new job takes one token, and a submit
//     finding less than one is refused;
//   - max_running: leases stop giving the tenant jobs while it has
//     max_running RUNNING jobs; other tenants' jobs are leased as before
//     (see pickReady).
//
// A refused submit stores nothing for that spec and counts the refusal.
// In a batch each spec is decided on its own, in order (specs before it
// count toward the queue and use tokens first): the spec's result carries
// code RESOURCE_EXHAUSTED and the reason, the others are stored. A spec
// that matches an existing job by idempotency key is a duplicate, never
// refused, and uses no token. The bucket is integer arithmetic in
// millionths of a job, so replicas agree bit for bit and a restored
// snapshot continues the same sequence.

// SetTenantLimits and a spec with constraints need an entry of version
// EntryVersionSemantics (fsm.go); in an older entry they are rejected, as
// a binary that predates them would. Quota state is in snapshots of
// version snapshotVersionSemantics, written only when there is some.

// Limit ranges.
const (
	MaxQueuedLimit      = 100_000_000
	MaxRunningLimit     = 1_000_000
	MaxSubmitRateMilli  = 1_000_000_000 // 1,000,000 jobs/s
	MaxBurstLimit       = 1_000_000
	microPerJob         = 1_000_000
	codeResourceExhaust = "RESOURCE_EXHAUSTED"
)

// ValidateTenantLimits checks limits (nil = no limits). Errors wrap
// ErrInvalidTenantSetting and name the field as the CLI flag.
func ValidateTenantLimits(l *hodeiv1.TenantLimits) error {
	switch {
	case l.GetMaxQueued() > MaxQueuedLimit:
		return fmt.Errorf("%w: max-queued %d is outside 0..%d", ErrInvalidTenantSetting, l.GetMaxQueued(), MaxQueuedLimit)
	case l.GetMaxRunning() > MaxRunningLimit:
		return fmt.Errorf("%w: max-running %d is outside 0..%d", ErrInvalidTenantSetting, l.GetMaxRunning(), MaxRunningLimit)
	case l.GetSubmitRateMilli() > MaxSubmitRateMilli:
		return fmt.Errorf("%w: submit-rate %s/s is outside 0..%d/s", ErrInvalidTenantSetting, FormatRate(l.GetSubmitRateMilli()), MaxSubmitRateMilli/1000)
	case l.GetBurst() > MaxBurstLimit:
		return fmt.Errorf("%w: burst %d is outside 1..%d", ErrInvalidTenantSetting, l.GetBurst(), MaxBurstLimit)
	case l.GetSubmitRateMilli() > 0 && l.GetBurst() == 0:
		return fmt.Errorf("%w: burst must be 1..%d with a submit-rate", ErrInvalidTenantSetting, MaxBurstLimit)
	case l.GetSubmitRateMilli() == 0 && l.GetBurst() != 0:
		return fmt.Errorf("%w: burst %d needs a submit-rate", ErrInvalidTenantSetting, l.GetBurst())
	}
	return nil
}

// LimitsEmpty reports whether l sets no limit.
func LimitsEmpty(l *hodeiv1.TenantLimits) bool {
	return l.GetMaxQueued() == 0 && l.GetMaxRunning() == 0 && l.GetSubmitRateMilli() == 0 && l.GetBurst() == 0
}

// LimitsEqual reports whether a and b set the same limits (nil = none).
func LimitsEqual(a, b *hodeiv1.TenantLimits) bool {
	return a.GetMaxQueued() == b.GetMaxQueued() && a.GetMaxRunning() == b.GetMaxRunning() &&
		a.GetSubmitRateMilli() == b.GetSubmitRateMilli() && a.GetBurst() == b.GetBurst()
}

// RateMilli converts a rate in jobs per second to thousandths, refusing
// what the bucket cannot represent exactly.
func RateMilli(perSec float64) (uint64, error) {
	if math.IsNaN(perSec) || perSec < 0 || perSec > MaxSubmitRateMilli/1000 {
		return 0, fmt.Errorf("%w: submit-rate %v/s is outside 0..%d/s", ErrInvalidTenantSetting, perSec, MaxSubmitRateMilli/1000)
	}
	m := math.Round(perSec * 1000)
	if math.Abs(m-perSec*1000) > 1e-6*math.Max(1, m) {
		return 0, fmt.Errorf("%w: submit-rate %v/s is finer than 0.001/s", ErrInvalidTenantSetting, perSec)
	}
	return uint64(m), nil
}

// FormatRate is a rate in thousandths of a job per second as a decimal.
func FormatRate(milli uint64) string {
	if milli%1000 == 0 {
		return fmt.Sprint(milli / 1000)
	}
	s := fmt.Sprintf("%d.%03d", milli/1000, milli%1000)
	for s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	return s
}

// tenantQuota is a tenant's quota state in the shard. It exists while the
// tenant has limits or has been refused (the counters outlive the limits).
type tenantQuota struct {
	limits        *hodeiv1.TenantLimits // never nil
	tokens        int64                 // millionths of a job, as of bucketMs
	bucketMs      int64
	refusedQueued uint64
	refusedRate   uint64
}

// refill brings the bucket to now.
func (q *tenantQuota) refill(now int64) {
	rate := int64(q.limits.GetSubmitRateMilli())
	if rate == 0 {
		return
	}
	capMicro := int64(q.limits.GetBurst()) * microPerJob
	if el := now - q.bucketMs; el > 0 {
		if need := capMicro - q.tokens; need <= 0 || el >= need/rate+1 {
			q.tokens = capMicro
		} else {
			q.tokens = min(capMicro, q.tokens+el*rate)
		}
	}
	q.bucketMs = now
}

// applySetTenantLimits sets a tenant's limits in this shard.
func (s *state) applySetTenantLimits(now int64, c *internalpb.SetTenantLimits) *internalpb.CommandResult {
	if s.curVersion < EntryVersionSemantics {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "set_tenant_limits needs an entry of version %d, this one has version %d", EntryVersionSemantics, s.curVersion)
	}
	if err := ValidateTenantWeight(c.GetTenant(), 1); err != nil {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "%v", err)
	}
	if err := ValidateTenantLimits(c.GetLimits()); err != nil {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "%v", err)
	}
	name := c.GetTenant()
	q := s.quotas[name]
	if q == nil {
		if LimitsEmpty(c.GetLimits()) {
			return &internalpb.CommandResult{}
		}
		q = &tenantQuota{limits: &hodeiv1.TenantLimits{}}
		s.quotas[name] = q
	}
	q.refill(now)
	hadRate := q.limits.GetSubmitRateMilli() > 0
	l := c.GetLimits()
	q.limits = &hodeiv1.TenantLimits{MaxQueued: l.GetMaxQueued(), MaxRunning: l.GetMaxRunning(), SubmitRateMilli: l.GetSubmitRateMilli(), Burst: l.GetBurst()}
	switch capMicro := int64(l.GetBurst()) * microPerJob; {
	case l.GetSubmitRateMilli() == 0:
		q.tokens, q.bucketMs = 0, 0
	case !hadRate:
		q.tokens, q.bucketMs = capMicro, now // a new bucket starts full
	default:
		q.tokens = min(q.tokens, capMicro)
	}
	if LimitsEmpty(q.limits) && q.refusedQueued == 0 && q.refusedRate == 0 {
		delete(s.quotas, name)
	}
	return &internalpb.CommandResult{}
}

// admit decides whether a new job of tenant may be stored now: "" if so
// (and its token is taken), else the reason it is refused (counted).
func (s *state) admit(now int64, tenant string) string {
	q := s.quotas[tenant]
	if q == nil {
		return ""
	}
	l := q.limits
	if mq := l.GetMaxQueued(); mq > 0 {
		if queued := s.tenantCount(tenant, hodeiv1.JobState_JOB_STATE_PENDING); queued >= int(mq) {
			q.refusedQueued++
			return fmt.Sprintf("tenant %s is at its max-queued limit of %d PENDING jobs", tenant, mq)
		}
	}
	if rate := int64(l.GetSubmitRateMilli()); rate > 0 {
		q.refill(now)
		if q.tokens < microPerJob {
			q.refusedRate++
			wait := (microPerJob - q.tokens + rate - 1) / rate
			return fmt.Sprintf("tenant %s is over its submit-rate limit of %s/s (burst %d); a token is due in %d ms",
				tenant, FormatRate(l.GetSubmitRateMilli()), l.GetBurst(), wait)
		}
		q.tokens -= microPerJob
	}
	return ""
}

// tenantCount is the number of jobs of tenant in state st.
func (s *state) tenantCount(tenant string, st hodeiv1.JobState) int {
	t := s.tenants[tenant]
	if t == nil || t.byState[st] == nil {
		return 0
	}
	return t.byState[st].Len()
}

// runningCap is how many more jobs tenant t may have leased now, given
// picked already chosen in this lease command and not yet RUNNING;
// math.MaxInt without a max_running.
func (s *state) runningCap(t *tenant) int {
	if len(s.quotas) == 0 {
		return math.MaxInt
	}
	q := s.quotas[t.name]
	if q == nil || q.limits.GetMaxRunning() == 0 {
		return math.MaxInt
	}
	running := 0
	if t.byState[hodeiv1.JobState_JOB_STATE_RUNNING] != nil {
		running = t.byState[hodeiv1.JobState_JOB_STATE_RUNNING].Len()
	}
	return max(0, int(q.limits.GetMaxRunning())-running-t.picked)
}

// sortedQuotas is the snapshot form of the quota state, sorted by tenant.
func (s *state) sortedQuotas() []*internalpb.TenantQuota {
	if len(s.quotas) == 0 {
		return nil
	}
	out := make([]*internalpb.TenantQuota, 0, len(s.quotas))
	for name, q := range s.quotas { // order fixed by the sort below
		out = append(out, &internalpb.TenantQuota{Tenant: name, Limits: q.limits, TokensMicro: q.tokens, BucketMs: q.bucketMs,
			RefusedQueued: q.refusedQueued, RefusedRate: q.refusedRate})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].GetTenant() < out[b].GetTenant() })
	return out
}

// restoreQuotas rebuilds the quota state from a snapshot's header, checking
// it is exactly what sortedQuotas writes.
func (s *state) restoreQuotas(version uint32, qs []*internalpb.TenantQuota) error {
	if version < snapshotVersionSemantics && len(qs) > 0 {
		return corrupt("tenant quotas in a version %d snapshot", version)
	}
	prev := ""
	for _, q := range qs {
		l := q.GetLimits()
		capMicro := int64(l.GetBurst()) * microPerJob
		switch {
		case ValidateTenantWeight(q.GetTenant(), 1) != nil || q.GetTenant() <= prev:
			return corrupt("tenant quota %q (after %q)", q.GetTenant(), prev)
		case ValidateTenantLimits(l) != nil:
			return corrupt("tenant quota %q: %v", q.GetTenant(), ValidateTenantLimits(l))
		case LimitsEmpty(l) && q.GetRefusedQueued() == 0 && q.GetRefusedRate() == 0:
			return corrupt("tenant quota %q holds nothing", q.GetTenant())
		case q.GetTokensMicro() < 0 || q.GetTokensMicro() > capMicro || q.GetBucketMs() > s.lastNowMs:
			return corrupt("tenant quota %q: bucket %d µjobs at %d ms", q.GetTenant(), q.GetTokensMicro(), q.GetBucketMs())
		}
		prev = q.GetTenant()
		s.quotas[q.GetTenant()] = &tenantQuota{
			limits:        &hodeiv1.TenantLimits{MaxQueued: l.GetMaxQueued(), MaxRunning: l.GetMaxRunning(), SubmitRateMilli: l.GetSubmitRateMilli(), Burst: l.GetBurst()},
			tokens:        q.GetTokensMicro(),
			bucketMs:      q.GetBucketMs(),
			refusedQueued: q.GetRefusedQueued(),
			refusedRate:   q.GetRefusedRate(),
		}
	}
	return nil
}

// TenantLimits are the limits this shard applies to tenant (nil: none).
func (f *FSM) TenantLimits(tenant string) *hodeiv1.TenantLimits {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if q := f.st.quotas[tenant]; q != nil && !LimitsEmpty(q.limits) {
		l := q.limits
		return &hodeiv1.TenantLimits{MaxQueued: l.GetMaxQueued(), MaxRunning: l.GetMaxRunning(), SubmitRateMilli: l.GetSubmitRateMilli(), Burst: l.GetBurst()}
	}
	return nil
}

// AllTenantLimits returns the limits this shard applies, by tenant (a copy).
func (f *FSM) AllTenantLimits() map[string]*hodeiv1.TenantLimits {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]*hodeiv1.TenantLimits, len(f.st.quotas))
	for name, q := range f.st.quotas {
		if !LimitsEmpty(q.limits) {
			l := q.limits
			out[name] = &hodeiv1.TenantLimits{MaxQueued: l.GetMaxQueued(), MaxRunning: l.GetMaxRunning(), SubmitRateMilli: l.GetSubmitRateMilli(), Burst: l.GetBurst()}
		}
	}
	return out
}

// TenantUsage is tenant's usage in this shard: PENDING and RUNNING jobs,
// the bucket's tokens at the last applied entry's time, and the refusals.
func (f *FSM) TenantUsage(tenant string) *hodeiv1.TenantUsage {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st
	u := &hodeiv1.TenantUsage{
		Queued:  uint64(s.tenantCount(tenant, hodeiv1.JobState_JOB_STATE_PENDING)),
		Running: uint64(s.tenantCount(tenant, hodeiv1.JobState_JOB_STATE_RUNNING)),
	}
	if q := s.quotas[tenant]; q != nil {
		u.RefusedQueued, u.RefusedRate = q.refusedQueued, q.refusedRate
		if q.limits.GetSubmitRateMilli() > 0 {
			c := *q // refill a copy: reads change nothing
			c.refill(s.lastNowMs)
			u.SubmitTokens = float64(c.tokens) / microPerJob
		}
	}
	return u
}

// QuotaTenants lists the tenants with quota state in this shard, sorted.
func (f *FSM) QuotaTenants() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]string, 0, len(f.st.quotas))
	for name := range f.st.quotas {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}
