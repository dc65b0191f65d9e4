package logdb

import (
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

type opKind uint8

const (
	opStoreLogs opKind = iota + 1
	opDeleteRange
	opSet
)

// request is one write waiting for the writer. Its byte slices are owned by
// the request (bbolt requires keys and values to stay valid until commit).
type request struct {
	kind  opKind
	store *Store

	// opStoreLogs: keys is 8*n bytes of big-endian indexes, vals[i] the
	// encoded log for keys[8i:8i+8] (all slices of one buffer).
	keys []byte
	vals [][]byte
	// opDeleteRange: inclusive bounds.
	min, max uint64
	// opSet
	key, val []byte

	size     int
	enqueued time.Time
	done     chan error // buffered(1); receives the commit's result
}

// submit enqueues r and waits for the commit that contains it.
func (db *DB) submit(r *request) error {
	r.done = make(chan error, 1)
	r.enqueued = time.Now()
	db.mu.Lock()
	if db.closing {
		db.mu.Unlock()
		return ErrClosed
	}
	db.queue = append(db.queue, r)
	if r.store.queuedGen != db.queueGen {
		r.store.queuedGen = db.queueGen
		db.queuedGroups++
	}
	db.mu.Unlock()
	select {
	case db.kick <- struct{}{}:
	default:
	}
	return <-r.done
}

// activeCommits: a group that wrote in one of the last activeCommits commits
// counts as active, and a lingering commit waits for it.
const activeCommits = 4

// writer owns every write transaction. It exits when Close has been called
// and the queue is empty, so requests accepted before Close are committed.
func (db *DB) writer() {
	defer close(db.writerDone)
	var (
		batch       []*request
		seq         uint64        // commit sequence, to count distinct groups per commit
		avgCommit   time.Duration // moving average of a commit's duration
		avgGroups   float64       // moving average of distinct groups per commit
		active      int           // groups written by the last activeCommits commits
		lingerStart time.Time     // zero unless holding the next commit back
	)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		db.mu.Lock()
		if len(db.queue) == 0 {
			closing := db.closing
			db.mu.Unlock()
			if closing {
				return
			}
			<-db.kick
			continue
		}
		if !db.closing {
			var waited time.Duration
			if !lingerStart.IsZero() {
				waited = time.Since(lingerStart)
			}
			if left := lingerLeft(db.maxLinger, avgCommit, avgGroups, active, db.queuedGroups, waited); left > 0 {
				db.mu.Unlock()
				if lingerStart.IsZero() {
					lingerStart = time.Now()
				}
				timer.Reset(left)
				select {
				case <-db.kick: // another request (or Close): look again
					timer.Stop()
				case <-timer.C:
				}
				continue
			}
		}
		if !lingerStart.IsZero() {
			db.lingers.Add(1)
			db.lingerNanos.Add(int64(time.Since(lingerStart)))
			lingerStart = time.Time{}
		}
		n, size := 0, 0
		for n < len(db.queue) && n < maxBatchRequests {
			if n > 0 && size+db.queue[n].size > maxBatchBytes {
				break
			}
			size += db.queue[n].size
			n++
		}
		batch = append(batch[:0], db.queue[:n]...)
		// Shift the rest down; clear the tail so answered requests are not
		// kept alive by the queue's backing array.
		rest := copy(db.queue, db.queue[n:])
		clear(db.queue[rest:])
		db.queue = db.queue[:rest]
		db.queueGen++
		db.queuedGroups = 0
		for _, r := range db.queue {
			if r.store.queuedGen != db.queueGen {
				r.store.queuedGen = db.queueGen
				db.queuedGroups++
			}
		}
		db.mu.Unlock()

		start := time.Now()
		err := db.commit(batch)
		end := time.Now()
		d := end.Sub(start)
		seq++
		var groups int
		var wait time.Duration
		for _, r := range batch {
			if r.store.txSeq != seq {
				r.store.txSeq = seq
				groups++
			}
			wait += end.Sub(r.enqueued)
		}
		// Counters first, then the answers: a writer that returns from
		// StoreLogs sees its commit counted in Stats.
		db.commitNanos.Add(int64(d))
		db.waitNanos.Add(int64(wait))
		db.commits.Add(1)
		db.requests.Add(uint64(len(batch)))
		db.groupsN.Add(uint64(groups))
		db.bytes.Add(uint64(size))
		for i, r := range batch {
			r.done <- err
			batch[i] = nil
		}
		if seq == 1 {
			avgCommit, avgGroups = d, float64(groups)
		} else {
			avgCommit += (d - avgCommit) / 8
			avgGroups += (float64(groups) - avgGroups) / 8
		}
		if db.maxLinger > 0 {
			active = 0
			db.mu.Lock()
			for _, s := range db.groups {
				if s.txSeq > 0 && s.txSeq+activeCommits > seq {
					active++
				}
			}
			db.mu.Unlock()
		}
	}
}

// lingerLeft is how much longer the writer should hold the next commit
// back, 0 to commit now. It waits only when commits have recently carried
// 1.5 groups or more on average (groups do write concurrently), and while
// fewer groups are queued than were active in the last few commits; for at
// most min(maxLinger, avgCommit) in all (waited is the time so far).
func lingerLeft(maxLinger, avgCommit time.Duration, avgGroups float64, active, queued int, waited time.Duration) time.Duration {
	if maxLinger <= 0 || avgGroups < 1.5 || queued >= active {
		return 0
	}
	return max(0, min(maxLinger, avgCommit)-waited)
}

// commit applies batch in one bbolt transaction. On success it publishes the
// first/last index of every group whose log changed; on failure it
// invalidates their caches. A failed transaction fails every request in it.
func (db *DB) commit(batch []*request) (err error) {
	var touched []*Store
	defer func() {
		for _, s := range touched {
			s.txTouched = false
			if err == nil {
				s.publish(s.txFirst, s.txLast)
			} else {
				s.invalidate()
			}
		}
		if err != nil {
			db.logger.Error("commit failed", "requests", len(batch), "error", err)
		}
	}()

	tx, err := db.bolt.Begin(true)
	if err != nil {
		return fmt.Errorf("logdb: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()

	for _, r := range batch {
		s := r.store
		switch r.kind {
		case opStoreLogs:
			err = applyStoreLogs(tx, r)
		case opDeleteRange:
			err = applyDeleteRange(tx, r)
		case opSet:
			err = applySet(tx, r)
		}
		if err != nil {
			return fmt.Errorf("logdb: group %d: %w", s.id, err)
		}
		if r.kind != opSet && !s.txTouched {
			s.txTouched = true
			touched = append(touched, s)
		}
	}
	// Read back the bounds of every changed log inside the transaction: two
	// O(log n) cursor seeks per group per commit, so that readers never seek.
	for _, s := range touched {
		s.txFirst, s.txLast, err = bounds(tx.Bucket(s.logsName))
		if err != nil {
			return fmt.Errorf("logdb: group %d: %w", s.id, err)
		}
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("logdb: commit: %w", err)
	}
	st := tx.Stats()
	db.pageWrites.Add(uint64(st.GetWrite()))
	db.writeNanos.Add(int64(st.GetWriteTime()))
	return nil
}

func logsBucket(tx *bbolt.Tx, name []byte) (*bbolt.Bucket, error) {
	b, err := tx.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	b.FillPercent = logsFillPercent
	return b, nil
}

func applyStoreLogs(tx *bbolt.Tx, r *request) error {
	b, err := logsBucket(tx, r.store.logsName)
	if err != nil {
		return err
	}
	for i, v := range r.vals {
		if err := b.Put(r.keys[8*i:8*i+8], v); err != nil {
			return err
		}
	}
	return nil
}

func applyDeleteRange(tx *bbolt.Tx, r *request) error {
	b := tx.Bucket(r.store.logsName)
	if b == nil {
		return nil
	}
	first, last, err := bounds(b)
	if err != nil || first == 0 || r.min > last || r.max < first {
		return err
	}
	if r.min <= first && r.max >= last {
		// Everything goes: dropping the bucket frees its pages without
		// visiting every key.
		if err := tx.DeleteBucket(r.store.logsName); err != nil {
			return err
		}
		_, err := tx.CreateBucket(r.store.logsName)
		return err
	}
	var minKey [8]byte
	putIndexKey(minKey[:], r.min)
	// Seek again after every Delete instead of calling Next: when the leaf
	// was already modified in this transaction (likely, since one commit
	// carries many requests) bbolt's Cursor.Delete shifts the node's
	// elements under the cursor and Next would skip a key.
	c := b.Cursor()
	for k, _ := c.Seek(minKey[:]); k != nil; k, _ = c.Seek(minKey[:]) {
		if len(k) != 8 {
			return fmt.Errorf("%w: log key of %d bytes", ErrCorrupt, len(k))
		}
		if indexOfKey(k) > r.max {
			break
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

func applySet(tx *bbolt.Tx, r *request) error {
	b, err := tx.CreateBucketIfNotExists(r.store.stableName)
	if err != nil {
		return err
	}
	return b.Put(r.key, r.val)
}

// bounds returns the first and last index in a logs bucket (0, 0 if it is
// missing or empty).
func bounds(b *bbolt.Bucket) (first, last uint64, err error) {
	if b == nil {
		return 0, 0, nil
	}
	c := b.Cursor()
	fk, _ := c.First()
	if fk == nil {
		return 0, 0, nil
	}
	lk, _ := c.Last()
	if len(fk) != 8 || len(lk) != 8 {
		return 0, 0, fmt.Errorf("%w: log key of %d/%d bytes", ErrCorrupt, len(fk), len(lk))
	}
	return indexOfKey(fk), indexOfKey(lk), nil
}
