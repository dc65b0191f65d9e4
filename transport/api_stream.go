package transport

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Limits of the worker stream and the batched worker calls.
const (
	maxStreamItems = 10000 // completions or lease refs in one message or call
	maxLeaseDemand = 1000  // demands of one LeaseFor
	// streamFlushTimeout bounds how long a stream whose worker closed its
	// send side waits for the outcomes of the completions it sent.
	streamFlushTimeout = 15 * time.Second
)

// WorkerBackend is what the worker stream and the batched worker calls need
// from the node: its dispatcher (sessions, completions of any shard) and,
// on a shard's leader, the proposals that serve another node's dispatcher.
type WorkerBackend interface {
	// Connect opens a session for a worker's hello. Errors are CodedErrors
	// (InvalidArgument, AlreadyExists) or Unavailable.
	// tenants is the worker token's tenant limit (nil = every tenant).
	Connect(hello *hodeiv1.WorkerHello, tenants []string) (WorkerSession, error)
	// MaxSlots is the most credit the node keeps for one stream.
	MaxSlots() int
	// Lease serves a unary long-poll through the node's dispatcher.
	Lease(ctx context.Context, req *hodeiv1.LeaseRequest, wait time.Duration, tenants []string) ([]*hodeiv1.Lease, error)
	// CompleteJobs records completions of any shards through the node's
	// dispatcher; results are in request order.
	CompleteJobs(ctx context.Context, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error)
	// LeaseFor and CompleteShard run on this node as the shard's leader.
	LeaseFor(ctx context.Context, shard uint32, req *hodeiv1.LeaseForRequest) ([]*hodeiv1.LeaseGrant, error)
	CompleteShard(ctx context.Context, shard uint32, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error)
}

// WorkerSession is one connected worker (scheduler.Session).
type WorkerSession interface {
	TTL() time.Duration
	AddSlots(n int) error
	Complete(items []*hodeiv1.Completion)
	Extend(ctx context.Context, refs []*hodeiv1.LeaseRef)
	// Refuse answers items the transport refused itself (auth).
	Refuse(completed []*hodeiv1.CompletionResult, extended []*hodeiv1.ExtendResult)
	Ready() <-chan struct{}
	Done() <-chan struct{}
	Messages() []*hodeiv1.ServerMessage
	Pending() int
	Close()
}

// Connect serves one worker stream: decode, validate, hand to the session,
// and send what the session has for the worker.
func (s *workerService) Connect(stream grpc.BidiStreamingServer[hodeiv1.WorkerMessage, hodeiv1.ServerMessage]) error {
	wb := s.a.workers
	if wb == nil {
		return status.Error(codes.Unavailable, "this node is starting: no dispatcher yet")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return invalid("the first message of a worker stream must be a hello, got %T", first.GetMsg())
	}
	// auth: the token's tenant limit goes with the session; its kinds
	// limit narrows the kinds the worker asks for.
	tenants, kinds, err := workerLimits(stream.Context(), hello.GetKinds())
	if err != nil {
		return err
	}
	hello.Kinds = kinds
	sess, err := wb.Connect(hello, tenants)
	if err != nil {
		return ToStatus(err)
	}
	defer sess.Close()
	if err := stream.Send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Welcome{Welcome: &hodeiv1.ServerWelcome{
		NodeId: s.a.b.NodeID(), TtlMs: sess.TTL().Milliseconds(), MaxSlots: int32(wb.MaxSlots()),
	}}}); err != nil {
		return err
	}
	ctx := stream.Context()
	sendErr := make(chan error, 1)
	sent := make(chan struct{}, 1) // the sender emptied the outbox once more
	sendCtx, stopSend := context.WithCancel(ctx)
	defer stopSend()
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		for {
			select {
			case <-sendCtx.Done():
				return
			case <-sess.Ready():
			}
			for _, m := range sess.Messages() {
				if err := stream.Send(m); err != nil {
					sendErr <- err
					return
				}
			}
			select {
			case sent <- struct{}{}:
			default:
			}
		}
	}()
	extends := make(chan []*hodeiv1.LeaseRef, 4)
	extendDone := make(chan struct{})
	go func() {
		defer close(extendDone)
		for refs := range extends {
			sess.Extend(ctx, refs)
		}
	}()
	defer func() { close(extends); <-extendDone }()

	recvd := make(chan *hodeiv1.WorkerMessage)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case recvd <- m:
			case <-sendCtx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-sess.Done():
			return status.Error(codes.Unavailable, "node is shutting down; reconnect to another node")
		case err := <-sendErr:
			return err
		case err := <-recvErr:
			if !errors.Is(err, io.EOF) {
				return err
			}
			// The worker closed its side: answer the completions it sent.
			if err := flushStream(ctx, sess, sent, sendErr); err != nil {
				return err
			}
			stopSend()
			<-senderDone
			for _, m := range sess.Messages() {
				if err := stream.Send(m); err != nil {
					return err
				}
			}
			return nil
		case m := <-recvd:
			if err := s.handleWorkerMessage(ctx, sess, m, extends); err != nil {
				return err
			}
		}
	}
}

// handleWorkerMessage validates one stream message and hands it on. An
// error ends the stream (and only it); nothing of the bad message is used.
func (s *workerService) handleWorkerMessage(ctx context.Context, sess WorkerSession, m *hodeiv1.WorkerMessage, extends chan<- []*hodeiv1.LeaseRef) error {
	switch k := m.GetMsg().(type) {
	case *hodeiv1.WorkerMessage_Hello:
		return invalid("hello sent twice on one stream")
	case *hodeiv1.WorkerMessage_Slots:
		if n := k.Slots.GetSlots(); n < 1 || n > maxStreamItems {
			return invalid("slots must be in 1..%d, got %d", maxStreamItems, n)
		}
		return ToStatus(sess.AddSlots(int(k.Slots.GetSlots())))
	case *hodeiv1.WorkerMessage_Completions:
		cs := k.Completions.GetCompletions()
		if err := validateCompletions(cs); err != nil {
			return err
		}
		cs, refused := s.a.splitCompletions(ctx, cs)
		sess.Refuse(refused, nil)
		if len(cs) > 0 {
			sess.Complete(cs)
		}
	case *hodeiv1.WorkerMessage_Extend:
		refs := k.Extend.GetLeases()
		if len(refs) > maxStreamItems {
			return invalid("extend carries %d leases, limit %d", len(refs), maxStreamItems)
		}
		for i, r := range refs {
			if r.GetJobId() == "" || r.GetToken() == 0 {
				return invalid("extend lease %d: job_id and token are required", i)
			}
		}
		refs, refused := s.a.splitExtends(ctx, refs)
		sess.Refuse(nil, refused)
		if len(refs) == 0 {
			return nil
		}
		select {
		case extends <- refs:
		default:
			// Heartbeats are still in flight: this one is redundant.
		}
	case *hodeiv1.WorkerMessage_Logs:
		s.handleWorkerLogs(k.Logs)
	default:
		return invalid("empty or unknown worker message")
	}
	return nil
}

func validateCompletions(cs []*hodeiv1.Completion) error {
	if len(cs) == 0 || len(cs) > maxStreamItems {
		return invalid("completions: %d items, want 1..%d", len(cs), maxStreamItems)
	}
	for i, c := range cs {
		if c.GetJobId() == "" {
			return invalid("completion %d: job_id is required", i)
		}
	}
	return nil
}

// flushStream sends the outcomes of the completions a worker sent before
// it closed its side of the stream.
func flushStream(ctx context.Context, sess WorkerSession, sent <-chan struct{}, sendErr <-chan error) error {
	t := time.NewTimer(streamFlushTimeout)
	defer t.Stop()
	for sess.Pending() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-sendErr:
			return err
		case <-t.C:
			return status.Error(codes.DeadlineExceeded, "completions still unanswered when the stream closed")
		case <-sess.Done():
			return status.Error(codes.Unavailable, "node is shutting down")
		case <-sent:
		}
	}
	return nil
}

// CompleteJobs records a batch of completions for a caller without a
// stream; forwarded (pinned to a shard) it runs on that shard's leader.
func (s *workerService) CompleteJobs(ctx context.Context, req *hodeiv1.CompleteJobsRequest) (*hodeiv1.CompleteJobsResponse, error) {
	wb := s.a.workers
	if wb == nil {
		return nil, status.Error(codes.Unavailable, "this node is starting: no dispatcher yet")
	}
	if err := validateCompletions(req.GetCompletions()); err != nil {
		return nil, err
	}
	if sh, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		res, err := wb.CompleteShard(ctx, sh, req.GetCompletions())
		if err != nil {
			return nil, s.notProposedTrailer(ctx, err)
		}
		return &hodeiv1.CompleteJobsResponse{Results: res}, nil
	}
	ok, refused := s.a.splitCompletions(ctx, req.GetCompletions()) // auth: another tenant's jobs
	if len(refused) > 0 {
		return s.completeSome(ctx, req.GetCompletions(), ok, refused)
	}
	res, err := wb.CompleteJobs(ctx, req.GetCompletions())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.CompleteJobsResponse{Results: res}, nil
}

// LeaseFor is node to node: another node's dispatcher leases for its
// workers from a shard this node leads.
func (s *workerService) LeaseFor(ctx context.Context, req *hodeiv1.LeaseForRequest) (*hodeiv1.LeaseForResponse, error) {
	wb := s.a.workers
	if wb == nil {
		return nil, status.Error(codes.Unavailable, "this node is starting: no dispatcher yet")
	}
	sh, ok := pinnedShard(ctx)
	if !ok {
		return nil, invalid("LeaseFor is node to node: it must be pinned to a shard (%s)", mdShard)
	}
	if req.GetRequestId() == "" {
		return nil, invalid("request_id is required")
	}
	if n := len(req.GetDemands()); n == 0 || n > maxLeaseDemand {
		return nil, invalid("%d demands, want 1..%d", n, maxLeaseDemand)
	}
	grants, err := wb.LeaseFor(ctx, sh, req)
	if err != nil {
		return nil, s.notProposedTrailer(ctx, err)
	}
	return &hodeiv1.LeaseForResponse{Grants: grants}, nil
}

// notProposedTrailer maps err and, when nothing was proposed, says so in a
// trailer: the calling node may move on instead of retrying.
func (s *workerService) notProposedTrailer(ctx context.Context, err error) error {
	if proposedNothing(err) {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(mdLeaseNotProposed, "1"))
	}
	return ToStatus(err)
}

// Forwarder makes the node-to-node calls of a node's dispatcher to other
// shards' leaders. notProposed is true when the leader said it proposed
// nothing.
type Forwarder struct {
	pool *Pool
}

// NewForwarder returns a Forwarder over pool.
func NewForwarder(pool *Pool) *Forwarder { return &Forwarder{pool: pool} }

func (f *Forwarder) call(ctx context.Context, addr string, shard uint32, do func(ctx context.Context, c hodeiv1.WorkerServiceClient, opt grpc.CallOption) error) (notProposed bool, err error) {
	cc, err := f.pool.Get(addr)
	if err != nil {
		return true, status.Errorf(codes.Unavailable, "connect to leader %s: %v", addr, err)
	}
	var trailer metadata.MD
	err = do(forwardCtx(ctx, shard), hodeiv1.NewWorkerServiceClient(cc), grpc.Trailer(&trailer))
	if err != nil {
		return len(trailer.Get(mdLeaseNotProposed)) > 0, forwardErr(err)
	}
	return false, nil
}

// LeaseFor asks shard's leader at addr to lease for req's demands.
func (f *Forwarder) LeaseFor(ctx context.Context, addr string, shard uint32, req *hodeiv1.LeaseForRequest) ([]*hodeiv1.LeaseGrant, bool, error) {
	var resp *hodeiv1.LeaseForResponse
	np, err := f.call(ctx, addr, shard, func(ctx context.Context, c hodeiv1.WorkerServiceClient, opt grpc.CallOption) (err error) {
		resp, err = c.LeaseFor(ctx, req, opt)
		return err
	})
	return resp.GetGrants(), np, err
}

// CompleteJobs records completions on shard's leader at addr.
func (f *Forwarder) CompleteJobs(ctx context.Context, addr string, shard uint32, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, bool, error) {
	var resp *hodeiv1.CompleteJobsResponse
	np, err := f.call(ctx, addr, shard, func(ctx context.Context, c hodeiv1.WorkerServiceClient, opt grpc.CallOption) (err error) {
		resp, err = c.CompleteJobs(ctx, &hodeiv1.CompleteJobsRequest{Completions: items}, opt)
		return err
	})
	return resp.GetResults(), np, err
}

// ExtendLeases renews leases on shard's leader at addr.
func (f *Forwarder) ExtendLeases(ctx context.Context, addr string, shard uint32, req *hodeiv1.ExtendLeasesRequest) ([]*hodeiv1.ExtendResult, bool, error) {
	var resp *hodeiv1.ExtendLeasesResponse
	np, err := f.call(ctx, addr, shard, func(ctx context.Context, c hodeiv1.WorkerServiceClient, opt grpc.CallOption) (err error) {
		resp, err = c.ExtendLeases(ctx, req, opt)
		return err
	})
	return resp.GetResults(), np, err
}

// Rejected reports whether a forwarded call's error is a refusal of the
// request itself (retrying it unchanged cannot help).
func Rejected(err error) bool {
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound,
			codes.AlreadyExists, codes.OutOfRange, codes.PermissionDenied,
			codes.Unauthenticated, codes.Unimplemented, codes.ResourceExhausted:
			return true
		}
	}
	return false
}
