package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// fakeShards is a DispatchBackend over in-memory queues: deterministic
// tests of the dispatcher's policy without Raft. Hooks decide each call's
// fate.
type fakeShards struct {
	mu     sync.Mutex
	local  map[uint32]bool
	queue  map[uint32][]string // ready job ids per shard
	token  uint64
	grants map[string][]*hodeiv1.LeaseGrant // request id -> first answer (the FSM's dedup)
	calls  []*hodeiv1.LeaseForRequest
	done   map[string]bool // job id + token accepted
	leased map[string]uint64
	ccalls [][]*hodeiv1.Completion
	// stealSaw records, for each call to a shard led elsewhere, how many
	// jobs the shards led here still had ready.
	stealSaw []int
	// leaseHook may replace a lease call's outcome after it was applied
	// (applied=false: not applied at all).
	leaseHook    func(n int, req *hodeiv1.LeaseForRequest) (apply bool, err error)
	completeHook func(n int) error
	clock        *fakeClock
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newFake(shards int) *fakeShards {
	f := &fakeShards{local: map[uint32]bool{}, queue: map[uint32][]string{}, grants: map[string][]*hodeiv1.LeaseGrant{},
		done: map[string]bool{}, leased: map[string]uint64{}, clock: &fakeClock{now: time.Unix(1000, 0)}}
	for i := 0; i < shards; i++ {
		f.local[uint32(i)] = true
	}
	return f
}

func (f *fakeShards) add(sh uint32, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 0; i < n; i++ {
		f.queue[sh] = append(f.queue[sh], fmt.Sprintf("%d-%d", sh, len(f.leased)+len(f.queue[sh])+1))
	}
}

func (f *fakeShards) ShardCount() int { return len(f.local) }
func (f *fakeShards) Leader(sh uint32) (bool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.local[sh], true
}
func (f *fakeShards) Ready(sh uint32) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.queue[sh])
}
func (f *fakeShards) ReadyFor(sh uint32, _ []*hodeiv1.KeyValue, _ []string, _ []string) bool {
	return f.Ready(sh) > 0
}
func (f *fakeShards) ShardOfJob(id string) (uint32, error) {
	sh, _, err := fsm.ParseJobID(id)
	return sh, err
}

func (f *fakeShards) Lease(_ context.Context, sh uint32, req *hodeiv1.LeaseForRequest) ([]*hodeiv1.LeaseGrant, error) {
	f.mu.Lock()
	f.calls = append(f.calls, req)
	n := len(f.calls)
	if !f.local[sh] {
		left := 0
		for s, l := range f.local {
			if l {
				left += len(f.queue[s])
			}
		}
		f.stealSaw = append(f.stealSaw, left)
	}
	hook := f.leaseHook
	f.mu.Unlock()
	apply, err := true, error(nil)
	if hook != nil {
		apply, err = hook(n, req)
	}
	if !apply {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.grants[req.GetRequestId()]
	if !ok {
		for _, d := range req.GetDemands() {
			lg := &hodeiv1.LeaseGrant{WorkerId: d.GetWorkerId()}
			for k := 0; k < int(d.GetCapacity()) && len(f.queue[sh]) > 0; k++ {
				id := f.queue[sh][0]
				f.queue[sh] = f.queue[sh][1:]
				f.token++
				f.leased[id] = f.token
				lg.Leases = append(lg.Leases, &hodeiv1.Lease{Job: &hodeiv1.Job{Id: id}, Token: f.token})
			}
			g = append(g, lg)
		}
		f.grants[req.GetRequestId()] = g
	}
	return g, err
}

func (f *fakeShards) Complete(_ context.Context, sh uint32, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error) {
	f.mu.Lock()
	f.ccalls = append(f.ccalls, items)
	n := len(f.ccalls)
	hook := f.completeHook
	f.mu.Unlock()
	if hook != nil {
		if err := hook(n); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*hodeiv1.CompletionResult, len(items))
	for i, it := range items {
		r := &hodeiv1.CompletionResult{JobId: it.GetJobId(), Token: it.GetToken()}
		if f.leased[it.GetJobId()] == it.GetToken() {
			r.Ok, r.State = true, hodeiv1.JobState_JOB_STATE_SUCCEEDED
			f.done[it.GetJobId()] = true
		} else {
			r.Code, r.Reason = "FAILED_PRECONDITION", "stale lease token"
		}
		out[i] = r
	}
	return out, nil
}

func (f *fakeShards) Extend(_ context.Context, _ uint32, req *hodeiv1.ExtendLeasesRequest) ([]*hodeiv1.ExtendResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*hodeiv1.ExtendResult
	for _, r := range req.GetLeases() {
		out = append(out, &hodeiv1.ExtendResult{JobId: r.GetJobId(), Ok: f.leased[r.GetJobId()] == r.GetToken() && !f.done[r.GetJobId()]})
	}
	return out, nil
}

func (f *fakeShards) leaseCalls() []*hodeiv1.LeaseForRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*hodeiv1.LeaseForRequest(nil), f.calls...)
}

func newTestDispatcher(t *testing.T, f *fakeShards) *Dispatcher {
	t.Helper()
	cfg := DefaultDispatcherConfig()
	cfg.NodeID = "n1"
	cfg.Now = f.clock.Now
	cfg.RetryBackoff = time.Microsecond
	cfg.RetryBackoffMax = time.Microsecond
	cfg.Recheck = time.Hour // only wake-ups move the lanes
	d, err := NewDispatcher(cfg, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d
}

// collect gathers what a session receives until cond holds.
type inbox struct {
	mu        sync.Mutex
	leases    []*hodeiv1.Lease
	completed []*hodeiv1.CompletionResult
	extended  []*hodeiv1.ExtendResult
	cancels   []*hodeiv1.LeaseRef
	drain     string
}

func (in *inbox) pull(s *Session) {
	o := s.Take()
	in.mu.Lock()
	defer in.mu.Unlock()
	in.leases = append(in.leases, o.Leases...)
	in.completed = append(in.completed, o.Completed...)
	in.extended = append(in.extended, o.Extended...)
	in.cancels = append(in.cancels, o.Cancels...)
	if o.Drain != "" {
		in.drain = o.Drain
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func connect(t *testing.T, d *Dispatcher, id string, slots int) (*Session, *inbox) {
	t.Helper()
	s, err := d.Connect(WorkerInfo{ID: id}, slots)
	if err != nil {
		t.Fatal(err)
	}
	return s, &inbox{}
}

// One lease call per shard round serves every connected worker, and no
// worker gets more than its credit.
func TestDispatcherOneCallServesManyWorkers(t *testing.T) {
	f := newFake(1)
	d := newTestDispatcher(t, f)
	var ss []*Session
	var ins []*inbox
	for i := 0; i < 10; i++ {
		s, in := connect(t, d, fmt.Sprintf("w%d", i), 3)
		ss, ins = append(ss, s), append(ins, in)
	}
	f.add(0, 100)
	d.WakeShard(0)
	waitUntil(t, "every worker to get 3 leases", func() bool {
		for i, s := range ss {
			ins[i].pull(s)
			if len(ins[i].leases) < 3 {
				return false
			}
		}
		return true
	})
	for i := range ss {
		if n := len(ins[i].leases); n != 3 {
			t.Fatalf("worker %d got %d leases with 3 slots", i, n)
		}
	}
	calls := f.leaseCalls()
	if len(calls) != 1 || len(calls[0].GetDemands()) != 10 {
		t.Fatalf("%d lease calls (first with %d demands), want 1 call for 10 workers", len(calls), len(calls[0].GetDemands()))
	}
	if f.Ready(0) != 70 {
		t.Fatalf("%d jobs left, want 70", f.Ready(0))
	}
	// A freed slot brings exactly one more.
	if err := ss[0].AddSlots(1); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "one more lease", func() bool { ins[0].pull(ss[0]); return len(ins[0].leases) == 4 })
}

// F6: a lease call whose outcome is unknown (its reply lost after the grant
// was committed) is retried under the same request id, with resolve set,
// and the original grant reaches the worker: nothing is orphaned.
func TestDispatcherResolvesUnknownLeaseWithSameID(t *testing.T) {
	f := newFake(1)
	f.leaseHook = func(n int, req *hodeiv1.LeaseForRequest) (bool, error) {
		if n == 1 {
			return true, errors.New("reply lost") // committed, but the caller does not know
		}
		if !req.GetResolve() {
			return false, errors.New("retry without resolve")
		}
		return true, nil
	}
	d := newTestDispatcher(t, f)
	s, in := connect(t, d, "w", 5)
	f.add(0, 5)
	d.WakeShard(0)
	waitUntil(t, "the original grant", func() bool { in.pull(s); return len(in.leases) == 5 })
	calls := f.leaseCalls()
	if len(calls) < 2 || calls[0].GetRequestId() != calls[1].GetRequestId() {
		t.Fatalf("calls %v: the retry must reuse the request id", calls)
	}
	if f.leased[in.leases[0].GetJob().GetId()] != in.leases[0].GetToken() {
		t.Fatal("the worker got other tokens than the committed grant's")
	}
}

// A lease call that proposed nothing (no leader, not the leader) is not
// retried under its id; the demand returns and the next round uses a new id.
func TestDispatcherNotProposedMovesOn(t *testing.T) {
	f := newFake(1)
	f.leaseHook = func(n int, req *hodeiv1.LeaseForRequest) (bool, error) {
		if n == 1 {
			return false, fmt.Errorf("%w: not the leader", ErrNotProposed)
		}
		return true, nil
	}
	d := newTestDispatcher(t, f)
	s, in := connect(t, d, "w", 2)
	f.add(0, 2)
	d.WakeShard(0)
	waitUntil(t, "one call", func() bool { return len(f.leaseCalls()) >= 1 })
	d.WakeShard(0)
	waitUntil(t, "the leases of the second round", func() bool { in.pull(s); return len(in.leases) == 2 })
	calls := f.leaseCalls()
	if len(calls) != 2 || calls[0].GetRequestId() == calls[1].GetRequestId() || calls[1].GetResolve() {
		t.Fatalf("want a second round under a new id without resolve: %v", calls)
	}
}

// An outcome that stays unknown past ResolveFor is given up (logged): the
// worker's credit comes back for the next round.
func TestDispatcherGivesUpUnknownLeaseAfterResolveFor(t *testing.T) {
	f := newFake(1)
	f.leaseHook = func(n int, req *hodeiv1.LeaseForRequest) (bool, error) {
		if req.GetRequestId() == f.leaseCalls()[0].GetRequestId() {
			f.clock.advance(time.Second) // each try takes a second of the fake clock
			return false, errors.New("timeout")
		}
		return true, nil
	}
	d := newTestDispatcher(t, f)
	s, in := connect(t, d, "w", 1)
	f.add(0, 1)
	d.WakeShard(0)
	waitUntil(t, "the first id to be given up", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(f.leaseCalls()) > 1 && s.reserved == 0
	})
	if n := len(f.leaseCalls()); n < 4 || n > 6 {
		t.Fatalf("gave up after %d calls, want retries for ResolveFor (4 s of 1 s tries)", n)
	}
	d.WakeShard(0)
	waitUntil(t, "the next round's lease", func() bool { in.pull(s); return len(in.leases) == 1 })
}

// Work stealing: a shard led elsewhere is asked only for the workers that
// no shard led here has work for.
func TestDispatcherStealsOnlyForIdleWorkers(t *testing.T) {
	f := newFake(2)
	f.local[1] = false // shard 1 is led by another node
	d := newTestDispatcher(t, f)
	s, in := connect(t, d, "w", 10)
	f.add(0, 3)
	f.add(1, 20)
	d.Wake()
	waitUntil(t, "all of shard 0 and then some of shard 1", func() bool { in.pull(s); return len(in.leases) == 10 })
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.queue[0]) != 0 || len(f.queue[1]) != 13 {
		t.Fatalf("left: shard 0 %d (want 0), shard 1 %d (want 13)", len(f.queue[0]), len(f.queue[1]))
	}
	for _, left := range f.stealSaw {
		if left != 0 {
			t.Fatalf("stole while shards led here had %d ready jobs for the worker", left)
		}
	}
}

// Completions of many sessions to one shard go in one call; a stale one is
// refused alone, and each result reaches its own session.
func TestDispatcherBatchesCompletions(t *testing.T) {
	f := newFake(1)
	block := make(chan struct{})
	f.completeHook = func(n int) error {
		if n == 1 {
			<-block // the first call is in flight while the rest queue
		}
		return nil
	}
	d := newTestDispatcher(t, f)
	f.add(0, 20)
	var ss []*Session
	var ins []*inbox
	for i := 0; i < 4; i++ {
		s, in := connect(t, d, fmt.Sprintf("w%d", i), 5)
		ss, ins = append(ss, s), append(ins, in)
	}
	d.WakeShard(0)
	waitUntil(t, "leases", func() bool {
		for i, s := range ss {
			ins[i].pull(s)
			if len(ins[i].leases) < 5 {
				return false
			}
		}
		return true
	})
	ss[0].Complete([]*hodeiv1.Completion{{JobId: ins[0].leases[0].GetJob().GetId(), Token: ins[0].leases[0].GetToken(), Success: true}})
	waitUntil(t, "the first call", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.ccalls) == 1 })
	for i, s := range ss {
		var items []*hodeiv1.Completion
		for k, l := range ins[i].leases {
			if i == 0 && k == 0 {
				continue
			}
			tok := l.GetToken()
			if i == 1 && k == 0 {
				tok += 1000 // stale
			}
			items = append(items, &hodeiv1.Completion{JobId: l.GetJob().GetId(), Token: tok, Success: true})
		}
		s.Complete(items)
	}
	close(block)
	waitUntil(t, "every result", func() bool {
		n := 0
		for i, s := range ss {
			ins[i].pull(s)
			n += len(ins[i].completed)
		}
		return n == 20
	})
	f.mu.Lock()
	calls := len(f.ccalls)
	f.mu.Unlock()
	if calls != 2 {
		t.Fatalf("%d complete calls, want 2 (one in flight, then one for everything queued)", calls)
	}
	for i := range ss {
		for _, r := range ins[i].completed {
			stale := i == 1 && r.GetJobId() == ins[1].leases[0].GetJob().GetId()
			if r.GetOk() == stale {
				t.Fatalf("worker %d result %v (stale=%v)", i, r, stale)
			}
		}
	}
}

// Completions are retried on errors (they are idempotent by token) and
// answered UNAVAILABLE after CompleteFor.
func TestDispatcherRetriesCompletions(t *testing.T) {
	f := newFake(1)
	f.completeHook = func(n int) error {
		if n < 3 {
			return errors.New("leader changed")
		}
		return nil
	}
	d := newTestDispatcher(t, f)
	f.add(0, 1)
	s, in := connect(t, d, "w", 1)
	d.WakeShard(0)
	waitUntil(t, "lease", func() bool { in.pull(s); return len(in.leases) == 1 })
	s.Complete([]*hodeiv1.Completion{{JobId: in.leases[0].GetJob().GetId(), Token: in.leases[0].GetToken(), Success: true}})
	waitUntil(t, "result", func() bool { in.pull(s); return len(in.completed) == 1 })
	if !in.completed[0].GetOk() || s.Pending() != 0 {
		t.Fatalf("result %v, pending %d", in.completed[0], s.Pending())
	}
	f.completeHook = func(int) error { f.clock.advance(time.Second); return errors.New("no quorum") }
	f.add(0, 1)
	s.AddSlots(1)
	waitUntil(t, "lease 2", func() bool { in.pull(s); return len(in.leases) == 2 })
	s.Complete([]*hodeiv1.Completion{{JobId: in.leases[1].GetJob().GetId(), Token: in.leases[1].GetToken(), Success: true}})
	waitUntil(t, "result 2", func() bool { in.pull(s); return len(in.completed) == 2 })
	if r := in.completed[1]; r.GetOk() || r.GetCode() != "UNAVAILABLE" {
		t.Fatalf("result after CompleteFor: %v", r)
	}
}

// A cancel applied on this node's replica reaches the session holding the job.
func TestDispatcherForwardsCancel(t *testing.T) {
	f := newFake(1)
	d := newTestDispatcher(t, f)
	f.add(0, 1)
	s, in := connect(t, d, "w", 1)
	d.WakeShard(0)
	waitUntil(t, "lease", func() bool { in.pull(s); return len(in.leases) == 1 })
	id := in.leases[0].GetJob().GetId()
	d.OnEvents(0, []fsm.Event{{JobID: id, From: hodeiv1.JobState_JOB_STATE_RUNNING, To: hodeiv1.JobState_JOB_STATE_CANCELLED}})
	waitUntil(t, "cancel", func() bool { in.pull(s); return len(in.cancels) == 1 })
	if c := in.cancels[0]; c.GetJobId() != id || c.GetToken() != in.leases[0].GetToken() {
		t.Fatalf("cancel %v", c)
	}
}

// Bad input from a worker is refused and changes nothing.
func TestDispatcherRefusesBadWorkerInput(t *testing.T) {
	f := newFake(1)
	d := newTestDispatcher(t, f)
	for _, tc := range []struct {
		info  WorkerInfo
		slots int
	}{
		{WorkerInfo{}, 1},
		{WorkerInfo{ID: "a"}, -1},
		{WorkerInfo{ID: "a"}, d.cfg.MaxSlots + 1},
		{WorkerInfo{ID: "a", Kinds: []string{"bad kind"}}, 1},
		{WorkerInfo{ID: "a", Labels: []*hodeiv1.KeyValue{{Key: ""}}}, 1},
		{WorkerInfo{ID: "a", TTL: -time.Second}, 1},
	} {
		if _, err := d.Connect(tc.info, tc.slots); !errors.Is(err, ErrInvalid) {
			t.Errorf("Connect(%+v, %d) = %v, want ErrInvalid", tc.info, tc.slots, err)
		}
	}
	s, _ := connect(t, d, "a", d.cfg.MaxSlots)
	if _, err := d.Connect(WorkerInfo{ID: "a"}, 1); !errors.Is(err, ErrWorkerConnected) {
		t.Fatalf("second hello: %v", err)
	}
	if err := s.AddSlots(1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("credit over MaxSlots: %v", err)
	}
	s.Close()
	if err := s.AddSlots(1); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("after close: %v", err)
	}
	if _, err := d.Connect(WorkerInfo{ID: "a"}, 1); err != nil {
		t.Fatalf("reconnect after close: %v", err)
	}
}

// Close waits for a lease call in flight for the session; its leases are in
// the outbox, not lost.
func TestDispatcherCloseSettlesInFlightLeases(t *testing.T) {
	f := newFake(1)
	entered := make(chan struct{})
	release := make(chan struct{})
	f.leaseHook = func(n int, _ *hodeiv1.LeaseForRequest) (bool, error) {
		if n == 1 {
			close(entered)
			<-release
		}
		return true, nil
	}
	d := newTestDispatcher(t, f)
	f.add(0, 2)
	s, in := connect(t, d, "w", 2)
	d.WakeShard(0)
	<-entered
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned with a lease call in flight")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	<-closed
	in.pull(s)
	if len(in.leases) != 2 {
		t.Fatalf("%d leases in the outbox after Close, want 2", len(in.leases))
	}
}

func TestDispatcherDrain(t *testing.T) {
	f := newFake(1)
	d := newTestDispatcher(t, f)
	s, in := connect(t, d, "w", 5)
	d.Drain("bye")
	in.pull(s)
	if in.drain != "bye" {
		t.Fatalf("drain %q", in.drain)
	}
	f.add(0, 5)
	d.WakeShard(0)
	if _, err := d.Connect(WorkerInfo{ID: "late"}, 1); !errors.Is(err, ErrDraining) {
		t.Fatalf("connect while draining: %v", err)
	}
	if err := s.AddSlots(1); err != nil {
		t.Fatal(err)
	}
	// No lease is made for a draining node's workers.
	if n := len(f.leaseCalls()); n != 0 {
		t.Fatalf("%d lease calls while draining", n)
	}
}

func TestDispatcherConfigValidate(t *testing.T) {
	if err := DefaultDispatcherConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultDispatcherConfig()
	c.MaxSlots, c.RetryBackoffMax = 0, time.Nanosecond
	if err := c.Validate(); err == nil {
		t.Fatal("want errors")
	}
}
