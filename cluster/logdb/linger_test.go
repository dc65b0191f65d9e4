package logdb

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestLingerLeft(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name     string
		max, avg time.Duration
		groups   float64
		active   int
		queued   int
		waited   time.Duration
		want     time.Duration
	}{
		{"disabled", -1, ms, 8, 8, 1, 0, 0},
		{"groups do not write concurrently", 2 * ms, ms, 1.4, 8, 1, 0, 0},
		{"every active group queued", 2 * ms, ms, 3, 3, 3, 0, 0},
		{"more queued than active", 2 * ms, ms, 3, 3, 5, 0, 0},
		{"waits up to the average commit", 2 * ms, ms, 3, 8, 1, 0, ms},
		{"waits up to MaxLinger", 2 * ms, 5 * ms, 3, 8, 1, 0, 2 * ms},
		{"part waited", 2 * ms, ms, 4, 8, 2, ms / 4, 3 * ms / 4},
		{"waited enough", 2 * ms, ms, 4, 8, 2, ms, 0},
		{"waited more than enough", 2 * ms, ms, 4, 8, 2, 3 * ms, 0},
	} {
		if got := lingerLeft(c.max, c.avg, c.groups, c.active, c.queued, c.waited); got != c.want {
			t.Errorf("%s: lingerLeft = %v, want %v", c.name, got, c.want)
		}
	}
}

// A single busy group (one shard) must never pay for lingering.
func TestSingleGroupNeverLingers(t *testing.T) {
	db := openTest(t, "", true)
	s := db.Group(1)
	for i := uint64(1); i <= 300; i++ {
		if err := s.StoreLogs(mkLogs(i, i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	st := db.Stats()
	if st.Lingers != 0 || st.LingerTime != 0 {
		t.Fatalf("one group lingered: %+v", st)
	}
	if st.Commits != 300 || st.Groups != 300 || st.Requests != 300 {
		t.Fatalf("stats = %+v, want 300 commits of one request of one group", st)
	}
	checkBounds(t, s, 1, 300)
}

// Many groups storing in rounds (as Raft groups do) make the writer linger;
// every write still lands, a group left alone afterwards is not held back
// for long (the wait is bounded), and Close does not wait for groups that
// will not come.
func TestLingeringGroupsStoreEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	db, err := Open(Options{Path: path, MaxLinger: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const groups, rounds = 8, 40
	stores := make([]*Store, groups)
	for g := range stores {
		stores[g] = db.Group(uint32(g))
	}
	errs := make(chan error, groups)
	for r := uint64(1); r <= rounds; r++ {
		var wg sync.WaitGroup
		for g := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := stores[g].StoreLogs(mkLogs(2*r-1, 2*r, 1)); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := db.Stats()
	if st.Requests != groups*rounds {
		t.Fatalf("requests = %d, want %d", st.Requests, groups*rounds)
	}
	if st.Groups < st.Commits || st.Groups > st.Requests {
		t.Fatalf("groups per commit out of range: %+v", st)
	}
	t.Logf("%d rounds of %d groups: %d commits, %d lingers (%v in all)", rounds, groups, st.Commits, st.Lingers, st.LingerTime)
	// Alone now: bounded by MaxLinger per commit, whatever the average says.
	for i := uint64(2*rounds + 1); i <= 2*rounds+5; i++ {
		if err := stores[0].StoreLogs(mkLogs(i, i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// A write racing Close is either committed or refused, never lost in
	// a linger.
	done := make(chan error, 1)
	go func() { done <- stores[1].StoreLogs(mkLogs(2*rounds+1, 2*rounds+1, 1)) }()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raced := <-done
	if raced != nil && !errors.Is(raced, ErrClosed) {
		t.Fatalf("write racing Close: %v", raced)
	}

	db = openTest(t, path, true)
	checkBounds(t, db.Group(0), 1, 2*rounds+5)
	checkLog(t, db.Group(0), 2*rounds+5, 1)
	last := uint64(2 * rounds)
	if raced == nil {
		last++
	}
	checkBounds(t, db.Group(1), 1, last)
	for g := 2; g < groups; g++ {
		checkBounds(t, db.Group(uint32(g)), 1, 2*rounds)
		checkLog(t, db.Group(uint32(g)), 2*rounds, 1)
	}
}
