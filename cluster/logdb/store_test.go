package logdb

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

func mkLog(idx, term uint64) *raft.Log {
	return &raft.Log{Index: idx, Term: term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry-%d", idx))}
}

func mkLogs(from, to, term uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, mkLog(i, term))
	}
	return out
}

func checkBounds(t *testing.T, s *Store, first, last uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil || f != first {
		t.Fatalf("group %d FirstIndex = %d, %v; want %d", s.id, f, err, first)
	}
	l, err := s.LastIndex()
	if err != nil || l != last {
		t.Fatalf("group %d LastIndex = %d, %v; want %d", s.id, l, err, last)
	}
}

func checkLog(t *testing.T, s *Store, idx, term uint64) {
	t.Helper()
	var got raft.Log
	if err := s.GetLog(idx, &got); err != nil {
		t.Fatalf("group %d GetLog(%d): %v", s.id, idx, err)
	}
	if want := mkLog(idx, term); !equalLog(want, &got) {
		t.Fatalf("group %d GetLog(%d) = %+v, want %+v", s.id, idx, got, want)
	}
}

func checkMissing(t *testing.T, s *Store, idxs ...uint64) {
	t.Helper()
	for _, idx := range idxs {
		var got raft.Log
		if err := s.GetLog(idx, &got); !errors.Is(err, raft.ErrLogNotFound) {
			t.Fatalf("group %d GetLog(%d) err = %v, want ErrLogNotFound", s.id, idx, err)
		}
	}
}

func TestEmptyStore(t *testing.T) {
	db := openTest(t, "", true)
	s := db.Group(1)
	if db.Group(1) != s {
		t.Fatal("Group is not idempotent")
	}
	checkBounds(t, s, 0, 0)
	checkMissing(t, s, 0, 1, 100)
	if _, err := s.Get([]byte("CurrentTerm")); err == nil || err.Error() != "not found" || !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Get missing = %v, want ErrKeyNotFound (\"not found\")", err)
	}
	if _, err := s.GetUint64([]byte("CurrentTerm")); err == nil || err.Error() != "not found" {
		t.Fatalf("GetUint64 missing = %v", err)
	}
	// What raft itself does with a fresh store.
	has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore())
	if err != nil || has {
		t.Fatalf("HasExistingState = %v, %v", has, err)
	}
}

func TestLogStoreConformance(t *testing.T) {
	db := openTest(t, "", true)
	s := db.Group(3)
	other := db.Group(4)

	if err := s.StoreLog(mkLog(1, 1)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 1, 1)
	if err := s.StoreLogs(mkLogs(2, 10, 1)); err != nil {
		t.Fatal(err)
	}
	if err := other.StoreLogs(mkLogs(100, 105, 7)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 1, 10)
	checkBounds(t, other, 100, 105)
	for i := uint64(1); i <= 10; i++ {
		checkLog(t, s, i, 1)
	}
	checkMissing(t, s, 0, 11, 100) // other group's indexes are not visible
	checkMissing(t, other, 1, 10)

	// Head compaction.
	if err := s.DeleteRange(1, 4); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 5, 10)
	checkMissing(t, s, 1, 2, 3, 4)
	checkLog(t, s, 5, 1)

	// Tail truncation (conflict), then overwrite with a new term.
	if err := s.DeleteRange(8, 10); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 5, 7)
	if err := s.StoreLogs(mkLogs(8, 12, 2)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 5, 12)
	checkLog(t, s, 9, 2)

	// Overwrite in the middle without a delete keeps the bounds.
	if err := s.StoreLog(mkLog(6, 5)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 5, 12)
	checkLog(t, s, 6, 5)

	// Ranges outside the log and empty ranges are no-ops.
	for _, r := range [][2]uint64{{0, 0}, {1, 4}, {13, 100}, {9, 8}} {
		if err := s.DeleteRange(r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	checkBounds(t, s, 5, 12)

	// Middle hole: bounds keep, the hole is missing.
	if err := s.DeleteRange(7, 9); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 5, 12)
	checkMissing(t, s, 7, 8, 9)

	// Gap after a snapshot install: raft stores from lastSnapshot+1.
	if err := s.StoreLogs(mkLogs(50, 52, 3)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 5, 52)

	// Delete everything (bucket drop path), then reuse.
	if err := s.DeleteRange(0, 1000); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 0, 0)
	checkMissing(t, s, 5, 50, 52)
	if err := s.StoreLogs(mkLogs(60, 61, 4)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, s, 60, 61)
	checkBounds(t, other, 100, 105)
}

func TestStableStore(t *testing.T) {
	db := openTest(t, "", true)
	a, b := db.Group(1), db.Group(2)
	if err := a.Set([]byte("k"), []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := a.SetUint64([]byte("CurrentTerm"), 42); err != nil {
		t.Fatal(err)
	}
	v, err := a.Get([]byte("k"))
	if err != nil || string(v) != "v1" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	n, err := a.GetUint64([]byte("CurrentTerm"))
	if err != nil || n != 42 {
		t.Fatalf("GetUint64 = %d, %v", n, err)
	}
	if _, err := b.Get([]byte("k")); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("group 2 sees group 1's key: %v", err)
	}
	if _, err := a.GetUint64([]byte("k")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetUint64 of a 2-byte value = %v, want ErrCorrupt", err)
	}
	if err := a.Set(nil, []byte("x")); err == nil {
		t.Fatal("Set with an empty key should fail")
	}
	// Values are copied both ways.
	val := []byte("v2")
	if err := a.Set([]byte("k"), val); err != nil {
		t.Fatal(err)
	}
	val[0] = 'X'
	got, _ := a.Get([]byte("k"))
	got[1] = 'Y'
	if again, _ := a.Get([]byte("k")); string(again) != "v2" {
		t.Fatalf("stored value changed: %q", again)
	}
	// An empty value is a value, not a missing key.
	if err := a.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get([]byte("empty")); err != nil || len(v) != 0 {
		t.Fatalf("Get empty = %q, %v", v, err)
	}
}

// The deletion loop must not skip keys when the leaf was already modified in
// the same transaction (bbolt's Cursor.Delete + Next does).
func TestDeleteRangeInModifiedTxn(t *testing.T) {
	db := openTest(t, "", true)
	s := db.Group(1)
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		if err := applyStoreLogs(tx, storeReq(t, s, mkLogs(1, 300, 1))); err != nil {
			return err
		}
		return applyDeleteRange(tx, &request{kind: opDeleteRange, store: s, min: 10, max: 250})
	})
	if err != nil {
		t.Fatal(err)
	}
	s.invalidate()
	checkBounds(t, s, 1, 300)
	for i := uint64(1); i <= 300; i++ {
		if i >= 10 && i <= 250 {
			checkMissing(t, s, i)
		} else {
			checkLog(t, s, i, 1)
		}
	}
}

func storeReq(t *testing.T, s *Store, logs []*raft.Log) *request {
	t.Helper()
	r := &request{kind: opStoreLogs, store: s, keys: make([]byte, 8*len(logs))}
	for i, l := range logs {
		putIndexKey(r.keys[8*i:], l.Index)
		r.vals = append(r.vals, appendLog(nil, l))
	}
	return r
}

// Many groups write concurrently (logs, truncations, stable keys); the
// writes are grouped into fewer commits than requests; a reopened file
// reads everything back.
func TestConcurrentGroupsAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	db, err := Open(Options{Path: path}) // fsync on: commits take long enough to group
	if err != nil {
		t.Fatal(err)
	}
	const groups, rounds, batch = 8, 40, 16
	var wg sync.WaitGroup
	errs := make(chan error, groups)
	for g := uint32(0); g < groups; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := db.Group(g)
			for r := uint64(0); r < rounds; r++ {
				from := r*batch + 1
				if err := s.StoreLogs(mkLogs(from, from+batch-1, uint64(g)+1)); err != nil {
					errs <- err
					return
				}
				if err := s.SetUint64([]byte("CurrentTerm"), r); err != nil {
					errs <- err
					return
				}
				if last, err := s.LastIndex(); err != nil || last != from+batch-1 {
					errs <- fmt.Errorf("group %d: LastIndex %d, %v after storing to %d", g, last, err, from+batch-1)
					return
				}
			}
			// Compact the head of even groups.
			if g%2 == 0 {
				if err := s.DeleteRange(1, 100); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := db.Stats()
	t.Logf("stats: %+v", st)
	if st.Commits >= st.Requests {
		t.Errorf("no grouping: %d commits for %d requests", st.Commits, st.Requests)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Group(0).StoreLog(mkLog(1000, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close = %v, want ErrClosed", err)
	}
	if _, err := db.Group(0).Get([]byte("CurrentTerm")); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after Close = %v, want ErrClosed", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	db2 := openTest(t, path, true)
	for g := uint32(0); g < groups; g++ {
		s := db2.Group(g)
		first := uint64(1)
		if g%2 == 0 {
			first = 101
			checkMissing(t, s, 1, 100)
		}
		checkBounds(t, s, first, rounds*batch)
		for i := first; i <= rounds*batch; i++ {
			checkLog(t, s, i, uint64(g)+1)
		}
		if n, err := s.GetUint64([]byte("CurrentTerm")); err != nil || n != rounds-1 {
			t.Fatalf("group %d CurrentTerm = %d, %v", g, n, err)
		}
	}
}

// Bytes corrupted on disk come back as an error from GetLog, not a panic or
// a wrong entry.
func TestCorruptEntryOnDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	db := openTest(t, path, true)
	s := db.Group(9)
	payload := bytes.Repeat([]byte("Z"), 64)
	if err := s.StoreLog(&raft.Log{Index: 5, Term: 1, Data: payload}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, payload)
	if i < 0 {
		t.Fatal("payload not found in file")
	}
	raw[i+10] ^= 0x20
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	db2 := openTest(t, path, true)
	var got raft.Log
	if err := db2.Group(9).GetLog(5, &got); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetLog of corrupted entry = %v, want ErrCorrupt", err)
	}
}

// Close lets writes already queued finish, then fails new ones.
func TestCloseDrainsQueue(t *testing.T) {
	db := openTest(t, "", true)
	var wg sync.WaitGroup
	results := make(chan error, 64)
	for g := uint32(0); g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- db.Group(g).StoreLog(mkLog(1, 1))
		}()
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Fatalf("write racing Close: %v", err)
		}
	}
}

// A transaction that fails fails every request in it, persists none of them
// and leaves the bounds caches correct.
func TestFailedCommitFailsWholeBatch(t *testing.T) {
	db := openTest(t, "", true)
	a, b := db.Group(1), db.Group(2)
	if err := a.StoreLogs(mkLogs(1, 3, 1)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, a, 1, 3)
	good := storeReq(t, a, mkLogs(4, 6, 1))
	del := &request{kind: opDeleteRange, store: a, min: 1, max: 2}
	bad := &request{kind: opSet, store: b, key: nil, val: []byte("x")} // bbolt refuses an empty key
	// Call commit directly (the writer goroutine is idle): one transaction.
	if err := db.commit([]*request{good, del, bad}); err == nil {
		t.Fatal("commit with an invalid request succeeded")
	}
	checkBounds(t, a, 1, 3)
	checkMissing(t, a, 4, 5, 6)
	checkLog(t, a, 1, 1)
	// The store keeps working afterwards.
	if err := a.StoreLogs(mkLogs(4, 6, 1)); err != nil {
		t.Fatal(err)
	}
	checkBounds(t, a, 1, 6)
}
