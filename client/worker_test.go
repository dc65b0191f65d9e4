package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// waitCond polls cond until it holds, failing the test after a deadline.
func waitCond(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type workerTestLog struct{ t testing.TB }

func (l workerTestLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// workerRun is a Worker running against fake nodes.
type workerRun struct {
	w      *Worker
	cancel context.CancelFunc
	done   chan error
}

// startTestWorker runs a worker on addrs; setup registers handlers and
// adjusts tunables before Run.
func startTestWorker(t *testing.T, addrs []string, cfg WorkerConfig, setup func(w *Worker)) *workerRun {
	t.Helper()
	c := newClient(t, Config{Addrs: addrs})
	if cfg.ID == "" {
		cfg.ID = "w1"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(workerTestLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	w, err := NewWorker(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	setup(w)
	ctx, cancel := context.WithCancel(context.Background())
	r := &workerRun{w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(60 * time.Second):
			t.Error("worker did not stop")
		}
	})
	return r
}

// stop cancels Run and waits for it to return within d.
func (r *workerRun) stop(t *testing.T, d time.Duration) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		r.done <- nil // for the cleanup
	case <-time.After(d):
		t.Fatalf("Run did not return within %v", d)
	}
}

func (w *Worker) isDraining() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.draining
}

func nopHandler(context.Context, *Job) error { return nil }

func kindJob(id, kind, payload string) *hodeiv1.Job {
	return &hodeiv1.Job{Id: id, Spec: &hodeiv1.JobSpec{Kind: kind, Payload: []byte(payload), Tenant: "t1"}}
}

func TestWorkerConfigValidateAndDefaults(t *testing.T) {
	if err := (WorkerConfig{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	bad := []WorkerConfig{
		{Concurrency: -1},
		{Concurrency: MaxWorkerConcurrency + 1},
		{LeaseTTL: 10 * time.Millisecond},
		{LeaseTTL: -time.Second},
		{DrainTimeout: -1},
		{Labels: map[string]string{"": "x"}},
	}
	for _, cfg := range bad {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	c := newClient(t, Config{Addrs: []string{"127.0.0.1:1"}})
	if _, err := NewWorker(nil, WorkerConfig{}); err == nil {
		t.Fatal("nil client accepted")
	}
	if _, err := NewWorker(c, WorkerConfig{Concurrency: -1}); err == nil {
		t.Fatal("bad config accepted")
	}
	cfg := WorkerConfig{}
	w, err := NewWorker(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ID != "" || cfg.Concurrency != 0 || cfg.Logger != nil {
		t.Fatal("NewWorker changed the caller's config")
	}
	if w.cfg.Concurrency != DefaultWorkerConcurrency || w.cfg.LeaseTTL != DefaultLeaseTTL ||
		w.cfg.DrainTimeout != DefaultDrainTimeout || w.cfg.Logger == nil ||
		!strings.Contains(w.ID(), "-"+strconv.Itoa(os.Getpid())+"-") {
		t.Fatalf("defaults %+v", w.cfg)
	}
	if err := w.Run(context.Background()); err == nil {
		t.Fatal("Run without handlers")
	}
}

func TestWorkerHandlePanics(t *testing.T) {
	c := newClient(t, Config{Addrs: []string{"127.0.0.1:1"}})
	w, err := NewWorker(c, WorkerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	mustPanic := func(what string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", what)
			}
		}()
		f()
	}
	w.Handle("", nopHandler)
	mustPanic("duplicate (\"\" is shell)", func() { w.Handle(KindShell, nopHandler) })
	mustPanic("invalid kind", func() { w.Handle("a b", nopHandler) })
	mustPanic("long kind", func() { w.Handle(strings.Repeat("k", 129), nopHandler) })
	mustPanic("nil handler", func() { w.Handle("k", nil) })
	w.Handle("a.b:c/d-e_f", nopHandler)
	w.started.Store(true)
	mustPanic("after Run", func() { w.Handle("late", nopHandler) })
}

func TestNoRetry(t *testing.T) {
	base := errors.New("bad input")
	err := fmt.Errorf("wrapped: %w", NoRetry(base))
	var nr *NoRetryError
	if !errors.Is(err, ErrNoRetry) || !errors.Is(err, base) || !errors.As(err, &nr) || nr.Err != base {
		t.Fatalf("NoRetry not detectable: %v", err)
	}
	if err.Error() != "wrapped: bad input" {
		t.Fatalf("message %q", err)
	}
	if NoRetry(nil) != nil {
		t.Fatal("NoRetry(nil) != nil")
	}
	if errors.Is(base, ErrNoRetry) {
		t.Fatal("plain error taken for NoRetry")
	}
}

func TestWorkerHello(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	r := startTestWorker(t, []string{addr}, WorkerConfig{
		ID: "w-hello", Concurrency: 3, LeaseTTL: 2 * time.Second,
		Labels: map[string]string{"zone": "a", "gpu": "no"},
	}, func(w *Worker) {
		w.Handle("b", nopHandler)
		w.Handle("", nopHandler)
		w.Handle("a", nopHandler)
	})
	waitCond(t, "the stream", func() bool { return r.w.Stats().Streams == 1 })
	var h *hodeiv1.WorkerHello
	f.with(func() { h = f.hellos[0] })
	var labels []string
	for _, kv := range h.GetLabels() {
		labels = append(labels, kv.GetKey()+"="+kv.GetValue())
	}
	if h.GetWorkerId() != "w-hello" || h.GetSlots() != 3 || h.GetTtlMs() != 2000 ||
		!slices.Equal(h.GetKinds(), []string{"a", "b", "shell"}) || !slices.Equal(labels, []string{"gpu=no", "zone=a"}) {
		t.Fatalf("hello %v", h)
	}
	r.stop(t, 5*time.Second)
	f.with(func() {
		if f.closedSend != 1 {
			t.Errorf("stream not closed cleanly (%d)", f.closedSend)
		}
	})
}

func TestWorkerResults(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	var shellSeen atomic.Value
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 4}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			switch string(j.Payload()) {
			case "ok":
				j.SetOutput([]byte("out"))
				j.SetExitCode(0)
				return nil
			case "fail":
				j.SetExitCode(2)
				return errors.New("boom")
			case "noretry":
				return fmt.Errorf("wrapped: %w", NoRetry(errors.New("bad input")))
			case "panic":
				j.SetOutput([]byte("before"))
				panic("kaboom")
			}
			return errors.New("unexpected payload")
		})
		w.Handle(KindShell, func(ctx context.Context, j *Job) error {
			shellSeen.Store(fmt.Sprintf("%s %s %s %d %v", j.ID(), j.Kind(), j.Tenant(), j.Attempt(), j.Token() == j.Proto().GetLeaseToken() && j.Token() != 0))
			j.SetOutput([]byte(strings.Repeat("x", MaxOutput+10)))
			return nil
		})
	})
	f.submit(kindJob("ok", "k", "ok"), kindJob("fail", "k", "fail"), kindJob("noretry", "k", "noretry"),
		kindJob("panic", "k", "panic"), kindJob("sh", "", ""), kindJob("unknown", "nope", ""))
	waitCond(t, "6 recorded outcomes", func() bool { st := r.w.Stats(); return st.Succeeded+st.Failed == 6 })

	one := func(id string) *hodeiv1.Completion {
		t.Helper()
		cs := f.completionsOf(id)
		if len(cs) != 1 {
			t.Fatalf("%s: %d completions", id, len(cs))
		}
		if cs[0].GetToken() == 0 || cs[0].GetResult().GetWorkerId() != "w1" {
			t.Fatalf("%s: %v", id, cs[0])
		}
		return cs[0]
	}
	if c := one("ok"); !c.GetSuccess() || string(c.GetResult().GetOutput()) != "out" || c.GetResult().GetError() != "" ||
		c.GetResult().GetStartedAtMs() == 0 || c.GetResult().GetFinishedAtMs() < c.GetResult().GetStartedAtMs() {
		t.Errorf("ok: %v", c)
	}
	if c := one("fail"); c.GetSuccess() || !c.GetRetryable() || c.GetResult().GetError() != "boom" || c.GetResult().GetExitCode() != 2 {
		t.Errorf("fail: %v", c)
	}
	if c := one("noretry"); c.GetSuccess() || c.GetRetryable() || c.GetResult().GetError() != "wrapped: bad input" {
		t.Errorf("noretry: %v", c)
	}
	if c := one("panic"); c.GetSuccess() || !c.GetRetryable() ||
		!strings.HasPrefix(c.GetResult().GetError(), "panic: kaboom") || !strings.Contains(c.GetResult().GetError(), "goroutine ") ||
		!strings.HasPrefix(string(c.GetResult().GetOutput()), "before\npanic: kaboom") {
		t.Errorf("panic: %v", c)
	}
	if c := one("sh"); !c.GetSuccess() || len(c.GetResult().GetOutput()) != MaxOutput {
		t.Errorf("shell: success %v, output %d bytes", c.GetSuccess(), len(c.GetResult().GetOutput()))
	}
	if got := shellSeen.Load(); got != "sh shell t1 1 true" {
		t.Errorf("shell job seen as %q", got)
	}
	if c := one("unknown"); c.GetSuccess() || !c.GetRetryable() || !strings.Contains(c.GetResult().GetError(), `no handler for kind "nope"`) {
		t.Errorf("unknown kind: %v", c)
	}
	st := r.w.Stats()
	if st.Leased != 6 || st.Succeeded != 2 || st.Failed != 4 || st.Panics != 1 || st.Rejected != 1 || st.Lost != 0 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
	// The slot of the rejectedCompletion lease came back: the node holds full credit.
	waitCond(t, "full credit", func() bool {
		var c int
		f.with(func() { c = f.credit })
		return c == 4
	})
}

func TestWorkerCreditNeverExceeded(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	var cur, peak atomic.Int32
	const n = 60
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 3}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			c := cur.Add(1)
			for {
				p := peak.Load()
				if c <= p || peak.CompareAndSwap(p, c) {
					break
				}
			}
			time.Sleep(time.Millisecond) // work, not synchronisation
			cur.Add(-1)
			return nil
		})
	})
	for i := range n {
		f.submit(kindJob(strconv.Itoa(i), "k", ""))
	}
	waitCond(t, "all jobs", func() bool { return r.w.Stats().Succeeded == n })
	f.with(func() {
		if f.maxOutstanding > 3 {
			t.Errorf("credit + unfinished leases reached %d with 3 slots", f.maxOutstanding)
		}
		if len(f.slotsMsgs) == 0 {
			t.Error("no WorkerSlots sent")
		}
	})
	if p := peak.Load(); p > 3 {
		t.Fatalf("%d handlers at once with concurrency 3", p)
	}
}

func TestWorkerBatchesCompletions(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	const n = 8
	var started atomic.Int32
	gate := make(chan struct{})
	var released atomic.Bool
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: n}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			started.Add(1)
			<-gate
			return nil
		})
		// Once released, hold the sender until all n completions are
		// queued: they must then go in one message.
		w.testHookTake = func() {
			if !released.Load() {
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				w.mu.Lock()
				p := len(w.pending)
				w.mu.Unlock()
				if p == 0 || p == n {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}
	})
	for i := range n {
		f.submit(kindJob(strconv.Itoa(i), "k", ""))
	}
	waitCond(t, "all running", func() bool { return started.Load() == n })
	released.Store(true)
	close(gate)
	waitCond(t, "all recorded", func() bool { return r.w.Stats().Succeeded == n })
	f.with(func() {
		if !slices.Equal(f.complMsgs, []int{n}) {
			t.Fatalf("completion messages %v, want one of %d", f.complMsgs, n)
		}
	})
}

func TestWorkerCancelNotice(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	causes := make(chan error, 1)
	running := make(chan struct{})
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 2}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			close(running)
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return ctx.Err()
		})
	})
	f.submit(kindJob("c", "k", ""))
	<-running
	var tok uint64
	f.with(func() { tok = f.token })
	// A notice with a stale token is ignored; the right one cancels.
	f.send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Cancel{Cancel: &hodeiv1.ServerCancel{
		Leases: []*hodeiv1.LeaseRef{{JobId: "c", Token: tok + 100}}, Reason: "stale"}}})
	f.send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Cancel{Cancel: &hodeiv1.ServerCancel{
		Leases: []*hodeiv1.LeaseRef{{JobId: "c", Token: tok}}, Reason: "cancelled by user"}}})
	var cause error
	select {
	case cause = <-causes:
	case <-time.After(10 * time.Second):
		t.Fatal("job not cancelled")
	}
	if !errors.Is(cause, ErrJobCancelled) || !strings.Contains(cause.Error(), "cancelled by user") {
		t.Fatalf("cause %v", cause)
	}
	waitCond(t, "cancelled count", func() bool { return r.w.Stats().Cancelled == 1 })
	waitCond(t, "slot returned", func() bool {
		var c int
		f.with(func() { c = f.credit })
		return c == 2
	})
	r.stop(t, 5*time.Second)
	if cs := f.completionsOf("c"); len(cs) != 0 {
		t.Fatalf("cancelled job reported: %v", cs)
	}
}

func TestWorkerLeaseLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(f *fakeWorkerNode)
		want string
	}{
		{"refused extension", func(f *fakeWorkerNode) { f.lostJobs["l"] = true }, "fake: lease lost"},
		{"no extension answered", func(f *fakeWorkerNode) { f.ignoreExtends = true }, "whole TTL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeWorkerNode("n1")
			tc.set(f)
			addr := serveWorkerNode(t, f)
			causes := make(chan error, 1)
			r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 1, LeaseTTL: 300 * time.Millisecond}, func(w *Worker) {
				w.Handle("k", func(ctx context.Context, j *Job) error {
					<-ctx.Done()
					causes <- context.Cause(ctx)
					return ctx.Err()
				})
			})
			f.submit(kindJob("l", "k", ""))
			var cause error
			select {
			case cause = <-causes:
			case <-time.After(10 * time.Second):
				t.Fatal("job not stopped")
			}
			if !errors.Is(cause, ErrLeaseLost) || !strings.Contains(cause.Error(), tc.want) {
				t.Fatalf("cause %v", cause)
			}
			waitCond(t, "lost count", func() bool { st := r.w.Stats(); return st.Lost == 1 && st.InFlight == 0 })
			r.stop(t, 5*time.Second)
			if cs := f.completionsOf("l"); len(cs) != 0 {
				t.Fatalf("lost job reported: %v", cs)
			}
		})
	}
}

func TestWorkerDrainFinishesRunningJobs(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	gate := make(chan struct{})
	running := make(chan struct{})
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 2}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			close(running)
			select {
			case <-gate:
				j.SetOutput([]byte("done"))
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	})
	f.submit(kindJob("d", "k", ""))
	<-running
	r.cancel()
	waitCond(t, "draining", r.w.isDraining)
	var slotsBefore int
	f.with(func() { slotsBefore = len(f.slotsMsgs) })
	close(gate)
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatal(err)
		}
		r.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	cs := f.completionsOf("d")
	if len(cs) != 1 || !cs[0].GetSuccess() || string(cs[0].GetResult().GetOutput()) != "done" {
		t.Fatalf("completions %v", cs)
	}
	if st := r.w.Stats(); st.Succeeded != 1 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
	f.with(func() {
		if len(f.slotsMsgs) != slotsBefore {
			t.Errorf("credit given while draining: %v", f.slotsMsgs[slotsBefore:])
		}
		if f.closedSend != 1 {
			t.Errorf("stream not closed cleanly")
		}
	})
}

func TestWorkerDrainTimeout(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	running := make(chan struct{})
	causes := make(chan error, 1)
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 1, DrainTimeout: 200 * time.Millisecond}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			close(running)
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return ctx.Err()
		})
	})
	f.submit(kindJob("s", "k", ""))
	<-running
	start := time.Now()
	r.stop(t, 10*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("drain took %v", d)
	}
	if c := <-causes; !errors.Is(c, ErrDrainTimeout) {
		t.Fatalf("cause %v", c)
	}
	cs := f.completionsOf("s")
	if len(cs) != 1 || cs[0].GetSuccess() || !cs[0].GetRetryable() || !strings.Contains(cs[0].GetResult().GetError(), "drain timeout") {
		t.Fatalf("completions %v", cs)
	}
	if st := r.w.Stats(); st.Failed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWorkerDrainStuckHandler(t *testing.T) {
	f := newFakeWorkerNode("n1")
	addr := serveWorkerNode(t, f)
	running := make(chan struct{})
	gate := make(chan struct{})
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 1, DrainTimeout: 100 * time.Millisecond}, func(w *Worker) {
		w.grace = 200 * time.Millisecond
		w.Handle("k", func(ctx context.Context, j *Job) error {
			close(running)
			<-gate // ignores ctx
			return nil
		})
	})
	f.submit(kindJob("stuck", "k", ""))
	<-running
	r.stop(t, 10*time.Second)
	if st := r.w.Stats(); st.InFlight != 1 || st.Lost != 1 {
		t.Fatalf("stats %+v", st)
	}
	close(gate)
	waitCond(t, "the handler to return", func() bool { return r.w.Stats().InFlight == 0 })
}

func TestWorkerServerDrain(t *testing.T) {
	a, b := newFakeWorkerNode("a"), newFakeWorkerNode("b")
	addrs := []string{serveWorkerNode(t, a), serveWorkerNode(t, b)}
	gate := make(chan struct{})
	running := make(chan struct{})
	r := startTestWorker(t, addrs, WorkerConfig{Concurrency: 2}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			close(running)
			<-gate
			return nil
		})
	})
	waitCond(t, "the stream", func() bool { return r.w.Stats().Streams == 1 })
	first, second := a, b
	if b.helloCount() == 1 {
		first, second = b, a
	}
	first.submit(kindJob("j", "k", ""))
	<-running
	first.send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Drain{Drain: &hodeiv1.ServerDrain{Reason: "node leaving"}}})
	waitCond(t, "the drain noticed", func() bool {
		r.w.mu.Lock()
		defer r.w.mu.Unlock()
		return r.w.srvDrain
	})
	var slotsBefore int
	first.with(func() { slotsBefore = len(first.slotsMsgs) })
	close(gate)
	waitCond(t, "the completion, then a clean close", func() bool {
		var closed int
		first.with(func() { closed = first.closedSend })
		return closed == 1
	})
	if cs := first.completionsOf("j"); len(cs) != 1 || !cs[0].GetSuccess() {
		t.Fatalf("completions %v", cs)
	}
	first.with(func() {
		if len(first.slotsMsgs) != slotsBefore {
			t.Errorf("credit given on a draining stream: %v", first.slotsMsgs[slotsBefore:])
		}
	})
	waitCond(t, "a hello to the other node", func() bool { return second.helloCount() == 1 })
	second.with(func() {
		if s := second.hellos[0].GetSlots(); s != 2 {
			t.Errorf("hello slots %d, want 2", s)
		}
	})
	if st := r.w.Stats(); st.Succeeded != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWorkerReconnectResendsAndExtends(t *testing.T) {
	f := newFakeWorkerNode("n1")
	f.holdCompletions = true
	addr := serveWorkerNode(t, f)
	gate := make(chan struct{})
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 3, LeaseTTL: 3 * time.Second}, func(w *Worker) {
		w.Handle("k", func(ctx context.Context, j *Job) error {
			if string(j.Payload()) == "carry" {
				<-gate
			}
			return nil
		})
	})
	f.submit(kindJob("done", "k", ""), kindJob("carry", "k", "carry"))
	waitCond(t, "the unanswered completion", func() bool { return len(f.completionsOf("done")) == 1 })
	var tokDone, tokCarry uint64
	f.with(func() {
		tokDone, tokCarry = f.completions[0].GetToken(), f.token
		f.holdCompletions = false
	})
	f.cut()
	waitCond(t, "a second stream", func() bool { return r.w.Stats().Streams == 2 })
	f.with(func() {
		if s := f.hellos[1].GetSlots(); s != 2 {
			t.Errorf("reconnect hello slots %d, want 2 (one job running)", s)
		}
	})
	waitCond(t, "the completion re-sent and accepted", func() bool { return r.w.Stats().Succeeded == 1 })
	cs := f.completionsOf("done")
	if len(cs) != 2 || cs[1].GetToken() != tokDone || !cs[1].GetSuccess() {
		t.Fatalf("completions %v", cs)
	}
	waitCond(t, "the running job's lease extended on the new stream", func() bool {
		return slices.Equal(f.extendedOn(1, "carry"), []uint64{tokCarry})
	})
	close(gate)
	waitCond(t, "the carried job recorded", func() bool { return r.w.Stats().Succeeded == 2 })
	if cs := f.completionsOf("carry"); len(cs) != 1 || cs[0].GetToken() != tokCarry {
		t.Fatalf("carried completions %v", cs)
	}
	if st := r.w.Stats(); st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWorkerRetriesUnavailableCompletion(t *testing.T) {
	f := newFakeWorkerNode("n1")
	f.refuse["u"] = "UNAVAILABLE"
	f.refuse["stale"] = "FAILED_PRECONDITION"
	addr := serveWorkerNode(t, f)
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 2}, func(w *Worker) { w.Handle("k", nopHandler) })
	f.submit(kindJob("u", "k", ""), kindJob("stale", "k", ""))
	waitCond(t, "both settled", func() bool { st := r.w.Stats(); return st.Succeeded == 1 && st.Lost == 1 })
	if n := len(f.completionsOf("u")); n != 2 {
		t.Fatalf("unavailable completion sent %d times, want 2", n)
	}
	if n := len(f.completionsOf("stale")); n != 1 {
		t.Fatalf("refused completion sent %d times, want 1", n)
	}
}

func TestWorkerReconnectBacksOff(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(f *fakeWorkerNode)
	}{
		{"already exists", func(f *fakeWorkerNode) { f.rejectHellos, f.rejectCode = 4, codes.AlreadyExists }},
		{"invalid argument", func(f *fakeWorkerNode) { f.endAfterWelcome = codes.InvalidArgument }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeWorkerNode("n1")
			tc.set(f)
			addr := serveWorkerNode(t, f)
			r := startTestWorker(t, []string{addr}, WorkerConfig{}, func(w *Worker) { w.Handle("k", nopHandler) })
			waitCond(t, "5 hellos", func() bool { return f.helloCount() >= 5 })
			var at []time.Time
			f.with(func() { at = slices.Clone(f.helloAt) })
			for i := 1; i < 5; i++ {
				// Retry i waits at least half of min·2^(i-1).
				if gap, low := at[i].Sub(at[i-1]), (workerReconnectMin<<(i-1))/2; gap < low {
					t.Errorf("retry %d after %v, want ≥ %v", i, gap, low)
				}
			}
			if tc.name == "already exists" {
				waitCond(t, "the stream", func() bool { return r.w.Stats().Streams == 1 })
			}
			r.stop(t, 10*time.Second)
		})
	}
}

func TestWorkerKeepsToMaxSlots(t *testing.T) {
	f := newFakeWorkerNode("n1")
	f.maxSlots = 3
	addr := serveWorkerNode(t, f)
	const n = 40
	r := startTestWorker(t, []string{addr}, WorkerConfig{Concurrency: 10}, func(w *Worker) {
		w.backoffMin = time.Millisecond
		w.Handle("k", nopHandler)
	})
	for i := range n {
		f.submit(kindJob(strconv.Itoa(i), "k", ""))
	}
	waitCond(t, "all jobs", func() bool { return r.w.Stats().Succeeded == n })
	f.with(func() {
		// 10 refused, then 5, then 2 (under max_slots 3): accepted.
		if len(f.hellos) != 3 || f.hellos[2].GetSlots() != 2 {
			t.Errorf("%d hellos, last with %d slots", len(f.hellos), f.hellos[len(f.hellos)-1].GetSlots())
		}
		if f.overCredit != 0 {
			t.Errorf("credit went above max_slots %d times", f.overCredit)
		}
	})
}
