package worker

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeCluster is a test double of the cluster's WorkerService on loopback:
// a queue of jobs handed out by long-poll leases, heartbeats answered from a
// set of lost leases, and recorded completions.
type fakeCluster struct {
	hodeiv1.UnimplementedWorkerServiceServer

	mu           sync.Mutex
	queue        []*hodeiv1.Job
	wake         chan struct{} // closed and replaced when the queue grows
	token        uint64
	lost         map[string]bool // job id -> lease lost
	extends      map[string]int  // job id -> heartbeats seen
	completions  []*hodeiv1.CompleteJobRequest
	leasedAt     map[string]time.Time
	maxCapacity  int32
	pollStarted  time.Time  // when the latest Lease call arrived
	failComplete int        // fail this many CompleteJob calls with failCode
	failCode     codes.Code // code for failComplete
	completeSeen int        // CompleteJob calls, failed or not
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{wake: make(chan struct{}), lost: map[string]bool{}, extends: map[string]int{}, leasedAt: map[string]time.Time{}}
}

func (f *fakeCluster) submit(jobs ...*hodeiv1.Job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queue = append(f.queue, jobs...)
	close(f.wake)
	f.wake = make(chan struct{})
}

func (f *fakeCluster) Lease(ctx context.Context, req *hodeiv1.LeaseRequest) (*hodeiv1.LeaseResponse, error) {
	deadline := time.NewTimer(time.Duration(req.GetWaitMs()) * time.Millisecond)
	defer deadline.Stop()
	first := true
	for {
		f.mu.Lock()
		f.maxCapacity = max(f.maxCapacity, req.GetCapacity())
		if first {
			f.pollStarted, first = time.Now(), false
		}
		if len(f.queue) > 0 {
			n := min(int(req.GetCapacity()), len(f.queue))
			resp := &hodeiv1.LeaseResponse{}
			for _, j := range f.queue[:n] {
				f.token++
				f.leasedAt[j.GetId()] = time.Now()
				resp.Leases = append(resp.Leases, &hodeiv1.Lease{Job: j, Token: f.token, TtlMs: req.GetTtlMs()})
			}
			f.queue = f.queue[n:]
			f.mu.Unlock()
			return resp, nil
		}
		wake := f.wake
		f.mu.Unlock()
		select {
		case <-wake:
		case <-deadline.C:
			return &hodeiv1.LeaseResponse{}, nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (f *fakeCluster) ExtendLeases(_ context.Context, req *hodeiv1.ExtendLeasesRequest) (*hodeiv1.ExtendLeasesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &hodeiv1.ExtendLeasesResponse{}
	for _, r := range req.GetLeases() {
		f.extends[r.GetJobId()]++
		ok := !f.lost[r.GetJobId()]
		resp.Results = append(resp.Results, &hodeiv1.ExtendResult{JobId: r.GetJobId(), Ok: ok, Reason: map[bool]string{false: "cancelled"}[ok]})
	}
	return resp, nil
}

func (f *fakeCluster) CompleteJob(_ context.Context, req *hodeiv1.CompleteJobRequest) (*hodeiv1.CompleteJobResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.completeSeen++
	if f.completeSeen <= f.failComplete {
		return nil, status.Error(f.failCode, "fake failure")
	}
	f.completions = append(f.completions, req)
	return &hodeiv1.CompleteJobResponse{Job: &hodeiv1.Job{Id: req.GetJobId()}}, nil
}

func (f *fakeCluster) get(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type harness struct {
	f      *fakeCluster
	w      *Worker
	cancel context.CancelFunc
	done   chan error
}

// startWorker serves f on loopback and runs a worker against it.
func startWorker(t *testing.T, f *fakeCluster, mod func(*Config)) *harness {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	hodeiv1.RegisterWorkerServiceServer(s, f)
	served := make(chan struct{})
	go func() { defer close(served); _ = s.Serve(lis) }()
	c, err := client.New(client.Config{Addrs: []string{lis.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Client:      c,
		ID:          "w1",
		Concurrency: 2,
		LeaseTTL:    600 * time.Millisecond,
		PollWait:    2 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{f: f, w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(40 * time.Second):
			t.Error("worker did not stop")
		}
		s.Stop()
		<-served
		_ = c.Close()
	})
	return h
}

// stop cancels the worker and waits for Run to return, within timeout.
func (h *harness) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %v", timeout)
	}
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func shellJob(id, line string) *hodeiv1.Job {
	return &hodeiv1.Job{Id: id, Spec: &hodeiv1.JobSpec{Command: []string{line}, Shell: true}}
}

func (f *fakeCluster) completion(id string) *hodeiv1.CompleteJobRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.completions {
		if c.GetJobId() == id {
			return c
		}
	}
	return nil
}

func TestWorkerLeasesRunsCompletes(t *testing.T) {
	f := newFakeCluster()
	h := startWorker(t, f, nil)
	// The worker is idle in a long-poll; a submitted job is picked up at once.
	f.submit(shellJob("ok", "echo hello"), shellJob("bad", "echo oops >&2; exit 3"))
	waitFor(t, "completions", 10*time.Second, func() bool { return f.completion("ok") != nil && f.completion("bad") != nil })

	ok := f.completion("ok")
	if !ok.GetSuccess() || ok.GetToken() == 0 || ok.GetRequestId() == "" ||
		string(ok.GetResult().GetOutput()) != "hello\n" || ok.GetResult().GetWorkerId() != "w1" ||
		ok.GetResult().GetStartedAtMs() == 0 || ok.GetResult().GetFinishedAtMs() < ok.GetResult().GetStartedAtMs() {
		t.Fatalf("ok completion %v", ok)
	}
	bad := f.completion("bad")
	if bad.GetSuccess() || !bad.GetRetryable() || bad.GetResult().GetExitCode() != 3 || string(bad.GetResult().GetOutput()) != "oops\n" {
		t.Fatalf("bad completion %v", bad)
	}
	h.stop(t, 5*time.Second)
	if st := h.w.Stats(); st.Leased != 2 || st.Succeeded != 1 || st.Failed != 1 || st.Lost != 0 || st.Running != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWorkerIdlePickupIsFast(t *testing.T) {
	f := newFakeCluster()
	h := startWorker(t, f, func(c *Config) { c.PollWait = 30 * time.Second })
	// Let the worker enter its long-poll, then submit.
	waitFor(t, "long-poll", 5*time.Second, func() bool {
		var c int32
		f.get(func() { c = f.maxCapacity })
		return c > 0
	})
	submitted := time.Now()
	f.submit(shellJob("fast", "true"))
	waitFor(t, "lease", 5*time.Second, func() bool {
		var ok bool
		f.get(func() { _, ok = f.leasedAt["fast"] })
		return ok
	})
	var at time.Time
	f.get(func() { at = f.leasedAt["fast"] })
	if d := at.Sub(submitted); d > 200*time.Millisecond {
		t.Fatalf("idle worker took %v to lease", d)
	}
	waitFor(t, "completion", 5*time.Second, func() bool { return f.completion("fast") != nil })
	h.stop(t, 5*time.Second)
}

func TestWorkerHeartbeatsAndRespectsConcurrency(t *testing.T) {
	f := newFakeCluster()
	h := startWorker(t, f, func(c *Config) { c.LeaseTTL = 300 * time.Millisecond; c.Concurrency = 2 })
	for _, id := range []string{"a", "b", "c", "d"} {
		f.submit(shellJob(id, "sleep 0.5"))
	}
	waitFor(t, "4 completions", 15*time.Second, func() bool {
		var n int
		f.get(func() { n = len(f.completions) })
		return n == 4
	})
	f.get(func() {
		if f.maxCapacity > 2 {
			t.Errorf("asked for %d jobs with concurrency 2", f.maxCapacity)
		}
		for _, id := range []string{"a", "b", "c", "d"} {
			if f.extends[id] < 1 {
				t.Errorf("job %s never heartbeated (%v)", id, f.extends)
			}
		}
		for _, c := range f.completions {
			if !c.GetSuccess() {
				t.Errorf("failed: %v", c)
			}
		}
	})
	h.stop(t, 5*time.Second)
}

// A job leased at the end of a long-poll longer than the TTL must not be
// taken for lost: its lease starts when granted, not when the poll was sent.
func TestWorkerLongPollGrantNotTakenForLost(t *testing.T) {
	f := newFakeCluster()
	h := startWorker(t, f, func(c *Config) { c.LeaseTTL = 300 * time.Millisecond; c.PollWait = 10 * time.Second })
	waitFor(t, "a long-poll older than the TTL", 5*time.Second, func() bool {
		var at time.Time
		f.get(func() { at = f.pollStarted })
		return !at.IsZero() && time.Since(at) > 500*time.Millisecond
	})
	f.submit(shellJob("late", "sleep 0.3"))
	waitFor(t, "completion", 10*time.Second, func() bool { return f.completion("late") != nil })
	if c := f.completion("late"); !c.GetSuccess() {
		t.Fatalf("completion %v", c)
	}
	if st := h.w.Stats(); st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
	h.stop(t, 5*time.Second)
}

func TestWorkerLeaseLostKillsJob(t *testing.T) {
	f := newFakeCluster()
	h := startWorker(t, f, func(c *Config) { c.LeaseTTL = 300 * time.Millisecond })
	f.submit(shellJob("long", "sleep 30"))
	waitFor(t, "a heartbeat", 5*time.Second, func() bool {
		var n int
		f.get(func() { n = f.extends["long"] })
		return n > 0
	})
	f.get(func() { f.lost["long"] = true })
	waitFor(t, "the job to be killed", 5*time.Second, func() bool {
		st := h.w.Stats()
		return st.Lost == 1 && st.Running == 0
	})
	if c := f.completion("long"); c != nil {
		t.Fatalf("completion reported for a lost lease: %v", c)
	}
	h.stop(t, 5*time.Second)
}

func TestWorkerDrainLetsJobsFinish(t *testing.T) {
	f := newFakeCluster()
	h := startWorker(t, f, nil)
	f.submit(shellJob("drain", "sleep 0.4; echo done"))
	waitFor(t, "job running", 5*time.Second, func() bool { return h.w.Stats().Running == 1 })
	h.stop(t, 10*time.Second)
	c := f.completion("drain")
	if c == nil || !c.GetSuccess() || string(c.GetResult().GetOutput()) != "done\n" {
		t.Fatalf("drained job not completed: %v", c)
	}
}

func TestWorkerDrainTimeoutKills(t *testing.T) {
	f := newFakeCluster()
	h := startWorker(t, f, func(c *Config) { c.DrainTimeout = 200 * time.Millisecond })
	f.submit(shellJob("stuck", "sleep 30"))
	waitFor(t, "job running", 5*time.Second, func() bool { return h.w.Stats().Running == 1 })
	start := time.Now()
	h.stop(t, 10*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("drain took %v", d)
	}
	// The killed attempt is reported as a retryable failure.
	c := f.completion("stuck")
	if c == nil || c.GetSuccess() || !c.GetRetryable() || !strings.Contains(c.GetResult().GetError(), "drain") {
		t.Fatalf("completion %v", c)
	}
}

func TestWorkerCompletionRetriedWithSameRequestID(t *testing.T) {
	f := newFakeCluster()
	f.failComplete, f.failCode = 2, codes.Unavailable
	h := startWorker(t, f, nil)
	f.submit(shellJob("r", "true"))
	waitFor(t, "completion", 10*time.Second, func() bool { return f.completion("r") != nil })
	f.get(func() {
		if f.completeSeen != 3 {
			t.Errorf("%d CompleteJob calls, want 3", f.completeSeen)
		}
	})
	h.stop(t, 5*time.Second)
	if st := h.w.Stats(); st.Succeeded != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWorkerStaleTokenDropped(t *testing.T) {
	f := newFakeCluster()
	f.failComplete, f.failCode = 1000, codes.FailedPrecondition
	h := startWorker(t, f, nil)
	f.submit(shellJob("stale", "true"))
	waitFor(t, "drop", 10*time.Second, func() bool { return h.w.Stats().Lost == 1 })
	f.get(func() {
		if f.completeSeen != 1 {
			t.Errorf("%d CompleteJob calls, want 1", f.completeSeen)
		}
	})
	h.stop(t, 5*time.Second)
}

func TestConfigValidate(t *testing.T) {
	c, err := client.New(client.Config{Addrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := New(Config{}); err == nil {
		t.Fatal("no client accepted")
	}
	if _, err := New(Config{Client: c, Concurrency: -1}); err == nil {
		t.Fatal("negative concurrency accepted")
	}
	w, err := New(Config{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if w.cfg.Concurrency != DefaultConcurrency || w.cfg.LeaseTTL != DefaultLeaseTTL || w.ID() == "" {
		t.Fatalf("defaults %+v", w.cfg)
	}
}
