package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Defaults and limits of WorkerConfig.
const (
	DefaultWorkerConcurrency = 4
	DefaultLeaseTTL          = 30 * time.Second
	DefaultDrainTimeout      = 30 * time.Second

	// MaxWorkerConcurrency is the most credit one hello can carry.
	MaxWorkerConcurrency = 10000
	// MinLeaseTTL is the shortest lease TTL a worker may ask for.
	MinLeaseTTL = 100 * time.Millisecond
	// MaxWorkerIDBytes is the longest worker id (the server's limit on names).
	MaxWorkerIDBytes = 128
)

// Internal timings of the worker runtime.
const (
	// workerGrace is how long jobs cancelled at the drain deadline may take
	// to return and have their failure reported.
	workerGrace = 2 * time.Second
	// workerCloseWait bounds the wait for the node to end a stream after the
	// worker closed its side.
	workerCloseWait = 2 * time.Second
	// reconnect backoff: jittered, doubling from the min to the max.
	workerReconnectMin = 50 * time.Millisecond
	workerReconnectMax = 2 * time.Second
	// workerRetryPause is how long a completion refused as unavailable waits
	// before it is sent again.
	workerRetryPause = 200 * time.Millisecond
)

// WorkerConfig configures a Worker. Zero values mean the defaults.
type WorkerConfig struct {
	// ID names the worker process; it must be unique in the cluster.
	// Default: hostname-pid-random.
	ID string
	// Concurrency is how many jobs run at once (the worker's slots);
	// default 4, at most MaxWorkerConcurrency.
	Concurrency int
	// Labels are the worker's labels: it gets only jobs whose labels it carries.
	Labels map[string]string
	// LeaseTTL is the lease TTL asked for (default 30s, at least 100ms); the
	// node may grant another. Leases are extended every granted TTL/3.
	LeaseTTL time.Duration
	// DrainTimeout is how long running jobs may still run once Run's context
	// is done (default 30s); then their contexts are cancelled.
	DrainTimeout time.Duration
	// Logger receives the runtime's logs (default: none). Nothing is logged
	// per job on the normal path.
	Logger *slog.Logger
	// LogQueueBytes bounds the live log lines (Job.Stdout, Job.Stderr) held
	// unsent, all jobs together (default 1 MiB, at least 64 KiB); over it
	// lines are dropped with a "[n bytes dropped]" marker.
	LogQueueBytes int
	// LogRate is the most live log bytes per second sent (default 4 MiB/s,
	// at least 64 KiB/s).
	LogRate int
}

// Validate checks cfg without changing it. Zero values are valid (they mean
// the defaults).
func (c WorkerConfig) Validate() error {
	var errs []error
	if len(c.ID) > MaxWorkerIDBytes {
		errs = append(errs, fmt.Errorf("client: worker id is %d bytes, limit %d", len(c.ID), MaxWorkerIDBytes))
	}
	if c.Concurrency < 0 || c.Concurrency > MaxWorkerConcurrency {
		errs = append(errs, fmt.Errorf("client: worker concurrency %d outside 1..%d", c.Concurrency, MaxWorkerConcurrency))
	}
	if c.LeaseTTL != 0 && c.LeaseTTL < MinLeaseTTL {
		errs = append(errs, fmt.Errorf("client: lease TTL %v below %v", c.LeaseTTL, MinLeaseTTL))
	}
	if c.LogQueueBytes != 0 && c.LogQueueBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("client: log queue of %d bytes, at least %d", c.LogQueueBytes, 64<<10))
	}
	if c.LogRate != 0 && c.LogRate < 64<<10 {
		errs = append(errs, fmt.Errorf("client: log rate of %d bytes/s, at least %d", c.LogRate, 64<<10))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("client: negative drain timeout %v", c.DrainTimeout))
	}
	for k := range c.Labels {
		if k == "" {
			errs = append(errs, errors.New("client: worker label with an empty key"))
			break
		}
	}
	return errors.Join(errs...)
}

// withDefaults returns cfg with every zero value replaced by its default.
// It is the only place defaults are set.
func (c WorkerConfig) withDefaults() WorkerConfig {
	if c.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "worker"
		}
		host = host[:min(len(host), MaxWorkerIDBytes-32)] // room for -pid-random
		c.ID = fmt.Sprintf("%s-%d-%06x", host, os.Getpid(), mrand.IntN(1<<24))
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultWorkerConcurrency
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.LogQueueBytes == 0 {
		c.LogQueueBytes = DefaultLogQueueBytes
	}
	if c.LogRate == 0 {
		c.LogRate = DefaultLogRate
	}
	return c
}

// WorkerStats are a Worker's counters since it was created.
type WorkerStats struct {
	Leased    uint64 // leases received
	Succeeded uint64 // successful attempts the cluster recorded
	Failed    uint64 // failed attempts the cluster recorded (handler errors, panics, rejectedCompletion leases)
	Lost      uint64 // attempts whose outcome was not recorded: lease lost, completion refused or abandoned
	Cancelled uint64 // jobs stopped by the server's cancel notice (nothing reported)
	Panics    uint64 // handler panics
	Rejected  uint64 // leases failed without running: no handler for the kind, or over capacity
	Streams   uint64 // worker streams established (welcome received)
	InFlight  int    // jobs leased whose handler has not returned
}

// Worker runs jobs leased over the worker stream (WorkerService.Connect):
// register handlers with Handle, then call Run.
//
// The runtime keeps one stream to one node of the client. It gives the node
// credit for its free slots, runs what the node pushes on a pool of
// Concurrency goroutines, reports outcomes (every completion queued while
// the last message was being sent goes in the next one), and extends all
// held leases every TTL/3. A cut stream ends no lease: the runtime
// reconnects to the next address with jittered backoff, says hello with
// credit for its free slots, re-sends the completions that had no answer
// and goes on extending the leases it holds. When the node asks for a drain
// (ServerDrain), the runtime gives it no more credit, finishes and reports
// the jobs it holds, closes its side and connects to the next node; if that
// takes longer than DrainTimeout it moves on at once, carrying the running
// jobs (their leases do not depend on the stream).
type Worker struct {
	c        *Client
	cfg      WorkerConfig
	log      *slog.Logger
	labels   []*hodeiv1.KeyValue
	handlers map[string]Handler
	started  atomic.Bool

	// Tunables, fixed before Run (tests shorten them).
	grace        time.Duration
	backoffMin   time.Duration
	backoffMax   time.Duration
	testHookTake func() // called before the sender takes its next batch

	logq   *logQueue     // live log lines to send (worker_logs.go)
	jobs   chan *Job     // leased jobs for the pool; never full (credit ≤ free slots)
	wake   chan struct{} // (1) the sender has something to do
	settle chan struct{} // (1) a held lease went away (Run's drain watches)
	stopCh chan struct{} // closed when Run ends the streams

	// Parent of the jobs' contexts: Run's values, never cancelled (a
	// cancellable parent would serialise every job's start and end on its
	// lock); jobs are cancelled one by one.
	jobCtx context.Context
	// Parent of the streams; cancelled when Run gives up on a clean close.
	streamCtx    context.Context
	cancelStream context.CancelFunc

	mu       sync.Mutex
	held     map[string]*Job // every lease held: running, or completion not yet answered
	running  int             // held jobs whose handler has not returned
	pending  []*Job          // completions to send on the current stream
	retry    []*Job          // completions to send again after workerRetryPause
	draining bool            // Run's context is done: no more credit
	expired  bool            // the drain deadline passed: jobs start cancelled
	ttl      time.Duration   // lease TTL granted by the node (welcome), else cfg.LeaseTTL
	// Per stream, reset by every hello.
	credit     int  // credit the node holds for us (never below the node's own count)
	maxSlots   int  // the most credit a node keeps (from the latest welcome)
	helloSlots int  // the credit of the latest hello
	srvDrain   bool // the node asked us to drain this stream
	srvDrainAt time.Time

	leased, succeeded, failed, lost, cancelled, panics, rejectedN, streams atomic.Uint64
}

// NewWorker returns a Worker leasing jobs through c. cfg is validated, then
// its defaults are filled in.
func NewWorker(c *Client, cfg WorkerConfig) (*Worker, error) {
	if c == nil {
		return nil, errors.New("client: NewWorker with a nil Client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	w := &Worker{
		c:          c,
		cfg:        cfg,
		log:        cfg.Logger.With("worker", cfg.ID),
		handlers:   make(map[string]Handler),
		grace:      workerGrace,
		backoffMin: workerReconnectMin,
		backoffMax: workerReconnectMax,
		jobs:       make(chan *Job, cfg.Concurrency),
		wake:       make(chan struct{}, 1),
		settle:     make(chan struct{}, 1),
		stopCh:     make(chan struct{}),
		held:       make(map[string]*Job),
		ttl:        cfg.LeaseTTL,
		maxSlots:   MaxWorkerConcurrency,
	}
	w.logq = newLogQueue(cfg.LogQueueBytes, cfg.LogRate, w.signal)
	keys := make([]string, 0, len(cfg.Labels))
	for k := range cfg.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		w.labels = append(w.labels, &hodeiv1.KeyValue{Key: k, Value: cfg.Labels[k]})
	}
	return w, nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Handle registers h as the handler of jobs of kind (KindShell, or "", for
// command jobs). The worker asks only for the kinds it has handlers for.
// Handle must be called before Run; it panics after Run, on an invalid kind
// (1..128 bytes of [A-Za-z0-9._:/-]), a nil handler or a kind registered twice.
func (w *Worker) Handle(kind string, h Handler) {
	if kind == "" {
		kind = KindShell
	}
	switch {
	case w.started.Load():
		panic("client: Worker.Handle after Run")
	case !validJobKind(kind):
		panic(fmt.Sprintf("client: Worker.Handle: invalid kind %q", kind))
	case h == nil:
		panic("client: Worker.Handle: nil handler")
	case w.handlers[kind] != nil:
		panic(fmt.Sprintf("client: Worker.Handle: kind %q registered twice", kind))
	}
	w.handlers[kind] = h
}

// Stats returns the worker's counters.
func (w *Worker) Stats() WorkerStats {
	w.mu.Lock()
	n := w.running
	w.mu.Unlock()
	return WorkerStats{
		Leased:    w.leased.Load(),
		Succeeded: w.succeeded.Load(),
		Failed:    w.failed.Load(),
		Lost:      w.lost.Load(),
		Cancelled: w.cancelled.Load(),
		Panics:    w.panics.Load(),
		Rejected:  w.rejectedN.Load(),
		Streams:   w.streams.Load(),
		InFlight:  n,
	}
}

// Run runs jobs until ctx is done, then drains: it gives no more credit,
// lets running jobs finish for up to DrainTimeout and reports them, cancels
// the contexts of jobs still running at the deadline (cause ErrDrainTimeout)
// and reports their failure, closes the stream and returns. Run returns
// after every goroutine it started has stopped, except for a handler that
// ignores its context (its goroutine ends when the handler returns). A
// Worker runs once.
func (w *Worker) Run(ctx context.Context) error {
	if len(w.handlers) == 0 {
		return errors.New("client: Worker.Run without handlers")
	}
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("client: Worker.Run called twice")
	}
	w.jobCtx = context.WithoutCancel(ctx)
	w.streamCtx, w.cancelStream = context.WithCancel(context.WithoutCancel(ctx))
	defer w.cancelStream()

	kinds := w.kinds()
	w.log.Info("worker started", "concurrency", w.cfg.Concurrency, "kinds", kinds, "lease_ttl", w.cfg.LeaseTTL)

	var pool sync.WaitGroup
	for range w.cfg.Concurrency {
		pool.Add(1)
		go func() {
			defer pool.Done()
			for j := range w.jobs {
				w.execute(j)
			}
		}()
	}
	watchStop := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		w.watchLeases(watchStop)
	}()
	connDone := make(chan struct{})
	go func() {
		defer close(connDone)
		w.connLoop(kinds)
	}()

	<-ctx.Done()
	w.mu.Lock()
	w.draining = true
	n := w.running
	w.mu.Unlock()
	w.signal()
	w.log.Info("worker draining", "running", n, "timeout", w.cfg.DrainTimeout)
	if !w.waitSettled(w.cfg.DrainTimeout) {
		w.log.Warn("drain timeout: cancelling running jobs", "running", w.Stats().InFlight)
		w.expireJobs()
		w.waitSettled(w.grace)
	}

	// End the stream: the sender flushes what is queued and closes its side.
	close(w.stopCh)
	select {
	case <-connDone:
	case <-time.After(workerCloseWait + time.Second):
		w.cancelStream()
		<-connDone
	}
	close(watchStop)
	<-watchDone

	w.mu.Lock()
	if left := len(w.held); left > 0 {
		w.lost.Add(uint64(left))
		w.log.Warn("worker stopped with unreported attempts", "jobs", left)
	}
	w.mu.Unlock()
	close(w.jobs) // the stream is gone: nothing sends on it any more
	poolDone := make(chan struct{})
	go func() { pool.Wait(); close(poolDone) }()
	select {
	case <-poolDone:
	case <-time.After(w.grace):
		w.log.Error("handlers still running after the drain: they ignore their context", "running", w.Stats().InFlight)
	}
	st := w.Stats()
	w.log.Info("worker stopped", "leased", st.Leased, "succeeded", st.Succeeded, "failed", st.Failed, "lost", st.Lost, "cancelled", st.Cancelled)
	return nil
}

// expireJobs cancels every running job with ErrDrainTimeout, and the jobs
// leased from now on as they start.
func (w *Worker) expireJobs() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expired = true
	for _, j := range w.held {
		if j.state == stRunning && j.gone == notGone {
			j.cancel(ErrDrainTimeout)
		}
	}
}

// kinds returns the registered kinds, sorted.
func (w *Worker) kinds() []string {
	ks := make([]string, 0, len(w.handlers))
	for k := range w.handlers {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// signal wakes the sender and Run's drain (both non-blocking).
func (w *Worker) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
	select {
	case w.settle <- struct{}{}:
	default:
	}
}

// waitSettled waits up to d for every held lease to go away (reported or
// lost).
func (w *Worker) waitSettled(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		w.mu.Lock()
		n := len(w.held)
		w.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-w.settle:
		case <-t.C:
			return false
		}
	}
}

// execute runs one job on a pool goroutine and queues its completion.
func (w *Worker) execute(j *Job) {
	started := time.Now()
	err := j.call()
	finished := time.Now()
	j.flushLog() // queued before the completion: sent ahead of it
	var pe *handlerPanic
	if err != nil && errors.As(err, &pe) {
		w.panics.Add(1)
	}
	// Built outside the lock, even if the lease is lost meanwhile (then it
	// is dropped).
	c := j.completion(w.cfg.ID, err, started, finished)
	w.mu.Lock()
	w.running--
	switch {
	case j.gone == goneLost:
		w.dropLocked(j)
		w.lost.Add(1)
	case j.gone == goneCancelled:
		w.dropLocked(j)
		w.cancelled.Add(1)
	default:
		j.compl, j.state = c, stPending
		w.pending = append(w.pending, j)
	}
	w.mu.Unlock()
	j.cancel(nil)
	w.signal()
}

// dropLocked forgets j's lease (if it is still the one held for its job).
func (w *Worker) dropLocked(j *Job) {
	if w.held[j.job.GetId()] == j {
		delete(w.held, j.job.GetId())
	}
}

// watchLeases cancels running jobs whose lease has had no successful
// extension for a whole TTL, whether or not a stream is up.
func (w *Worker) watchLeases(stop <-chan struct{}) {
	for {
		w.mu.Lock()
		period := w.ttl / 4
		w.mu.Unlock()
		t := time.NewTimer(period)
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C:
		}
		now := time.Now()
		w.mu.Lock()
		for _, j := range w.held {
			if j.gone != notGone || !now.After(j.expires) {
				continue
			}
			switch j.state {
			case stRunning:
				j.gone = goneLost
				j.cancel(errWorkerLeaseExpired)
			case stRetry:
				// Its completion would be refused now.
				j.gone = goneLost
				w.dropLocked(j)
				w.lost.Add(1)
			}
		}
		w.mu.Unlock()
		w.signal()
	}
}

var errWorkerLeaseExpired = fmt.Errorf("%w: no successful extension for a whole TTL", ErrLeaseLost)
