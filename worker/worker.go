// Package worker is the Hodei worker agent: it leases jobs from the cluster
// with a long-poll, runs them with an Executor (a shell command by default),
// heartbeats the leases of all running jobs in one batched ExtendLeases per
// interval, reports each outcome with its fencing token, and drains
// gracefully on shutdown.
//
// Lease loss (ExtendLeases answers ok=false, or no heartbeat has succeeded
// for a whole TTL) kills the job's process and suppresses its completion:
// the cluster has already given, or will give, the job to someone else.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Defaults of Config.
const (
	DefaultConcurrency  = 4
	DefaultLeaseTTL     = 30 * time.Second
	DefaultPollWait     = 30 * time.Second
	DefaultDrainTimeout = 30 * time.Second

	maxErrBackoff = 2 * time.Second
	// reportGrace is how long completions of jobs killed at the drain
	// deadline may still take before Run gives up on them.
	reportGrace = 2 * time.Second
)

// Errors.
var (
	// ErrLeaseLost is the cause given to a job's context when its lease is lost.
	ErrLeaseLost = errors.New("worker: lease lost")
	// ErrDrainTimeout is the cause given to jobs still running at the drain deadline.
	ErrDrainTimeout = errors.New("worker: drain timeout")
)

// Config configures a Worker. Zero values mean the defaults.
type Config struct {
	Client       *client.Client
	ID           string // default hostname-pid-random
	Concurrency  int    // default 4
	Labels       map[string]string
	LeaseTTL     time.Duration // default 30s; heartbeats every TTL/3
	PollWait     time.Duration // long-poll wait, default 30s (max 60s)
	DrainTimeout time.Duration // on shutdown, how long running jobs may still run; default 30s
	Logger       *slog.Logger
	Executor     Executor // default &ShellExecutor{}
}

// Validate checks the config after defaults are applied.
func (c *Config) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("worker: no client")
	case c.Concurrency < 1 || c.Concurrency > 1000:
		return fmt.Errorf("worker: concurrency %d outside 1..1000", c.Concurrency)
	case c.LeaseTTL < 100*time.Millisecond:
		return fmt.Errorf("worker: lease TTL %v below 100ms", c.LeaseTTL)
	case c.PollWait < 0 || c.PollWait > time.Minute:
		return fmt.Errorf("worker: poll wait %v outside 0..60s", c.PollWait)
	case c.DrainTimeout < 0:
		return fmt.Errorf("worker: negative drain timeout %v", c.DrainTimeout)
	}
	return nil
}

func (c *Config) applyDefaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "worker"
		}
		c.ID = fmt.Sprintf("%s-%d-%06x", host, os.Getpid(), mrand.IntN(1<<24))
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.PollWait == 0 {
		c.PollWait = DefaultPollWait
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Executor == nil {
		c.Executor = &ShellExecutor{}
	}
}

// Stats are the worker's counters since it started.
type Stats struct {
	Leased    uint64 // leases received
	Succeeded uint64 // attempts reported as succeeded
	Failed    uint64 // attempts reported as failed
	Lost      uint64 // leases lost (no completion reported)
	Running   int    // jobs running now
}

// Worker is the worker agent. Create it with New and run it with Run.
type Worker struct {
	cfg    Config
	log    *slog.Logger
	labels []*hodeiv1.KeyValue

	leased, succeeded, failed, lost atomic.Uint64

	mu      sync.Mutex
	running map[string]*task // by job id
	freed   chan struct{}    // signalled (non-blocking) when a slot frees
	started atomic.Bool
}

// task is one leased job attempt.
type task struct {
	lease  *hodeiv1.Lease
	cancel context.CancelCauseFunc // kills the execution

	mu        sync.Mutex
	expiresAt time.Time // local, conservative estimate of the lease expiry
	lost      bool
}

func (t *task) markLost() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.lost
	t.lost = true
	return !was
}

func (t *task) isLost() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lost
}

func (t *task) deadline() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.expiresAt
}

func (t *task) extendTo(at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if at.After(t.expiresAt) {
		t.expiresAt = at
	}
}

// New validates cfg and returns a Worker.
func New(cfg Config) (*Worker, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := &Worker{
		cfg:     cfg,
		log:     cfg.Logger.With("worker", cfg.ID),
		running: make(map[string]*task),
		freed:   make(chan struct{}, 1),
	}
	keys := make([]string, 0, len(cfg.Labels))
	for k := range cfg.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w.labels = append(w.labels, &hodeiv1.KeyValue{Key: k, Value: cfg.Labels[k]})
	}
	return w, nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Stats returns the worker's counters.
func (w *Worker) Stats() Stats {
	w.mu.Lock()
	n := len(w.running)
	w.mu.Unlock()
	return Stats{
		Leased:    w.leased.Load(),
		Succeeded: w.succeeded.Load(),
		Failed:    w.failed.Load(),
		Lost:      w.lost.Load(),
		Running:   n,
	}
}

// Run leases and runs jobs until ctx is cancelled. Then it stops leasing,
// lets running jobs finish for up to DrainTimeout (heartbeating and
// reporting them), kills what is left, and returns once every goroutine it
// started has stopped. A Worker runs once.
func (w *Worker) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("worker: Run called twice")
	}
	w.log.Info("worker started", "concurrency", w.cfg.Concurrency, "lease_ttl", w.cfg.LeaseTTL)

	// execCtx bounds job executions: cancelled at the drain deadline.
	// rpcCtx bounds heartbeats and completions: cancelled a little later.
	execCtx, execCancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer execCancel(nil)
	rpcCtx, rpcCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer rpcCancel()

	var jobs sync.WaitGroup
	hbDone := make(chan struct{})
	hbStop := make(chan struct{})
	go func() {
		defer close(hbDone)
		w.heartbeatLoop(rpcCtx, hbStop)
	}()

	w.leaseLoop(ctx, execCtx, rpcCtx, &jobs)

	// Drain.
	n := w.Stats().Running
	w.log.Info("worker draining", "running", n, "timeout", w.cfg.DrainTimeout)
	drained := make(chan struct{})
	go func() { jobs.Wait(); close(drained) }()
	timer := time.NewTimer(w.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		w.log.Warn("drain timeout: killing running jobs", "running", w.Stats().Running)
		execCancel(ErrDrainTimeout)
		grace := time.NewTimer(reportGrace)
		select {
		case <-drained:
		case <-grace.C:
			rpcCancel()
			<-drained
		}
		grace.Stop()
	}
	// Every job is done and reported: stop heartbeats (an ExtendLeases in
	// flight is cut short).
	rpcCancel()
	close(hbStop)
	<-hbDone
	st := w.Stats()
	w.log.Info("worker stopped", "leased", st.Leased, "succeeded", st.Succeeded, "failed", st.Failed, "lost", st.Lost)
	return nil
}

// freeSlots returns how many more jobs the worker can take.
func (w *Worker) freeSlots() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cfg.Concurrency - len(w.running)
}

// leaseLoop long-polls for work while ctx is alive, starting a goroutine
// (tracked by jobs) per lease.
func (w *Worker) leaseLoop(ctx, execCtx, rpcCtx context.Context, jobs *sync.WaitGroup) {
	errs := 0
	for ctx.Err() == nil {
		free := w.freeSlots()
		if free <= 0 {
			select {
			case <-ctx.Done():
				return
			case <-w.freed:
			}
			continue
		}
		ttl := w.cfg.LeaseTTL
		resp, err := w.cfg.Client.Lease(ctx, &hodeiv1.LeaseRequest{
			WorkerId: w.cfg.ID,
			Capacity: int32(free),
			Labels:   w.labels,
			WaitMs:   w.cfg.PollWait.Milliseconds(),
			TtlMs:    ttl.Milliseconds(),
		})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := min(50*time.Millisecond<<min(errs, 6), maxErrBackoff)
			d = d/2 + mrand.N(d/2+1)
			errs++
			w.log.Warn("lease failed", "err", err, "retry_in", d)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		errs = 0
		// A long-poll may have been granted at any time during the wait:
		// count the TTL from the answer's arrival. (Erring late here only
		// delays killing a job whose lease is gone; erring early would kill
		// jobs whose lease is valid.)
		received := time.Now()
		for _, l := range resp.GetLeases() {
			w.start(l, received, execCtx, rpcCtx, jobs)
		}
	}
}

// start registers a lease and runs its job in a new goroutine.
func (w *Worker) start(l *hodeiv1.Lease, received time.Time, execCtx, rpcCtx context.Context, jobs *sync.WaitGroup) {
	id := l.GetJob().GetId()
	w.leased.Add(1)
	ttl := time.Duration(l.GetTtlMs()) * time.Millisecond
	if ttl <= 0 {
		ttl = w.cfg.LeaseTTL
	}
	jctx, cancel := context.WithCancelCause(execCtx)
	t := &task{lease: l, cancel: cancel, expiresAt: received.Add(ttl)}
	w.mu.Lock()
	if _, dup := w.running[id]; dup {
		w.mu.Unlock()
		cancel(nil)
		w.log.Error("lease for a job already running here; ignored", "job", id, "token", l.GetToken())
		return
	}
	w.running[id] = t
	w.mu.Unlock()
	w.log.Debug("job leased", "job", id, "token", l.GetToken(), "attempt", l.GetJob().GetAttempts())

	jobs.Add(1)
	go func() {
		defer jobs.Done()
		defer w.finish(id)
		defer cancel(nil)
		res := w.cfg.Executor.Run(jctx, l.GetJob())
		if t.isLost() {
			w.lost.Add(1)
			w.log.Info("lease lost; completion not reported", "job", id, "token", l.GetToken())
			return
		}
		w.complete(rpcCtx, t, res)
	}()
}

// finish removes a job from the running set and signals a free slot.
func (w *Worker) finish(id string) {
	w.mu.Lock()
	delete(w.running, id)
	w.mu.Unlock()
	select {
	case w.freed <- struct{}{}:
	default:
	}
}

// complete reports res, retrying with one request id until it is accepted,
// refused for good, or the lease has surely expired.
func (w *Worker) complete(ctx context.Context, t *task, res Result) {
	l := t.lease
	req := &hodeiv1.CompleteJobRequest{
		JobId:     l.GetJob().GetId(),
		Token:     l.GetToken(),
		Success:   res.Success(),
		Retryable: res.Retryable,
		RequestId: client.NewRequestID(),
		Result: &hodeiv1.JobResult{
			ExitCode:     res.ExitCode,
			Output:       res.Output,
			Error:        res.Err,
			WorkerId:     w.cfg.ID,
			StartedAtMs:  res.Started.UnixMilli(),
			FinishedAtMs: res.Finished.UnixMilli(),
		},
	}
	log := w.log.With("job", req.JobId, "token", req.Token)
	for attempt := 0; ; attempt++ {
		deadline := t.deadline()
		if t.isLost() || time.Now().After(deadline) {
			w.lost.Add(1)
			log.Warn("lease expired before the completion was accepted; dropped")
			return
		}
		cctx, cancel := context.WithDeadline(ctx, deadline)
		_, err := w.cfg.Client.Complete(cctx, req)
		cancel()
		switch {
		case err == nil:
			if req.Success {
				w.succeeded.Add(1)
			} else {
				w.failed.Add(1)
			}
			log.Debug("job completed", "success", req.Success, "exit", res.ExitCode, "err", res.Err)
			return
		case ctx.Err() != nil:
			w.lost.Add(1)
			log.Warn("worker stopping: completion abandoned", "err", err)
			return
		case status.Code(err) == codes.FailedPrecondition || status.Code(err) == codes.NotFound:
			w.lost.Add(1)
			log.Warn("completion refused (stale lease); dropped", "err", err)
			return
		case !client.IsRetryable(err) && !errors.Is(err, context.DeadlineExceeded):
			w.lost.Add(1)
			log.Error("completion refused; dropped", "err", err)
			return
		}
		// Retryable (or our deadline hit while the lease may have been
		// extended meanwhile): try again, the loop re-checks the lease.
		d := min(50*time.Millisecond<<min(attempt, 5), maxErrBackoff)
		tm := time.NewTimer(d/2 + mrand.N(d/2+1))
		select {
		case <-ctx.Done():
			tm.Stop()
		case <-tm.C:
		}
	}
}

// heartbeatLoop extends the leases of all running jobs every TTL/3 until stop
// is closed, and kills jobs whose lease is lost.
func (w *Worker) heartbeatLoop(ctx context.Context, stop <-chan struct{}) {
	tick := time.NewTicker(w.cfg.LeaseTTL / 3)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		w.heartbeat(ctx)
	}
}

// heartbeat sends one batched ExtendLeases for every running job.
func (w *Worker) heartbeat(ctx context.Context) {
	w.mu.Lock()
	tasks := make(map[string]*task, len(w.running))
	refs := make([]*hodeiv1.LeaseRef, 0, len(w.running))
	for id, t := range w.running {
		tasks[id] = t
		refs = append(refs, &hodeiv1.LeaseRef{JobId: id, Token: t.lease.GetToken()})
	}
	w.mu.Unlock()
	now := time.Now()
	// A lease whose local estimate has passed is surely gone, whatever the
	// cluster answers: kill the job.
	for id, t := range tasks {
		if now.After(t.deadline()) {
			w.loseLease(id, t, "no successful heartbeat within the TTL")
		}
	}
	if len(refs) == 0 {
		return
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].JobId < refs[j].JobId })
	ttl := w.cfg.LeaseTTL
	hctx, cancel := context.WithTimeout(ctx, ttl/3)
	defer cancel()
	resp, err := w.cfg.Client.ExtendLeases(hctx, &hodeiv1.ExtendLeasesRequest{
		WorkerId: w.cfg.ID,
		Leases:   refs,
		TtlMs:    ttl.Milliseconds(),
	})
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("heartbeat failed", "jobs", len(refs), "err", err)
		}
		return
	}
	received := time.Now()
	for _, r := range resp.GetResults() {
		t := tasks[r.GetJobId()]
		if t == nil {
			continue
		}
		if !r.GetOk() {
			w.loseLease(r.GetJobId(), t, r.GetReason())
			continue
		}
		t.extendTo(received.Add(ttl))
	}
}

// loseLease marks a task's lease lost and kills its execution.
func (w *Worker) loseLease(id string, t *task, reason string) {
	if t.markLost() {
		w.log.Warn("lease lost: killing job", "job", id, "token", t.lease.GetToken(), "reason", reason)
		t.cancel(fmt.Errorf("%w: %s", ErrLeaseLost, reason))
	}
}
