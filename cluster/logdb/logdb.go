// Package logdb is one Raft log store per node, shared by every Raft group
// the node hosts (the meta group and the shards), on a single bbolt file.
//
// The point is fsyncs: a bbolt commit costs two fdatasyncs however much it
// writes, so N groups with a file each pay N times for the same disk. Here a
// single writer goroutine owns every write transaction. Writers (StoreLogs,
// DeleteRange, Set, SetUint64 of any group) enqueue a request and wait; the
// writer takes everything queued since its last commit (up to a count and a
// byte cap) into ONE bbolt transaction, commits it, and answers all of them
// with the commit's result. A commit in progress is the batching window:
// requests that arrive meanwhile ride together in the next commit (group
// commit across groups, as dragonboat's LogDB and TiKV's raft-engine do).
// Reads are bbolt read transactions and run concurrently with the writer.
//
// Lingering. Every Raft group stores serially (its Raft goroutine waits for
// each StoreLogs), so with many busy groups a commit in progress is not
// enough of a window: the groups' requests reach an idle writer one or two
// at a time and each pays a whole commit (measured with 8 shards on 3 nodes:
// 1.2-2.5 requests per commit, though 9 groups write on every node). So
// when recent commits show that groups do write concurrently (1.5 groups
// per commit or more on average), the writer holds a commit back until
// every group that wrote in the last few commits is queued, or for at most
// min(MaxLinger, the average commit time) — PostgreSQL's commit_delay and
// commit_siblings, with the siblings learnt. A single busy group never
// waits, and nothing is acknowledged before its commit's fsync: lingering
// delays writes, it does not weaken durability.
//
// Layout: each group has two buckets, "logs/<id>" (8-byte big-endian index →
// encoded raft.Log, see codec.go) and "stable/<id>" (raft's StableStore keys).
package logdb

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

// ErrClosed is returned by writes (and reads) after Close.
var ErrClosed = errors.New("logdb: closed")

// ErrKeyNotFound is returned by Get and GetUint64 for a missing key. Its text
// is exactly "not found": hashicorp/raft compares err.Error() with that
// string when it reads CurrentTerm on a fresh store (api.go, raft.go), the
// same contract raft-boltdb's ErrKeyNotFound meets.
var ErrKeyNotFound = errors.New("not found")

const (
	// openTimeout bounds the wait for bbolt's file lock (another process
	// holding the file).
	openTimeout = 5 * time.Second
	// maxBatchRequests and maxBatchBytes cap one commit. One request always
	// fits, however big.
	maxBatchRequests = 4096
	maxBatchBytes    = 32 << 20
	// logsFillPercent: log keys are appended in increasing order, so pages
	// split by bbolt on the right edge are never filled again; filling them
	// to 90% instead of 50% shrinks the file (etcd does the same for its
	// sequential key bucket).
	logsFillPercent = 0.9

	// DefaultMaxLinger is Options.MaxLinger's default. A linger is also
	// never longer than the recent average commit.
	DefaultMaxLinger = 2 * time.Millisecond
)

// Options configures Open.
type Options struct {
	Path   string // bbolt file, e.g. data/raft.db
	NoSync bool   // tests/benchmarks only: skip fsync on commit
	Logger *slog.Logger
	// MaxLinger bounds how long the writer holds a commit back for the
	// groups it expects (see the package doc). 0 means DefaultMaxLinger;
	// a negative value disables lingering.
	MaxLinger time.Duration
}

// Stats counts the writer's work since Open.
type Stats struct {
	Commits  uint64 // bbolt write transactions committed (or attempted)
	Requests uint64 // write requests answered
	Bytes    uint64 // encoded bytes written by those requests (approximate)
	// Groups is the sum over commits of the number of distinct groups a
	// commit carried (Groups/Commits = groups sharing one fsync).
	Groups uint64
	// CommitTime is the time spent in write transactions (encoding into
	// bbolt, page writes and the fsyncs); WaitTime the sum over requests
	// of the time from enqueue to answer.
	CommitTime time.Duration
	WaitTime   time.Duration
	// PageWrites counts bbolt's page writes (one pwrite each), WriteTime
	// its time writing pages and meta, fsyncs included (bbolt TxStats).
	PageWrites uint64
	WriteTime  time.Duration
	// Lingers counts commits the writer held back waiting for more groups,
	// LingerTime the total time it held them.
	Lingers    uint64
	LingerTime time.Duration
}

// DB is one bbolt file shared by many Raft groups. It is safe for
// concurrent use.
type DB struct {
	bolt   *bbolt.DB
	logger *slog.Logger

	mu           sync.Mutex
	kick         chan struct{} // buffered(1): poked when queue grows or closing is set
	queue        []*request
	queueGen     uint64 // bumped when the writer takes requests off the queue
	queuedGroups int    // distinct groups with a request in queue
	closing      bool
	groups       map[uint32]*Store

	maxLinger   time.Duration // <= 0: never linger
	lingers     atomic.Uint64
	lingerNanos atomic.Int64

	closed     atomic.Bool // set once Close starts; reads check it
	writerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error

	commits, requests, bytes, groupsN, pageWrites atomic.Uint64
	commitNanos, waitNanos, writeNanos            atomic.Int64
}

// Open opens (creating if needed) the bbolt file at opts.Path and starts the
// writer goroutine, which Close stops.
func Open(opts Options) (*DB, error) {
	if opts.Path == "" {
		return nil, errors.New("logdb: Options.Path is required")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b, err := bbolt.Open(opts.Path, 0o600, &bbolt.Options{
		Timeout:        openTimeout,
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
		NoSync:         opts.NoSync,
	})
	if err != nil {
		return nil, fmt.Errorf("logdb: open %s: %w", opts.Path, err)
	}
	db := &DB{
		bolt:       b,
		logger:     logger.With("component", "logdb"),
		groups:     make(map[uint32]*Store),
		writerDone: make(chan struct{}),
		queueGen:   1, // a new Store's queuedGen is 0: not queued
	}
	db.kick = make(chan struct{}, 1)
	db.maxLinger = opts.MaxLinger
	if db.maxLinger == 0 {
		db.maxLinger = DefaultMaxLinger
	}
	go db.writer()
	return db, nil
}

// Group returns the Store of Raft group id, creating it on first use. It is
// idempotent: every call with the same id returns the same *Store. Its
// buckets are created by its first write.
func (db *DB) Group(id uint32) *Store {
	db.mu.Lock()
	defer db.mu.Unlock()
	if s, ok := db.groups[id]; ok {
		return s
	}
	s := newStore(db, id)
	db.groups[id] = s
	return s
}

// Close stops accepting writes (they fail with ErrClosed), lets the writer
// commit what was already queued, waits for it to exit and closes the file.
// Reads running concurrently finish first (bbolt waits for them). Calling
// Close again returns the first call's result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.closed.Store(true)
		db.mu.Lock()
		db.closing = true
		db.mu.Unlock()
		select {
		case db.kick <- struct{}{}:
		default:
		}
		<-db.writerDone
		if err := db.bolt.Close(); err != nil {
			db.closeErr = fmt.Errorf("logdb: close: %w", err)
		}
	})
	return db.closeErr
}

// Stats returns the writer's counters.
func (db *DB) Stats() Stats {
	return Stats{
		Commits: db.commits.Load(), Requests: db.requests.Load(), Bytes: db.bytes.Load(),
		Groups:     db.groupsN.Load(),
		Lingers:    db.lingers.Load(),
		LingerTime: time.Duration(db.lingerNanos.Load()),
		CommitTime: time.Duration(db.commitNanos.Load()),
		PageWrites: db.pageWrites.Load(),
		WriteTime:  time.Duration(db.writeNanos.Load()),
		WaitTime:   time.Duration(db.waitNanos.Load()),
	}
}

// Path returns the bbolt file path.
func (db *DB) Path() string { return db.bolt.Path() }
