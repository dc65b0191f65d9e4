package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Tenant fair-share weights.
//
// The meta group's tenant settings are the source of truth: SetTenant
// writes there. A weight takes effect when the tenant's shard applies a
// SetTenantWeight command, so that every replica's deficit round robin
// switches at the same log index. The two writes cannot be one atomic step
// (different Raft groups), so the shard's leader reconciles instead: it
// proposes the weight of every tenant of its shard whose weight in the
// shard differs from the meta group's (1 for a tenant meta does not list)
// when it gains leadership, whenever its node's meta replica applies an
// entry or restores a snapshot, after a backup restore of the shard, and
// every tenantSyncEvery (a failed proposal is retried sooner, with a
// backoff). A lost proposal (leader change, crash between the
// writes) is therefore redone by whichever node leads the shard next.

const (
	// tenantSyncEvery is how often a shard leader compares its shard's
	// weights with the meta group's even when nothing woke it (cheap: two
	// small maps).
	tenantSyncEvery = 5 * time.Second
	// setTenantWait bounds how long SetTenant waits for the tenant's shard
	// to apply the new weight before it replies anyway.
	setTenantWait = 5 * time.Second
	// tenantSyncRecheck is how soon a shard leader looks again when its
	// node's meta replica was catching up. No apply is certain to wake it:
	// Raft advances AppliedIndex only after handing the entries to the
	// meta FSM, so the FSM's change signal for the last of them can come
	// (and be consumed) while AppliedIndex still reads below CommitIndex.
	tenantSyncRecheck = 20 * time.Millisecond
	// tenantSyncRetryMin is the first retry delay after a failed proposal
	// (a leader change, an apply timeout), doubling up to tenantSyncEvery:
	// a transient failure is redone well within SetTenant's wait.
	tenantSyncRetryMin = 50 * time.Millisecond
)

// SetTenant records a tenant's weight in the meta group (on its leader: here
// or one pinned hop), then waits, at most setTenantWait, until this node's
// replica of the tenant's shard applies it, so that the weight is usually in
// effect when the call returns. Invalid input changes nothing.
func (n *Node) SetTenant(ctx context.Context, req *hodeiv1.SetTenantRequest) (*hodeiv1.TenantStatus, error) {
	if err := validateSetTenant(req); err != nil {
		return nil, invalidErr("%v", err)
	}
	var want *internalpb.TenantSettings
	err := n.onLeader(ctx, MetaGroup,
		func(ctx context.Context) (err error) {
			want, err = n.putTenant(ctx, req)
			return err
		},
		func(ctx context.Context, c hodeiv1.AdminServiceClient) error {
			_, err := c.SetTenant(ctx, req)
			return err
		})
	if err != nil {
		return nil, err
	}
	sh := ShardOf(req.GetTenant(), len(n.shards))
	f := n.shards[sh].fsm
	wait := time.NewTimer(setTenantWait)
	defer wait.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	local := want != nil // written here: want is what the meta group holds
	for {
		if !local {
			// Written by the meta leader elsewhere: wait until this node's
			// meta replica holds what the request set, then for the shard.
			want = n.mergeTenant(req)
			if cur := n.localTenant(req.GetTenant()); cur != nil && reflects(cur, req) {
				want = cur
			} else {
				want.Weight = 0 // not there yet: never equal below
			}
		}
		if f.TenantWeight(req.GetTenant()) == want.GetWeight() && fsm.LimitsEqual(f.TenantLimits(req.GetTenant()), want.GetLimits()) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wait.C:
			n.cfg.Logger.Warn("tenant settings recorded; its shard has not applied them yet", "tenant", req.GetTenant(), "shard", sh)
			if !local {
				want = n.mergeTenant(req)
			}
			return n.tenantStatus(want), nil
		case <-tick.C:
		}
	}
	return n.tenantStatus(want), nil
}

// localTenant is the tenant's settings in this node's meta replica, or nil.
func (n *Node) localTenant(tenant string) *internalpb.TenantSettings {
	for _, t := range n.meta.fsm.Tenants() {
		if t.GetTenant() == tenant {
			return t
		}
	}
	return nil
}

// reflects reports whether settings t hold what req set (the fields req
// gives; a burst defaulted from a new rate is not compared).
func reflects(t *internalpb.TenantSettings, req *hodeiv1.SetTenantRequest) bool {
	l := t.GetLimits()
	switch {
	case req.GetWeight() != 0 && max(t.GetWeight(), 1) != req.GetWeight(),
		req.MaxQueued != nil && l.GetMaxQueued() != req.GetMaxQueued(),
		req.MaxRunning != nil && l.GetMaxRunning() != req.GetMaxRunning(),
		req.Burst != nil && l.GetBurst() != req.GetBurst():
		return false
	case req.SubmitRate != nil:
		m, _ := fsm.RateMilli(req.GetSubmitRate())
		return l.GetSubmitRateMilli() == m
	}
	return true
}

// validateSetTenant checks a SetTenantRequest: a weight in range, or 0
// with at least one limit given (the weight is then kept); limits in range
// (quota, issue 11).
func validateSetTenant(req *hodeiv1.SetTenantRequest) error {
	hasLimit := req.MaxQueued != nil || req.MaxRunning != nil || req.SubmitRate != nil || req.Burst != nil
	w := req.GetWeight()
	if w == 0 && hasLimit {
		w = 1
	}
	if err := fsm.ValidateTenantWeight(req.GetTenant(), w); err != nil {
		return err
	}
	if req.SubmitRate != nil {
		if _, err := fsm.RateMilli(req.GetSubmitRate()); err != nil {
			return err
		}
	}
	return fsm.ValidateTenantLimits(mergeLimits(nil, req))
}

// mergeLimits applies the limits a request gives to cur (nil = none). A
// burst left out with a new rate defaults to the rate rounded up (at least
// 1); a rate set to 0 drops the burst.
func mergeLimits(cur *hodeiv1.TenantLimits, req *hodeiv1.SetTenantRequest) *hodeiv1.TenantLimits {
	out := &hodeiv1.TenantLimits{MaxQueued: cur.GetMaxQueued(), MaxRunning: cur.GetMaxRunning(), SubmitRateMilli: cur.GetSubmitRateMilli(), Burst: cur.GetBurst()}
	if req.MaxQueued != nil {
		out.MaxQueued = req.GetMaxQueued()
	}
	if req.MaxRunning != nil {
		out.MaxRunning = req.GetMaxRunning()
	}
	if req.SubmitRate != nil {
		m, _ := fsm.RateMilli(req.GetSubmitRate()) // validated by the caller
		out.SubmitRateMilli = m
		if req.Burst == nil {
			out.Burst = uint32(max(1, (m+999)/1000))
		}
	}
	if req.Burst != nil {
		out.Burst = req.GetBurst()
	}
	if out.SubmitRateMilli == 0 && req.Burst == nil {
		out.Burst = 0
	}
	return out
}

// mergeTenant is the tenant's settings after req, from this node's meta
// replica.
func (n *Node) mergeTenant(req *hodeiv1.SetTenantRequest) *internalpb.TenantSettings {
	var cur *internalpb.TenantSettings
	for _, t := range n.meta.fsm.Tenants() {
		if t.GetTenant() == req.GetTenant() {
			cur = t
		}
	}
	out := &internalpb.TenantSettings{Tenant: req.GetTenant(), Weight: max(cur.GetWeight(), 1), Limits: mergeLimits(cur.GetLimits(), req)}
	if req.GetWeight() != 0 {
		out.Weight = req.GetWeight()
	}
	if fsm.LimitsEmpty(out.Limits) {
		out.Limits = nil
	}
	return out
}

// PutTenantGroup writes a tenant setting into the meta group, which this
// node leads (group must be the meta group).
func (n *Node) PutTenantGroup(ctx context.Context, g uint32, req *hodeiv1.SetTenantRequest) error {
	if g != MetaGroup {
		return invalidErr("tenant settings live in the meta group, not in %s", GroupName(g))
	}
	_, err := n.putTenant(ctx, req)
	return err
}

// putTenant merges req into the tenant's settings on the meta leader (this
// node) and writes them. Two concurrent SetTenant calls for one tenant
// that set different fields may lose one of the fields (read, then write):
// the last write wins, as for the weight alone.
func (n *Node) putTenant(ctx context.Context, req *hodeiv1.SetTenantRequest) (*internalpb.TenantSettings, error) {
	if err := validateSetTenant(req); err != nil {
		return nil, invalidErr("%v", err)
	}
	if n.meta.raft.State() != raft.Leader {
		return nil, raft.ErrNotLeader
	}
	if err := waitFuture(ctx, n.meta.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
		return nil, err
	}
	ts := n.mergeTenant(req)
	err := n.meta.proposeCtx(ctx, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutTenant{PutTenant: ts}})
	if err != nil {
		return nil, err
	}
	l := ts.GetLimits()
	n.cfg.Logger.Info("tenant settings set", "tenant", ts.GetTenant(), "weight", ts.GetWeight(),
		"max_queued", l.GetMaxQueued(), "max_running", l.GetMaxRunning(), "submit_rate", fsm.FormatRate(l.GetSubmitRateMilli()), "burst", l.GetBurst())
	return ts, nil
}

// ListTenants reads the tenant settings on the meta group's leader.
func (n *Node) ListTenants(ctx context.Context) ([]*hodeiv1.TenantStatus, error) {
	var out []*hodeiv1.TenantStatus
	err := n.onLeader(ctx, MetaGroup,
		func(ctx context.Context) (err error) {
			out, err = n.ListTenantsGroup(ctx, MetaGroup)
			return err
		},
		func(ctx context.Context, c hodeiv1.AdminServiceClient) error {
			resp, err := c.ListTenants(ctx, &hodeiv1.ListTenantsRequest{})
			out = resp.GetTenants()
			return err
		})
	return out, err
}

// ListTenantsGroup lists the tenant settings of the meta group, which this
// node leads, after a Barrier (so the list holds every committed setting),
// with the weight each tenant's shard applies on this node's replica.
func (n *Node) ListTenantsGroup(ctx context.Context, g uint32) ([]*hodeiv1.TenantStatus, error) {
	if g != MetaGroup {
		return nil, invalidErr("tenant settings live in the meta group, not in %s", GroupName(g))
	}
	if n.meta.raft.State() != raft.Leader {
		return nil, raft.ErrNotLeader
	}
	if err := waitFuture(ctx, n.meta.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
		return nil, err
	}
	var out []*hodeiv1.TenantStatus
	for _, t := range n.meta.fsm.Tenants() {
		out = append(out, n.tenantStatus(t))
	}
	return out, nil
}

// tenantStatus is a tenant's settings with what its shard applies and the
// tenant's usage there, on this node's replica.
func (n *Node) tenantStatus(t *internalpb.TenantSettings) *hodeiv1.TenantStatus {
	tenant := t.GetTenant()
	sh := ShardOf(tenant, len(n.shards))
	f := n.shards[sh].fsm
	return &hodeiv1.TenantStatus{Tenant: tenant, Weight: max(t.GetWeight(), 1), Shard: sh, ShardWeight: f.TenantWeight(tenant),
		Limits: t.GetLimits(), ShardLimits: f.TenantLimits(tenant), Usage: f.TenantUsage(tenant)}
}

// wakeTenantSync asks the shard's tenant weight sync to run now. It never
// blocks.
func (s *shard) wakeTenantSync() {
	select {
	case s.tenantSync <- struct{}{}:
	default:
	}
}

// runTenantSync is the shard's tenant weight reconciler (see the top of
// this file). It runs for the shard's whole life and acts only while this
// node leads the shard.
func (s *shard) runTenantSync() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // ends with the loop: ctx is cancelled on return
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(tenantSyncEvery)
	defer tick.Stop()
	again := time.NewTimer(time.Hour)
	again.Stop()
	defer again.Stop()
	backoff := tenantSyncRetryMin
	for {
		// Taken before the sync, so that a meta change during it wakes the
		// next round.
		metaChanged := s.node.meta.changed.Wait()
		recheck, err := s.syncTenantWeights(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("tenant weights: proposing the meta group's weights failed; retrying", "err", err, "in", backoff)
			again.Reset(backoff)
			backoff = min(2*backoff, tenantSyncEvery)
		case recheck:
			again.Reset(tenantSyncRecheck)
		default:
			backoff = tenantSyncRetryMin
		}
		select {
		case <-s.stop:
			return
		case <-s.tenantSync:
		case <-metaChanged:
		case <-tick.C:
		case <-again.C:
		}
		again.Stop() // Go 1.23+ timers: no stale value is left to drain
	}
}

// syncTenantWeights proposes, if this node leads the shard, one command per
// tenant weight of the shard that differs from the meta group's. recheck
// asks the caller to look again shortly: the local meta replica was
// catching up, and no apply may be left to wake the loop.
func (s *shard) syncTenantWeights(ctx context.Context) (recheck bool, err error) {
	if !s.isLeader() || s.readyTerm.Load() != s.raft.CurrentTerm() {
		return false, nil // becomeLeader wakes the sync once its Barrier is done
	}
	m := s.node.meta
	if m.raft.AppliedIndex() < m.raft.CommitIndex() {
		// The local meta replica is catching up (or Raft has not yet
		// advanced AppliedIndex past entries the FSM already applied):
		// look again soon rather than wait for an apply that may already
		// have signalled.
		return true, nil
	}
	count := m.fsm.ShardCount()
	if count == 0 {
		return false, nil // not recorded yet: its apply wakes the sync
	}
	want := map[string]uint32{}
	wantLimits := map[string]*hodeiv1.TenantLimits{}
	for _, t := range m.fsm.Tenants() {
		name, w := t.GetTenant(), min(max(t.GetWeight(), 1), fsm.MaxTenantWeight)
		if ShardOf(name, int(count)) != s.id || fsm.ValidateTenantWeight(name, w) != nil {
			continue
		}
		want[name] = w
		if l := t.GetLimits(); !fsm.LimitsEmpty(l) && fsm.ValidateTenantLimits(l) == nil {
			wantLimits[name] = l
		}
	}
	have := s.fsm.TenantWeights()
	names := make([]string, 0, len(want)+len(have))
	for name := range want {
		names = append(names, name)
	}
	for name := range have {
		if _, ok := want[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var changes []string
	for _, name := range names {
		w, h := max(want[name], 1), max(have[name], 1)
		if w == h {
			continue
		}
		// Through the batcher like every write: it gives the entry the
		// version the command needs (fsm.EntryVersionFor).
		res, err := s.batch.Propose(ctx, &internalpb.Command{Kind: &internalpb.Command_SetTenantWeight{
			SetTenantWeight: &internalpb.SetTenantWeight{Tenant: name, Weight: w}}})
		if err == nil {
			err = fsm.ResultError(res)
		}
		if err != nil {
			return false, fmt.Errorf("%s=%d: %w", name, w, err)
		}
		changes = append(changes, fmt.Sprintf("%s=%d (was %d)", name, w, h))
	}
	// Limits (quota, issue 11): the same reconciliation, with
	// SetTenantLimits (entry version 4).
	haveLimits := s.fsm.AllTenantLimits()
	names = names[:0]
	for name := range wantLimits {
		names = append(names, name)
	}
	for name := range haveLimits {
		if _, ok := wantLimits[name]; !ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		l := wantLimits[name]
		if fsm.LimitsEqual(l, haveLimits[name]) {
			continue
		}
		res, err := s.batch.Propose(ctx, &internalpb.Command{Kind: &internalpb.Command_SetTenantLimits{
			SetTenantLimits: &internalpb.SetTenantLimits{Tenant: name, Limits: l}}})
		if err == nil {
			err = fsm.ResultError(res)
		}
		if err != nil {
			return false, fmt.Errorf("%s limits: %w", name, err)
		}
		changes = append(changes, fmt.Sprintf("%s limits {max-queued %d, max-running %d, submit-rate %s/s, burst %d}",
			name, l.GetMaxQueued(), l.GetMaxRunning(), fsm.FormatRate(l.GetSubmitRateMilli()), l.GetBurst()))
	}
	if len(changes) > 0 {
		s.log.Info("tenant settings applied from the meta group", "settings", strings.Join(changes, ", "))
	}
	return false, nil
}
