// Package logstore keeps the live log lines of job attempts on one node.
//
// Contract:
//   - Lines are node-local and not replicated: a worker streams them to the
//     node it is connected to, which appends them here. A job's final output
//     tail stays replicated in its result (JobResult.output), as before.
//   - Per job at most Config.MaxJobBytes (all its attempts together; the
//     oldest lines go first), per node at most Config.MaxTotalBytes (the job
//     written to least recently goes first, whole). Each eviction is counted.
//   - Retention is by time, independent of the job's garbage collection: a
//     job is dropped Config.Retention after Sweep first saw it over (ended,
//     or unknown to the node), or after Config.Retention without a write.
//   - Lines are fenced by lease token: an attempt's lines are kept under its
//     token; a line whose token is below the highest token seen for its job
//     is stale and refused. Within an attempt, seq must increase: a repeat or
//     an older seq is refused (a reconnect cannot duplicate or reorder).
//   - Memory counts data bytes plus a fixed overhead per line.
//
// The store is safe for concurrent use. It has no goroutines: the owner calls
// Sweep periodically with its clock injected through Config.Now.
package logstore

import (
	"container/list"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Defaults of Config.
const (
	DefaultMaxLineBytes  = 16 << 10
	DefaultMaxJobBytes   = 1 << 20
	DefaultMaxTotalBytes = 256 << 20
	DefaultRetention     = time.Hour
	// lineOverhead is what one stored line costs besides its data.
	lineOverhead = 96
)

// Config bounds a Store. Zero values mean the defaults.
type Config struct {
	MaxLineBytes  int           // longest line's data
	MaxJobBytes   int64         // bytes kept per job (all attempts)
	MaxTotalBytes int64         // bytes kept on the node
	Retention     time.Duration // how long a job's lines outlive it
	Now           func() time.Time
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxLineBytes: DefaultMaxLineBytes, MaxJobBytes: DefaultMaxJobBytes,
		MaxTotalBytes: DefaultMaxTotalBytes, Retention: DefaultRetention, Now: time.Now}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxLineBytes == 0 {
		c.MaxLineBytes = d.MaxLineBytes
	}
	if c.MaxJobBytes == 0 {
		c.MaxJobBytes = d.MaxJobBytes
	}
	if c.MaxTotalBytes == 0 {
		c.MaxTotalBytes = d.MaxTotalBytes
	}
	if c.Retention == 0 {
		c.Retention = d.Retention
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	return c
}

// Validate checks the bounds against each other.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.MaxLineBytes < 0 || c.MaxJobBytes < 0 || c.MaxTotalBytes < 0 || c.Retention < 0 {
		errs = append(errs, errors.New("logstore: negative bound"))
	}
	if int64(c.MaxLineBytes)+lineOverhead > c.MaxJobBytes {
		errs = append(errs, fmt.Errorf("logstore: a line (%d bytes) does not fit a job's bound (%d)", c.MaxLineBytes, c.MaxJobBytes))
	}
	if c.MaxJobBytes > c.MaxTotalBytes {
		errs = append(errs, fmt.Errorf("logstore: per-job bound %d over the total %d", c.MaxJobBytes, c.MaxTotalBytes))
	}
	return errors.Join(errs...)
}

// Why a line was refused (Append's counts, and the metrics' reason label).
const (
	DropStale     = "stale_token" // an older attempt than one already seen
	DropDuplicate = "duplicate"   // seq not above the attempt's last
	DropOversized = "oversized"   // data over MaxLineBytes
	DropMalformed = "malformed"   // no job id, no token, no seq
)

// Counters are the store's totals since it was created.
type Counters struct {
	Bytes         int64             // bytes held now
	Jobs          int               // jobs held now
	LinesReceived uint64            // lines appended
	Dropped       map[string]uint64 // refused lines by reason
	EvictedJob    uint64            // lines evicted by a job's bound
	EvictedTotal  uint64            // jobs evicted by the node's bound (LRU)
	Expired       uint64            // jobs dropped by retention
}

type attempt struct {
	token   uint64
	attempt int32
	lines   []*hodeiv1.LogLine
	lastSeq uint64
	evicted bool // lines of it were evicted
}

type job struct {
	id       string
	attempts []*attempt // by token, ascending
	bytes    int64
	lastSeen time.Time // last append
	overAt   time.Time // when Sweep first saw the job over; zero while live
	elem     *list.Element
}

// Store is the node's log store.
type Store struct {
	cfg Config

	mu      sync.Mutex
	jobs    map[string]*job
	lru     *list.List // *job, most recently written first
	bytes   int64
	waiters map[string]chan struct{}
	c       Counters
}

// New returns an empty store.
func New(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Store{cfg: cfg, jobs: map[string]*job{}, lru: list.New(), waiters: map[string]chan struct{}{},
		c: Counters{Dropped: map[string]uint64{}}}, nil
}

// MaxLineBytes is the longest line the store keeps.
func (s *Store) MaxLineBytes() int { return s.cfg.MaxLineBytes }

func lineCost(l *hodeiv1.LogLine) int64 { return int64(len(l.GetData())) + lineOverhead }

// Append stores lines of one job attempt, in order. attemptNo is the attempt
// number when the caller knows it (0 if not). It returns how many lines were
// kept and, by reason, how many were refused. Lines are kept as given (the
// caller hands them over).
func (s *Store) Append(jobID string, token uint64, attemptNo int32, lines []*hodeiv1.LogLine) (kept int, dropped map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	drop := func(reason string, n int) {
		if n == 0 {
			return
		}
		if dropped == nil {
			dropped = map[string]int{}
		}
		dropped[reason] += n
		s.c.Dropped[reason] += uint64(n)
	}
	if jobID == "" || token == 0 {
		drop(DropMalformed, len(lines))
		return 0, dropped
	}
	j := s.jobs[jobID]
	if j != nil && len(j.attempts) > 0 && token < j.attempts[len(j.attempts)-1].token {
		drop(DropStale, len(lines))
		return 0, dropped
	}
	now := s.cfg.Now()
	var a *attempt
	for _, l := range lines {
		switch {
		case l.GetSeq() == 0:
			drop(DropMalformed, 1)
			continue
		case len(l.GetData()) > s.cfg.MaxLineBytes:
			drop(DropOversized, 1)
			continue
		}
		if j == nil {
			j = &job{id: jobID}
			j.elem = s.lru.PushFront(j)
			s.jobs[jobID] = j
		}
		if a == nil {
			a = j.attemptOf(token)
			if a.attempt == 0 {
				a.attempt = attemptNo
			}
		}
		if l.GetSeq() <= a.lastSeq {
			drop(DropDuplicate, 1)
			continue
		}
		l.JobId, l.Token, l.Attempt = jobID, token, a.attempt
		a.lines = append(a.lines, l)
		a.lastSeq = l.GetSeq()
		c := lineCost(l)
		j.bytes += c
		s.bytes += c
		kept++
	}
	if kept == 0 {
		return 0, dropped
	}
	s.c.LinesReceived += uint64(kept)
	j.lastSeen, j.overAt = now, time.Time{}
	s.lru.MoveToFront(j.elem)
	for j.bytes > s.cfg.MaxJobBytes {
		s.evictOldestLine(j)
	}
	for s.bytes > s.cfg.MaxTotalBytes && s.lru.Len() > 1 {
		victim := s.lru.Back().Value.(*job)
		if victim == j {
			break
		}
		s.removeJob(victim)
		s.c.EvictedTotal++
	}
	if ch := s.waiters[jobID]; ch != nil {
		close(ch)
		delete(s.waiters, jobID)
	}
	return kept, dropped
}

// attemptOf returns the attempt of token, adding it in token order.
func (j *job) attemptOf(token uint64) *attempt {
	i := sort.Search(len(j.attempts), func(i int) bool { return j.attempts[i].token >= token })
	if i < len(j.attempts) && j.attempts[i].token == token {
		return j.attempts[i]
	}
	a := &attempt{token: token}
	j.attempts = append(j.attempts, nil)
	copy(j.attempts[i+1:], j.attempts[i:])
	j.attempts[i] = a
	return a
}

func (s *Store) evictOldestLine(j *job) {
	for _, a := range j.attempts {
		if len(a.lines) == 0 {
			continue
		}
		c := lineCost(a.lines[0])
		a.lines[0] = nil
		a.lines = a.lines[1:]
		a.evicted = true
		j.bytes -= c
		s.bytes -= c
		s.c.EvictedJob++
		return
	}
}

func (s *Store) removeJob(j *job) {
	s.bytes -= j.bytes
	s.lru.Remove(j.elem)
	delete(s.jobs, j.id)
}

// Query selects the lines of one attempt: by token when non-zero, else by
// attempt number when non-zero, else the latest attempt held.
type Query struct {
	JobID    string
	Token    uint64
	Attempt  int32
	AfterSeq uint64
	Limit    int // 0 = no limit
}

// Result is what Read found.
type Result struct {
	Found     bool // the store holds lines (or held some, evicted) of the attempt
	Token     uint64
	Attempt   int32
	Lines     []*hodeiv1.LogLine // seq > AfterSeq, in order
	Truncated bool               // lines after AfterSeq were evicted
	More      bool               // Limit cut the answer
	LastSeq   uint64             // the attempt's last seq held
}

// Read returns the selected lines. The lines are shared: do not modify them.
func (s *Store) Read(q Query) Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[q.JobID]
	if j == nil || len(j.attempts) == 0 {
		return Result{}
	}
	var a *attempt
	switch {
	case q.Token != 0:
		for _, x := range j.attempts {
			if x.token == q.Token {
				a = x
			}
		}
	case q.Attempt != 0:
		for _, x := range j.attempts {
			if x.attempt == q.Attempt {
				a = x
			}
		}
	default:
		a = j.attempts[len(j.attempts)-1]
	}
	if a == nil {
		return Result{}
	}
	r := Result{Found: true, Token: a.token, Attempt: a.attempt, LastSeq: a.lastSeq}
	i := sort.Search(len(a.lines), func(i int) bool { return a.lines[i].GetSeq() > q.AfterSeq })
	if a.evicted && (i == 0 && (len(a.lines) == 0 || a.lines[0].GetSeq() > q.AfterSeq+1)) {
		r.Truncated = true
	}
	rest := a.lines[i:]
	if q.Limit > 0 && len(rest) > q.Limit {
		rest, r.More = rest[:q.Limit], true
	}
	r.Lines = append([]*hodeiv1.LogLine(nil), rest...)
	return r
}

// Wait returns a channel closed at the next append of jobID's lines.
func (s *Store) Wait(jobID string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.waiters[jobID]
	if ch == nil {
		ch = make(chan struct{})
		s.waiters[jobID] = ch
	}
	return ch
}

// Sweep applies retention. live reports whether a job is still pending or
// running (false for an ended job and for one the node does not know, e.g.
// one already garbage-collected). It is called with the store's lock held
// and must not call the store.
func (s *Store) Sweep(live func(jobID string) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	for id, j := range s.jobs {
		if live(id) {
			// A live job silent for a whole retention period goes too: a
			// job never seen ending must not pin memory.
			j.overAt = time.Time{}
			if now.Sub(j.lastSeen) <= s.cfg.Retention {
				continue
			}
		} else {
			if j.overAt.IsZero() {
				j.overAt = now
			}
			if now.Sub(j.overAt) <= s.cfg.Retention {
				continue
			}
		}
		s.removeJob(j)
		s.c.Expired++
	}
	// Waiters of jobs never written to: wake them (they re-check) and forget.
	for id, ch := range s.waiters {
		if s.jobs[id] == nil {
			close(ch)
			delete(s.waiters, id)
		}
	}
}

// Counters returns the store's totals.
func (s *Store) Counters() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.c
	c.Bytes, c.Jobs = s.bytes, len(s.jobs)
	c.Dropped = make(map[string]uint64, len(s.c.Dropped))
	for k, v := range s.c.Dropped {
		c.Dropped[k] = v
	}
	return c
}
