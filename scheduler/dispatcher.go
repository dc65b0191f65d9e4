package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// The dispatcher is the node-wide half of the scheduler: it owns the demand
// of every worker connected to this node (their free slots), turns it into
// lease proposals, and carries their completions and lease extensions to the
// shards.
//
// Per shard there is one lease lane and one completion lane, each a
// goroutine with at most one call in flight: while a call is in Raft, new
// demand and new completions accumulate, and the next call carries all of
// them (batches grow with load and add no waiting at light load, the shape
// of cluster/batcher.go). A lease lane of a shard this node leads proposes
// one LeaseBatch for every worker with free slots that can run the shard's
// ready work; a lane of a shard led elsewhere makes one forwarded call for
// this node's whole unmet demand (work stealing in bulk), and only for
// workers that no shard led here has work for. Every job in a batch keeps
// its own token and its own outcome.

// Errors of the dispatcher. The transport maps them to gRPC codes.
var (
	// ErrNotProposed marks an error of the backend after which nothing was
	// proposed (no leader, not the leader, a leadership transfer, ...).
	ErrNotProposed = errors.New("scheduler: not proposed")
	// ErrRejected marks an error of the backend that refused the request
	// (validation, a deterministic FSM refusal): nothing was granted.
	ErrRejected = errors.New("scheduler: rejected")
	// ErrWorkerConnected: a worker with this id is already connected here.
	ErrWorkerConnected = errors.New("scheduler: worker already connected to this node")
	// ErrInvalid wraps bad input from a worker (its hello or slots).
	ErrInvalid = errors.New("scheduler: invalid worker input")
	// ErrDraining: the node is draining and takes no new workers.
	ErrDraining = errors.New("scheduler: node is draining")
	// ErrSessionClosed: the session was closed.
	ErrSessionClosed = errors.New("scheduler: session closed")
)

// DispatchBackend is what the dispatcher needs from its node; the cluster
// package provides it. Lease, Complete and Extend run on the shard's leader:
// on this node when it leads the shard, else through one call to the leader.
type DispatchBackend interface {
	ShardCount() int
	// Leader reports whether this node leads shard, and whether any leader
	// is known.
	Leader(shard uint32) (local, known bool)
	// Ready is the number of leasable jobs in this node's replica of shard
	// (a hint: followers may be slightly behind).
	Ready(shard uint32) int
	// ReadyFor reports whether this node's replica of shard has a leasable
	// job for a worker with these labels and kinds (a hint).
	// tenants (auth, issue 12) limits the jobs to those tenants; nil = all.
	ReadyFor(shard uint32, labels []*hodeiv1.KeyValue, kinds []string, tenants []string) bool
	// Lease leases for every demand under req.request_id (a retry with the
	// same id returns the first grant). Errors wrap ErrNotProposed or
	// ErrRejected when they know; any other error means the outcome is
	// unknown.
	Lease(ctx context.Context, shard uint32, req *hodeiv1.LeaseForRequest) ([]*hodeiv1.LeaseGrant, error)
	// Complete records completions; each item is fenced on its own, and a
	// repeat of an accepted completion answers ok, so a retry is safe.
	Complete(ctx context.Context, shard uint32, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error)
	// Extend renews the leases of one worker.
	Extend(ctx context.Context, shard uint32, req *hodeiv1.ExtendLeasesRequest) ([]*hodeiv1.ExtendResult, error)
	// ShardOfJob is the shard of a job id.
	ShardOfJob(id string) (uint32, error)
}

// DispatcherConfig configures a Dispatcher. Use DefaultDispatcherConfig and
// change what you need; Validate checks it.
type DispatcherConfig struct {
	NodeID string
	// MaxSlots bounds one session's free slots (its credit).
	MaxSlots int
	// DefaultTTL is the lease TTL of a worker that asks for none.
	DefaultTTL time.Duration
	// Recheck is how often an idle lane looks again without a wake-up.
	Recheck time.Duration
	// CallTimeout bounds one lease or completion call.
	CallTimeout time.Duration
	// ResolveFor is how long a lease whose outcome is unknown is retried
	// under the same request id before its demand is given back (its jobs,
	// if it was committed, then come back by TTL).
	ResolveFor time.Duration
	// CompleteFor is how long completions are retried on errors before
	// their workers are told UNAVAILABLE (they may send them again).
	CompleteFor time.Duration
	// RetryBackoff and RetryBackoffMax bound the wait between retries.
	RetryBackoff, RetryBackoffMax time.Duration
	Now                           func() time.Time
	Logger                        *slog.Logger
}

// DefaultDispatcherConfig returns the defaults.
func DefaultDispatcherConfig() DispatcherConfig {
	return DispatcherConfig{
		MaxSlots:        10000,
		DefaultTTL:      30 * time.Second,
		Recheck:         250 * time.Millisecond,
		CallTimeout:     2 * time.Second,
		ResolveFor:      4 * time.Second,
		CompleteFor:     10 * time.Second,
		RetryBackoff:    20 * time.Millisecond,
		RetryBackoffMax: 500 * time.Millisecond,
		Now:             time.Now,
		Logger:          slog.New(slog.DiscardHandler),
	}
}

// Validate checks c without changing it.
func (c DispatcherConfig) Validate() error {
	var errs []error
	if c.MaxSlots < 1 {
		errs = append(errs, fmt.Errorf("MaxSlots must be >= 1, got %d", c.MaxSlots))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DefaultTTL", c.DefaultTTL}, {"Recheck", c.Recheck}, {"CallTimeout", c.CallTimeout}, {"ResolveFor", c.ResolveFor}, {"CompleteFor", c.CompleteFor}, {"RetryBackoff", c.RetryBackoff}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be > 0, got %v", d.name, d.v))
		}
	}
	if c.RetryBackoffMax < c.RetryBackoff {
		errs = append(errs, fmt.Errorf("RetryBackoffMax (%v) must be >= RetryBackoff (%v)", c.RetryBackoffMax, c.RetryBackoff))
	}
	if c.Now == nil || c.Logger == nil {
		errs = append(errs, errors.New("Now and Logger are required"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("dispatcher config: %w", errors.Join(errs...))
	}
	return nil
}

// Dispatcher serves the workers connected to one node. Create it with
// NewDispatcher and stop it with Stop.
type Dispatcher struct {
	cfg  DispatcherConfig
	b    DispatchBackend
	boot string // random per process: request ids never repeat across restarts

	mu       sync.Mutex
	sessions map[string]*Session
	order    []*Session // connection order; rotated per round for fairness
	rot      int
	held     map[string]heldLease // job id -> session holding it (leases delivered here)
	draining bool
	seq      uint64

	lease    []*lane
	complete []*completionLane
	stop     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
}

type heldLease struct {
	s     *Session
	token uint64
}

// NewDispatcher starts a dispatcher over b.
func NewDispatcher(cfg DispatcherConfig, b DispatchBackend) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	d := &Dispatcher{
		cfg: cfg, b: b, boot: hex.EncodeToString(nonce[:]),
		sessions: map[string]*Session{}, held: map[string]heldLease{},
		stop: make(chan struct{}),
	}
	n := b.ShardCount()
	for i := 0; i < n; i++ {
		l := &lane{d: d, shard: uint32(i), wake: make(chan struct{}, 1)}
		c := &completionLane{d: d, shard: uint32(i), wake: make(chan struct{}, 1)}
		d.lease = append(d.lease, l)
		d.complete = append(d.complete, c)
		d.wg.Add(2)
		go l.run()
		go c.run()
	}
	return d, nil
}

// Stop ends every lane and waits for them. Sessions still open get no more
// leases; their pending completions are answered UNAVAILABLE.
func (d *Dispatcher) Stop() {
	d.stopOnce.Do(func() { close(d.stop) })
	d.wg.Wait()
}

// Wake tells every lease lane that work may have become ready (an apply
// made jobs PENDING, or leadership moved).
func (d *Dispatcher) Wake() {
	for _, l := range d.lease {
		l.poke()
	}
}

// WakeShard tells shard's lease lane that its work may have changed.
func (d *Dispatcher) WakeShard(shard uint32) {
	if int(shard) < len(d.lease) {
		d.lease[shard].poke()
	}
}

// OnEvents is called with the job state changes this node's replica of
// shard applied. It must not block: it wakes the shard's lease lane when
// jobs became ready or a RUNNING job ended, and tells the sessions holding cancelled jobs to stop
// them.
func (d *Dispatcher) OnEvents(shard uint32, events []fsm.Event) {
	ready := false
	for _, e := range events {
		switch e.To {
		case hodeiv1.JobState_JOB_STATE_PENDING:
			ready = true
		case hodeiv1.JobState_JOB_STATE_CANCELLED:
			if e.From == hodeiv1.JobState_JOB_STATE_RUNNING {
				d.cancelled(e.JobID)
			}
		}
		if e.From == hodeiv1.JobState_JOB_STATE_RUNNING {
			// A tenant at its max-running (issue 11 quota) may lease again:
			// its ready jobs were held back, not absent. A round with no
			// ready job ends at once.
			ready = true
		}
	}
	if ready {
		d.WakeShard(shard)
	}
}

func (d *Dispatcher) cancelled(jobID string) {
	d.mu.Lock()
	h, ok := d.held[jobID]
	if ok {
		delete(d.held, jobID)
	}
	d.mu.Unlock()
	if ok {
		h.s.push(func(o *Outbox) {
			o.Cancels = append(o.Cancels, &hodeiv1.LeaseRef{JobId: jobID, Token: h.token})
		})
	}
}

// Sessions is the number of worker streams open on this node (a unary
// Lease poll is not counted).
func (d *Dispatcher) Sessions() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions)
}

// Profiles returns the labels and kinds of the workers connected to this
// node now (one per session), for reports (issue 11 quota: GetJob's
// unmatched).
func (d *Dispatcher) Profiles() []fsm.WorkerProfile {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]fsm.WorkerProfile, 0, len(d.sessions))
	for _, s := range d.sessions {
		out = append(out, fsm.WorkerProfile{Labels: s.info.Labels, Kinds: s.info.Kinds})
	}
	return out
}

// Drain asks every connected worker to drain and takes no new sessions.
func (d *Dispatcher) Drain(reason string) {
	d.mu.Lock()
	d.draining = true
	ss := append([]*Session(nil), d.order...)
	for _, s := range ss {
		s.credit = 0
	}
	d.mu.Unlock()
	for _, s := range ss {
		s.push(func(o *Outbox) { o.Drain = reason })
	}
}

// WorkerInfo is what a worker says about itself in its hello.
type WorkerInfo struct {
	ID     string
	Labels []*hodeiv1.KeyValue
	Kinds  []string
	TTL    time.Duration // 0 = the default
	// Tenants limits the jobs the worker is leased to these tenants (its
	// token's limit, auth issue 12); nil = every tenant. The limit travels
	// in every lease demand made for it, and the FSM's lease decision
	// passes over the other tenants, as it does for labels and kinds.
	Tenants []string
}

// Connect opens a session for a worker with slots free slots. A worker id
// has at most one session per node.
func (d *Dispatcher) Connect(info WorkerInfo, slots int) (*Session, error) {
	return d.open(info, slots, true)
}

// LeaseOnce serves a unary Lease with the same lanes: a session of
// capacity slots that is not registered under the worker's id (a worker may
// hold a stream and long-poll too), open until it got leases or wait
// passes, then closed. Leases granted by a call still in flight when it
// closes are returned too.
func (d *Dispatcher) LeaseOnce(ctx context.Context, info WorkerInfo, capacity int, wait time.Duration) ([]*hodeiv1.Lease, error) {
	if capacity < 1 || capacity > fsm.MaxLeaseCapacity {
		return nil, fmt.Errorf("%w: capacity %d is outside 1..%d", ErrInvalid, capacity, fsm.MaxLeaseCapacity)
	}
	s, err := d.open(info, capacity, false)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
wait:
	for !s.hasLeases() {
		select {
		case <-s.ready:
		case <-t.C:
			break wait
		case <-ctx.Done():
			break wait
		case <-d.stop:
			break wait
		}
	}
	s.Close()
	return s.Take().Leases, nil
}

func (s *Session) hasLeases() bool {
	s.omu.Lock()
	defer s.omu.Unlock()
	return len(s.out.Leases) > 0
}

func (d *Dispatcher) open(info WorkerInfo, slots int, register bool) (*Session, error) {
	if info.ID == "" || len(info.ID) > fsm.MaxNameBytes {
		return nil, fmt.Errorf("%w: worker_id must be 1..%d bytes", ErrInvalid, fsm.MaxNameBytes)
	}
	if slots < 0 || slots > d.cfg.MaxSlots {
		return nil, fmt.Errorf("%w: slots %d is outside 0..%d", ErrInvalid, slots, d.cfg.MaxSlots)
	}
	if info.TTL < 0 {
		return nil, fmt.Errorf("%w: ttl is negative", ErrInvalid)
	}
	for _, k := range info.Kinds {
		if err := fsm.ValidateKind(k); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	for i, kv := range info.Labels {
		if kv.GetKey() == "" {
			return nil, fmt.Errorf("%w: label %d has an empty key", ErrInvalid, i)
		}
	}
	ttl := info.TTL
	if ttl == 0 {
		ttl = d.cfg.DefaultTTL
	}
	s := &Session{d: d, info: info, ttl: ttl, sig: signature(info), credit: slots, ready: make(chan struct{}, 1), settled: make(chan struct{})}
	close(s.settled)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return nil, ErrDraining
	}
	if register {
		if _, dup := d.sessions[info.ID]; dup {
			return nil, fmt.Errorf("%w: %s", ErrWorkerConnected, info.ID)
		}
		d.sessions[info.ID] = s
	}
	d.order = append(d.order, s)
	if slots > 0 {
		d.wakeAllLocked()
	}
	return s, nil
}

func (d *Dispatcher) wakeAllLocked() {
	for _, l := range d.lease {
		l.poke()
	}
}

// signature groups workers that can run the same jobs.
func signature(info WorkerInfo) string {
	var b strings.Builder
	for _, kv := range info.Labels {
		b.WriteString(kv.GetKey())
		b.WriteByte('=')
		b.WriteString(kv.GetValue())
		b.WriteByte(0)
	}
	b.WriteByte(1)
	for _, k := range info.Kinds {
		b.WriteString(k)
		b.WriteByte(0)
	}
	if info.Tenants != nil {
		b.WriteByte(2)
		for _, t := range info.Tenants {
			b.WriteString(t)
			b.WriteByte(0)
		}
	}
	return b.String()
}

// Outbox is what a session has to tell its worker.
type Outbox struct {
	Leases    []*hodeiv1.Lease
	Completed []*hodeiv1.CompletionResult
	Extended  []*hodeiv1.ExtendResult
	Cancels   []*hodeiv1.LeaseRef
	Drain     string // non-empty: drain, with this reason
}

func (o *Outbox) empty() bool {
	return len(o.Leases) == 0 && len(o.Completed) == 0 && len(o.Extended) == 0 && len(o.Cancels) == 0 && o.Drain == ""
}

// Session is one connected worker's demand and mailbox.
type Session struct {
	d    *Dispatcher
	info WorkerInfo
	ttl  time.Duration
	sig  string

	// Guarded by d.mu.
	credit   int // free slots not yet leased
	reserved int // part of credit a lane is leasing for now
	closed   bool
	settled  chan struct{} // closed when reserved drops to 0

	omu     sync.Mutex
	out     Outbox
	pending int           // completions queued whose result is not in the outbox yet
	ready   chan struct{} // buffered 1: the outbox has something
}

// Done is closed when the dispatcher stops: a stream serving the session
// should end.
func (s *Session) Done() <-chan struct{} { return s.d.stop }

// Pending is the number of completions sent by the worker whose result has
// not been queued for it yet.
func (s *Session) Pending() int {
	s.omu.Lock()
	defer s.omu.Unlock()
	return s.pending
}

// ID is the worker id.
func (s *Session) ID() string { return s.info.ID }

// TTL is the lease TTL this session's leases get.
func (s *Session) TTL() time.Duration { return s.ttl }

// Ready is signalled when Take has something.
func (s *Session) Ready() <-chan struct{} { return s.ready }

// Messages returns everything queued for the worker as stream messages, in
// the order a worker should act on them (cancels, then outcomes, then new
// leases, then a drain), and empties the outbox.
func (s *Session) Messages() []*hodeiv1.ServerMessage {
	o := s.Take()
	var out []*hodeiv1.ServerMessage
	if len(o.Cancels) > 0 {
		out = append(out, &hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Cancel{Cancel: &hodeiv1.ServerCancel{Leases: o.Cancels, Reason: "job cancelled"}}})
	}
	if len(o.Completed) > 0 {
		out = append(out, &hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Completions{Completions: &hodeiv1.ServerCompletions{Results: o.Completed}}})
	}
	if len(o.Extended) > 0 {
		out = append(out, &hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Extended{Extended: &hodeiv1.ServerExtended{Results: o.Extended}}})
	}
	if len(o.Leases) > 0 {
		out = append(out, &hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Leases{Leases: &hodeiv1.ServerLeases{Leases: o.Leases}}})
	}
	if o.Drain != "" {
		out = append(out, &hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Drain{Drain: &hodeiv1.ServerDrain{Reason: o.Drain}}})
	}
	return out
}

// Take returns everything queued for the worker and empties the outbox.
func (s *Session) Take() Outbox {
	s.omu.Lock()
	defer s.omu.Unlock()
	o := s.out
	s.out = Outbox{}
	return o
}

func (s *Session) push(f func(*Outbox)) {
	s.omu.Lock()
	f(&s.out)
	s.omu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Refuse answers completions and extensions that the transport refused
// before they reached the dispatcher (auth: another tenant's job), through
// the session's outbox like every other outcome.
func (s *Session) Refuse(completed []*hodeiv1.CompletionResult, extended []*hodeiv1.ExtendResult) {
	if len(completed) == 0 && len(extended) == 0 {
		return
	}
	s.push(func(o *Outbox) {
		o.Completed = append(o.Completed, completed...)
		o.Extended = append(o.Extended, extended...)
	})
}

// AddSlots gives the session n more free slots.
func (s *Session) AddSlots(n int) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.closed {
		return ErrSessionClosed
	}
	if n < 1 || n > d.cfg.MaxSlots || s.credit+n > d.cfg.MaxSlots {
		return fmt.Errorf("%w: slots %d would make the credit %d, limit %d", ErrInvalid, n, s.credit+n, d.cfg.MaxSlots)
	}
	if d.draining {
		return nil // no new work while draining
	}
	s.credit += n
	d.wakeAllLocked()
	return nil
}

// Complete queues completions; their results reach the outbox. Each
// completion's result records this worker as its worker.
func (s *Session) Complete(items []*hodeiv1.Completion) {
	d := s.d
	byShard := map[uint32][]pendingCompletion{}
	var bad []*hodeiv1.CompletionResult
	for _, it := range items {
		sh, err := d.b.ShardOfJob(it.GetJobId())
		if err != nil {
			bad = append(bad, &hodeiv1.CompletionResult{JobId: it.GetJobId(), Token: it.GetToken(), Code: "INVALID_ARGUMENT", Reason: err.Error()})
			continue
		}
		if it.GetResult() == nil {
			it.Result = &hodeiv1.JobResult{}
		}
		it.Result.WorkerId = s.info.ID
		byShard[sh] = append(byShard[sh], pendingCompletion{s: s, item: it})
	}
	if len(bad) > 0 {
		s.push(func(o *Outbox) { o.Completed = append(o.Completed, bad...) })
	}
	n := 0
	for _, ps := range byShard {
		n += len(ps)
	}
	s.omu.Lock()
	s.pending += n
	s.omu.Unlock()
	for sh, ps := range byShard {
		d.complete[sh].add(ps)
	}
}

// Extend renews the session's leases; the results reach the outbox.
func (s *Session) Extend(ctx context.Context, refs []*hodeiv1.LeaseRef) {
	d := s.d
	groups := map[uint32][]*hodeiv1.LeaseRef{}
	var out []*hodeiv1.ExtendResult
	for _, r := range refs {
		sh, err := d.b.ShardOfJob(r.GetJobId())
		if err != nil {
			out = append(out, &hodeiv1.ExtendResult{JobId: r.GetJobId(), Reason: err.Error()})
			continue
		}
		groups[sh] = append(groups[sh], r)
	}
	for sh, g := range groups {
		cctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
		res, err := d.b.Extend(cctx, sh, &hodeiv1.ExtendLeasesRequest{WorkerId: s.info.ID, Leases: g, TtlMs: s.ttl.Milliseconds()})
		cancel()
		if err != nil || len(res) != len(g) {
			// No answer: the worker keeps its leases and heartbeats again
			// (it gives a lease up after a whole TTL without a renewal).
			d.cfg.Logger.Debug("extend failed", "shard", sh, "worker", s.info.ID, "err", err)
			continue
		}
		out = append(out, res...)
		d.mu.Lock()
		for _, r := range res {
			if !r.GetOk() {
				delete(d.held, r.GetJobId())
			}
		}
		d.mu.Unlock()
	}
	if len(out) > 0 {
		s.push(func(o *Outbox) { o.Extended = append(o.Extended, out...) })
	}
}

// Close ends the session's demand and waits until no lease call of a lane
// still leases for it; leases granted by such a call are in the outbox
// (Take them). Its leases stay valid until their TTL.
func (s *Session) Close() {
	d := s.d
	d.mu.Lock()
	if !s.closed {
		s.closed = true
		s.credit = 0
		if d.sessions[s.info.ID] == s {
			delete(d.sessions, s.info.ID)
		}
		for i, o := range d.order {
			if o == s {
				d.order = append(d.order[:i], d.order[i+1:]...)
				break
			}
		}
		for id, h := range d.held {
			if h.s == s {
				delete(d.held, id)
			}
		}
	}
	settled := s.settled
	d.mu.Unlock()
	<-settled
}

// demand is part of one session's credit reserved by a lane.
type demand struct {
	s *Session
	n int
}

// reserve takes up to max of the free credit of sessions that can run the
// ready work of shard (per this node's replica). For a shard led elsewhere
// (steal), it skips sessions that a shard led here has work for.
func (d *Dispatcher) reserve(sh uint32, max int, local bool) []demand {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining || len(d.order) == 0 {
		return nil
	}
	n := len(d.order)
	d.rot++
	start := d.rot % n
	can := map[string]bool{}      // signature -> this shard has work for it
	busyHere := map[string]bool{} // signature -> a shard led here has work for it
	var out []demand
	for i := 0; i < n && max > 0 && len(out) < fsm.MaxLeaseDemands; i++ {
		s := d.order[(start+i)%n]
		free := s.credit - s.reserved
		if free <= 0 || s.closed {
			continue
		}
		ok, seen := can[s.sig]
		if !seen {
			ok = d.b.ReadyFor(sh, s.info.Labels, s.info.Kinds, s.info.Tenants)
			if ok && !local {
				busyHere[s.sig] = d.localWorkFor(s)
				ok = !busyHere[s.sig]
			}
			can[s.sig] = ok
		}
		if !ok {
			continue
		}
		k := min(free, max, fsm.MaxLeaseCapacity)
		if s.reserved == 0 {
			s.settled = make(chan struct{})
		}
		s.reserved += k
		max -= k
		out = append(out, demand{s: s, n: k})
	}
	return out
}

// localWorkFor reports whether a shard this node leads has work for s.
// Callers hold d.mu.
func (d *Dispatcher) localWorkFor(s *Session) bool {
	for i := range d.lease {
		if local, _ := d.b.Leader(uint32(i)); local && d.b.ReadyFor(uint32(i), s.info.Labels, s.info.Kinds, s.info.Tenants) {
			return true
		}
	}
	return false
}

// settle gives back the reservations of ds and delivers grants (one per
// demand, in order; nil when nothing was granted). The leases are in the
// outbox before a Close waiting for the reservation returns.
func (d *Dispatcher) settle(ds []demand, grants []*hodeiv1.LeaseGrant) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, dm := range ds {
		s := dm.s
		var leases []*hodeiv1.Lease
		if i < len(grants) && grants[i].GetWorkerId() == s.info.ID {
			leases = grants[i].GetLeases()
		}
		s.reserved -= dm.n
		s.credit -= len(leases)
		if s.credit < 0 {
			s.credit = 0 // never: the FSM grants at most the capacity asked
		}
		if !s.closed {
			for _, l := range leases {
				d.held[l.GetJob().GetId()] = heldLease{s: s, token: l.GetToken()}
			}
		}
		if len(leases) > 0 {
			s.push(func(o *Outbox) { o.Leases = append(o.Leases, leases...) })
		}
		if s.reserved == 0 {
			close(s.settled)
		}
	}
}

func (d *Dispatcher) requestID(sh uint32) string {
	d.mu.Lock()
	d.seq++
	n := d.seq
	d.mu.Unlock()
	return d.cfg.NodeID + "/" + d.boot + "/" + strconv.FormatUint(uint64(sh), 10) + "/" + strconv.FormatUint(n, 10)
}

// wait sleeps for dur, or until stop; false on stop.
func (d *Dispatcher) wait(dur time.Duration) bool {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-d.stop:
		return false
	case <-t.C:
		return true
	}
}

// outcome classifies a failed backend call.
type outcome int

const (
	outcomeUnknown outcome = iota
	outcomeNotProposed
	outcomeRejected
)

func outcomeOf(err error) outcome {
	var ce *fsm.CodeError
	switch {
	case errors.Is(err, ErrNotProposed):
		return outcomeNotProposed
	case errors.Is(err, ErrRejected), errors.As(err, &ce):
		return outcomeRejected
	}
	return outcomeUnknown
}

// lane is the lease loop of one shard.
type lane struct {
	d     *Dispatcher
	shard uint32
	wake  chan struct{}
}

func (l *lane) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *lane) run() {
	d := l.d
	defer d.wg.Done()
	t := time.NewTimer(d.cfg.Recheck)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-l.wake:
		case <-t.C:
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(d.cfg.Recheck)
		for l.round() {
			// A round that leased something goes again at once: more
			// demand or more work may be waiting.
			select {
			case <-d.stop:
				return
			default:
			}
		}
	}
}

// round runs one lease call; true if it granted something.
func (l *lane) round() bool {
	d := l.d
	local, known := d.b.Leader(l.shard)
	if !known {
		return false
	}
	ready := d.b.Ready(l.shard)
	if ready <= 0 {
		return false
	}
	ds := d.reserve(l.shard, ready, local)
	if len(ds) == 0 {
		return false
	}
	req := &hodeiv1.LeaseForRequest{RequestId: d.requestID(l.shard), Demands: make([]*hodeiv1.LeaseDemand, len(ds))}
	for i, dm := range ds {
		req.Demands[i] = &hodeiv1.LeaseDemand{WorkerId: dm.s.info.ID, Capacity: int32(dm.n), Labels: dm.s.info.Labels, Kinds: dm.s.info.Kinds, TtlMs: dm.s.ttl.Milliseconds(), Tenants: dm.s.info.Tenants}
	}
	grants := l.lease(req)
	d.settle(ds, grants)
	asked, got := 0, 0
	for _, dm := range ds {
		asked += dm.n
	}
	for _, g := range grants {
		got += len(g.GetLeases())
	}
	if local && (got < asked || d.b.Ready(l.shard) == 0) {
		// This shard could not fill its workers' demand, or has no more
		// work: the lanes of shards led elsewhere may steal for them now.
		// (Only local lanes wake the others, so lanes never keep each
		// other busy.)
		for _, o := range d.lease {
			if o != l {
				if lo, _ := d.b.Leader(o.shard); !lo {
					o.poke()
				}
			}
		}
	}
	return got > 0
}

// lease makes the lease call of req and resolves an unknown outcome: the
// same request id is retried (resolve set: the leader proposes it even if it
// sees no ready work, since the first attempt may have leased it), wherever
// the shard's leader now is, until the FSM answers — with the first grant if
// that was committed — or ResolveFor passes. Then the grant, if there was
// one, is lost to its TTL (logged). Definite failures return no grants.
func (l *lane) lease(req *hodeiv1.LeaseForRequest) []*hodeiv1.LeaseGrant {
	d := l.d
	var stop time.Time
	backoff := d.cfg.RetryBackoff
	for tries := 1; ; tries++ {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.CallTimeout)
		grants, err := d.b.Lease(ctx, l.shard, req)
		cancel()
		if err == nil {
			if tries > 1 {
				d.cfg.Logger.Info("ambiguous lease resolved", "shard", l.shard, "request_id", req.GetRequestId(), "attempts", tries)
			}
			return grants
		}
		switch outcomeOf(err) {
		case outcomeRejected:
			d.cfg.Logger.Warn("lease refused", "shard", l.shard, "request_id", req.GetRequestId(), "err", err)
			return nil
		case outcomeNotProposed:
			if !req.GetResolve() {
				return nil // nothing was leased
			}
		}
		if !req.GetResolve() {
			req.Resolve = true
			stop = d.cfg.Now().Add(d.cfg.ResolveFor)
			d.cfg.Logger.Info("lease outcome unknown, retrying it", "shard", l.shard, "request_id", req.GetRequestId(), "err", err)
		}
		if !d.cfg.Now().Before(stop) {
			d.cfg.Logger.Warn("lease outcome still unknown; its jobs, if granted, return after their TTL", "shard", l.shard, "request_id", req.GetRequestId(), "attempts", tries, "err", err)
			return nil
		}
		if !d.wait(backoff) {
			return nil
		}
		backoff = min(2*backoff, d.cfg.RetryBackoffMax)
	}
}

// pendingCompletion is a completion waiting for its shard's lane.
type pendingCompletion struct {
	s    *Session
	item *hodeiv1.Completion
}

// completionLane carries the completions of every session to one shard.
type completionLane struct {
	d     *Dispatcher
	shard uint32
	wake  chan struct{}

	mu      sync.Mutex
	pending []pendingCompletion
}

func (c *completionLane) add(ps []pendingCompletion) {
	c.mu.Lock()
	c.pending = append(c.pending, ps...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *completionLane) take() []pendingCompletion {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := min(len(c.pending), fsm.MaxCompletions)
	out := c.pending[:n:n]
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
	return out
}

func (c *completionLane) run() {
	d := c.d
	defer d.wg.Done()
	for {
		select {
		case <-d.stop:
			c.failAll(c.take(), "UNAVAILABLE", "node is shutting down")
			return
		case <-c.wake:
		}
		for {
			ps := c.take()
			if len(ps) == 0 {
				break
			}
			c.flush(ps)
		}
	}
}

// flush records ps (retrying errors: completions are idempotent by token)
// and routes each result to its session.
func (c *completionLane) flush(ps []pendingCompletion) {
	d := c.d
	items := make([]*hodeiv1.Completion, len(ps))
	for i, p := range ps {
		items[i] = p.item
	}
	stop := d.cfg.Now().Add(d.cfg.CompleteFor)
	backoff := d.cfg.RetryBackoff
	for {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.CallTimeout)
		res, err := d.b.Complete(ctx, c.shard, items)
		cancel()
		if err == nil && len(res) == len(items) {
			c.deliver(ps, res)
			return
		}
		if err == nil {
			err = fmt.Errorf("%d results for %d completions", len(res), len(items))
		}
		if outcomeOf(err) == outcomeRejected {
			c.failAll(ps, "INVALID_ARGUMENT", err.Error())
			return
		}
		if !d.cfg.Now().Before(stop) {
			c.failAll(ps, "UNAVAILABLE", err.Error())
			return
		}
		if !d.wait(backoff) {
			c.failAll(ps, "UNAVAILABLE", "node is shutting down")
			return
		}
		backoff = min(2*backoff, d.cfg.RetryBackoffMax)
	}
}

func (c *completionLane) deliver(ps []pendingCompletion, res []*hodeiv1.CompletionResult) {
	d := c.d
	d.mu.Lock()
	for i, r := range res {
		if h, ok := d.held[r.GetJobId()]; ok && h.s == ps[i].s && (r.GetOk() || r.GetCode() != "UNAVAILABLE") {
			delete(d.held, r.GetJobId())
		}
	}
	d.mu.Unlock()
	bySession := map[*Session][]*hodeiv1.CompletionResult{}
	var order []*Session
	for i, r := range res {
		s := ps[i].s
		if _, ok := bySession[s]; !ok {
			order = append(order, s)
		}
		bySession[s] = append(bySession[s], r)
	}
	for _, s := range order {
		rs := bySession[s]
		s.push(func(o *Outbox) {
			o.Completed = append(o.Completed, rs...)
			s.pending = max(0, s.pending-len(rs))
		})
	}
}

func (c *completionLane) failAll(ps []pendingCompletion, code, reason string) {
	res := make([]*hodeiv1.CompletionResult, len(ps))
	for i, p := range ps {
		res[i] = &hodeiv1.CompletionResult{JobId: p.item.GetJobId(), Token: p.item.GetToken(), Code: code, Reason: reason}
	}
	if len(ps) > 0 {
		c.deliver(ps, res)
	}
}

// CompleteAndWait records completions for a caller without a session (the
// unary CompleteJobs): the same lanes, the same batching.
func (d *Dispatcher) CompleteAndWait(ctx context.Context, items []*hodeiv1.Completion) ([]*hodeiv1.CompletionResult, error) {
	s := &Session{d: d, info: WorkerInfo{ID: ""}, ready: make(chan struct{}, 1)}
	idx := map[string][]int{} // job id + token -> positions
	out := make([]*hodeiv1.CompletionResult, len(items))
	byShard := map[uint32][]pendingCompletion{}
	for i, it := range items {
		sh, err := d.b.ShardOfJob(it.GetJobId())
		if err != nil {
			out[i] = &hodeiv1.CompletionResult{JobId: it.GetJobId(), Token: it.GetToken(), Code: "INVALID_ARGUMENT", Reason: err.Error()}
			continue
		}
		k := it.GetJobId() + "/" + strconv.FormatUint(it.GetToken(), 10)
		idx[k] = append(idx[k], i)
		byShard[sh] = append(byShard[sh], pendingCompletion{s: s, item: it})
	}
	want := 0
	for sh, ps := range byShard {
		want += len(ps)
		d.complete[sh].add(ps)
	}
	for got := 0; got < want; {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.ready:
		}
		for _, r := range s.Take().Completed {
			k := r.GetJobId() + "/" + strconv.FormatUint(r.GetToken(), 10)
			if p := idx[k]; len(p) > 0 {
				out[p[0]] = r
				idx[k] = p[1:]
				got++
			}
		}
	}
	return out, nil
}
