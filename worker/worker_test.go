package worker

import (
	"context"
	"io"
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

// fakeNode is a test double of a node's worker stream (one stream at a
// time): jobs pushed within the worker's credit, extensions answered from a
// set of lost leases, completions recorded and accepted. The stream protocol
// itself is tested in the client package; this checks the shell handler on
// top of it.
type fakeNode struct {
	hodeiv1.UnimplementedWorkerServiceServer

	mu          sync.Mutex
	queue       []*hodeiv1.Job
	token       uint64
	credit      int
	send        func(*hodeiv1.ServerMessage) // current stream's sender
	hello       *hodeiv1.WorkerHello
	lost        map[string]bool
	extends     map[string]int
	completions []*hodeiv1.Completion
	peak        int // most jobs leased and not completed at once
	out         map[string]bool
}

func newFakeNode() *fakeNode {
	return &fakeNode{lost: map[string]bool{}, extends: map[string]int{}, out: map[string]bool{}}
}

func (f *fakeNode) Connect(srv hodeiv1.WorkerService_ConnectServer) error {
	m, err := srv.Recv()
	if err != nil {
		return err
	}
	if m.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "no hello")
	}
	var sendMu sync.Mutex
	dead := false
	send := func(m *hodeiv1.ServerMessage) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if !dead {
			_ = srv.Send(m)
		}
	}
	defer func() { sendMu.Lock(); dead = true; sendMu.Unlock() }()
	f.mu.Lock()
	f.hello, f.credit, f.send = m.GetHello(), int(m.GetHello().GetSlots()), send
	f.mu.Unlock()
	send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Welcome{Welcome: &hodeiv1.ServerWelcome{NodeId: "n1", TtlMs: m.GetHello().GetTtlMs(), MaxSlots: 10000}}})
	f.push()
	for {
		m, err := srv.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch msg := m.GetMsg().(type) {
		case *hodeiv1.WorkerMessage_Slots:
			f.mu.Lock()
			f.credit += int(msg.Slots.GetSlots())
			f.mu.Unlock()
			f.push()
		case *hodeiv1.WorkerMessage_Completions:
			var rs []*hodeiv1.CompletionResult
			f.mu.Lock()
			for _, c := range msg.Completions.GetCompletions() {
				f.completions = append(f.completions, c)
				delete(f.out, c.GetJobId())
				rs = append(rs, &hodeiv1.CompletionResult{JobId: c.GetJobId(), Token: c.GetToken(), Ok: true})
			}
			f.mu.Unlock()
			send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Completions{Completions: &hodeiv1.ServerCompletions{Results: rs}}})
		case *hodeiv1.WorkerMessage_Extend:
			var rs []*hodeiv1.ExtendResult
			f.mu.Lock()
			for _, r := range msg.Extend.GetLeases() {
				f.extends[r.GetJobId()]++
				ok := !f.lost[r.GetJobId()]
				rs = append(rs, &hodeiv1.ExtendResult{JobId: r.GetJobId(), Ok: ok, Reason: map[bool]string{false: "cancelled"}[ok]})
			}
			f.mu.Unlock()
			send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Extended{Extended: &hodeiv1.ServerExtended{Results: rs}}})
		}
	}
}

func (f *fakeNode) push() {
	f.mu.Lock()
	var ls []*hodeiv1.Lease
	for f.credit > 0 && len(f.queue) > 0 && f.send != nil {
		j := f.queue[0]
		f.queue = f.queue[1:]
		f.credit--
		f.token++
		j.Attempts, j.LeaseToken, j.LeaseWorker = 1, f.token, f.hello.GetWorkerId()
		ls = append(ls, &hodeiv1.Lease{Job: j, Token: f.token})
		f.out[j.GetId()] = true
	}
	f.peak = max(f.peak, len(f.out))
	send := f.send
	f.mu.Unlock()
	if len(ls) > 0 {
		send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Leases{Leases: &hodeiv1.ServerLeases{Leases: ls}}})
	}
}

func (f *fakeNode) submit(jobs ...*hodeiv1.Job) {
	f.mu.Lock()
	f.queue = append(f.queue, jobs...)
	f.mu.Unlock()
	f.push()
}

func (f *fakeNode) get(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func (f *fakeNode) completion(id string) *hodeiv1.Completion {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.completions {
		if c.GetJobId() == id {
			return c
		}
	}
	return nil
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
	f      *fakeNode
	w      *Worker
	cancel context.CancelFunc
	done   chan error
}

// startWorker serves f on loopback and runs a worker against it.
func startWorker(t *testing.T, f *fakeNode, mod func(*Config)) *harness {
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
		_ = c.Close()
		s.Stop()
		<-served
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

func TestWorkerRunsCommandsAndReports(t *testing.T) {
	f := newFakeNode()
	h := startWorker(t, f, nil)
	f.submit(shellJob("ok", "echo hello; echo $HODEI_JOB_ID $HODEI_ATTEMPT $HODEI_WORKER_ID"),
		shellJob("bad", "echo oops >&2; exit 3"),
		&hodeiv1.Job{Id: "empty", Spec: &hodeiv1.JobSpec{}},
		&hodeiv1.Job{Id: "nosuch", Spec: &hodeiv1.JobSpec{Command: []string{"/nonexistent/binary"}}})
	waitFor(t, "completions", 10*time.Second, func() bool { return h.w.Stats().Succeeded+h.w.Stats().Failed == 4 })

	f.get(func() {
		if hl := f.hello; hl.GetWorkerId() != "w1" || len(hl.GetKinds()) != 1 || hl.GetKinds()[0] != "shell" || hl.GetSlots() != 2 {
			t.Errorf("hello %v", hl)
		}
	})
	ok := f.completion("ok")
	if !ok.GetSuccess() || ok.GetToken() == 0 || string(ok.GetResult().GetOutput()) != "hello\nok 1 w1\n" ||
		ok.GetResult().GetWorkerId() != "w1" || ok.GetResult().GetExitCode() != 0 || ok.GetResult().GetError() != "" {
		t.Errorf("ok completion %v", ok)
	}
	bad := f.completion("bad")
	if bad.GetSuccess() || !bad.GetRetryable() || bad.GetResult().GetExitCode() != 3 ||
		string(bad.GetResult().GetOutput()) != "oops\n" || bad.GetResult().GetError() != "exit status 3" {
		t.Errorf("bad completion %v", bad)
	}
	// Invalid commands fail without a retry.
	for _, id := range []string{"empty", "nosuch"} {
		if c := f.completion(id); c.GetSuccess() || c.GetRetryable() || c.GetResult().GetExitCode() != -1 || c.GetResult().GetError() == "" {
			t.Errorf("%s completion %v", id, c)
		}
	}
	h.stop(t, 5*time.Second)
	if st := h.w.Stats(); st.Leased != 4 || st.Succeeded != 1 || st.Failed != 3 || st.Lost != 0 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWorkerHeartbeatsAndRespectsConcurrency(t *testing.T) {
	f := newFakeNode()
	h := startWorker(t, f, func(c *Config) { c.LeaseTTL = 300 * time.Millisecond; c.Concurrency = 2 })
	for _, id := range []string{"a", "b", "c", "d"} {
		f.submit(shellJob(id, "sleep 0.3"))
	}
	waitFor(t, "4 completions", 15*time.Second, func() bool { return h.w.Stats().Succeeded == 4 })
	f.get(func() {
		if f.peak > 2 {
			t.Errorf("%d jobs out at once with concurrency 2", f.peak)
		}
		for _, id := range []string{"a", "b", "c", "d"} {
			if f.extends[id] < 1 {
				t.Errorf("job %s never extended (%v)", id, f.extends)
			}
		}
	})
	h.stop(t, 5*time.Second)
}

func TestWorkerLeaseLostKillsProcess(t *testing.T) {
	f := newFakeNode()
	h := startWorker(t, f, func(c *Config) { c.LeaseTTL = 300 * time.Millisecond })
	f.submit(shellJob("long", "sleep 30"))
	waitFor(t, "an extension", 5*time.Second, func() bool {
		var n int
		f.get(func() { n = f.extends["long"] })
		return n > 0
	})
	f.get(func() { f.lost["long"] = true })
	waitFor(t, "the job to be killed", 5*time.Second, func() bool {
		st := h.w.Stats()
		return st.Lost == 1 && st.InFlight == 0
	})
	if c := f.completion("long"); c != nil {
		t.Fatalf("completion reported for a lost lease: %v", c)
	}
	h.stop(t, 5*time.Second)
}

func TestWorkerDrainLetsJobsFinish(t *testing.T) {
	f := newFakeNode()
	h := startWorker(t, f, nil)
	f.submit(shellJob("drain", "sleep 0.4; echo done"))
	waitFor(t, "job running", 5*time.Second, func() bool { return h.w.Stats().InFlight == 1 })
	h.stop(t, 10*time.Second)
	c := f.completion("drain")
	if c == nil || !c.GetSuccess() || string(c.GetResult().GetOutput()) != "done\n" {
		t.Fatalf("drained job not completed: %v", c)
	}
}

func TestWorkerDrainTimeoutKills(t *testing.T) {
	f := newFakeNode()
	h := startWorker(t, f, func(c *Config) { c.DrainTimeout = 200 * time.Millisecond })
	f.submit(shellJob("stuck", "sleep 30"))
	waitFor(t, "job running", 5*time.Second, func() bool { return h.w.Stats().InFlight == 1 })
	start := time.Now()
	h.stop(t, 10*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("drain took %v", d)
	}
	// The killed attempt is reported as a retryable failure, saying why.
	c := f.completion("stuck")
	if c == nil || c.GetSuccess() || !c.GetRetryable() || c.GetResult().GetError() != "killed: client: drain timeout" {
		t.Fatalf("completion %v", c)
	}
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
	if w.ID() == "" {
		t.Fatal("no default id")
	}
}
