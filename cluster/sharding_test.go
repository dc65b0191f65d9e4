package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/worker"
)

// leaderCounts returns how many shards each node leads (by node id).
func (tc *testCluster) leaderCounts() map[string]int {
	out := map[string]int{}
	for _, n := range tc.nodes {
		if n == nil {
			continue
		}
		for _, s := range n.shards {
			if s.isLeader() {
				out[n.cfg.NodeID]++
			}
		}
	}
	return out
}

func (tc *testCluster) balanced(nodes int) bool {
	counts := tc.leaderCounts()
	total, max := 0, 0
	for _, c := range counts {
		total += c
		if c > max {
			max = c
		}
	}
	return total == tc.shards && len(counts) == nodes && max <= (tc.shards+nodes-1)/nodes
}

// load submits jobs from several goroutines until stop is closed, and
// records every acknowledged id.
type load struct {
	mu    sync.Mutex
	acked map[string]bool
	n     atomic.Int64
	wg    sync.WaitGroup
	stop  chan struct{}
}

func startLoad(t *testing.T, tc *testCluster, tenants, goroutines, max int) *load {
	c := newClient(t, tc.addrs()...)
	l := &load{acked: map[string]bool{}, stop: make(chan struct{})}
	for g := 0; g < goroutines; g++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				i := l.n.Add(1)
				if int(i) > max {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				resp, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: fmt.Sprintf("tenant-%d", i%int64(tenants)), Command: []string{"true"}, IdempotencyKey: fmt.Sprintf("k%d", i)})
				cancel()
				if err == nil {
					l.mu.Lock()
					l.acked[resp.GetJob().GetId()] = true
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

func (l *load) finish() map[string]bool {
	close(l.stop)
	l.wg.Wait()
	return l.acked
}

// waitSucceeded waits until every id is SUCCEEDED, listing succeeded jobs
// (linearizable reads, one page per shard) rather than getting each job.
func waitSucceeded(t *testing.T, tc *testCluster, ids map[string]bool, d time.Duration) {
	c := newClient(t, tc.addrs()...)
	pending := map[string]bool{}
	for id := range ids {
		pending[id] = true
	}
	waitFor(t, d, fmt.Sprintf("%d acknowledged jobs to succeed", len(ids)), func() bool {
		token := ""
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := c.List(ctx, &hodeiv1.ListJobsRequest{State: hodeiv1.JobState_JOB_STATE_SUCCEEDED, Limit: 10000, PageToken: token})
			cancel()
			if err != nil {
				return false
			}
			for _, j := range resp.GetJobs() {
				delete(pending, j.GetId())
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		return len(pending) == 0
	})
}

func TestShardsSpreadAndManyTenantsRun(t *testing.T) {
	tc := startCluster(t, 3, 8)
	waitFor(t, 30*time.Second, "shard leadership spread over 3 nodes", func() bool { return tc.balanced(3) })
	startWorker(t, &worker.ShellExecutor{}, 16, tc.addrs()...)
	l := startLoad(t, tc, 50, 8, 500)
	l.wg.Wait()
	acked := l.finish()
	if len(acked) != 500 {
		t.Fatalf("acknowledged %d of 500", len(acked))
	}
	shards := map[uint32]bool{}
	for id := range acked {
		sh, _ := tc.nodes[0].ShardOfJob(id)
		shards[sh] = true
	}
	if len(shards) != 8 {
		t.Fatalf("50 tenants landed on %d shards", len(shards))
	}
	waitSucceeded(t, tc, acked, 60*time.Second)
}

// addNode starts a new node that joins the cluster through the existing ones.
func (tc *testCluster) addNode(t *testing.T, id string) *Node {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, id, filepath.Join(t.TempDir(), id), l, nil, 0)
	cfg.Shards = 8
	cfg.Join = tc.addrs()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes = append(tc.nodes, n)
	tc.peers = append(tc.peers, Peer{ID: id, Addr: n.Addr()})
	tc.dirs = append(tc.dirs, cfg.DataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := n.JoinCluster(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestJoinAndRemoveUnderLoad(t *testing.T) {
	testLogLevel = slog.LevelInfo
	defer func() { testLogLevel = slog.LevelWarn }()
	tc := startCluster(t, 3, 8)
	startWorker(t, &worker.ShellExecutor{}, 16, tc.addrs()...)
	l := startLoad(t, tc, 40, 8, 2000)

	tc.addNode(t, "n4")
	tc.addNode(t, "n5")
	waitFor(t, 60*time.Second, "leadership rebalanced onto 5 nodes", func() bool { return tc.balanced(5) })
	// Remove a follower of the meta group, then the node leading it.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Wait for one: on a loaded machine the meta leader can be between
	// terms at any given instant (seen under the full -race suite).
	metaLeader := -1
	waitFor(t, 20*time.Second, "a meta leader", func() bool {
		for i, n := range tc.nodes {
			if n.meta.raft.State().String() == "Leader" {
				metaLeader = i
				return true
			}
		}
		return false
	})
	victim := (metaLeader + 1) % len(tc.nodes)
	via := (metaLeader + 2) % len(tc.nodes)
	if err := tc.nodes[via].Remove(ctx, &hodeiv1.RemoveRequest{NodeId: tc.peers[victim].ID}); err != nil {
		t.Fatalf("remove %s: %v", tc.peers[victim].ID, err)
	}
	tc.nodes[victim].Close()
	tc.nodes[victim] = nil
	via = (metaLeader + 3) % len(tc.nodes)
	if tc.nodes[via] == nil {
		via = (metaLeader + 4) % len(tc.nodes)
	}
	if err := tc.nodes[via].Remove(ctx, &hodeiv1.RemoveRequest{NodeId: tc.peers[metaLeader].ID}); err != nil {
		t.Fatalf("remove meta leader %s: %v", tc.peers[metaLeader].ID, err)
	}
	tc.nodes[metaLeader].Close()
	tc.nodes[metaLeader] = nil
	var live []*Node
	var addrs []string
	for i, n := range tc.nodes {
		if n != nil {
			live = append(live, n)
			addrs = append(addrs, tc.peers[i].Addr)
		}
	}
	waitFor(t, 30*time.Second, "3 voters left in every group", func() bool {
		for _, s := range live[0].shards {
			if len(s.raft.GetConfiguration().Configuration().Servers) != 3 {
				return false
			}
		}
		return true
	})
	l.wg.Wait()
	acked := l.finish()
	if len(acked) < 1900 {
		t.Fatalf("only %d of 2000 submits acknowledged", len(acked))
	}
	// The workers of the test know every address; keep reading through the live ones.
	rest := &testCluster{t: t, peers: nil, nodes: live, shards: 8}
	for _, a := range addrs {
		rest.peers = append(rest.peers, Peer{Addr: a})
	}
	waitSucceeded(t, rest, acked, 90*time.Second)
}

func TestRemoveRefusedBelowQuorum(t *testing.T) {
	tc := startCluster(t, 3, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Stop n3: removing n2 would leave {n1, n3} with only n1 answering.
	tc.nodes[2].Close()
	err := tc.nodes[0].Remove(ctx, &hodeiv1.RemoveRequest{NodeId: "n2"})
	if err == nil {
		t.Fatal("remove below quorum was accepted")
	}
	t.Logf("refused as expected: %v", err)
	for _, s := range tc.nodes[0].shards {
		if !s.hasVoter("n2") {
			t.Fatal("refused removal changed the configuration")
		}
	}
	if err := tc.nodes[0].Remove(ctx, &hodeiv1.RemoveRequest{NodeId: "nope"}); err == nil {
		t.Fatal("removing an unknown node succeeded")
	}
}

func TestWorkStealingFromNonLeaders(t *testing.T) {
	tc := startCluster(t, 3, 8)
	const tenant = "hot"
	sh := tc.nodes[0].ShardOfTenant(tenant)
	var others []string
	for i, n := range tc.nodes {
		if !n.shards[sh].isLeader() {
			others = append(others, tc.peers[i].Addr)
		}
	}
	waitFor(t, 10*time.Second, "two non-leaders of the hot shard", func() bool { return len(others) == 2 })
	// Workers only on nodes that do not lead the tenant's shard.
	startWorker(t, &worker.ShellExecutor{}, 8, others[0])
	startWorker(t, &worker.ShellExecutor{}, 8, others[1])
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	acked := map[string]bool{}
	for i := 0; i < 10; i++ {
		specs := make([]*hodeiv1.JobSpec, 50)
		for k := range specs {
			specs[k] = &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"true"}}
		}
		res, err := c.SubmitBatch(ctx, specs)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			acked[r.GetJob().GetId()] = true
		}
	}
	waitSucceeded(t, tc, acked, 60*time.Second)
}

func TestKillNodeLeadingMostShards(t *testing.T) {
	tc := startCluster(t, 3, 8)
	waitFor(t, 30*time.Second, "balanced leadership", func() bool { return tc.balanced(3) })
	startWorker(t, &worker.ShellExecutor{}, 16, tc.addrs()...)
	counts := tc.leaderCounts()
	victim := 0
	for i, p := range tc.peers {
		if counts[p.ID] > counts[tc.peers[victim].ID] {
			victim = i
		}
	}
	l := startLoad(t, tc, 30, 8, 1000)
	tc.nodes[victim].Kill()
	tc.nodes[victim] = nil
	start := time.Now()
	waitFor(t, 30*time.Second, "every shard to elect a leader", func() bool {
		for _, n := range tc.nodes {
			if n == nil {
				continue
			}
			for _, s := range n.shards {
				if addr, _ := s.raft.LeaderWithID(); addr == "" || addr == "127.0.0.1:0" {
					return false
				}
			}
		}
		c := tc.leaderCounts()
		total := 0
		for _, v := range c {
			total += v
		}
		return total == 8
	})
	t.Logf("all 8 shards led again %v after the kill", time.Since(start))
	l.wg.Wait()
	acked := l.finish()
	if len(acked) < 950 {
		t.Fatalf("only %d of 1000 submits acknowledged", len(acked))
	}
	waitSucceeded(t, tc, acked, 90*time.Second)
	// The node comes back from its data dir: once caught up it is given
	// its share of leaderships again.
	tc.restart(victim)
	back := time.Now()
	waitFor(t, 60*time.Second, "leadership rebalanced onto the returned node", func() bool { return tc.balanced(3) })
	t.Logf("rebalanced %v after the restart", time.Since(back))
}
