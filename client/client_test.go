package client

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeNode is a test double of a Hodei node's network face: it records the
// request ids it sees and fails the first failN calls with failCode.
type fakeNode struct {
	hodeiv1.UnimplementedJobServiceServer
	hodeiv1.UnimplementedWorkerServiceServer
	hodeiv1.UnimplementedAdminServiceServer

	mu       sync.Mutex
	name     string
	failN    int
	failCode codes.Code
	calls    int
	reqIDs   []string
	leaseDur time.Duration // how long Lease blocks
	hang     bool          // GetJob blocks until the call ends
}

func (f *fakeNode) record(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.reqIDs = append(f.reqIDs, id)
	if f.calls <= f.failN {
		return status.Error(f.failCode, "fake failure")
	}
	return nil
}

func (f *fakeNode) snapshot() (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, append([]string(nil), f.reqIDs...)
}

func (f *fakeNode) SubmitJob(_ context.Context, req *hodeiv1.SubmitJobRequest) (*hodeiv1.SubmitJobResponse, error) {
	if err := f.record(req.GetRequestId()); err != nil {
		return nil, err
	}
	return &hodeiv1.SubmitJobResponse{Job: &hodeiv1.Job{Id: f.name + "-job", Spec: req.GetSpec()}}, nil
}

func (f *fakeNode) SubmitJobs(_ context.Context, req *hodeiv1.SubmitJobsRequest) (*hodeiv1.SubmitJobsResponse, error) {
	if err := f.record(req.GetRequestId()); err != nil {
		return nil, err
	}
	out := &hodeiv1.SubmitJobsResponse{}
	for range req.GetSpecs() {
		out.Results = append(out.Results, &hodeiv1.SubmitJobResponse{Job: &hodeiv1.Job{Id: f.name}})
	}
	return out, nil
}

func (f *fakeNode) GetJob(ctx context.Context, req *hodeiv1.GetJobRequest) (*hodeiv1.GetJobResponse, error) {
	if err := f.record(""); err != nil {
		return nil, err
	}
	if f.hang {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &hodeiv1.GetJobResponse{Job: &hodeiv1.Job{Id: req.GetId(), Attempts: map[bool]int32{true: 1}[req.GetStale()]}}, nil
}

func (f *fakeNode) CancelJob(_ context.Context, req *hodeiv1.CancelJobRequest) (*hodeiv1.CancelJobResponse, error) {
	if err := f.record(req.GetRequestId()); err != nil {
		return nil, err
	}
	return &hodeiv1.CancelJobResponse{Job: &hodeiv1.Job{Id: req.GetId(), CancelReason: req.GetReason()}}, nil
}

func (f *fakeNode) Lease(ctx context.Context, req *hodeiv1.LeaseRequest) (*hodeiv1.LeaseResponse, error) {
	if err := f.record(req.GetRequestId()); err != nil {
		return nil, err
	}
	select {
	case <-time.After(f.leaseDur):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &hodeiv1.LeaseResponse{Leases: []*hodeiv1.Lease{{Token: 7}}}, nil
}

func (f *fakeNode) CompleteJob(_ context.Context, req *hodeiv1.CompleteJobRequest) (*hodeiv1.CompleteJobResponse, error) {
	if err := f.record(req.GetRequestId()); err != nil {
		return nil, err
	}
	return &hodeiv1.CompleteJobResponse{Job: &hodeiv1.Job{Id: req.GetJobId()}}, nil
}

// Status is not recorded (the client's routing asks for it on its own) and
// reports no shards, so calls are not routed.
func (f *fakeNode) Status(context.Context, *hodeiv1.StatusRequest) (*hodeiv1.StatusResponse, error) {
	return &hodeiv1.StatusResponse{NodeId: f.name}, nil
}

// serve starts f on a loopback listener and returns its address.
func serve(t *testing.T, f *fakeNode) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	hodeiv1.RegisterJobServiceServer(s, f)
	hodeiv1.RegisterWorkerServiceServer(s, f)
	hodeiv1.RegisterAdminServiceServer(s, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(lis) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return lis.Addr().String()
}

// deadAddr returns a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("no addresses accepted")
	}
	if _, err := New(Config{Addrs: []string{" "}}); err == nil {
		t.Fatal("blank address accepted")
	}
	c, err := New(Config{Addrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.CallTimeout != DefaultCallTimeout || c.cfg.Retry != DefaultRetry {
		t.Fatalf("defaults not applied: %+v", c.cfg)
	}
	_ = c.Close()
}

func TestFailoverFromDeadToLive(t *testing.T) {
	live := &fakeNode{name: "live"}
	c := newClient(t, Config{Addrs: []string{deadAddr(t), serve(t, live)}})
	resp, err := c.Submit(ctxT(t), &hodeiv1.JobSpec{Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetJob().GetId() != "live-job" {
		t.Fatalf("job %q", resp.GetJob().GetId())
	}
	// The client now sticks to the live node.
	if _, cur := c.current(); cur != c.cfg.Addrs[1] {
		t.Fatalf("current node %s, want the live one", cur)
	}
	if _, err := c.Get(ctxT(t), "x"); err != nil {
		t.Fatal(err)
	}
	if n, _ := live.snapshot(); n != 2 {
		t.Fatalf("live node saw %d calls, want 2", n)
	}
}

func TestHungNodeSkippedAfterAttemptTimeout(t *testing.T) {
	hung := &fakeNode{name: "hung", hang: true}
	live := &fakeNode{name: "live"}
	c := newClient(t, Config{Addrs: []string{serve(t, hung), serve(t, live)}, CallTimeout: 100 * time.Millisecond})
	j, err := c.Get(ctxT(t), "x")
	if err != nil || j.GetId() != "x" {
		t.Fatalf("get %v %v", j, err)
	}
	if n, _ := hung.snapshot(); n != 1 {
		t.Fatalf("hung node saw %d calls", n)
	}
}

func TestRequestIDReusedAcrossRetries(t *testing.T) {
	a := &fakeNode{name: "a", failN: 1000, failCode: codes.Unavailable}
	b := &fakeNode{name: "b", failN: 2, failCode: codes.Unavailable}
	c := newClient(t, Config{Addrs: []string{serve(t, a), serve(t, b)}})
	ctx := ctxT(t)

	check := func(what string, call func() error) {
		t.Helper()
		a.mu.Lock()
		a.calls, a.reqIDs = 0, nil
		a.mu.Unlock()
		b.mu.Lock()
		b.calls, b.reqIDs = 0, nil
		b.mu.Unlock()
		if err := call(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		_, ida := a.snapshot()
		_, idb := b.snapshot()
		ids := append(ida, idb...)
		if len(ids) < 3 || len(idb) != 3 {
			t.Fatalf("%s: calls a=%v b=%v", what, ida, idb)
		}
		for _, id := range ids {
			if id == "" || id != ids[0] {
				t.Fatalf("%s: request ids differ or empty: %q", what, ids)
			}
		}
	}
	var first string
	check("submit", func() error {
		_, err := c.Submit(ctx, &hodeiv1.JobSpec{Command: []string{"true"}})
		_, ids := b.snapshot()
		first = ids[0]
		return err
	})
	check("submit batch", func() error {
		rs, err := c.SubmitBatch(ctx, []*hodeiv1.JobSpec{{}, {}})
		if err == nil && len(rs) != 2 {
			t.Errorf("%d results", len(rs))
		}
		return err
	})
	check("cancel", func() error { _, err := c.Cancel(ctx, "j", "r"); return err })
	check("complete", func() error { _, err := c.Complete(ctx, &hodeiv1.CompleteJobRequest{JobId: "j"}); return err })
	check("lease", func() error { _, err := c.Lease(ctx, &hodeiv1.LeaseRequest{Capacity: 1}); return err })

	// Each logical call has its own id.
	_, ids := b.snapshot()
	if ids[0] == first {
		t.Fatal("two logical calls shared a request id")
	}
}

func TestCallerRequestIDKeptAndRequestNotModified(t *testing.T) {
	n := &fakeNode{name: "n", failN: 1, failCode: codes.Unavailable}
	c := newClient(t, Config{Addrs: []string{serve(t, n)}})
	req := &hodeiv1.CompleteJobRequest{JobId: "j", RequestId: "mine"}
	if _, err := c.Complete(ctxT(t), req); err != nil {
		t.Fatal(err)
	}
	if _, ids := n.snapshot(); len(ids) != 2 || ids[0] != "mine" || ids[1] != "mine" {
		t.Fatalf("ids %q", ids)
	}
	req2 := &hodeiv1.CompleteJobRequest{JobId: "j"}
	if _, err := c.Complete(ctxT(t), req2); err != nil {
		t.Fatal(err)
	}
	if req2.GetRequestId() != "" {
		t.Fatal("caller's request was modified")
	}
}

func TestNoRetryOnInvalidArgument(t *testing.T) {
	for _, code := range []codes.Code{codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition} {
		n := &fakeNode{name: "n", failN: 1000, failCode: code}
		m := &fakeNode{name: "m"}
		c := newClient(t, Config{Addrs: []string{serve(t, n), serve(t, m)}})
		_, err := c.Submit(ctxT(t), &hodeiv1.JobSpec{})
		if status.Code(err) != code {
			t.Fatalf("err %v, want code %v", err, code)
		}
		if st, _ := status.FromError(err); st.Message() != "fake failure" {
			t.Fatalf("error changed: %v", err)
		}
		if calls, _ := n.snapshot(); calls != 1 {
			t.Fatalf("%v: %d calls, want 1", code, calls)
		}
		if calls, _ := m.snapshot(); calls != 0 {
			t.Fatalf("%v: failed over", code)
		}
	}
}

func TestRetryBudgetEnds(t *testing.T) {
	n := &fakeNode{name: "n", failN: 1 << 30, failCode: codes.Unavailable}
	c := newClient(t, Config{Addrs: []string{serve(t, n), deadAddr(t)}, Retry: 300 * time.Millisecond})
	start := time.Now()
	_, err := c.Submit(ctxT(t), &hodeiv1.JobSpec{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v with a 300ms budget", d)
	}
	if calls, _ := n.snapshot(); calls < 2 {
		t.Fatalf("only %d calls on the live-but-failing node", calls)
	}
}

func TestContextEndsRetries(t *testing.T) {
	n := &fakeNode{name: "n", failN: 1 << 30, failCode: codes.Unavailable}
	c := newClient(t, Config{Addrs: []string{serve(t, n)}, Retry: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Get(ctx, "j")
	if err == nil || ctx.Err() == nil {
		t.Fatalf("err %v ctx %v", err, ctx.Err())
	}
}

func TestLeaseTimeoutIsWaitPlusSlack(t *testing.T) {
	n := &fakeNode{name: "n", leaseDur: 300 * time.Millisecond}
	c := newClient(t, Config{Addrs: []string{serve(t, n)}, CallTimeout: 50 * time.Millisecond, Retry: -1})
	resp, err := c.Lease(ctxT(t), &hodeiv1.LeaseRequest{Capacity: 1, WaitMs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetLeases()) != 1 {
		t.Fatalf("leases %v", resp.GetLeases())
	}
	// A normal call is bounded by CallTimeout, and with Retry<0 not retried.
	if _, err := c.Lease(ctxT(t), &hodeiv1.LeaseRequest{Capacity: 1, WaitMs: 0}); err != nil {
		// wait 0 => attempt timeout 5s, so this succeeds too
		t.Fatal(err)
	}
}

func TestGetStaleAndStatus(t *testing.T) {
	n := &fakeNode{name: "n1"}
	addr := serve(t, n)
	c := newClient(t, Config{Addrs: []string{deadAddr(t)}, Retry: 200 * time.Millisecond})
	// A pinned Status goes to the given node even when it is not in Addrs.
	st, err := c.Status(ctxT(t), addr)
	if err != nil || st.GetNodeId() != "n1" {
		t.Fatalf("status %v %v", st, err)
	}
	c2 := newClient(t, Config{Addrs: []string{addr}})
	j, err := c2.Get(ctxT(t), "id", Stale())
	if err != nil || j.GetAttempts() != 1 {
		t.Fatalf("stale get %v %v", j, err)
	}
	st, err = c2.Admin().Status(ctxT(t), &hodeiv1.StatusRequest{})
	if err != nil || st.GetNodeId() != "n1" {
		t.Fatalf("admin status %v %v", st, err)
	}
}

func TestClosed(t *testing.T) {
	c, err := New(Config{Addrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if _, err := c.Get(ctxT(t), "x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("err %v", err)
	}
	if _, err := c.Admin().Status(ctxT(t), &hodeiv1.StatusRequest{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("admin err %v", err)
	}
}

func TestIsRetryable(t *testing.T) {
	cases := map[error]bool{
		nil:                                      false,
		status.Error(codes.Unavailable, ""):      true,
		status.Error(codes.DeadlineExceeded, ""): true,
		status.Error(codes.ResourceExhausted, ""):  true,
		status.Error(codes.Aborted, ""):            true,
		status.Error(codes.InvalidArgument, ""):    false,
		status.Error(codes.NotFound, ""):           false,
		status.Error(codes.FailedPrecondition, ""): false,
		status.Error(codes.Canceled, ""):           false,
		errors.New("connection reset"):             true,
		context.Canceled:                           false,
		ErrClosed:                                  false,
	}
	for err, want := range cases {
		if got := IsRetryable(err); got != want {
			t.Errorf("IsRetryable(%v) = %v, want %v", err, got, want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	for n := 0; n < 20; n++ {
		d := backoff(n)
		if d < backoffMin/2 || d > backoffMax {
			t.Fatalf("backoff(%d) = %v", n, d)
		}
	}
}
