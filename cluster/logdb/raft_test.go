package logdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// counterFSM counts commands (8-byte ids). digest folds ids in apply order,
// so two replicas with equal digests applied the same log in the same order.
type counterFSM struct {
	mu      sync.Mutex
	applied int
	digest  uint64
	ids     map[uint64]bool
}

func newCounterFSM() *counterFSM { return &counterFSM{ids: make(map[uint64]bool)} }

func (f *counterFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand || len(l.Data) != 8 {
		return fmt.Errorf("unexpected entry %+v", l)
	}
	id := binary.BigEndian.Uint64(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied++
	f.digest = f.digest*1_000_003 + id + 1
	f.ids[id] = true
	return nil
}

func (f *counterFSM) state() (applied, distinct int, digest uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied, len(f.ids), f.digest
}

func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nil, errors.New("counterFSM: snapshots are disabled in this test")
}

func (f *counterFSM) Restore(io.ReadCloser) error {
	return errors.New("counterFSM: snapshots are disabled in this test")
}

// testWriter sends raft's log lines to t.Log until the test ends.
type testWriter struct {
	t    *testing.T
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(string(p[:len(p)-min(1, len(p))]))
	}
	return len(p), nil
}

type raftNode struct {
	db     *DB
	path   string
	rafts  []*raft.Raft
	fsms   []*counterFSM
	trans  []*raft.InmemTransport
	stores []*Store
}

const (
	testNodes  = 3
	testGroups = 4
	testCmds   = 500
)

func addr(node, group int) raft.ServerAddress {
	return raft.ServerAddress(fmt.Sprintf("n%d-g%d", node, group))
}

func testRaftConfig(id raft.ServerAddress, logger hclog.Logger) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(id)
	c.HeartbeatTimeout = 300 * time.Millisecond
	c.ElectionTimeout = 300 * time.Millisecond
	c.LeaderLeaseTimeout = 150 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotThreshold = 1 << 40 // logs only: a restart must replay them
	c.SnapshotInterval = time.Hour
	c.Logger = logger.Named(string(id))
	return c
}

// start opens the node's DB and starts its Raft groups (transports must
// already exist in n.trans).
func (n *raftNode) start(t *testing.T, i int, logger hclog.Logger) {
	t.Helper()
	db, err := Open(Options{Path: n.path})
	if err != nil {
		t.Fatal(err)
	}
	n.db = db
	n.rafts = make([]*raft.Raft, testGroups)
	n.fsms = make([]*counterFSM, testGroups)
	n.stores = make([]*Store, testGroups)
	for g := 0; g < testGroups; g++ {
		store := db.Group(uint32(g))
		logs, err := raft.NewLogCache(256, store)
		if err != nil {
			t.Fatal(err)
		}
		n.stores[g] = store
		n.fsms[g] = newCounterFSM()
		r, err := raft.NewRaft(testRaftConfig(addr(i, g), logger), n.fsms[g], logs, store, raft.NewInmemSnapshotStore(), n.trans[g])
		if err != nil {
			t.Fatalf("node %d group %d: NewRaft: %v", i, g, err)
		}
		n.rafts[g] = r
	}
}

func (n *raftNode) stop(t *testing.T) {
	t.Helper()
	for _, r := range n.rafts {
		if r != nil {
			if err := r.Shutdown().Error(); err != nil {
				t.Errorf("raft shutdown: %v", err)
			}
		}
	}
	n.rafts = nil
	if n.db != nil {
		if err := n.db.Close(); err != nil {
			t.Errorf("logdb close: %v", err)
		}
		n.db = nil
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func leaderOf(nodes []*raftNode, g int) *raft.Raft {
	for _, n := range nodes {
		if n.rafts != nil && n.rafts[g].State() == raft.Leader {
			return n.rafts[g]
		}
	}
	return nil
}

// Three raft.Raft nodes in one process, each with ONE logdb.DB (fsync on)
// holding four Raft groups. Every group elects a leader and commits 500
// commands; then one node's DB is closed, reopened from disk and its groups
// restarted: they replay the same log into fresh FSMs.
func TestRaftGroupsShareOneDB(t *testing.T) {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	logger := hclog.New(&hclog.LoggerOptions{Name: "raft", Output: w, Level: hclog.Warn})

	dir := t.TempDir()
	nodes := make([]*raftNode, testNodes)
	for i := range nodes {
		nodes[i] = &raftNode{path: filepath.Join(dir, fmt.Sprintf("node%d", i), "raft.db")}
		if err := os.MkdirAll(filepath.Dir(nodes[i].path), 0o750); err != nil {
			t.Fatal(err)
		}
		for g := 0; g < testGroups; g++ {
			_, tr := raft.NewInmemTransport(addr(i, g))
			nodes[i].trans = append(nodes[i].trans, tr)
		}
	}
	for g := 0; g < testGroups; g++ {
		for i := range nodes {
			for j := range nodes {
				if i != j {
					nodes[i].trans[g].Connect(addr(j, g), nodes[j].trans[g])
				}
			}
		}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.stop(t)
			for _, tr := range n.trans {
				_ = tr.Close()
			}
		}
	})
	for i, n := range nodes {
		n.start(t, i, logger)
	}
	for g := 0; g < testGroups; g++ {
		var cfg raft.Configuration
		for i := range nodes {
			cfg.Servers = append(cfg.Servers, raft.Server{ID: raft.ServerID(addr(i, g)), Address: addr(i, g)})
		}
		if err := nodes[0].rafts[g].BootstrapCluster(cfg).Error(); err != nil {
			t.Fatalf("bootstrap group %d: %v", g, err)
		}
	}
	for g := 0; g < testGroups; g++ {
		waitFor(t, 20*time.Second, fmt.Sprintf("a leader in group %d", g), func() bool { return leaderOf(nodes, g) != nil })
	}

	// Apply testCmds commands to every group concurrently, retrying on a
	// leader change (the FSM counts distinct ids, so a retried command that
	// had committed anyway is harmless).
	var wg sync.WaitGroup
	errCh := make(chan error, testGroups)
	for g := 0; g < testGroups; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pending := make([]uint64, testCmds)
			for i := range pending {
				pending[i] = uint64(i)
			}
			// A deadline, not an attempt count: on a loaded machine
			// elections can take a while, and polling for a leader must not
			// use up the budget (this failed once at load 25 with 20 tries).
			deadline := time.Now().Add(60 * time.Second)
			for attempt := 0; len(pending) > 0; attempt++ {
				if time.Now().After(deadline) {
					errCh <- fmt.Errorf("group %d: %d commands not applied after %d attempts in 60 s", g, len(pending), attempt)
					return
				}
				leader := leaderOf(nodes, g)
				if leader == nil {
					time.Sleep(50 * time.Millisecond) // poll for a leader, within the deadline
					continue
				}
				futures := make([]raft.ApplyFuture, len(pending))
				for i, id := range pending {
					futures[i] = leader.Apply(binary.BigEndian.AppendUint64(nil, id), 10*time.Second)
				}
				var failed []uint64
				for i, f := range futures {
					if err := f.Error(); err != nil {
						failed = append(failed, pending[i])
					}
				}
				pending = failed
			}
		}()
	}
	wg.Wait()
	close(errCh)
	for err := range errCh {
		t.Fatal(err)
	}

	// Every replica of every group converges on the same applied log.
	converged := func(g int) bool {
		leader := leaderOf(nodes, g)
		if leader == nil {
			return false
		}
		var ref *counterFSM
		for _, n := range nodes {
			if n.rafts[g] == leader {
				ref = n.fsms[g]
			}
		}
		ra, rd, rdig := ref.state()
		if rd != testCmds {
			return false
		}
		for _, n := range nodes {
			a, d, dig := n.fsms[g].state()
			if a != ra || d != rd || dig != rdig {
				return false
			}
		}
		return true
	}
	for g := 0; g < testGroups; g++ {
		waitFor(t, 20*time.Second, fmt.Sprintf("group %d replicas to converge", g), func() bool { return converged(g) })
	}
	st := nodes[0].db.Stats()
	t.Logf("node0 logdb: %d commits for %d write requests", st.Commits, st.Requests)

	// Restart the last node from its file.
	victim := nodes[testNodes-1]
	lastBefore := make([]uint64, testGroups)
	for g := range lastBefore {
		var err error
		if lastBefore[g], err = victim.stores[g].LastIndex(); err != nil {
			t.Fatal(err)
		}
	}
	_, _, digBefore := victim.fsms[0].state()
	victim.stop(t)
	// Fresh transports with the same addresses, re-wired to the peers.
	for g := 0; g < testGroups; g++ {
		_ = victim.trans[g].Close()
		_, tr := raft.NewInmemTransport(addr(testNodes-1, g))
		victim.trans[g] = tr
		for j := 0; j < testNodes-1; j++ {
			nodes[j].trans[g].Disconnect(addr(testNodes-1, g))
			nodes[j].trans[g].Connect(addr(testNodes-1, g), tr)
			tr.Connect(addr(j, g), nodes[j].trans[g])
		}
	}
	victim.start(t, testNodes-1, logger)
	for g := 0; g < testGroups; g++ {
		last, err := victim.stores[g].LastIndex()
		if err != nil || last != lastBefore[g] {
			t.Fatalf("group %d after reopen: LastIndex %d, %v; want %d", g, last, err, lastBefore[g])
		}
	}
	for g := 0; g < testGroups; g++ {
		waitFor(t, 20*time.Second, fmt.Sprintf("group %d to replay on the restarted node", g), func() bool { return converged(g) })
	}
	if _, _, dig := victim.fsms[0].state(); dig != digBefore {
		t.Fatalf("group 0 replayed digest %x, before restart %x", dig, digBefore)
	}
}
