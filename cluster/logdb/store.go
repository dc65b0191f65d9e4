package logdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// Store is the log and stable store of one Raft group inside a DB. It
// implements raft.LogStore and raft.StableStore. It does not implement
// raft.MonotonicLogStore: keys are sorted indexes in a B+tree and
// FirstIndex/LastIndex come from the tree's edges, so gaps after a snapshot
// install are harmless, and raft then compacts up to the snapshot index
// instead of deleting the whole log (raft-boltdb's behaviour).
type Store struct {
	db         *DB
	id         uint32
	logsName   []byte
	stableName []byte

	// Cache of the log's first and last index, so FirstIndex and LastIndex
	// (called by raft on every append and replication round) do not open a
	// transaction. The writer publishes exact values read inside each commit
	// that changed this group's log; gen lets a lazy reader that raced a
	// commit drop its (older) result.
	mu          sync.Mutex
	known       bool
	first, last uint64
	gen         uint64

	// Writer-goroutine scratch, used only inside DB.commit.
	txTouched       bool
	txFirst, txLast uint64
	txSeq           uint64 // last commit that carried a request of this group

	// queuedGen == DB.queueGen: a request of this group is queued (DB.mu).
	queuedGen uint64
}

var (
	_ raft.LogStore    = (*Store)(nil)
	_ raft.StableStore = (*Store)(nil)
)

func newStore(db *DB, id uint32) *Store {
	sid := strconv.FormatUint(uint64(id), 10)
	return &Store{
		db:         db,
		id:         id,
		logsName:   []byte("logs/" + sid),
		stableName: []byte("stable/" + sid),
	}
}

// ID returns the group id.
func (s *Store) ID() uint32 { return s.id }

func (s *Store) publish(first, last uint64) {
	s.mu.Lock()
	s.known, s.first, s.last = true, first, last
	s.gen++
	s.mu.Unlock()
}

func (s *Store) invalidate() {
	s.mu.Lock()
	s.known = false
	s.gen++
	s.mu.Unlock()
}

// cachedBounds returns the cached bounds, loading them on first use.
func (s *Store) cachedBounds() (first, last uint64, err error) {
	s.mu.Lock()
	if s.known {
		first, last = s.first, s.last
		s.mu.Unlock()
		return first, last, nil
	}
	gen := s.gen
	s.mu.Unlock()

	err = s.view(func(tx *bbolt.Tx) error {
		var err error
		first, last, err = bounds(tx.Bucket(s.logsName))
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("logdb: group %d: %w", s.id, err)
	}
	s.mu.Lock()
	if !s.known && s.gen == gen {
		s.known, s.first, s.last = true, first, last
	}
	s.mu.Unlock()
	return first, last, nil
}

func (s *Store) view(fn func(*bbolt.Tx) error) error {
	if s.db.closed.Load() {
		return ErrClosed
	}
	err := s.db.bolt.View(fn)
	if errors.Is(err, bbolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// FirstIndex returns the first index written, 0 for an empty log.
func (s *Store) FirstIndex() (uint64, error) {
	first, _, err := s.cachedBounds()
	return first, err
}

// LastIndex returns the last index written, 0 for an empty log.
func (s *Store) LastIndex() (uint64, error) {
	_, last, err := s.cachedBounds()
	return last, err
}

// GetLog reads the entry at index into log; raft.ErrLogNotFound if absent.
func (s *Store) GetLog(index uint64, log *raft.Log) error {
	var key [8]byte
	putIndexKey(key[:], index)
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(s.logsName)
		if b == nil {
			return raft.ErrLogNotFound
		}
		v := b.Get(key[:])
		if v == nil {
			return raft.ErrLogNotFound
		}
		if err := decodeLog(v, log); err != nil {
			return fmt.Errorf("logdb: group %d index %d: %w", s.id, index, err)
		}
		if log.Index != index {
			return fmt.Errorf("logdb: group %d: %w: key %d holds index %d", s.id, ErrCorrupt, index, log.Index)
		}
		return nil
	})
	return err
}

// StoreLog stores one entry.
func (s *Store) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

// StoreLogs stores entries durably (unless NoSync) in the next group commit.
// Encoding happens here, on the caller's goroutine, not on the writer's.
func (s *Store) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	size := 8 * len(logs)
	for _, l := range logs {
		n := encodedSize(l)
		if n > bbolt.MaxValueSize {
			return fmt.Errorf("logdb: group %d: log %d is %d bytes, over bbolt's limit", s.id, l.Index, n)
		}
		size += n
	}
	buf := make([]byte, 8*len(logs), size)
	vals := make([][]byte, len(logs))
	for i, l := range logs {
		putIndexKey(buf[8*i:], l.Index)
		start := len(buf)
		buf = appendLog(buf, l)
		vals[i] = buf[start:len(buf):len(buf)]
	}
	return s.db.submit(&request{kind: opStoreLogs, store: s, keys: buf[:8*len(logs)], vals: vals, size: size})
}

// DeleteRange deletes the entries min..max inclusive.
func (s *Store) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	return s.db.submit(&request{kind: opDeleteRange, store: s, min: min, max: max, size: 16})
}

// Set stores a stable key/value durably in the next group commit.
func (s *Store) Set(key, val []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("logdb: group %d: %w", s.id, bbolt.ErrKeyRequired)
	}
	if len(key) > bbolt.MaxKeySize || len(val) > bbolt.MaxValueSize {
		return fmt.Errorf("logdb: group %d: stable key/value too large (%d/%d bytes)", s.id, len(key), len(val))
	}
	kv := make([]byte, len(key)+len(val))
	copy(kv, key)
	copy(kv[len(key):], val)
	return s.db.submit(&request{
		kind: opSet, store: s,
		key: kv[:len(key):len(key)], val: kv[len(key):],
		size: len(kv),
	})
}

// Get returns a copy of the value of a stable key, or ErrKeyNotFound (whose
// text, "not found", is what raft checks for).
func (s *Store) Get(key []byte) ([]byte, error) {
	var out []byte
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(s.stableName)
		if b == nil {
			return ErrKeyNotFound
		}
		v := b.Get(key)
		if v == nil {
			return ErrKeyNotFound
		}
		out = append(make([]byte, 0, len(v)), v...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SetUint64 stores val big-endian under key.
func (s *Store) SetUint64(key []byte, val uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], val)
	return s.Set(key, b[:])
}

// GetUint64 reads a value written by SetUint64; ErrKeyNotFound if absent.
func (s *Store) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("logdb: group %d: %w: uint64 key %q holds %d bytes", s.id, ErrCorrupt, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
