package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func TestVoteRefused(t *testing.T) {
	servers := []raft.Server{
		{ID: "a", Address: "A", Suffrage: raft.Voter},
		{ID: "b", Address: "B", Suffrage: raft.Voter},
		{ID: "c", Address: "C", Suffrage: raft.Voter},
		{ID: "d", Address: "D", Suffrage: raft.Nonvoter},
	}
	set := func(ids ...string) func(string) bool {
		return func(id string) bool {
			for _, x := range ids {
				if x == id {
					return true
				}
			}
			return false
		}
	}
	all := set("a", "b", "c", "d")
	for _, tc := range []struct {
		cand          string
		failing, live func(string) bool
		want          bool
	}{
		{"A", set(), all, false},              // healthy candidate
		{"A", set("a"), all, true},            // b and c are a healthy quorum
		{"A", set("a"), set("a", "b"), false}, // c is down: b alone is no quorum, a must be electable
		{"A", set("a", "b"), all, false},      // only c healthy
		{"A", set("a", "d"), set("a", "b", "c", "d"), true},
		{"Z", set("a", "b", "c"), all, false}, // unknown address
		{"D", set("d"), all, true},            // a non-voter does not campaign, but refusing it is harmless
	} {
		if _, got := voteRefused(servers, tc.cand, tc.failing, tc.live); got != tc.want {
			t.Errorf("candidate %s: refused = %v, want %v", tc.cand, got, tc.want)
		}
	}
}

// leaderObserver counts the times any of a node's groups becomes leader.
type leaderObserver struct {
	became atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
	undo   []func()
}

func observeLeadership(n *Node) *leaderObserver {
	o := &leaderObserver{stop: make(chan struct{})}
	ch := make(chan raft.Observation, 64)
	for _, id := range n.groups() {
		r, _ := n.groupRaft(id)
		obs := raft.NewObserver(ch, true, func(ob *raft.Observation) bool {
			_, ok := ob.Data.(raft.RaftState)
			return ok
		})
		r.RegisterObserver(obs)
		o.undo = append(o.undo, func() { r.DeregisterObserver(obs) })
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		for {
			select {
			case <-o.stop:
				return
			case ob := <-ch:
				if ob.Data.(raft.RaftState) == raft.Leader {
					o.became.Add(1)
				}
			}
		}
	}()
	return o
}

func (o *leaderObserver) close() {
	for _, f := range o.undo {
		f()
	}
	close(o.stop)
	o.wg.Wait()
}

// leadsNothing: n leads no group.
func leadsNothing(n *Node) bool {
	for _, id := range n.groups() {
		if r, _ := n.groupRaft(id); r.State() == raft.Leader {
			return false
		}
	}
	return true
}

// everyGroupLedBy: every group of every live node knows a leader, and
// that leader is among ids.
func (tc *testCluster) everyGroupLedBy(ids ...string) bool {
	for _, n := range tc.nodes {
		if n == nil {
			continue
		}
		for _, id := range n.groups() {
			r, _ := n.groupRaft(id)
			_, lid := r.LeaderWithID()
			ok := false
			for _, x := range ids {
				ok = ok || string(lid) == x
			}
			if !ok {
				return false
			}
		}
	}
	return true
}

// A node whose log store fails writes hands every leadership away, gets
// none back while it fails (not from the balancer, not by an election,
// not even when a leader transfers leadership to it), jobs keep being
// accepted, and after it heals the balancer gives it its share again.
func TestLogStoreFailingHandsLeadershipAway(t *testing.T) {
	tc := startCluster(t, 3, 6)
	waitFor(t, 30*time.Second, "balanced leadership", func() bool { return tc.balanced(3) })
	// The failing node leads the meta group too: an idle group it would
	// keep leading, since no write of it fails.
	f := tc.metaLeader()
	if f < 0 {
		t.Fatal("no meta leader")
	}
	fn, fid := tc.nodes[f], tc.nodes[f].cfg.NodeID
	var healthy []string
	for i, n := range tc.nodes {
		if i != f {
			healthy = append(healthy, n.cfg.NodeID)
		}
	}
	obs := observeLeadership(fn)
	defer obs.close()
	c := newClient(t, tc.addrs()...)
	submit := func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: fmt.Sprintf("t%d", i%12), Command: []string{"true"}})
		return err
	}

	// 1. Every log write fails.
	start := time.Now()
	fn.storeHealth.setInjection(injectWrites)
	waitFor(t, 30*time.Second, "the failing node to lead nothing and the others to see it failing", func() bool {
		for _, n := range tc.nodes {
			if !n.storeFailing(fid) {
				return false
			}
		}
		return leadsNothing(fn) && tc.everyGroupLedBy(healthy...)
	})
	t.Logf("leaderships handed away %v after writes started failing", time.Since(start))
	// Stay away while jobs keep being accepted: a fixed number of submits
	// spread over every shard (the observer counts any leadership, however short).
	became := obs.became.Load()
	window := time.Now()
	for i := range 120 {
		if err := submit(i); err != nil {
			t.Fatalf("submit %d while a node's log store fails: %v", i, err)
		}
	}
	waitFor(t, 10*time.Second, "3 s of failing", func() bool { return time.Since(window) > 3*time.Second })
	if d := obs.became.Load() - became; d != 0 || !leadsNothing(fn) {
		t.Fatalf("the failing node became leader %d times while failing", d)
	}
	if v := testutilGauge(t, fn, "hodei_log_store_failing"); v != 1 {
		t.Fatalf("hodei_log_store_failing = %v on the failing node", v)
	}
	// Its writes keep failing (raft's and the probe's): erroring too.
	waitFor(t, 10*time.Second, "hodei_log_store_erroring = 1 on the failing node", func() bool {
		return testutilGauge(t, fn, "hodei_log_store_erroring") == 1
	})
	st, err := tc.nodes[(f+1)%3].Status(context.Background(), &hodeiv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	shown := false
	for _, m := range st.GetMembers() {
		shown = shown || (m.GetId() == fid && strings.Contains(m.GetState(), "log store failing"))
	}
	if !shown {
		t.Fatalf("Status members do not show the failing store: %v", st.GetMembers())
	}

	// 2. Log writes succeed again but the store still counts as failing
	// (probes fail): the node's log is current, so only the refused votes
	// keep it from winning. Leaders hand it their leadership explicitly.
	fn.storeHealth.setInjection(injectProbe)
	for _, id := range []uint32{MetaGroup, 0, 1} {
		li := -1
		waitFor(t, 30*time.Second, GroupName(id)+" caught up on the failing node", func() bool {
			for i, n := range tc.nodes {
				if r, _ := n.groupRaft(id); r.State() == raft.Leader {
					li = i
				}
			}
			if li < 0 || li == f {
				return false
			}
			lr, _ := tc.nodes[li].groupRaft(id)
			fr, _ := fn.groupRaft(id)
			return fr.LastIndex() >= lr.LastIndex()
		})
		lr, _ := tc.nodes[li].groupRaft(id)
		err := lr.LeadershipTransferToServer(raft.ServerID(fid), raft.ServerAddress(fn.Addr())).Error()
		t.Logf("%s: transfer to the failing node: %v", GroupName(id), err)
		waitFor(t, 30*time.Second, GroupName(id)+" led by a healthy node again", func() bool { return tc.everyGroupLedBy(healthy...) })
	}
	if d := obs.became.Load() - became; d != 0 {
		t.Fatalf("the failing node became leader %d times while failing", d)
	}
	// Its own vote (it refuses it first when it comes first in the
	// configuration) or the others'.
	refused := 0.0
	for _, n := range tc.nodes {
		refused += testutilGauge(t, n, "hodei_log_store_votes_refused_total")
	}
	if refused == 0 {
		t.Fatal("no vote was refused to the failing node")
	}
	for i := range 30 {
		if err := submit(1000 + i); err != nil {
			t.Fatalf("submit after the transfers: %v", err)
		}
	}

	// 3. Healed: the node is healthy again and the balancer gives it its
	// share of shards.
	healed := time.Now()
	fn.storeHealth.setInjection(injectNone)
	waitFor(t, 30*time.Second, "the healed node to be seen healthy", func() bool {
		for _, n := range tc.nodes {
			if n.storeFailing(fid) {
				return false
			}
		}
		return true
	})
	waitFor(t, 60*time.Second, "leadership rebalanced onto the healed node", func() bool { return tc.balanced(3) })
	t.Logf("rebalanced %v after healing", time.Since(healed))
}

// testutilGauge reads one metric of n's registry (0 when absent).
func testutilGauge(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
		}
	}
	return 0
}

// failingStable fails its first n writes of every key.
type failingStable struct {
	raft.StableStore
	mu   sync.Mutex
	left int
}

func (f *failingStable) SetUint64(key []byte, val uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.left > 0 {
		f.left--
		return errInjected
	}
	return f.StableStore.SetUint64(key, val)
}

// A failed write of the current term is retried until it succeeds (raft
// panics on the error), and the store counts as failing meanwhile; on close
// the error comes back.
func TestCurrentTermWriteRetried(t *testing.T) {
	n := &Node{cfg: Config{Logger: testLogger(t)}}
	h := newStoreHealth(n)
	fs := &failingStable{StableStore: raft.NewInmemStore(), left: 3}
	_, stable := h.wrap(0, raft.NewInmemStore(), fs)
	if err := stable.SetUint64(keyCurrentTerm, 7); err != nil {
		t.Fatalf("term write: %v", err)
	}
	if v, err := stable.GetUint64(keyCurrentTerm); err != nil || v != 7 {
		t.Fatalf("term = %d, %v", v, err)
	}
	if h.writeErrors.Load() != 3 {
		t.Fatalf("%d write errors recorded, want 3", h.writeErrors.Load())
	}
	fs.left = 1 << 30
	done := make(chan error, 1)
	go func() { done <- stable.SetUint64(keyCurrentTerm, 8) }()
	waitFor(t, 10*time.Second, "the retry to start", func() bool { _, ok := h.termBlocked.Load(uint32(0)); return ok })
	h.close()
	if err := <-done; err == nil {
		t.Fatal("term write succeeded on a store that always fails")
	}
}
