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

	"go.uber.org/goleak"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// hashicorp/raft-boltdb's metrics and glog-style helpers.
		goleak.IgnoreTopFunction("github.com/hashicorp/go-metrics.(*InmemSink).run"),
		goleak.IgnoreTopFunction("github.com/armon/go-metrics.(*InmemSink).run"),
		goleak.IgnoreTopFunction("github.com/hashicorp/raft-boltdb/v2.(*BoltStore).runMetrics"),
	)
}

// testLogger sends logs to t.Log so that they show only when a test fails.
type tWriter struct {
	t  testing.TB
	mu *sync.Mutex
	on *atomic.Bool
}

func (w tWriter) Write(p []byte) (int, error) {
	if w.on.Load() {
		w.t.Log(string(p))
	}
	return len(p), nil
}

var testLogLevel = slog.LevelWarn

// looseRaftTiming: tests use 1 s heartbeat/election; benchmarks the defaults.
var looseRaftTiming = true

func testLogger(t testing.TB) *slog.Logger {
	on := &atomic.Bool{}
	on.Store(true)
	t.Cleanup(func() { on.Store(false) })
	return slog.New(slog.NewTextHandler(tWriter{t: t, mu: &sync.Mutex{}, on: on}, &slog.HandlerOptions{Level: testLogLevel}))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type testCluster struct {
	t testing.TB
	// allowDivergence: the test corrupts a replica on purpose.
	allowDivergence bool
	shards          int
	peers           []Peer
	dirs            []string
	nodes           []*Node
}

func testConfig(t testing.TB, id, dir string, lis net.Listener, peers []Peer, shards int) Config {
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.DataDir = dir
	cfg.Listener = lis
	cfg.Bootstrap = peers
	cfg.Shards = shards
	cfg.LeaseTTL = 2 * time.Second
	cfg.LeaderGrace = 2 * time.Second
	cfg.TimerTick = 20 * time.Millisecond
	// Replica consistency checkpoints often: every cluster test then also
	// checks that its replicas applied the same log (close fails on a
	// divergence).
	cfg.CheckpointEvery = 200 * time.Millisecond
	// Nodes of a test cluster start one after another on listeners that
	// exist before they serve: a short probe keeps each start from waiting
	// out the default second on a peer that is not serving yet.
	cfg.IdentityProbeTimeout = 100 * time.Millisecond
	// The test machine is small and shared: looser Raft timing than the
	// defaults keeps leaders from stepping down under -race load.
	if looseRaftTiming {
		cfg.HeartbeatTimeout = time.Second
		cfg.ElectionTimeout = time.Second
		cfg.LeaderLeaseTimeout = 500 * time.Millisecond
	}
	cfg.Logger = testLogger(t).With("node", id)
	return cfg
}

func startCluster(t testing.TB, size, shards int) *testCluster {
	t.Helper()
	return startClusterWith(t, size, shards, nil)
}

// startClusterWith is startCluster with mod applied to every node's config.
func startClusterWith(t testing.TB, size, shards int, mod func(*Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t, shards: shards}
	var lis []net.Listener
	for i := 0; i < size; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis = append(lis, l)
		tc.peers = append(tc.peers, Peer{ID: fmt.Sprintf("n%d", i+1), Addr: l.Addr().String()})
		tc.dirs = append(tc.dirs, filepath.Join(t.TempDir(), fmt.Sprintf("n%d", i+1)))
	}
	for i := 0; i < size; i++ {
		cfg := testConfig(t, tc.peers[i].ID, tc.dirs[i], lis[i], tc.peers, shards)
		if mod != nil {
			mod(&cfg)
		}
		n, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		tc.nodes = append(tc.nodes, n)
	}
	t.Cleanup(tc.close)
	waitFor(t, 20*time.Second, "every group to have a leader", func() bool {
		for _, n := range tc.nodes {
			if n.Ready() != nil {
				return false
			}
		}
		return true
	})
	return tc
}

func (tc *testCluster) close() {
	for i, n := range tc.nodes {
		if n != nil {
			if c := chainStats(n); c.Mismatched != 0 && !tc.allowDivergence {
				tc.t.Errorf("node %d: replica divergence detected by %d checkpoint(s) (see the log)", i, c.Mismatched)
			}
			n.Close()
		}
	}
}

// leader returns the index of the node leading shard 0, or -1.
func (tc *testCluster) leader() int {
	for i, n := range tc.nodes {
		if n != nil && n.shards[0].isLeader() {
			return i
		}
	}
	return -1
}

func (tc *testCluster) addrs() []string {
	var out []string
	for _, p := range tc.peers {
		out = append(out, p.Addr)
	}
	return out
}

// restart reopens node i from its data dir on the same address.
func (tc *testCluster) restart(i int) {
	tc.t.Helper()
	var l net.Listener
	var err error
	waitFor(tc.t, 10*time.Second, "the old port to be free", func() bool {
		l, err = net.Listen("tcp", tc.peers[i].Addr)
		return err == nil
	})
	n, err := New(testConfig(tc.t, tc.peers[i].ID, tc.dirs[i], l, tc.peers, tc.shards))
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.nodes[i] = n
}

func newClient(t testing.TB, addrs ...string) *client.Client {
	c, err := client.New(client.Config{Addrs: addrs, Retry: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startWorker runs a worker against addrs until the test ends.
func startWorker(t testing.TB, exec worker.Executor, concurrency int, addrs ...string) {
	c := newClient(t, addrs...)
	w, err := worker.New(worker.Config{Client: c, Concurrency: concurrency, LeaseTTL: 2 * time.Second, PollWait: 2 * time.Second, Executor: exec, DrainTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// recordingExec runs nothing: it records each (job, token) execution.
type recordingExec struct {
	mu   sync.Mutex
	runs map[string][]uint64
}

func (e *recordingExec) Run(ctx context.Context, job *hodeiv1.Job) worker.Result {
	e.mu.Lock()
	if e.runs == nil {
		e.runs = map[string][]uint64{}
	}
	e.runs[job.GetId()] = append(e.runs[job.GetId()], job.GetLeaseToken())
	e.mu.Unlock()
	now := time.Now()
	return worker.Result{Started: now, Finished: now}
}

func followerOf(tc *testCluster, not ...int) int {
	for i := range tc.nodes {
		skip := false
		for _, x := range not {
			if x == i {
				skip = true
			}
		}
		if !skip && tc.nodes[i] != nil && !tc.nodes[i].shards[0].isLeader() {
			return i
		}
	}
	return -1
}

func TestSubmitOnFollowerRunOnAnother(t *testing.T) {
	tc := startCluster(t, 3, 1)
	ld := tc.leader()
	f1 := followerOf(tc, ld)
	f2 := followerOf(tc, ld, f1)
	c := newClient(t, tc.peers[f1].Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Submit(ctx, &hodeiv1.JobSpec{Command: []string{"sh", "-c", "echo hello from $HODEI_JOB_ID"}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetJob().GetId()
	if id == "" || resp.GetJob().GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("unexpected submit reply %v", resp)
	}
	startWorker(t, &worker.ShellExecutor{}, 2, tc.peers[f2].Addr)
	var job *hodeiv1.Job
	waitFor(t, 20*time.Second, "job to succeed", func() bool {
		job, err = c.Get(ctx, id)
		return err == nil && job.GetState() == hodeiv1.JobState_JOB_STATE_SUCCEEDED
	})
	if got := string(job.GetLastResult().GetOutput()); got != "hello from "+id+"\n" {
		t.Fatalf("output = %q", got)
	}
	// A stale read on the other follower converges to the same state.
	c2 := newClient(t, tc.peers[f2].Addr)
	waitFor(t, 10*time.Second, "stale read to converge", func() bool {
		j, err := c2.Get(ctx, id, client.Stale())
		return err == nil && j.GetState() == hodeiv1.JobState_JOB_STATE_SUCCEEDED
	})
}

func TestKillLeaderWhileJobsInFlight(t *testing.T) {
	tc := startCluster(t, 3, 1)
	exec := &recordingExec{}
	startWorker(t, exec, 32, tc.addrs()...)
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	const total = 1000
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
		next  atomic.Int64
		errs  atomic.Int64
	)
	killed := make(chan struct{})
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > total {
					return
				}
				if i == total/3 {
					ld := tc.leader()
					if ld >= 0 {
						tc.nodes[ld].Kill()
						close(killed)
					}
				}
				resp, err := c.Submit(ctx, &hodeiv1.JobSpec{
					Tenant:         fmt.Sprintf("t%d", i%5),
					Command:        []string{"true"},
					IdempotencyKey: fmt.Sprintf("job-%d", i),
				})
				if err != nil {
					errs.Add(1)
					continue
				}
				mu.Lock()
				acked[resp.GetJob().GetId()] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	select {
	case <-killed:
	default:
		t.Fatal("leader was never killed")
	}
	t.Logf("acknowledged %d of %d submits (%d failed after retries)", len(acked), total, errs.Load())
	if len(acked) < total*9/10 {
		t.Fatalf("only %d of %d submits acknowledged", len(acked), total)
	}
	pending := map[string]bool{}
	for id := range acked {
		pending[id] = true
	}
	waitFor(t, 60*time.Second, "every acknowledged job to succeed", func() bool {
		for id := range pending {
			j, err := c.Get(ctx, id)
			if err != nil || j.GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED {
				return false
			}
			delete(pending, id) // done: do not poll it again
		}
		return true
	})
	// Fencing: per job, executions happen under strictly increasing tokens,
	// and the accepted completion carries the token of an execution.
	exec.mu.Lock()
	defer exec.mu.Unlock()
	for id := range acked {
		runs := exec.runs[id]
		for k := 1; k < len(runs); k++ {
			if runs[k] <= runs[k-1] {
				t.Fatalf("job %s executed with non-increasing tokens %v", id, runs)
			}
		}
		j, err := c.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		tok := j.GetLastResult().GetLeaseToken()
		found := false
		for _, r := range runs {
			found = found || r == tok
		}
		if !found {
			t.Fatalf("job %s completed with token %d, executed with %v", id, tok, runs)
		}
	}
}

func TestRestartFromDataDir(t *testing.T) {
	tc := startCluster(t, 3, 1)
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ids []string
	for i := 0; i < 50; i++ {
		resp, err := c.Submit(ctx, &hodeiv1.JobSpec{Command: []string{"true"}, Tenant: "restart"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.GetJob().GetId())
	}
	if _, err := c.Cancel(ctx, ids[0], "test"); err != nil {
		t.Fatal(err)
	}
	f := followerOf(tc, tc.leader())
	want, _ := tc.nodes[tc.leader()].Status(ctx, &hodeiv1.StatusRequest{IncludeDigest: true})
	waitFor(t, 10*time.Second, "follower to apply everything", func() bool {
		st, _ := tc.nodes[f].Status(ctx, &hodeiv1.StatusRequest{IncludeDigest: true})
		return st.Shards[0].AppliedIndex >= want.Shards[0].AppliedIndex
	})
	if err := tc.nodes[f].Close(); err != nil {
		t.Fatal(err)
	}
	tc.restart(f)
	// Its FSM replays the log (and snapshot) from disk: the same digest as
	// the leader's at the same index. (The leader may have applied a
	// checkpoint since, so compare with the leader now, not with before.)
	waitFor(t, 20*time.Second, "restarted node to reach the leader's state", func() bool {
		l := tc.leader()
		if l < 0 || l == f {
			return false
		}
		ls, _ := tc.nodes[l].Status(ctx, &hodeiv1.StatusRequest{IncludeDigest: true})
		st, _ := tc.nodes[f].Status(ctx, &hodeiv1.StatusRequest{IncludeDigest: true})
		return ls != nil && st != nil && st.Shards[0].AppliedIndex == ls.Shards[0].AppliedIndex &&
			st.Shards[0].FsmDigest == ls.Shards[0].FsmDigest && st.Shards[0].AppliedIndex >= want.Shards[0].AppliedIndex
	})
	j, ok := tc.nodes[f].GetJob(0, ids[0])
	if !ok || j.GetState() != hodeiv1.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("job %s after restart: %v", ids[0], j)
	}
}
