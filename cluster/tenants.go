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
	if err := fsm.ValidateTenantWeight(req.GetTenant(), req.GetWeight()); err != nil {
		return nil, invalidErr("%v", err)
	}
	err := n.onLeader(ctx, MetaGroup,
		func(ctx context.Context) error { return n.PutTenantGroup(ctx, MetaGroup, req) },
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
	for f.TenantWeight(req.GetTenant()) != req.GetWeight() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wait.C:
			n.cfg.Logger.Warn("tenant weight recorded; its shard has not applied it yet", "tenant", req.GetTenant(), "weight", req.GetWeight(), "shard", sh)
			return n.tenantStatus(req.GetTenant(), req.GetWeight()), nil
		case <-tick.C:
		}
	}
	return n.tenantStatus(req.GetTenant(), req.GetWeight()), nil
}

// PutTenantGroup writes a tenant setting into the meta group, which this
// node leads (group must be the meta group).
func (n *Node) PutTenantGroup(ctx context.Context, g uint32, req *hodeiv1.SetTenantRequest) error {
	if g != MetaGroup {
		return invalidErr("tenant settings live in the meta group, not in %s", GroupName(g))
	}
	if err := fsm.ValidateTenantWeight(req.GetTenant(), req.GetWeight()); err != nil {
		return invalidErr("%v", err)
	}
	if n.meta.raft.State() != raft.Leader {
		return raft.ErrNotLeader
	}
	err := n.meta.proposeCtx(ctx, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutTenant{
		PutTenant: &internalpb.TenantSettings{Tenant: req.GetTenant(), Weight: req.GetWeight()}}})
	if err == nil {
		n.cfg.Logger.Info("tenant weight set", "tenant", req.GetTenant(), "weight", req.GetWeight())
	}
	return err
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
		out = append(out, n.tenantStatus(t.GetTenant(), max(t.GetWeight(), 1)))
	}
	return out, nil
}

func (n *Node) tenantStatus(tenant string, weight uint32) *hodeiv1.TenantStatus {
	sh := ShardOf(tenant, len(n.shards))
	return &hodeiv1.TenantStatus{Tenant: tenant, Weight: weight, Shard: sh, ShardWeight: n.shards[sh].fsm.TenantWeight(tenant)}
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
	for _, t := range m.fsm.Tenants() {
		name, w := t.GetTenant(), min(max(t.GetWeight(), 1), fsm.MaxTenantWeight)
		if ShardOf(name, int(count)) != s.id || fsm.ValidateTenantWeight(name, w) != nil {
			continue
		}
		want[name] = w
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
	if len(changes) > 0 {
		s.log.Info("tenant weights applied from the meta group", "weights", strings.Join(changes, ", "))
	}
	return false, nil
}
