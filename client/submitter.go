package client

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Defaults of SubmitterConfig.
const (
	DefaultSubmitterMaxBatch    = 1000
	DefaultSubmitterMaxInFlight = 4
)

// SubmitterConfig configures a Submitter. Zero values mean the defaults.
type SubmitterConfig struct {
	// MaxBatch is the most specs in one SubmitJobs call (default 1000, at
	// most MaxSubmitBatch). A call also carries at most 16 MiB of specs.
	MaxBatch int
	// MaxInFlight is the most SubmitJobs calls in flight per shard (default 4).
	MaxInFlight int
}

// Validate checks the config after defaults are applied.
func (c *SubmitterConfig) Validate() error {
	if c.MaxBatch < 1 || c.MaxBatch > MaxSubmitBatch {
		return fmt.Errorf("client: submitter MaxBatch %d out of 1..%d", c.MaxBatch, MaxSubmitBatch)
	}
	if c.MaxInFlight < 1 {
		return fmt.Errorf("client: submitter MaxInFlight %d must be >= 1", c.MaxInFlight)
	}
	return nil
}

func (c *SubmitterConfig) applyDefaults() {
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultSubmitterMaxBatch
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultSubmitterMaxInFlight
	}
}

// A Submitter coalesces concurrent single submits into SubmitJobs calls,
// per shard, and gives each caller its own answer (the shape of an async
// publish). It adds no waiting: a submit goes out at once while its shard
// has fewer than MaxInFlight calls in flight; otherwise it queues, and the
// next call of that shard to finish takes everything queued (up to
// MaxBatch) into the next one. So calls carry one spec at light load and
// grow with the load. Each shard's calls go to its leader when routing
// knows it (see Client); with an unknown map they go to the current node,
// which splits them per shard.
//
// A Submitter is safe for concurrent use. Close it to flush and stop it.
type Submitter struct {
	c   *Client
	cfg SubmitterConfig
	// ctx is the batches' context: the client's background context, so
	// that closing the Client stops them.
	ctx context.Context

	mu     sync.Mutex
	closed bool
	lanes  map[int]*lane // by shard (noShard: the map is unknown)
	wg     sync.WaitGroup
}

// lane is one shard's queue. Guarded by Submitter.mu.
type lane struct {
	shard    int
	queue    []*pending
	inflight int // flush goroutines running for this lane
}

type pendingState uint8

const (
	queued    pendingState = iota
	sent                   // taken into a batch
	abandoned              // its caller left while queued: never sent
)

// pending is one caller's submit.
type pending struct {
	spec  *hodeiv1.JobSpec
	size  int
	state pendingState // guarded by Submitter.mu

	resp *hodeiv1.SubmitJobResponse // set before done is closed
	err  error
	done chan struct{}
}

// NewSubmitter returns a Submitter that sends through c. It must be
// closed before c is.
func (c *Client) NewSubmitter(cfg SubmitterConfig) (*Submitter, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Submitter{c: c, cfg: cfg, ctx: c.bgCtx, lanes: make(map[int]*lane)}, nil
}

// Submit submits spec in a SubmitJobs call shared with the concurrent
// submits of its shard, and returns once that call is committed (or has
// failed) with spec's own result (Duplicate set for a matched idempotency
// key) or error. Calls are retried like the Client's, with one request id
// per call reused on its retries; idempotency keys are sent unchanged.
//
// An invalid spec fails only its own caller, with the error Submit of the
// Client would return: the server rejects a whole SubmitJobs for one invalid
// spec (it validates all before committing any), so the Submitter then
// resends the named spec alone and the others together (or the two halves
// if the answer names none) until each invalid spec is alone. Any other
// error of a call is every one of its callers' error.
//
// ctx bounds the wait, not the call: if ctx ends while spec is still
// queued, spec is not sent and Submit returns ctx.Err(); if it ends while
// spec's call is in flight, Submit returns ctx.Err() and the job may still
// be created (an idempotency key lets a later submit find it). spec must
// not be modified until Submit returns. After Close, Submit returns
// ErrClosed.
func (s *Submitter) Submit(ctx context.Context, spec *hodeiv1.JobSpec) (*hodeiv1.SubmitJobResponse, error) {
	if spec == nil {
		return nil, status.Error(codes.InvalidArgument, "spec is required")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	shard := s.c.tenantShard(ctx, spec.GetTenant())
	p := &pending{spec: spec, size: proto.Size(spec), done: make(chan struct{})}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	l := s.lanes[shard]
	if l == nil {
		l = &lane{shard: shard}
		s.lanes[shard] = l
	}
	l.queue = append(l.queue, p)
	if l.inflight < s.cfg.MaxInFlight {
		l.inflight++
		s.wg.Add(1)
		go s.flush(l)
	}
	s.mu.Unlock()

	select {
	case <-p.done:
		return p.resp, p.err
	case <-ctx.Done():
	}
	s.mu.Lock()
	if p.state == queued {
		p.state = abandoned
		s.mu.Unlock()
		return nil, ctx.Err()
	}
	s.mu.Unlock()
	select {
	case <-p.done:
		return p.resp, p.err
	default:
		return nil, ctx.Err()
	}
}

// Close flushes: it stops accepting submits, waits until every queued
// submit has been sent and answered, and stops the Submitter's goroutines.
// The wait is bounded by the Client's retry budget; closing the Client
// ends it at once (the calls in flight then fail).
func (s *Submitter) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// flush sends l's queue until it is empty. Invariant: while a lane's queue
// is not empty, at least one flush runs for it (a flush leaves only after
// finding the queue empty, under the lock the queue is filled under).
func (s *Submitter) flush(l *lane) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		batch := s.take(l)
		if len(batch) == 0 {
			l.inflight--
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.send(l.shard, batch)
	}
}

// take removes the next batch from l's queue: up to MaxBatch specs and
// maxPartBytes bytes (at least one), skipping abandoned ones. s.mu is held.
func (s *Submitter) take(l *lane) []*pending {
	var batch []*pending
	size, i := 0, 0
	for ; i < len(l.queue) && len(batch) < s.cfg.MaxBatch; i++ {
		p := l.queue[i]
		if p.state == abandoned {
			continue
		}
		if len(batch) > 0 && size+p.size > maxPartBytes {
			break
		}
		p.state = sent
		size += p.size
		batch = append(batch, p)
	}
	n := copy(l.queue, l.queue[i:])
	clear(l.queue[n:])
	l.queue = l.queue[:n]
	if n == 0 && cap(l.queue) > 4*s.cfg.MaxBatch {
		l.queue = nil // let a burst's backing array go
	}
	return batch
}

// send submits batch for shard in one call and answers its callers,
// isolating invalid specs (see Submit).
func (s *Submitter) send(shard int, batch []*pending) {
	specs := make([]*hodeiv1.JobSpec, len(batch))
	for i, p := range batch {
		specs[i] = p.spec
	}
	res, err := s.c.submitPart(s.ctx, shard, specs, NewRequestID())
	if err == nil {
		for i, p := range batch {
			if p.err = ItemError(res[i]); p.err == nil { // a tenant limit refused it (issue 11 quota)
				p.resp = res[i]
			}
			close(p.done)
		}
		return
	}
	if status.Code(err) == codes.InvalidArgument && len(batch) > 1 {
		// Nothing of the batch was committed (the server validates every
		// spec before committing any), so its parts can go again, each
		// with a new request id.
		if k, _, ok := specIndex(status.Convert(err).Message()); ok && k < len(batch) {
			s.send(shard, batch[k:k+1])
			rest := append(append(make([]*pending, 0, len(batch)-1), batch[:k]...), batch[k+1:]...)
			s.send(shard, rest)
			return
		}
		h := len(batch) / 2
		s.send(shard, batch[:h])
		s.send(shard, batch[h:])
		return
	}
	if s.ctx.Err() != nil && (errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled) {
		err = ErrClosed
	}
	for _, p := range batch {
		p.err = err
		close(p.done)
	}
}
