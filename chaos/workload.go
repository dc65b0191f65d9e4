package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
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
	Seed      int64
	Clients   int
	Rate      float64 // target operations per second over all clients
	Tenants   int
	OpTimeout time.Duration // one attempt
	ExecLog   string        // path every job appends its execution line to
	Addrs     []string
	// NewAPI makes a client; nil means client.New with Addrs.
	NewAPI func(addrs []string, opTimeout time.Duration) (API, error)
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
			return client.New(client.Config{Addrs: addrs, CallTimeout: t, Retry: t})
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

// Start launches the clients. Stop (or ctx) ends them.
func (w *Workload) Start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	per := time.Duration(float64(time.Second) * float64(w.cfg.Clients) / w.cfg.Rate)
	for i := range w.apis {
		w.wg.Add(1)
		go func(i int) {
			defer w.wg.Done()
			w.runClient(ctx, i, per)
		}(i)
	}
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

func (w *Workload) runClient(ctx context.Context, id int, per time.Duration) {
	rng := rand.New(rand.NewPCG(uint64(w.cfg.Seed), uint64(id)+1))
	var inflight sync.WaitGroup
	defer inflight.Wait()
	next := time.Now()
	seq := 0
	for {
		next = next.Add(per)
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-w.stopNew:
			t.Stop()
			return
		case <-t.C:
		}
		if time.Until(next) < -5*per {
			next = time.Now() // do not burst to catch up after a stall
		}
		p := rng.Float64()
		seq++
		// operations run concurrently so that a slow one does not stop the pace
		var op func()
		switch {
		case p < 0.50:
			spec := w.spec(rng, id, seq)
			op = func() { w.submit(ctx, id, []*hodeiv1.JobSpec{spec}) }
		case p < 0.60:
			n := 2 + rng.IntN(4)
			specs := make([]*hodeiv1.JobSpec, n)
			for i := range specs {
				specs[i] = w.spec(rng, id, seq*10+i)
			}
			op = func() { w.submit(ctx, id, specs) }
		case p < 0.85:
			if k, ok := w.pick(rng); ok {
				op = func() { w.get(ctx, id, k, false) }
			}
		case p < 0.95:
			if k, ok := w.pick(rng); ok {
				op = func() { w.get(ctx, id, k, true) }
			}
		default:
			if k, ok := w.pick(rng); ok {
				op = func() { w.cancelJob(ctx, id, k) }
			}
		}
		if op != nil {
			inflight.Add(1)
			go func() { defer inflight.Done(); op() }()
		}
	}
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

var durations = []struct {
	sleep string
	p     float64
}{{"0.005", 0.40}, {"0.05", 0.30}, {"0.3", 0.15}, {"1", 0.10}, {"3", 0.05}}

// spec builds a job that records its execution and sleeps a few ms to a few
// seconds; a few fail their first attempt to exercise retries.
func (w *Workload) spec(rng *rand.Rand, client, seq int) *hodeiv1.JobSpec {
	p, sleep := rng.Float64(), "0.005"
	for _, d := range durations {
		if p < d.p {
			sleep = d.sleep
			break
		}
		p -= d.p
	}
	tenant := fmt.Sprintf("t%02d", rng.IntN(w.cfg.Tenants))
	key := fmt.Sprintf("s%d-c%d-%d", w.cfg.Seed, client, seq)
	failFirst := rng.IntN(30) == 0
	if failFirst {
		key += "-f" // PlannedFailure: its retry is not counted as a duplicate
	}
	line := ExecLine(tenant, key, w.cfg.ExecLog) + "; sleep " + sleep
	if failFirst {
		line += `; [ "${HODEI_ATTEMPT:-1}" -ge 2 ] || exit 3`
	}
	return &hodeiv1.JobSpec{
		Tenant:         tenant,
		Command:        []string{line},
		Shell:          true,
		MaxAttempts:    3,
		TimeoutMs:      30000,
		BackoffBaseMs:  100,
		BackoffMaxMs:   1000,
		IdempotencyKey: key,
	}
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
		op.ResultToken, op.ResultAttempt = r.GetLeaseToken(), r.GetAttempt()
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
		var retry []*hodeiv1.JobSpec
		for i, s := range pending {
			op := Op{Client: cid, Kind: OpSubmit, Job: JobKey{s.GetTenant(), s.GetIdempotencyKey()},
				Invoke: inv, Return: ret, Outcome: outcome, Code: code}
			if len(pending) > 1 {
				op.Batch = len(pending)
			}
			if err != nil {
				op.Err = err.Error()
			} else {
				observe(&op, resps[i].GetJob())
				op.Duplicate = resps[i].GetDuplicate()
			}
			w.h.Add(op)
			switch {
			case outcome == Unknown:
				retry = append(retry, s)
			case outcome == OK && op.JobID != "":
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
