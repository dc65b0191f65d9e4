package transport

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// forwardLeaseTimeout bounds one work-stealing call to another shard's leader.
const forwardLeaseTimeout = 2 * time.Second

const (
	// leaseResolveGrace is how long past a long-poll's deadline (or past
	// the failure, when a last attempt failed after it) a lease whose
	// outcome is unknown keeps being retried before the call fails with
	// Unavailable. With one forwarded attempt's own deadline before it,
	// it stays below the Go client's slack over wait_ms (5 s).
	leaseResolveGrace = forwardLeaseTimeout
	// Backoff between the retries of a lease whose outcome is unknown.
	leaseRetryBackoff    = 20 * time.Millisecond
	leaseRetryBackoffMax = 500 * time.Millisecond
	// mdLeaseNotProposed is a trailer of a forwarded lease's error: the
	// leader proposed nothing (it was not the leader, knew none, or a
	// leadership transfer was in progress).
	mdLeaseNotProposed = "x-hodei-lease-not-proposed"
)

// leaseOutcome classifies a failed lease attempt.
type leaseOutcome int

const (
	// leaseUnknown: the proposal may have been committed (a timeout, a
	// lost reply, leadership lost after dispatch, a shutdown...).
	leaseUnknown leaseOutcome = iota
	// leaseNotProposed: this attempt proposed nothing; nothing was granted
	// by it (an earlier attempt under the same id may still have been).
	leaseNotProposed
	// leaseRejected: the request was refused (by validation or the FSM's
	// answer); nothing is granted under this id.
	leaseRejected
)

// notProposedError marks an error after which nothing was proposed.
type notProposedError struct{ err error }

func (e notProposedError) Error() string { return e.err.Error() }
func (e notProposedError) Unwrap() error { return e.err }

// GRPCStatus keeps the status of the wrapped error (ToStatus, forwardErr).
func (e notProposedError) GRPCStatus() *status.Status {
	st, _ := status.FromError(e.err)
	return st
}

// leaseOutcomeOf classifies what leaseShard returned; see forwardErr and
// ToStatus for what comes back from a forwarded attempt.
func leaseOutcomeOf(err error) leaseOutcome {
	var np notProposedError
	var ce CodedError
	switch {
	case errors.As(err, &np),
		errors.Is(err, ErrNoLeader),
		errors.Is(err, raft.ErrNotLeader),
		errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrEnqueueTimeout):
		return leaseNotProposed
	case errors.As(err, &ce):
		return leaseRejected
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound,
			codes.AlreadyExists, codes.OutOfRange, codes.PermissionDenied,
			codes.Unauthenticated, codes.Unimplemented:
			return leaseRejected
		}
	}
	return leaseUnknown
}

// leaseID is the request id of the g-th lease of shard sh in a call whose
// request id is rid: "<rid>/<sh>" first, so that a caller's retry of the
// call meets the grant of its first lease of sh in the FSM's dedup.
func leaseID(rid string, sh, g uint32) string {
	if g == 0 {
		return fmt.Sprintf("%s/%d", rid, sh)
	}
	return fmt.Sprintf("%s/%d/%d", rid, sh, g)
}

// newLeaseRequestID returns a random request id for a call without one.
func newLeaseRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "lease-" + hex.EncodeToString(b[:])
}

// leaseResultHook, test-only and nil outside tests, sees (and may change)
// the result of every lease attempt of leaseShard on node: forwarded (to
// the shard's leader) or local. Tests use it to lose a reply after the
// leader committed the grant. Set it through export_test.go.
var leaseResultHook atomic.Pointer[func(node string, sh uint32, id string, forwarded bool, leases []*hodeiv1.Lease, err error) ([]*hodeiv1.Lease, error)]

type workerService struct {
	hodeiv1.UnimplementedWorkerServiceServer
	a     *API
	start atomic.Uint32 // rotates the first shard tried, for fairness across shards
}

// Lease is a long-poll. The node looks at its own replica of every shard
// (every node applies every entry, so it knows, slightly stale on
// followers, where ready work is): shards it leads are leased locally, the
// others through one hop to their leader (work stealing). When nothing is
// ready it waits for the next apply that makes work ready, up to wait_ms.
//
// A lease is a Raft proposal that grants jobs, deduplicated by the FSM
// under its per-shard request id. When one fails ambiguously (it may have
// been committed although this node got an error: a forwarded lease past
// its deadline or whose reply was lost, leadership lost after the entry
// was dispatched), the same shard is retried with the same id, before
// anything else, until the FSM answers (its dedup returns the original
// grant if there was one) or the long-poll's deadline (or the failure,
// if later) plus leaseResolveGrace passes; then the call fails with Unavailable, which
// clients retry with the same request id, instead of replying with no or
// other jobs and leaving the grant's jobs leased to nobody (chaos F6).
func (s *workerService) Lease(ctx context.Context, req *hodeiv1.LeaseRequest) (*hodeiv1.LeaseResponse, error) {
	a := s.a
	if req.GetWorkerId() == "" {
		return nil, invalid("worker_id is required")
	}
	if req.GetCapacity() < 1 || req.GetCapacity() > 1000 {
		return nil, invalid("capacity must be in 1..1000, got %d", req.GetCapacity())
	}
	if req.GetWaitMs() < 0 || req.GetTtlMs() < 0 {
		return nil, invalid("wait_ms and ttl_ms must be >= 0")
	}
	wait := time.Duration(req.GetWaitMs()) * time.Millisecond
	if wait > maxLeaseWait {
		wait = maxLeaseWait
	}
	deadline := time.Now().Add(wait)
	if sh, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		// A stealing node asks this leader for work of one shard, without
		// waiting, under the per-shard id it chose (the same one it uses
		// when it retries, here or on the next leader).
		leases, err := s.leaseShard(ctx, sh, req.GetRequestId(), req)
		if err != nil {
			if leaseOutcomeOf(err) == leaseNotProposed {
				// Tell the stealing node that nothing was proposed: it
				// may move on to other shards instead of retrying this one.
				_ = grpc.SetTrailer(ctx, metadata.Pairs(mdLeaseNotProposed, "1"))
			}
			return nil, ToStatus(err)
		}
		return &hodeiv1.LeaseResponse{Leases: leases}, nil
	}
	rid := req.GetRequestId()
	if rid == "" {
		// Without an id of the caller's, one for this call: its own
		// retries of an ambiguous lease are deduplicated all the same.
		rid = newLeaseRequestID()
	}
	// gen counts the leases of each shard answered with no jobs in this
	// call: the next one needs a fresh id, or the FSM's dedup would answer
	// it with the same empty grant.
	gen := map[uint32]uint32{}
	n := a.b.ShardCount()
	for attempt := 0; ; attempt++ {
		sig := a.b.WorkSignal()
		first := int(s.start.Add(1))
		// Two passes: shards led here first, then the others.
		for pass := 0; pass < 2; pass++ {
			for i := 0; i < n; i++ {
				sh := uint32((first + i) % n)
				local, _ := a.b.LeaderOf(sh)
				if local != (pass == 0) {
					continue
				}
				if !a.b.HasReadyFor(sh, req.GetLabels()) {
					continue
				}
				id := leaseID(rid, sh, gen[sh])
				leases, err := s.leaseShard(ctx, sh, id, req)
				if err != nil && ctx.Err() == nil && leaseOutcomeOf(err) == leaseUnknown {
					a.log.Info("lease outcome unknown, retrying it", "shard", sh, "request_id", id, "err", err)
					// Until the deadline, or a grace after the failure when
					// that came later (an attempt started just before it).
					stop := deadline
					if now := time.Now(); now.After(stop) {
						stop = now
					}
					leases, err = s.resolveLease(ctx, sh, id, req, stop.Add(leaseResolveGrace), err)
					if err != nil && leaseOutcomeOf(err) != leaseRejected {
						return nil, ToStatus(err)
					}
				}
				if err != nil {
					if ctx.Err() != nil {
						return nil, ToStatus(err)
					}
					a.log.Debug("lease attempt failed", "shard", sh, "err", err)
					continue
				}
				if len(leases) > 0 {
					return &hodeiv1.LeaseResponse{Leases: leases}, nil
				}
				gen[sh]++
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return &hodeiv1.LeaseResponse{}, nil
		}
		if left > recheckEvery {
			left = recheckEvery
		}
		t := time.NewTimer(left)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ToStatus(ctx.Err())
		case <-sig:
		case <-t.C:
		}
		t.Stop()
	}
}

// resolveLease retries the lease id of shard sh, whose last attempt failed
// ambiguously with cause, until the FSM answers it: with the original
// grant when that was committed (request dedup), else with a fresh one.
// An error that only says this retry proposed nothing (no leader, not the
// leader, a transfer) does not tell whether the earlier attempt committed,
// so it is retried too, after a backoff, until stop; then the error is
// Unavailable. A forwarded attempt keeps its forwardLeaseTimeout deadline,
// so a leader behind a partition holds the call until stop at most.
func (s *workerService) resolveLease(ctx context.Context, sh uint32, id string, req *hodeiv1.LeaseRequest, stop time.Time, cause error) ([]*hodeiv1.Lease, error) {
	backoff := leaseRetryBackoff
	for tries := 1; ; tries++ {
		d := time.Until(stop)
		if d <= 0 {
			return nil, status.Errorf(codes.Unavailable, "lease of shard %d (request id %s): outcome unknown after %d attempt(s), last: %v; retry with the same request id", sh, id, tries, cause)
		}
		t := time.NewTimer(min(backoff, d))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ToStatus(ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, leaseRetryBackoffMax)
		rctx, cancel := context.WithDeadline(ctx, stop)
		leases, err := s.leaseShard(rctx, sh, id, req)
		cancel()
		if err == nil {
			s.a.log.Info("ambiguous lease resolved", "shard", sh, "request_id", id, "leases", len(leases), "attempts", tries+1)
			return leases, nil
		}
		if ctx.Err() != nil {
			return nil, ToStatus(ctx.Err())
		}
		if leaseOutcomeOf(err) == leaseRejected {
			return nil, err
		}
		cause = err
	}
}

// leaseShard leases from shard sh under the per-shard request id id: on
// this node when it leads sh, else through one hop to its leader.
func (s *workerService) leaseShard(ctx context.Context, sh uint32, id string, req *hodeiv1.LeaseRequest) ([]*hodeiv1.Lease, error) {
	a := s.a
	local, addr := a.b.LeaderOf(sh)
	if local {
		r := proto.Clone(req).(*hodeiv1.LeaseRequest)
		r.RequestId = id
		leases, err := a.b.Lease(ctx, sh, r)
		if h := leaseResultHook.Load(); h != nil {
			leases, err = (*h)(a.b.NodeID(), sh, id, false, leases, err)
		}
		return leases, err
	}
	if addr == "" || isForwarded(ctx) {
		return nil, fmt.Errorf("shard %d: %w", sh, ErrNoLeader)
	}
	cc, err := a.conn(addr)
	if err != nil {
		return nil, notProposedError{err}
	}
	fwd := &hodeiv1.LeaseRequest{WorkerId: req.GetWorkerId(), Capacity: req.GetCapacity(), Labels: req.GetLabels(), TtlMs: req.GetTtlMs(), RequestId: id}
	// The forwarded lease does not wait (wait_ms 0), so it gets a short
	// deadline of its own: a leader behind a partition must not hold the
	// worker's whole long-poll (chaos F4: jobs ready for ~30 s, unleased).
	fctx, cancel := context.WithTimeout(ctx, forwardLeaseTimeout)
	defer cancel()
	var trailer metadata.MD
	resp, err := hodeiv1.NewWorkerServiceClient(cc).Lease(forwardCtx(fctx, sh), fwd, grpc.Trailer(&trailer))
	leases := resp.GetLeases()
	if h := leaseResultHook.Load(); h != nil {
		leases, err = (*h)(a.b.NodeID(), sh, id, true, leases, err)
	}
	if err != nil {
		err = forwardErr(err)
		if len(trailer.Get(mdLeaseNotProposed)) > 0 {
			return nil, notProposedError{err}
		}
		return nil, err
	}
	return leases, nil
}

func (s *workerService) ExtendLeases(ctx context.Context, req *hodeiv1.ExtendLeasesRequest) (*hodeiv1.ExtendLeasesResponse, error) {
	a := s.a
	if req.GetWorkerId() == "" {
		return nil, invalid("worker_id is required")
	}
	if req.GetTtlMs() < 0 {
		return nil, invalid("ttl_ms must be >= 0")
	}
	groups := map[uint32][]int{}
	var order []uint32
	out := make([]*hodeiv1.ExtendResult, len(req.GetLeases()))
	for i, ref := range req.GetLeases() {
		sh, err := a.b.ShardOfJob(ref.GetJobId())
		if err != nil {
			out[i] = &hodeiv1.ExtendResult{JobId: ref.GetJobId(), Ok: false, Reason: err.Error()}
			continue
		}
		if _, ok := groups[sh]; !ok {
			order = append(order, sh)
		}
		groups[sh] = append(groups[sh], i)
	}
	for _, sh := range order {
		idx := groups[sh]
		sub := &hodeiv1.ExtendLeasesRequest{WorkerId: req.GetWorkerId(), TtlMs: req.GetTtlMs()}
		for _, i := range idx {
			sub.Leases = append(sub.Leases, req.GetLeases()[i])
		}
		resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ExtendLeasesResponse, error) {
			return hodeiv1.NewWorkerServiceClient(cc).ExtendLeases(ctx, sub)
		})
		if err != nil {
			return nil, err
		}
		res := resp.GetResults()
		if !done {
			if res, err = a.b.Extend(ctx, sh, sub); err != nil {
				return nil, ToStatus(err)
			}
		}
		if len(res) != len(idx) {
			return nil, status.Errorf(codes.Internal, "shard %d returned %d extend results for %d leases", sh, len(res), len(idx))
		}
		for j, i := range idx {
			out[i] = res[j]
		}
	}
	return &hodeiv1.ExtendLeasesResponse{Results: out}, nil
}

func (s *workerService) CompleteJob(ctx context.Context, req *hodeiv1.CompleteJobRequest) (*hodeiv1.CompleteJobResponse, error) {
	a := s.a
	sh, err := a.b.ShardOfJob(req.GetJobId())
	if err != nil {
		return nil, invalid("job id %q: %v", req.GetJobId(), err)
	}
	if req.GetToken() == 0 {
		return nil, invalid("token is required")
	}
	resp, done, err := forward(a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.CompleteJobResponse, error) {
		return hodeiv1.NewWorkerServiceClient(cc).CompleteJob(ctx, req)
	})
	if done {
		return resp, err
	}
	job, err := a.b.Complete(ctx, sh, req)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.CompleteJobResponse{Job: job}, nil
}

// ---- AdminService ----

type adminService struct {
	hodeiv1.UnimplementedAdminServiceServer
	a *API
}

func (s *adminService) Status(ctx context.Context, req *hodeiv1.StatusRequest) (*hodeiv1.StatusResponse, error) {
	resp, err := s.a.b.Status(ctx, req)
	return resp, ToStatus(err)
}

// Membership changes are coordinated by the node that receives them: it
// applies the change to every Raft group on that group's leader, reaching
// it with a request pinned to the group (x-hodei-shard).
func (s *adminService) Join(ctx context.Context, req *hodeiv1.JoinRequest) (*hodeiv1.JoinResponse, error) {
	if req.GetNodeId() == "" || req.GetAddress() == "" {
		return nil, invalid("node_id and address are required")
	}
	if g, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		return &hodeiv1.JoinResponse{}, ToStatus(s.a.b.JoinGroup(ctx, g, req))
	}
	return &hodeiv1.JoinResponse{}, ToStatus(s.a.b.Join(ctx, req))
}

func (s *adminService) Remove(ctx context.Context, req *hodeiv1.RemoveRequest) (*hodeiv1.RemoveResponse, error) {
	if req.GetNodeId() == "" {
		return nil, invalid("node_id is required")
	}
	if g, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		return &hodeiv1.RemoveResponse{}, ToStatus(s.a.b.RemoveGroup(ctx, g, req))
	}
	return &hodeiv1.RemoveResponse{}, ToStatus(s.a.b.Remove(ctx, req))
}

func (s *adminService) TransferLeader(ctx context.Context, req *hodeiv1.TransferLeaderRequest) (*hodeiv1.TransferLeaderResponse, error) {
	if int(req.GetShard()) >= s.a.b.ShardCount() {
		return nil, invalid("unknown shard %d", req.GetShard())
	}
	if !isForwarded(ctx) {
		local, addr := s.a.b.LeaderOf(req.GetShard())
		if !local && addr != "" {
			cc, err := s.a.conn(addr)
			if err != nil {
				return nil, err
			}
			resp, err := hodeiv1.NewAdminServiceClient(cc).TransferLeader(forwardCtx(ctx, req.GetShard()), req)
			if err != nil {
				return nil, forwardErr(err)
			}
			return resp, nil
		}
	}
	return &hodeiv1.TransferLeaderResponse{}, ToStatus(s.a.b.TransferLeader(ctx, req))
}
