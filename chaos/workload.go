package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/transport/tlsutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// API is what the workload needs from a Hodei client (declared here, by its
// consumer; *client.Client satisfies it).
type API interface {
	Submit(ctx context.Context, spec *hodeiv1.JobSpec) (*hodeiv1.SubmitJobResponse, error)
	SubmitBatch(ctx context.Context, specs []*hodeiv1.JobSpec) ([]*hodeiv1.SubmitJobResponse, error)
	Get(ctx context.Context, id string, opts ...client.ReadOption) (*hodeiv1.Job, error)
	Cancel(ctx context.Context, id, reason string) (*hodeiv1.Job, error)
	Close() error
}

// WorkloadConfig shapes the load.
type WorkloadConfig struct {
	Seed    int64
	Clients int
	// JobRate is the offered load: jobs submitted per second over all
	// clients (first attempts; retries of unknown outcomes come on top).
	JobRate float64
	// ReadRate is linearizable gets, stale gets and cancels per second over
	// all clients (62.5%, 25%, 12.5%), of jobs already acknowledged.
	ReadRate float64
	// ShellRate is how many of the JobRate jobs per second are shell jobs
	// (a /bin/sh, a date and a sleep process each); the others are handler
	// jobs of kind ExecKind, run inside the worker process.
	ShellRate float64
	// BatchShare is the share of jobs submitted in explicit SubmitBatch
	// calls of 2-20 jobs; the others are single submits through a
	// client.Submitter, which coalesces concurrent submits per shard.
	BatchShare float64
	Tenants    int
	OpTimeout  time.Duration // one attempt
	ExecLog    string        // path every job appends its execution line to
	Addrs      []string
	// TLSFiles are the clients' TLS files (none: plaintext).
	TLSFiles tlsutil.Files
	// NewAPI makes a client; nil means client.New with Addrs, and single
	// submits through a client.Submitter.
	NewAPI func(addrs []string, opTimeout time.Duration) (API, error)
	Token  string // bearer token (auth on); used by the default NewAPI
}

// submitterAPI is a Client whose single submits go through a Submitter.
type submitterAPI struct {
	*client.Client
	s *client.Submitter
}

func (a submitterAPI) Submit(ctx context.Context, spec *hodeiv1.JobSpec) (*hodeiv1.SubmitJobResponse, error) {
	return a.s.Submit(ctx, spec)
}

func (a submitterAPI) Close() error {
	a.s.Close()
	return a.Client.Close()
}

// Workload runs clients that submit, read and cancel jobs and record every
// operation in History.
type Workload struct {
	cfg  WorkloadConfig
	h    *History
	apis []API

	mu    sync.Mutex
	known []known // acknowledged jobs, shared by every client

	wg     sync.WaitGroup
	ctx    context.Context // Start's, for probes
	cancel context.CancelFunc
	// stopNew is closed to stop issuing new operations; retries of
	// unknown submits go on until the context ends.
	stopNew chan struct{}
	stopped sync.Once
}

type known struct {
	key JobKey
	id  string
}

// NewWorkload prepares the clients.
func NewWorkload(cfg WorkloadConfig, h *History) (*Workload, error) {
	if cfg.Clients <= 0 {
		cfg.Clients = 1
	}
	if cfg.Tenants <= 0 {
		cfg.Tenants = 16
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 2 * time.Second
	}
	if cfg.NewAPI == nil {
		cfg.NewAPI = func(addrs []string, t time.Duration) (API, error) {
			c, err := client.New(client.Config{Addrs: addrs, CallTimeout: t, Retry: t, TLSFiles: cfg.TLSFiles, Token: cfg.Token})
			if err != nil {
				return nil, err
			}
			s, err := c.NewSubmitter(client.SubmitterConfig{MaxBatch: 500})
			if err != nil {
				c.Close()
				return nil, err
			}
			return submitterAPI{c, s}, nil
		}
	}
	w := &Workload{cfg: cfg, h: h, stopNew: make(chan struct{})}
	for i := 0; i < cfg.Clients; i++ {
		// each client starts on a different node
		addrs := append([]string(nil), cfg.Addrs[i%len(cfg.Addrs):]...)
		addrs = append(addrs, cfg.Addrs[:i%len(cfg.Addrs)]...)
		api, err := cfg.NewAPI(addrs, cfg.OpTimeout)
		if err != nil {
			w.closeAPIs()
			return nil, err
		}
		w.apis = append(w.apis, api)
	}
	return w, nil
}

func (w *Workload) closeAPIs() {
	for _, a := range w.apis {
		_ = a.Close()
	}
}

// batchMin and batchMax bound an explicit batch submit.
const batchMin, batchMax = 2, 20

// Start launches the clients. Stop (or ctx) ends them.
func (w *Workload) Start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	w.ctx = ctx
	// One submit "unit" is a single job (share 1-b of the jobs) or a batch
	// of 2..20 (11 on average, share b): units/s = jobs/s / E[jobs per unit].
	b := min(max(w.cfg.BatchShare, 0), 1)
	avgBatch := float64(batchMin+batchMax) / 2
	pBatch := 0.0 // probability that a unit is a batch
	if b > 0 {
		pBatch = (b / avgBatch) / ((1 - b) + b/avgBatch)
	}
	jobsPerUnit := (1-pBatch)*1 + pBatch*avgBatch
	units := w.cfg.JobRate / jobsPerUnit
	for i := range w.apis {
		w.wg.Add(1)
		go func(i int) {
			defer w.wg.Done()
			w.runSubmits(ctx, i, units/float64(len(w.apis)), pBatch)
		}(i)
		if w.cfg.ReadRate > 0 {
			w.wg.Add(1)
			go func(i int) {
				defer w.wg.Done()
				w.runReads(ctx, i, w.cfg.ReadRate/float64(len(w.apis)))
			}(i)
		}
	}
}

// Probe reads every job of jobs (linearizable gets, recorded like the
// others) now and again after TTL/2, TTL and 2 TTL: a worker fault's late or
// re-sent completions arrive in that window, and a job whose terminal state
// changed, or that was seen active after terminal, shows in the history.
func (w *Workload) Probe(jobs []JobRef, ttl time.Duration) {
	if w.ctx == nil || len(jobs) == 0 {
		return
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		start := time.Now()
		for _, d := range []time.Duration{0, ttl / 2, ttl, 2 * ttl} {
			if sleepCtx(w.ctx, time.Until(start.Add(d))) != nil {
				return
			}
			var wg sync.WaitGroup
			for i, j := range jobs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					w.get(w.ctx, i%len(w.apis), known{j.Key, j.ID}, false)
				}()
			}
			wg.Wait()
		}
	}()
}

// StopNew stops issuing new operations; in-flight submits keep retrying.
func (w *Workload) StopNew() { w.stopped.Do(func() { close(w.stopNew) }) }

// Wait waits for the clients, cancelling them after grace.
func (w *Workload) Wait(grace time.Duration) {
	w.StopNew()
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		w.cancel()
		<-done
	}
	w.cancel()
	w.closeAPIs()
}

// pace calls fn rate times a second (concurrently: a slow operation does not
// stop the pace) until stopped; after a stall it does not burst to catch up.
func (w *Workload) pace(ctx context.Context, rate float64, fn func() func()) {
	if rate <= 0 {
		return
	}
	per := time.Duration(float64(time.Second) / rate)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	next := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		next = next.Add(per)
		if d := time.Until(next); d > 0 {
			t.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-w.stopNew:
				return
			case <-t.C:
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-w.stopNew:
				return
			default:
			}
			if d < -5*per && d < -50*time.Millisecond {
				next = time.Now() // do not burst to catch up after a stall
			}
		}
		if op := fn(); op != nil {
			inflight.Add(1)
			go func() { defer inflight.Done(); op() }()
		}
	}
}

func (w *Workload) runSubmits(ctx context.Context, id int, rate, pBatch float64) {
	rng := rand.New(rand.NewPCG(uint64(w.cfg.Seed), uint64(id)+1))
	pShell := 0.0
	if w.cfg.JobRate > 0 {
		pShell = min(w.cfg.ShellRate/w.cfg.JobRate, 1)
	}
	seq := 0
	w.pace(ctx, rate, func() func() {
		seq++
		if rng.Float64() < pBatch {
			n := batchMin + rng.IntN(batchMax-batchMin+1)
			specs := make([]*hodeiv1.JobSpec, n)
			for i := range specs {
				specs[i] = w.spec(rng, id, seq*100+i, rng.Float64() < pShell)
			}
			return func() { w.submit(ctx, id, specs) }
		}
		spec := w.spec(rng, id, seq*100, rng.Float64() < pShell)
		return func() { w.submit(ctx, id, []*hodeiv1.JobSpec{spec}) }
	})
}

func (w *Workload) runReads(ctx context.Context, id int, rate float64) {
	rng := rand.New(rand.NewPCG(uint64(w.cfg.Seed), uint64(id)+1001))
	w.pace(ctx, rate, func() func() {
		p := rng.Float64()
		k, ok := w.pick(rng)
		if !ok {
			return nil
		}
		switch {
		case p < 0.625:
			return func() { w.get(ctx, id, k, false) }
		case p < 0.875:
			return func() { w.get(ctx, id, k, true) }
		default:
			return func() { w.cancelJob(ctx, id, k) }
		}
	})
}

// pick chooses a known job, favouring recent ones (they are still moving).
func (w *Workload) pick(rng *rand.Rand) (known, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.known)
	if n == 0 {
		return known{}, false
	}
	if rng.IntN(4) > 0 {
		lo := max(0, n-50)
		return w.known[lo+rng.IntN(n-lo)], true
	}
	return w.known[rng.IntN(n)], true
}

// Durations of shell jobs (sleep arguments) and of handler jobs: a handler
// job costs no process, so most are instant; the long tail keeps leases
// held across faults and extensions going.
var (
	shellDurations = []struct {
		sleep string
		d     time.Duration
		p     float64
	}{{"0.005", 5 * time.Millisecond, 0.40}, {"0.05", 50 * time.Millisecond, 0.30}, {"0.3", 300 * time.Millisecond, 0.15},
		{"1", time.Second, 0.10}, {"3", 3 * time.Second, 0.05}}
	handlerDurations = []struct {
		d time.Duration
		p float64
	}{{0, 0.50}, {5 * time.Millisecond, 0.25}, {50 * time.Millisecond, 0.15}, {300 * time.Millisecond, 0.07}, {2 * time.Second, 0.03}}
)

// spec builds a job that records its execution and then waits a few ms to a
// few seconds; a few fail their first attempt to exercise retries. A shell
// job runs ExecLine and sleep under /bin/sh; a handler job (kind ExecKind)
// asks the worker's chaos handler to do the same in-process.
func (w *Workload) spec(rng *rand.Rand, client, seq int, shell bool) *hodeiv1.JobSpec {
	p := rng.Float64()
	tenant := fmt.Sprintf("t%02d", rng.IntN(w.cfg.Tenants))
	key := fmt.Sprintf("s%d-c%d-%d", w.cfg.Seed, client, seq)
	failFirst := rng.IntN(30) == 0
	if failFirst {
		key += "-f" // PlannedFailure: its retry is not counted as a duplicate
	}
	spec := &hodeiv1.JobSpec{
		Tenant:         tenant,
		MaxAttempts:    3,
		TimeoutMs:      30000,
		BackoffBaseMs:  100,
		BackoffMaxMs:   1000,
		IdempotencyKey: key,
	}
	if !shell {
		d := handlerDurations[len(handlerDurations)-1].d
		for _, hd := range handlerDurations {
			if p < hd.p {
				d = hd.d
				break
			}
			p -= hd.p
		}
		spec.Kind, spec.Payload = ExecKind, ExecPayload{Sleep: d, FailFirst: failFirst}.Encode()
		return spec
	}
	sleep, d := "0.005", 5*time.Millisecond
	for _, sd := range shellDurations {
		if p < sd.p {
			sleep, d = sd.sleep, sd.d
			break
		}
		p -= sd.p
	}
	line := ExecLine(tenant, key, w.cfg.ExecLog, d) + "; sleep " + sleep
	if failFirst {
		line += `; [ "${HODEI_ATTEMPT:-1}" -ge 2 ] || exit 3`
	}
	spec.Command, spec.Shell = []string{line}, true
	return spec
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// classify maps an error to an outcome: definite failures are the codes
// with which a server refuses a request before doing anything.
func classify(err error) (Outcome, string) {
	if err == nil {
		return OK, ""
	}
	st, ok := status.FromError(err)
	if !ok {
		return Unknown, "transport"
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.AlreadyExists,
		codes.PermissionDenied, codes.Unauthenticated, codes.OutOfRange, codes.Unimplemented:
		return Fail, st.Code().String()
	}
	return Unknown, st.Code().String()
}

func observe(op *Op, j *hodeiv1.Job) {
	if j == nil {
		return
	}
	op.Found = true
	op.JobID = j.GetId()
	op.State = strings.TrimPrefix(j.GetState().String(), "JOB_STATE_")
	op.Attempts = j.GetAttempts()
	if r := j.GetLastResult(); r != nil && IsTerminal(op.State) {
		op.ResultToken, op.ResultAttempt, op.ResultExpired = r.GetLeaseToken(), r.GetAttempt(), r.GetLeaseExpired()
	}
}

// submit submits specs (one call, batch if more than one) and retries with
// the same idempotency keys while the outcome is unknown.
func (w *Workload) submit(ctx context.Context, cid int, specs []*hodeiv1.JobSpec) {
	api := w.apis[cid]
	pending := specs
	for attempt := 0; len(pending) > 0 && attempt < 20; attempt++ {
		if attempt > 0 {
			if sleepCtx(ctx, time.Duration(100+50*attempt)*time.Millisecond) != nil {
				return
			}
		}
		inv := w.h.Now()
		cctx, cancel := context.WithTimeout(ctx, 3*w.cfg.OpTimeout)
		var resps []*hodeiv1.SubmitJobResponse
		var err error
		if len(pending) == 1 {
			var r *hodeiv1.SubmitJobResponse
			r, err = api.Submit(cctx, pending[0])
			resps = []*hodeiv1.SubmitJobResponse{r}
		} else {
			resps, err = api.SubmitBatch(cctx, pending)
		}
		cancel()
		ret := w.h.Now()
		outcome, code := classify(err)
		if err == nil && len(resps) != len(pending) {
			outcome, code, err = Unknown, "short-reply", fmt.Errorf("got %d results for %d specs", len(resps), len(pending))
		}
		// A batch sent in parts (one per shard) that partly failed says per
		// spec whether it was committed or what its part's error was.
		var be *client.BatchError
		if errors.As(err, &be) && len(be.Results) != len(pending) {
			be = nil
		}
		var retry []*hodeiv1.JobSpec
		for i, s := range pending {
			op := Op{Client: cid, Kind: OpSubmit, Job: JobKey{s.GetTenant(), s.GetIdempotencyKey()},
				Invoke: inv, Return: ret, Outcome: outcome, Code: code}
			if len(pending) > 1 {
				op.Batch = len(pending)
			}
			var resp *hodeiv1.SubmitJobResponse
			switch {
			case be != nil && be.Results[i] != nil:
				op.Outcome, op.Code = OK, ""
				resp = be.Results[i]
			case be != nil:
				op.Outcome, op.Code = classify(be.Errs[i])
				op.Err = be.Errs[i].Error()
			case err != nil:
				op.Err = err.Error()
			default:
				resp = resps[i]
			}
			if resp != nil {
				observe(&op, resp.GetJob())
				op.Duplicate = resp.GetDuplicate()
			}
			w.h.Add(op)
			switch {
			case op.Outcome == Unknown:
				retry = append(retry, s)
			case op.Outcome == OK && op.JobID != "":
				w.mu.Lock()
				w.known = append(w.known, known{op.Job, op.JobID})
				w.mu.Unlock()
			}
		}
		pending = retry
		if ctx.Err() != nil {
			return
		}
	}
}

func (w *Workload) get(ctx context.Context, cid int, k known, stale bool) {
	inv := w.h.Now()
	cctx, cancel := context.WithTimeout(ctx, 3*w.cfg.OpTimeout)
	var opts []client.ReadOption
	kind := OpGet
	if stale {
		opts, kind = append(opts, client.Stale()), OpGetStale
	}
	j, err := w.apis[cid].Get(cctx, k.id, opts...)
	cancel()
	op := Op{Client: cid, Kind: kind, Job: k.key, JobID: k.id, Invoke: inv, Return: w.h.Now()}
	op.Outcome, op.Code = classify(err)
	if err != nil {
		op.Err = err.Error()
		if op.Code == codes.NotFound.String() {
			op.Outcome, op.Found = OK, false // a definite answer: it does not exist
		} else {
			op.Outcome = Unknown // a read that failed tells nothing
		}
	} else {
		observe(&op, j)
	}
	if ctx.Err() != nil && op.Outcome != OK {
		return // stopped by the harness, not by the cluster
	}
	w.h.Add(op)
}

func (w *Workload) cancelJob(ctx context.Context, cid int, k known) {
	inv := w.h.Now()
	cctx, cancel := context.WithTimeout(ctx, 3*w.cfg.OpTimeout)
	j, err := w.apis[cid].Cancel(cctx, k.id, "chaos")
	cancel()
	op := Op{Client: cid, Kind: OpCancel, Job: k.key, JobID: k.id, Invoke: inv, Return: w.h.Now()}
	op.Outcome, op.Code = classify(err)
	if err != nil {
		op.Err = err.Error()
	} else {
		observe(&op, j)
	}
	w.h.Add(op)
}
