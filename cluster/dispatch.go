package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/scheduler"
	"github.com/hodei-io/hodei/transport"
)

// The node's dispatcher (scheduler.Dispatcher) owns the demand of the
// workers connected here. This file gives it the node: its replicas (ready
// work hints), local proposals on the shards this node leads, and one
// forwarded call per round to the leaders of the others. It also serves the
// other nodes' dispatchers when this node leads their shard.

var (
	_ scheduler.DispatchBackend = (*dispatchBackend)(nil)
	_ transport.WorkerBackend   = (*workerBackend)(nil)
)

func newDispatcher(n *Node) (*scheduler.Dispatcher, error) {
	cfg := scheduler.DefaultDispatcherConfig()
	cfg.NodeID = n.cfg.NodeID
	cfg.DefaultTTL = n.cfg.LeaseTTL
	cfg.Logger = n.cfg.Logger.With("component", "dispatcher")
	return scheduler.NewDispatcher(cfg, &dispatchBackend{n: n, fwd: transport.NewForwarder(n.pool)})
}

// dispatchBackend is the node as the dispatcher sees it.
type dispatchBackend struct {
	n   *Node
	fwd *transport.Forwarder
}

func (b *dispatchBackend) ShardCount() int { return len(b.n.shards) }

func (b *dispatchBackend) ShardOfJob(id string) (uint32, error) { return b.n.ShardOfJob(id) }

func (b *dispatchBackend) Leader(sh uint32) (local, known bool) {
	local, addr := b.n.LeaderOf(sh)
	return local, local || addr != ""
}

func (b *dispatchBackend) Ready(sh uint32) int {
	s, err := b.n.shard(sh)
	if err != nil {
		return 0
	}
	return s.fsm.ReadyCount()
}

func (b *dispatchBackend) ReadyFor(sh uint32, labels []*hodeiv1.KeyValue, kinds []string, tenants []string) bool {
	s, err := b.n.shard(sh)
	if err != nil {
		return false
	}
	return s.fsm.HasReadyForTenants(labels, kinds, tenants)
}

// leaseResultHook, test-only and nil outside tests, sees (and may change)
// the result of every lease call of a node's dispatcher: local or
// forwarded. Tests use it to lose a reply after the leader committed the
// grant.
var leaseResultHook atomic.Pointer[func(node string, sh uint32, req *hodeiv1.LeaseForRequest, forwarded bool, g []*hodeiv1.LeaseGrant, err error) ([]*hodeiv1.LeaseGrant, error)]

func (b *dispatchBackend) Lease(ctx context.Context, sh uint32, req *hodeiv1.LeaseForRequest) ([]*hodeiv1.LeaseGrant, error) {
	local, addr := b.n.LeaderOf(sh)
	if !local && addr == "" {
		return nil, fmt.Errorf("%w: shard %d has no known leader", scheduler.ErrNotProposed, sh)
	}
	var g []*hodeiv1.LeaseGrant
	var err error
	if local {
		g, err = b.n.leaseFor(ctx, sh, req)
		err = classifyLocal(err)
	} else {
		var np bool
		g, np, err = b.fwd.LeaseFor(ctx, addr, sh, req)
		err = classifyForwarded(np, err)
	}
	if h := leaseResultHook.Load(); h != nil {
		g, err = (*h)(b.n.cfg.NodeID, sh, req, !local, g, err)
	}
	return g, err
}

func (b *dispatchBackend) Complete(ctx context.Context, sh uint32, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error) {
	local, addr := b.n.LeaderOf(sh)
	if local {
		r, err := b.n.completeShard(ctx, sh, items)
		return r, classifyLocal(err)
	}
	if addr == "" {
		return nil, fmt.Errorf("%w: shard %d has no known leader", scheduler.ErrNotProposed, sh)
	}
	r, np, err := b.fwd.CompleteJobs(ctx, addr, sh, items)
	return r, classifyForwarded(np, err)
}

func (b *dispatchBackend) Extend(ctx context.Context, sh uint32, req *hodeiv1.ExtendLeasesRequest) ([]*hodeiv1.ExtendResult, error) {
	local, addr := b.n.LeaderOf(sh)
	if local {
		r, err := b.n.Extend(ctx, sh, req)
		return r, classifyLocal(err)
	}
	if addr == "" {
		return nil, fmt.Errorf("%w: shard %d has no known leader", scheduler.ErrNotProposed, sh)
	}
	r, np, err := b.fwd.ExtendLeases(ctx, addr, sh, req)
	return r, classifyForwarded(np, err)
}

// classifyLocal marks the errors of a local proposal after which nothing
// was proposed; FSM refusals (*fsm.CodeError) the dispatcher knows itself.
func classifyLocal(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress) ||
		errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, ErrClosed) {
		return fmt.Errorf("%w: %w", scheduler.ErrNotProposed, err)
	}
	return err
}

// classifyForwarded marks a forwarded call's error: the leader said it
// proposed nothing, or refused the request.
func classifyForwarded(notProposed bool, err error) error {
	switch {
	case err == nil:
		return nil
	case notProposed:
		return fmt.Errorf("%w: %w", scheduler.ErrNotProposed, err)
	case transport.Rejected(err):
		return fmt.Errorf("%w: %w", scheduler.ErrRejected, err)
	}
	return err
}

// leaseFor proposes one LeaseBatch for req's demands on shard sh, which
// this node leads. Unless req.resolve, it proposes nothing when its replica
// has no ready job for any demand (empty grants), so that idle workers on
// other nodes do not each cost a log entry.
func (n *Node) leaseFor(ctx context.Context, sh uint32, req *hodeiv1.LeaseForRequest) ([]*hodeiv1.LeaseGrant, error) {
	s, err := n.shard(sh)
	if err != nil {
		return nil, err
	}
	ds := req.GetDemands()
	now := time.Now()
	for _, d := range ds {
		n.profiles.note(d.GetLabels(), d.GetKinds(), now) // for GetJob's unmatched (profiles.go)
	}
	if !req.GetResolve() {
		any := false
		for _, d := range ds {
			if s.fsm.HasReadyForTenants(d.GetLabels(), d.GetKinds(), d.GetTenants()) {
				any = true
				break
			}
		}
		if !any {
			out := make([]*hodeiv1.LeaseGrant, len(ds))
			for i, d := range ds {
				out[i] = &hodeiv1.LeaseGrant{WorkerId: d.GetWorkerId()}
			}
			return out, nil
		}
	}
	ttl := req.GetTtlMs()
	if ttl == 0 {
		ttl = n.cfg.LeaseTTL.Milliseconds()
	}
	cmd := &internalpb.LeaseBatch{Demands: make([]*internalpb.LeaseJobs, len(ds))}
	for i, d := range ds {
		t := d.GetTtlMs()
		if t == 0 {
			t = ttl
		}
		cmd.Demands[i] = &internalpb.LeaseJobs{WorkerId: d.GetWorkerId(), Capacity: d.GetCapacity(), Labels: d.GetLabels(), Kinds: d.GetKinds(), TtlMs: t, Tenants: d.GetTenants()}
	}
	res, err := n.propose(ctx, sh, &internalpb.Command{RequestId: req.GetRequestId(), Kind: &internalpb.Command_LeaseBatch{LeaseBatch: cmd}})
	if err != nil {
		return nil, err
	}
	if len(res.GetGrants()) != len(ds) {
		return nil, fmt.Errorf("cluster: shard %d answered %d grants for %d demands", sh, len(res.GetGrants()), len(ds))
	}
	return res.GetGrants(), nil
}

// completeShard proposes one CompleteJobs on shard sh, which this node
// leads. It needs no request id: a repeat of an accepted completion answers
// ok (fsm.applyCompleteJobs).
func (n *Node) completeShard(ctx context.Context, sh uint32, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error) {
	res, err := n.propose(ctx, sh, &internalpb.Command{Kind: &internalpb.Command_CompleteJobs{CompleteJobs: &internalpb.CompleteJobs{Items: items}}})
	if err != nil {
		return nil, err
	}
	if len(res.GetCompleted()) != len(items) {
		return nil, fmt.Errorf("cluster: shard %d answered %d results for %d completions", sh, len(res.GetCompleted()), len(items))
	}
	return res.GetCompleted(), nil
}

// workerBackend is the node as the worker stream's handlers see it.
type workerBackend struct{ n *Node }

func (w *workerBackend) dispatcher() (*scheduler.Dispatcher, error) {
	d := w.n.dispatch.Load()
	if d == nil {
		return nil, fmt.Errorf("%w: the node's dispatcher is not running", ErrClosed)
	}
	return d, nil
}

func (w *workerBackend) MaxSlots() int { return scheduler.DefaultDispatcherConfig().MaxSlots }

func (w *workerBackend) Connect(h *hodeiv1.WorkerHello, tenants []string) (transport.WorkerSession, error) {
	d, err := w.dispatcher()
	if err != nil {
		return nil, err
	}
	s, err := d.Connect(scheduler.WorkerInfo{ID: h.GetWorkerId(), Labels: h.GetLabels(), Kinds: h.GetKinds(), TTL: msDuration(h.GetTtlMs()), Tenants: tenants}, int(h.GetSlots()))
	if err != nil {
		return nil, workerErr(err)
	}
	return session{s}, nil
}

func (w *workerBackend) Lease(ctx context.Context, req *hodeiv1.LeaseRequest, wait time.Duration, tenants []string) ([]*hodeiv1.Lease, error) {
	d, err := w.dispatcher()
	if err != nil {
		return nil, err
	}
	leases, err := d.LeaseOnce(ctx, scheduler.WorkerInfo{ID: req.GetWorkerId(), Labels: req.GetLabels(), Kinds: req.GetKinds(), TTL: msDuration(req.GetTtlMs()), Tenants: tenants}, int(req.GetCapacity()), wait)
	return leases, workerErr(err)
}

func (w *workerBackend) CompleteJobs(ctx context.Context, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error) {
	d, err := w.dispatcher()
	if err != nil {
		return nil, err
	}
	return d.CompleteAndWait(ctx, items)
}

func (w *workerBackend) LeaseFor(ctx context.Context, sh uint32, req *hodeiv1.LeaseForRequest) ([]*hodeiv1.LeaseGrant, error) {
	if !w.n.isLeaderOf(sh) {
		return nil, raft.ErrNotLeader
	}
	return w.n.leaseFor(ctx, sh, req)
}

func (w *workerBackend) CompleteShard(ctx context.Context, sh uint32, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error) {
	if !w.n.isLeaderOf(sh) {
		return nil, raft.ErrNotLeader
	}
	return w.n.completeShard(ctx, sh, items)
}

func msDuration(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }

func (n *Node) isLeaderOf(sh uint32) bool {
	local, _ := n.LeaderOf(sh)
	return local
}

// session maps a scheduler session's errors for the transport.
type session struct{ *scheduler.Session }

func (s session) AddSlots(k int) error { return workerErr(s.Session.AddSlots(k)) }

// workerErr turns the dispatcher's errors into coded errors (gRPC codes).
func workerErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, scheduler.ErrInvalid):
		return &fsm.CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: err.Error()}
	case errors.Is(err, scheduler.ErrWorkerConnected):
		return &fsm.CodeError{C: internalpb.Code_CODE_ALREADY_EXISTS, Msg: err.Error()}
	case errors.Is(err, scheduler.ErrSessionClosed):
		return &fsm.CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: err.Error()}
	case errors.Is(err, scheduler.ErrDraining):
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}
