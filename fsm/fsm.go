// Package fsm is the deterministic replicated state of one Hodei shard: jobs,
// per-tenant ready queues with fair sharing, fenced leases, the delayed-job and
// lease-expiry timelines, the idempotency and request-id tables, and the
// indexes by tenant and by state that keep listing and scheduling off O(n)
// scans.
//
// Determinism is the contract. Every replica applies the same Raft log entries
// and must reach byte-identical state (compare Digest). Therefore Apply never
// reads the clock (the leader stamps now_ms into each internalpb.Entry), never
// draws random numbers, never touches the network or the disk (beyond the
// snapshot sink), never starts goroutines, and never iterates a Go map where
// the order could influence the result: ordered work goes through B-trees or
// slices in a defined order.
//
// A bad command (invalid spec, unknown job, stale token) is a deterministic
// CommandResult with a non-OK code and changes nothing. A condition that would
// let replicas diverge (a malformed entry, an entry version newer than this
// binary understands, an impossible internal state) panics with a message
// starting "fsm:" so that the node stops loudly instead of diverging silently.
package fsm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Entry versions. An entry is written in the lowest version that has every
// command it carries, so that nodes of the previous release keep applying
// ordinary entries during a rolling upgrade and stop loudly only on a
// command they do not know (instead of ignoring it and diverging).
const (
	// EntryVersion is the version of entries without SetTenantWeight
	// (EntryVersionFor chooses).
	EntryVersion = 1
	// EntryVersionTenantWeights is the version of entries that carry
	// SetTenantWeight; in an older entry the command is rejected, changing
	// nothing, as a binary that predates it would treat it.
	EntryVersionTenantWeights = 2
	// EntryVersionDispatch is the version of entries that carry LeaseBatch
	// or CompleteJobs, a LeaseJobs with kinds, or a spec with a kind or
	// payload: a binary that predates them would drop those fields and
	// decide differently. In an older entry they are rejected.
	EntryVersionDispatch = 3
	// EntryVersionSemantics is the version of entries that carry the
	// issue 11 commands (schedules, SetTenantLimits, constraints,
	// RetryJobs) and of entries whose completions, expiries and GC follow
	// the issue 11 rules (dead.go: a job out of attempts or not retryable
	// ends DEAD with its attempt history, dead jobs have their own
	// retention and per-tenant bound). Proposers use it for the latter once
	// the whole cluster runs a binary that knows it (EntryVersionForCluster);
	// in an older entry the same commands apply exactly as before.
	EntryVersionSemantics = 4
	// EntryVersionPipelines is the version of entries that carry the
	// issue 13 pipeline commands (SubmitPipeline, CancelPipeline,
	// RetryPipeline) and schedule writes with a request id; everything of
	// version 4 stays valid in it. In an older entry the commands are
	// rejected, changing nothing.
	EntryVersionPipelines = 5
	// EntryVersionTenantLeases (auth, issue 12) is the version of entries
	// carrying a lease demand limited to tenants (LeaseJobs.tenants, from a
	// worker token): a binary that predates it would drop the limit and
	// lease other tenants' jobs. In an older entry such a demand is
	// rejected. The same release as EntryVersionPipelines.
	EntryVersionTenantLeases = 5
	// MaxEntryVersion is the newest entry version this binary understands.
	// An entry with a larger (or unset) version makes Apply panic.
	MaxEntryVersion = EntryVersionPipelines
)

// Snapshot format versions. Restore accepts versions 1 to snapshotVersionSemantics.
// Snapshot writes the lowest version that can represent the state, so that
// a binary of an older release fails loudly only on a snapshot it could not
// represent, and installs the others: a state with neither tenant weights
// nor request records is written as version 1, the same bytes a binary
// without weights writes; one with weights but no request records as
// version 2, the same bytes the release before compact records writes.
const (
	// snapshotVersionNoWeights is the version of a state with neither
	// tenant weights nor request records.
	snapshotVersionNoWeights = 1
	// snapshotVersionWeights added the tenants' fair-share weights (other
	// than 1) to the header. Versions 1 and 2 keep each request record's
	// whole CommandResult.
	snapshotVersionWeights = 2
	// SnapshotVersion (3) keeps compact request records (RequestRecord
	// fields 4-11, see requests.go) instead of whole results; it is written
	// when there is a request record. Records of versions 1 and 2 are
	// converted to compact records on restore.
	SnapshotVersion = 3
	// snapshotVersionSemantics (4) is written when the state has issue 11
	// content: schedules (header.schedule_count hodeiv1.Schedule records
	// after the request records), tenant quotas (header.quotas), or a job
	// with DEAD state, attempt history or retries (Job fields, no section).
	snapshotVersionSemantics = 4
	// snapshotVersionPipelines (5) is written when the state has a
	// pipeline or ever had one (header.next_pipeline_seq > 1): the
	// header.pipeline_count hodeiv1.Pipeline records follow the schedule
	// records, and jobs may carry pipeline fields.
	snapshotVersionPipelines = 5
	// maxSnapshotVersion is the newest version Restore reads.
	maxSnapshotVersion = snapshotVersionPipelines
)

// Config holds the replicated-state knobs. All replicas of a shard must use
// the same Config, since it affects the outcome of Apply.
type Config struct {
	Shard                uint32
	DefaultMaxAttempts   int32 // used when JobSpec.max_attempts == 0
	DefaultBackoffBaseMs int64 // used when JobSpec.backoff_base_ms == 0
	DefaultBackoffMaxMs  int64 // used when JobSpec.backoff_max_ms == 0
	DefaultLeaseTTLMs    int64 // used when LeaseJobs/ExtendLeases ttl_ms == 0
	MaxLeaseTTLMs        int64 // larger requested TTLs are clamped to this
	RequestRetentionMs   int64 // request-id records are kept this long (by entry now_ms): the dedup window
	MaxRequests          int   // memory backstop: at most this many request-id records (oldest evicted first)
	MaxPayloadBytes      int   // limit of args+env+labels bytes of one spec
	MaxOutputBytes       int   // JobResult.output is truncated to its last MaxOutputBytes bytes
	// dead (issue 11): in entries of version 4, a DEAD job is removed by GC
	// DeadRetentionMs after it died (0 = kept until the bound evicts it),
	// and a tenant keeps at most MaxDeadPerTenant DEAD jobs in this shard
	// (the oldest dead is evicted first, reported through Options.OnDeadEvicted).
	DeadRetentionMs  int64
	MaxDeadPerTenant int
}

// DefaultConfig returns the default configuration for shard 0.
func DefaultConfig() Config {
	return Config{
		Shard:                0,
		DefaultMaxAttempts:   3,
		DefaultBackoffBaseMs: 1000,
		DefaultBackoffMaxMs:  60000,
		DefaultLeaseTTLMs:    30000,
		MaxLeaseTTLMs:        10 * 60000,
		RequestRetentionMs:   10 * 60000,
		// 15,000 single-job submits/s over 8 shards, each with a request
		// id, are ~1,900 records/s per shard: 1.1M in the 10-minute window.
		// 2M leaves room for the lease rounds, cancels and unary
		// completions that carry ids too, so that the window stays the 10
		// minutes; at ~135 B per record (BenchmarkRequestRecordBytes) it
		// bounds the table at ~270 MB per shard replica.
		MaxRequests:     2_000_000,
		MaxPayloadBytes: 1 << 20,
		MaxOutputBytes:  64 << 10,
		// 7 days, against the 24 h of finished jobs: time to notice and
		// retry. 10,000 dead per tenant per shard is at most ~10k * (64 KiB
		// last output + 32 * 800 B history) in the worst case.
		DeadRetentionMs:  7 * 24 * 3600 * 1000,
		MaxDeadPerTenant: 10_000,
	}
}

// Validate checks the configuration, including cross-field constraints.
func (c Config) Validate() error {
	var errs []error
	if c.DefaultMaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("DefaultMaxAttempts must be >= 1, got %d", c.DefaultMaxAttempts))
	}
	if c.DefaultBackoffBaseMs < 1 {
		errs = append(errs, fmt.Errorf("DefaultBackoffBaseMs must be >= 1, got %d", c.DefaultBackoffBaseMs))
	}
	if c.DefaultBackoffMaxMs < c.DefaultBackoffBaseMs {
		errs = append(errs, fmt.Errorf("DefaultBackoffMaxMs (%d) must be >= DefaultBackoffBaseMs (%d)", c.DefaultBackoffMaxMs, c.DefaultBackoffBaseMs))
	}
	if c.DefaultLeaseTTLMs < 1 {
		errs = append(errs, fmt.Errorf("DefaultLeaseTTLMs must be >= 1, got %d", c.DefaultLeaseTTLMs))
	}
	if c.MaxLeaseTTLMs < c.DefaultLeaseTTLMs {
		errs = append(errs, fmt.Errorf("MaxLeaseTTLMs (%d) must be >= DefaultLeaseTTLMs (%d)", c.MaxLeaseTTLMs, c.DefaultLeaseTTLMs))
	}
	if c.RequestRetentionMs < 0 {
		errs = append(errs, fmt.Errorf("RequestRetentionMs must be >= 0, got %d", c.RequestRetentionMs))
	}
	if c.MaxRequests < 0 {
		errs = append(errs, fmt.Errorf("MaxRequests must be >= 0, got %d", c.MaxRequests))
	}
	if c.MaxPayloadBytes < 1 {
		errs = append(errs, fmt.Errorf("MaxPayloadBytes must be >= 1, got %d", c.MaxPayloadBytes))
	}
	if c.MaxOutputBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxOutputBytes must be >= 0, got %d", c.MaxOutputBytes))
	}
	if c.DeadRetentionMs < 0 {
		errs = append(errs, fmt.Errorf("DeadRetentionMs must be >= 0, got %d", c.DeadRetentionMs))
	}
	if c.MaxDeadPerTenant < 1 {
		errs = append(errs, fmt.Errorf("MaxDeadPerTenant must be >= 1, got %d", c.MaxDeadPerTenant))
	}
	if len(errs) > 0 {
		return fmt.Errorf("fsm config: %w", errors.Join(errs...))
	}
	return nil
}

// Event is one job state transition produced by Apply. From is UNSPECIFIED
// for a submit; To is UNSPECIFIED when GC removes the job. From == To ==
// PENDING is a delayed job becoming leasable (not a state change). The
// events of one entry are in a deterministic order, the same on every
// replica, so (Index, position in the entry's slice) names one event
// cluster-wide (the watch cursor relies on it).
type Event struct {
	Index  uint64
	JobID  string
	Tenant string
	Kind   string // the job's JobSpec.kind ("" for a command job)
	NowMs  int64  // the entry's effective now_ms (monotone)
	From   hodeiv1.JobState
	To     hodeiv1.JobState
	// ReadySinceMs (To RUNNING only): when the job became ready to lease,
	// max(created, ready_at), so NowMs-ReadySinceMs is its dispatch wait.
	ReadySinceMs int64
}

// Options are non-replicated hooks.
type Options struct {
	// OnApply is called after each Apply/ApplyEntry that produced events,
	// synchronously, outside the FSM lock (it may call the read methods). It
	// must not block for long: it delays the next Apply.
	OnApply func(index uint64, events []Event)
	// OnDivergence is called (synchronously, outside the FSM lock) when a
	// Checkpoint does not match this replica's apply chain.
	OnDivergence func(Divergence)
	// OnRestore is called (synchronously, outside the FSM lock) after
	// Restore installed a snapshot at the given applied index: the events
	// of the entries it covers were never produced here.
	OnRestore func(index uint64)
	// OnDeadEvicted is called (synchronously, outside the FSM lock) after
	// an apply that removed DEAD jobs, by the per-tenant bound or by the
	// dead retention: evictions are never silent (dead.go).
	OnDeadEvicted func(index uint64, evicted []DeadEviction)
}

// FSM is the replicated state of one shard. It implements raft.FSM. Apply,
// Snapshot and Restore are called by one goroutine (raft's); the read
// methods are safe to call concurrently with them.
type FSM struct {
	cfg  Config
	opts Options

	mu sync.RWMutex
	st *state
	// Local, not replicated: the chain recorded at recent indexes (see
	// chain.go), and the outcome of the checkpoints applied here.
	ring    chainRing
	lastIdx uint64 // index of the newest ring record
	stats   ChainStats
}

var _ raft.FSM = (*FSM)(nil)

// New returns an empty FSM. It fails if cfg does not validate.
func New(cfg Config, opts Options) (*FSM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &FSM{cfg: cfg, opts: opts, st: newState(cfg)}, nil
}

// Config returns the configuration the FSM was built with.
func (f *FSM) Config() Config { return f.cfg }

// Apply implements raft.FSM. For LogCommand entries it decodes an
// internalpb.Entry and returns []*internalpb.CommandResult, one per command
// in order. Other log types return nil. Malformed data panics.
func (f *FSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		f.mu.Lock()
		if l.Index > f.st.appliedIndex {
			f.st.appliedIndex = l.Index
			f.record(l.Index)
		}
		f.mu.Unlock()
		return nil
	}
	e := &internalpb.Entry{}
	if err := proto.Unmarshal(l.Data, e); err != nil {
		panic(fmt.Sprintf("fsm: malformed log entry at index %d (%d bytes): %v", l.Index, len(l.Data), err))
	}
	return f.apply(l.Index, e, l)
}

// ApplyEntry applies one decoded entry at the given log index. It is the
// same path as Apply, for tests and in-memory use, except that it does not
// extend the apply chain (it has no log bytes). e is not retained.
func (f *FSM) ApplyEntry(index uint64, e *internalpb.Entry) []*internalpb.CommandResult {
	return f.apply(index, e, nil)
}

func (f *FSM) apply(index uint64, e *internalpb.Entry, l *raft.Log) []*internalpb.CommandResult {
	if e == nil {
		panic(fmt.Sprintf("fsm: nil entry at index %d", index))
	}
	if e.GetVersion() == 0 || e.GetVersion() > MaxEntryVersion {
		panic(fmt.Sprintf("fsm: entry at index %d has version %d; this binary understands versions up to %d (upgrade this node, or the proposer forgot to set Entry.version)",
			index, e.GetVersion(), MaxEntryVersion))
	}
	var divs []Divergence
	f.mu.Lock()
	for _, c := range e.GetCommands() {
		if cp := c.GetCheckpoint(); cp != nil {
			if d, bad := f.verify(index, cp); bad {
				divs = append(divs, d)
			}
		}
	}
	results, events := f.st.applyEntry(index, e)
	evicted := f.st.evicted
	f.st.evicted = nil
	if l != nil {
		f.st.chain = chainNext(f.st.chain, l.Index, l.Term, l.Data)
		f.record(l.Index)
	}
	f.mu.Unlock()
	if f.opts.OnDivergence != nil {
		for _, d := range divs {
			f.opts.OnDivergence(d)
		}
	}
	if f.opts.OnDeadEvicted != nil && len(evicted) > 0 {
		f.opts.OnDeadEvicted(index, evicted)
	}
	if f.opts.OnApply != nil && len(events) > 0 {
		f.opts.OnApply(index, events)
	}
	return results
}

// record notes the current chain at index. Callers hold f.mu.
func (f *FSM) record(index uint64) {
	f.ring.put(index, f.st.chain)
	f.lastIdx = index
}

// verify checks a checkpoint applied at index at against the ring. Callers
// hold f.mu.
func (f *FSM) verify(at uint64, cp *internalpb.Checkpoint) (Divergence, bool) {
	got, ok := f.ring.get(cp.GetIndex())
	switch {
	case !ok:
		f.stats.Unverifiable++
		return Divergence{}, false
	case got != cp.GetChain():
		f.stats.Mismatched++
		return Divergence{At: at, Index: cp.GetIndex(), Want: cp.GetChain(), Got: got}, true
	default:
		f.stats.Verified++
		return Divergence{}, false
	}
}

// LastChain returns the newest index this replica recorded a chain for and
// that chain: what a leader puts in a Checkpoint. ok is false before the
// first apply or restore.
func (f *FSM) LastChain() (index, chain uint64, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.lastIdx == 0 {
		return 0, 0, false
	}
	chain, ok = f.ring.get(f.lastIdx)
	return f.lastIdx, chain, ok
}

// ChainStats returns the outcome of the checkpoints applied here.
func (f *FSM) ChainStats() ChainStats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.stats
}

// ResultError converts a non-OK CommandResult to a *CodeError; nil for OK
// (or a nil result).
func ResultError(r *internalpb.CommandResult) error {
	if r == nil || r.GetCode() == internalpb.Code_CODE_OK {
		return nil
	}
	return &CodeError{C: r.GetCode(), Msg: r.GetMessage()}
}

// CodeError is a non-OK command outcome.
type CodeError struct {
	C   internalpb.Code
	Msg string
}

// Error implements error.
func (e *CodeError) Error() string { return fmt.Sprintf("%s: %s", e.C, e.Msg) }

// Code returns the command result code.
func (e *CodeError) Code() internalpb.Code { return e.C }

// stateName is "SUCCEEDED" for JOB_STATE_SUCCEEDED.
func stateName(s hodeiv1.JobState) string {
	n := s.String()
	const p = "JOB_STATE_"
	if len(n) > len(p) && n[:len(p)] == p {
		return n[len(p):]
	}
	return n
}
