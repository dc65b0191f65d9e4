package fsm

import (
	"errors"
	"fmt"
	"sort"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// MaxTenantWeight bounds a tenant's fair-share weight (1..MaxTenantWeight).
const MaxTenantWeight = 1000

// ErrInvalidTenantSetting is wrapped by ValidateTenantWeight errors.
var ErrInvalidTenantSetting = errors.New("invalid tenant setting")

// ValidateTenantWeight checks a tenant setting: a tenant name as jobs carry
// it ([A-Za-z0-9._-]+, at most MaxNameBytes; "default" is the tenant of
// jobs that name none) and a weight in 1..MaxTenantWeight. The meta group,
// the shards and the API all check with it.
func ValidateTenantWeight(tenant string, weight uint32) error {
	switch {
	case tenant == "":
		return fmt.Errorf("%w: tenant is required", ErrInvalidTenantSetting)
	case len(tenant) > MaxNameBytes:
		return fmt.Errorf("%w: tenant is %d bytes, limit is %d", ErrInvalidTenantSetting, len(tenant), MaxNameBytes)
	case !validTenant(tenant):
		return fmt.Errorf("%w: tenant %q must match [A-Za-z0-9._-]+", ErrInvalidTenantSetting, tenant)
	case weight < 1 || weight > MaxTenantWeight:
		return fmt.Errorf("%w: weight %d is outside 1..%d", ErrInvalidTenantSetting, weight, MaxTenantWeight)
	}
	return nil
}

// EntryVersionFor is the version an entry carrying cmds must have: the
// oldest that understands all of them, so that ordinary entries stay
// readable by the previous release during a rolling upgrade.
func EntryVersionFor(cmds []*internalpb.Command) uint32 {
	if needsTenantLeaseVersion(cmds) { // auth (issue 12)
		return EntryVersionTenantLeases
	}
	v := uint32(EntryVersion)
	for _, c := range cmds {
		if isPipelineCommand(c) || scheduleWriteWithRequestID(c) {
			return EntryVersionPipelines
		}
	}
	for _, c := range cmds {
		if needsSemanticsVersion(c) {
			return EntryVersionSemantics
		}
		if needsDispatchVersion(c) {
			v = EntryVersionDispatch
			continue
		}
		if c.GetSetTenantWeight() != nil && v < EntryVersionTenantWeights {
			v = EntryVersionTenantWeights
		}
	}
	return v
}

// scheduleWriteWithRequestID reports whether c is a schedule write (not
// the leader's FireSchedules) with a request id: its request record keeps
// the schedule and the jobs it made (REQUEST_KIND_SCHEDULE), which only
// entries of version 5 do.
func scheduleWriteWithRequestID(c *internalpb.Command) bool {
	return c.GetRequestId() != "" && isScheduleCommand(c) && c.GetFireSchedules() == nil
}

// needsSemanticsVersion reports whether c uses anything of entry version 4
// (issue 11: the schedule commands, SetTenantLimits, a spec with
// constraints, RetryJobs).
func needsSemanticsVersion(c *internalpb.Command) bool {
	if isScheduleCommand(c) || c.GetRetryJobs() != nil {
		return true
	}
	switch k := c.GetKind().(type) {
	case *internalpb.Command_SetTenantLimits:
		return true
	case *internalpb.Command_Submit:
		for _, sp := range k.Submit.GetSpecs() {
			if len(sp.GetConstraints()) > 0 {
				return true
			}
		}
	}
	return false
}

// needsDispatchVersion reports whether c uses anything of entry version 3.
func needsDispatchVersion(c *internalpb.Command) bool {
	switch k := c.GetKind().(type) {
	case *internalpb.Command_LeaseBatch, *internalpb.Command_CompleteJobs:
		return true
	case *internalpb.Command_Lease:
		return len(k.Lease.GetKinds()) > 0
	case *internalpb.Command_Submit:
		for _, sp := range k.Submit.GetSpecs() {
			if sp.GetKind() != "" || len(sp.GetPayload()) > 0 {
				return true
			}
		}
	}
	return false
}

// applySetTenantWeight sets a tenant's fair-share weight (its DRR quantum).
// Only weights other than 1 are stored. A tenant in the middle of its turn
// keeps at most its new quantum of credit.
func (s *state) applySetTenantWeight(c *internalpb.SetTenantWeight) *internalpb.CommandResult {
	if s.curVersion < EntryVersionTenantWeights {
		// What a binary that predates the command does with it (an empty
		// command): rejected, nothing changes. Proposers put it in a
		// version 2 entry, which such a binary refuses loudly instead.
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "set_tenant_weight needs an entry of version %d, this one has version %d", EntryVersionTenantWeights, s.curVersion)
	}
	if err := ValidateTenantWeight(c.GetTenant(), c.GetWeight()); err != nil {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "%v", err)
	}
	w := int64(c.GetWeight())
	if w == 1 {
		delete(s.sched.weights, c.GetTenant())
	} else {
		s.sched.weights[c.GetTenant()] = w
	}
	if t := s.tenants[c.GetTenant()]; t != nil && t.deficit > w {
		t.deficit = w
	}
	return &internalpb.CommandResult{}
}

// sortedWeights returns the stored weights (tenants of weight != 1), sorted
// by tenant.
func (s *state) sortedWeights() []*internalpb.TenantSettings {
	out := make([]*internalpb.TenantSettings, 0, len(s.sched.weights))
	for name, w := range s.sched.weights { // order fixed by the sort below
		out = append(out, &internalpb.TenantSettings{Tenant: name, Weight: uint32(w)})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].GetTenant() < out[b].GetTenant() })
	return out
}

// TenantWeight is the fair-share weight this shard applies to tenant (1
// unless set).
func (f *FSM) TenantWeight(tenant string) uint32 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return uint32(f.st.sched.weight(tenant))
}

// TenantWeights returns the weights other than 1 this shard applies, by
// tenant (a copy).
func (f *FSM) TenantWeights() map[string]uint32 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]uint32, len(f.st.sched.weights))
	for name, w := range f.st.sched.weights {
		out[name] = uint32(w)
	}
	return out
}
