package transport_test

// End-to-end tests of the worker long-poll's handling of a lease whose
// outcome it did not learn (chaos F6): real nodes (cluster.Node: Raft
// groups, batcher, FSM) over loopback gRPC. The ambiguity is made with the
// test-only lease result hook, which replaces the result of one lease
// attempt after the leader has committed the grant: the reply of a
// forwarded (work-stealing) lease is lost, or the leader's own lease sees
// raft.ErrLeadershipLost.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/transport"
)

type leaseCluster struct {
	t     *testing.T
	nodes []*cluster.Node
	addrs []string
}

// startLeaseCluster starts size nodes with one job shard.
func startLeaseCluster(t *testing.T, size int) *leaseCluster {
	t.Helper()
	lc := &leaseCluster{t: t}
	var lis []net.Listener
	var peers []cluster.Peer
	for i := 0; i < size; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis = append(lis, l)
		peers = append(peers, cluster.Peer{ID: fmt.Sprintf("n%d", i+1), Addr: l.Addr().String()})
		lc.addrs = append(lc.addrs, l.Addr().String())
	}
	dir := t.TempDir()
	for i := 0; i < size; i++ {
		cfg := cluster.DefaultConfig()
		cfg.NodeID = peers[i].ID
		cfg.DataDir = filepath.Join(dir, peers[i].ID)
		cfg.Listener = lis[i]
		cfg.Bootstrap = peers
		cfg.Shards = 1
		// Long leases: nothing expires during a test, so a job leased to
		// nobody would show as RUNNING, not as a burnt attempt later.
		cfg.LeaseTTL = time.Minute
		cfg.TimerTick = 20 * time.Millisecond
		// Loose timing for a small shared machine under -race.
		cfg.HeartbeatTimeout = time.Second
		cfg.ElectionTimeout = time.Second
		cfg.LeaderLeaseTimeout = 500 * time.Millisecond
		n, err := cluster.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		lc.nodes = append(lc.nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range lc.nodes {
			n.Close()
		}
	})
	waitUntil(t, 20*time.Second, "every group to have a leader", func() bool {
		for _, n := range lc.nodes {
			if n.Ready() != nil {
				return false
			}
		}
		return true
	})
	return lc
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// roles returns the leader of shard 0 and a follower, once there is a
// leader every node knows of.
func (lc *leaseCluster) roles() (leader, follower int) {
	lc.t.Helper()
	leader, follower = -1, -1
	waitUntil(lc.t, 10*time.Second, "a leader of shard 0 known to all", func() bool {
		leader, follower = -1, -1
		for i, n := range lc.nodes {
			local, addr := n.LeaderOf(0)
			switch {
			case local:
				leader = i
			case addr == "":
				return false
			default:
				follower = i
			}
		}
		return leader >= 0 && follower >= 0
	})
	return leader, follower
}

// submit submits n jobs and waits until every node sees them ready.
func (lc *leaseCluster) submit(ctx context.Context, c *client.Client, n int) []string {
	lc.t.Helper()
	var specs []*hodeiv1.JobSpec
	for i := 0; i < n; i++ {
		specs = append(specs, &hodeiv1.JobSpec{Tenant: "t", Command: []string{"true"}, MaxAttempts: 3})
	}
	res, err := c.SubmitBatch(ctx, specs)
	if err != nil {
		lc.t.Fatal(err)
	}
	var ids []string
	for _, r := range res {
		ids = append(ids, r.GetJob().GetId())
	}
	waitUntil(lc.t, 10*time.Second, "the jobs to be ready on every replica", func() bool {
		for _, nd := range lc.nodes {
			if !nd.HasReadyFor(0, nil) {
				return false
			}
		}
		return true
	})
	return ids
}

func newTestClient(t *testing.T, addrs ...string) *client.Client {
	c, err := client.New(client.Config{Addrs: addrs, Retry: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawWorker is a WorkerService stub to one node without the Go client's
// retries: each Lease is one long-poll.
func rawWorker(t *testing.T, addr string) hodeiv1.WorkerServiceClient {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return hodeiv1.NewWorkerServiceClient(cc)
}

func leaseKeys(ls []*hodeiv1.Lease) string {
	var out []string
	for _, l := range ls {
		out = append(out, fmt.Sprintf("%s@%d", l.GetJob().GetId(), l.GetToken()))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// checkJobs asserts that exactly the jobs of leases run, once, under
// their tokens and leased to worker, and that the others wait unleased.
func checkJobs(ctx context.Context, t *testing.T, c *client.Client, ids []string, leases []*hodeiv1.Lease, worker string) {
	t.Helper()
	held := map[string]uint64{}
	for _, l := range leases {
		held[l.GetJob().GetId()] = l.GetToken()
	}
	for _, id := range ids {
		j, err := c.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if tok, ok := held[id]; ok {
			if j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING || j.GetAttempts() != 1 || j.GetLeaseToken() != tok || j.GetLeaseWorker() != worker {
				t.Errorf("job %s: state %v attempts %d token %d worker %q; want RUNNING, 1, %d, %q", id, j.GetState(), j.GetAttempts(), j.GetLeaseToken(), j.GetLeaseWorker(), tok, worker)
			}
			continue
		}
		if j.GetState() != hodeiv1.JobState_JOB_STATE_PENDING || j.GetAttempts() != 0 {
			t.Errorf("job %s (not in the reply): state %v attempts %d worker %q; want PENDING, 0 (leased to nobody?)", id, j.GetState(), j.GetAttempts(), j.GetLeaseWorker())
		}
	}
}

// lossyHook loses the result of the first n attempts of lease id on node
// (forwarded or local, as given) with errFor(attempt), after the leader
// has answered; it records every attempt's real result.
type lossyHook struct {
	mu        sync.Mutex
	node      string
	id        string
	forwarded bool
	lose      int
	errFor    func() error
	attempts  int
	granted   []string // real results, as leaseKeys
}

func (h *lossyHook) hook(node string, sh uint32, id string, forwarded bool, leases []*hodeiv1.Lease, err error) ([]*hodeiv1.Lease, error) {
	if node != h.node || id != h.id || forwarded != h.forwarded {
		return leases, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.attempts++
	if err == nil {
		h.granted = append(h.granted, leaseKeys(leases))
	} else {
		h.granted = append(h.granted, "error: "+err.Error())
	}
	if h.attempts <= h.lose && err == nil {
		return nil, h.errFor()
	}
	return leases, err
}

func (h *lossyHook) snapshot() (int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.attempts, append([]string(nil), h.granted...)
}

// A worker long-polls a follower, which steals the work from the leader;
// the leader commits the grant, but its reply is lost (Unavailable after
// the request was sent). The follower retries under the same request id
// and returns the original grant: the worker gets exactly the jobs that
// were leased, each on its first attempt, and the rest stay unleased.
// (Before, the long-poll moved on and, with nothing else ready, replied
// with no leases after its wait: the jobs were leased to nobody.)
func TestLeaseForwardedReplyLost(t *testing.T) {
	lc := startLeaseCluster(t, 3)
	ld, fo := lc.roles()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestClient(t, lc.addrs...)
	ids := lc.submit(ctx, c, 3)

	h := &lossyHook{node: lc.nodes[fo].NodeID(), id: "req-1/0", forwarded: true, lose: 1,
		errFor: func() error { return status.Error(codes.Unavailable, "test: reply lost") }}
	defer transport.SetLeaseResultHook(h.hook)()

	w := rawWorker(t, lc.addrs[fo])
	resp, err := w.Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w1", Capacity: 10, WaitMs: 1000, RequestId: "req-1"})
	if err != nil {
		t.Fatalf("lease through follower %d (leader %d): %v", fo, ld, err)
	}
	n, granted := h.snapshot()
	if n < 2 || granted[0] == "" || strings.HasPrefix(granted[0], "error") {
		t.Fatalf("the hook saw %d attempt(s) %q, want a grant then a retry", n, granted)
	}
	if got := leaseKeys(resp.GetLeases()); got != granted[0] {
		t.Fatalf("worker got leases %q, the leader granted %q", got, granted[0])
	}
	if len(resp.GetLeases()) != 3 {
		t.Fatalf("worker got %d leases, want all 3", len(resp.GetLeases()))
	}
	checkJobs(ctx, t, c, ids, resp.GetLeases(), "w1")
	for _, l := range resp.GetLeases() {
		if _, err := c.Complete(ctx, &hodeiv1.CompleteJobRequest{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true}); err != nil {
			t.Fatalf("complete %s with the returned token: %v", l.GetJob().GetId(), err)
		}
	}
}

// The leader's own lease (the worker long-polls the leader) commits, but
// the proposal reports raft.ErrLeadershipLost, as when leadership is lost
// after the entry was dispatched. The long-poll retries under the same id
// and returns the original grant.
func TestLeaseLocalLeadershipLostAfterCommit(t *testing.T) {
	lc := startLeaseCluster(t, 3)
	ld, _ := lc.roles()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestClient(t, lc.addrs...)
	ids := lc.submit(ctx, c, 4)

	h := &lossyHook{node: lc.nodes[ld].NodeID(), id: "req-2/0", forwarded: false, lose: 1,
		errFor: func() error { return fmt.Errorf("test: %w", raft.ErrLeadershipLost) }}
	defer transport.SetLeaseResultHook(h.hook)()

	w := rawWorker(t, lc.addrs[ld])
	resp, err := w.Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w2", Capacity: 10, WaitMs: 500, RequestId: "req-2"})
	if err != nil {
		t.Fatalf("lease on the leader: %v", err)
	}
	n, granted := h.snapshot()
	if n < 2 {
		t.Fatalf("the hook saw %d attempt(s) %q, want a grant then a retry", n, granted)
	}
	if got := leaseKeys(resp.GetLeases()); got != granted[0] || len(resp.GetLeases()) != 4 {
		t.Fatalf("worker got leases %q, the leader granted %q (want all 4)", got, granted[0])
	}
	checkJobs(ctx, t, c, ids, resp.GetLeases(), "w2")
}

// When the outcome stays unknown past the long-poll's deadline and the
// grace, the call fails with Unavailable, not with an empty reply; the
// client's retry of the call under the same request id gets the original
// grant (its first lease of the shard has the same per-shard id).
func TestLeaseOutcomeUnknownIsUnavailable(t *testing.T) {
	lc := startLeaseCluster(t, 3)
	_, fo := lc.roles()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestClient(t, lc.addrs...)
	// More jobs than the capacity: the shard still has ready work when
	// the call is retried, so the retry leases that shard again.
	ids := lc.submit(ctx, c, 5)

	h := &lossyHook{node: lc.nodes[fo].NodeID(), id: "req-3/0", forwarded: true, lose: 1 << 30,
		errFor: func() error { return status.Error(codes.DeadlineExceeded, "test: forwarded lease deadline") }}
	restore := transport.SetLeaseResultHook(h.hook)

	w := rawWorker(t, lc.addrs[fo])
	const wait = 300 * time.Millisecond
	start := time.Now()
	_, err := w.Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w3", Capacity: 2, WaitMs: wait.Milliseconds(), RequestId: "req-3"})
	took := time.Since(start)
	restore()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("lease with an outcome that stays unknown: err %v, want Unavailable", err)
	}
	// Bounded: the wait, the grace (2 s) and one forwarded attempt's deadline at most.
	if took < wait || took > wait+5*time.Second {
		t.Fatalf("the call took %v, want between %v and %v", took, wait, wait+5*time.Second)
	}
	n, granted := h.snapshot()
	t.Logf("unknown outcome: Unavailable after %v and %d attempt(s)", took, n)
	if n < 2 {
		t.Fatalf("the hook saw %d attempt(s), want retries", n)
	}
	for i, g := range granted[1:] {
		// A retry may fail too (its own deadline at the end); one that is
		// answered must be answered with the original grant.
		if g != granted[0] && !strings.HasPrefix(g, "error: ") {
			t.Fatalf("retry %d was answered %q, the first attempt %q: the retry granted anew", i+1, g, granted[0])
		}
	}
	// The client's retry of the call.
	resp, err := w.Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w3", Capacity: 2, WaitMs: wait.Milliseconds(), RequestId: "req-3"})
	if err != nil {
		t.Fatal(err)
	}
	if got := leaseKeys(resp.GetLeases()); got != granted[0] || len(resp.GetLeases()) != 2 {
		t.Fatalf("retried call got leases %q, the leader granted %q", got, granted[0])
	}
	checkJobs(ctx, t, c, ids, resp.GetLeases(), "w3")
}

// A forwarded lease refused without a proposal (the node asked does not
// lead the shard) carries the not-proposed trailer, so the stealing node
// knows nothing was granted and may move on.
func TestLeaseForwardedNotProposedTrailer(t *testing.T) {
	lc := startLeaseCluster(t, 3)
	_, fo := lc.roles()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := rawWorker(t, lc.addrs[fo])
	fctx := metadata.AppendToOutgoingContext(ctx, "x-hodei-forwarded", "1", "x-hodei-shard", "0")
	var tr metadata.MD
	_, err := w.Lease(fctx, &hodeiv1.LeaseRequest{WorkerId: "w4", Capacity: 1, RequestId: "req-4/0"}, grpc.Trailer(&tr))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("forwarded lease to a follower: %v, want Unavailable", err)
	}
	if len(tr.Get(transport.MdLeaseNotProposed)) == 0 {
		t.Fatalf("no %s trailer in %v", transport.MdLeaseNotProposed, tr)
	}
}

// Leadership of the shard moves every 100 ms while three workers, one per
// node, lease every job (capacity 1; like the Go client, a new request id
// after an answer, the same one after a retryable error). Leases in flight
// when leadership moves fail, mostly definitely (a transfer in progress,
// not the leader: the poll moves on) and rarely ambiguously (the log line
// counts both). In the end every job has been leased once, on its first
// attempt, under the token a worker received: no job is leased to nobody,
// none is delivered twice. Unlike the tests above, nothing is injected.
func TestLeaseUnderLeadershipTransfers(t *testing.T) {
	lc := startLeaseCluster(t, 3)
	lc.roles()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := newTestClient(t, lc.addrs...)
	const jobs = 100
	ids := lc.submit(ctx, c, jobs)

	// Lease attempts that failed, seen by the hook: all, and those with an
	// outcome the long-poll cannot know.
	var failed, unknown atomic.Int64
	defer transport.SetLeaseResultHook(func(_ string, _ uint32, _ string, _ bool, leases []*hodeiv1.Lease, err error) ([]*hodeiv1.Lease, error) {
		if err != nil {
			failed.Add(1)
			if errors.Is(err, raft.ErrLeadershipLost) || status.Code(err) == codes.DeadlineExceeded ||
				(status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "leadership lost")) {
				unknown.Add(1)
			}
		}
		return leases, err
	})()

	var (
		mu     sync.Mutex
		got    = map[string]uint64{} // job id -> token received
		by     = map[string]string{} // job id -> worker
		errs   []string
		calls  atomic.Int64
		unavai atomic.Int64
	)
	leased := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	transfers := 0
	go func() {
		defer wg.Done()
		adm := c.Admin()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := adm.TransferLeader(tctx, &hodeiv1.TransferLeaderRequest{Shard: 0}); err == nil {
				transfers++
			}
			tcancel()
		}
	}()
	var seq atomic.Int64
	newID := func() string { return fmt.Sprintf("stress-%d", seq.Add(1)) }
	for i := range lc.nodes {
		w := rawWorker(t, lc.addrs[i])
		name := fmt.Sprintf("w%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rid := newID()
			for leased() < jobs {
				select {
				case <-stop:
					return
				default:
				}
				cctx, ccancel := context.WithTimeout(ctx, 200*time.Millisecond+5*time.Second)
				resp, err := w.Lease(cctx, &hodeiv1.LeaseRequest{WorkerId: name, Capacity: 1, WaitMs: 200, RequestId: rid})
				ccancel()
				calls.Add(1)
				if err != nil {
					switch status.Code(err) {
					case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
						unavai.Add(1)
						continue // the same request id, as the Go client retries
					}
					mu.Lock()
					errs = append(errs, fmt.Sprintf("%s: %v", name, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				for _, l := range resp.GetLeases() {
					id := l.GetJob().GetId()
					if tok, dup := got[id]; dup {
						errs = append(errs, fmt.Sprintf("job %s delivered twice: token %d to %s, token %d to %s", id, tok, by[id], l.GetToken(), name))
					}
					got[id] = l.GetToken()
					by[id] = name
				}
				mu.Unlock()
				rid = newID()
			}
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for leased() < jobs && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d/%d jobs leased in %d calls (%d retryable errors), %d leadership transfers, %d failed lease attempts (%d ambiguous)", len(got), jobs, calls.Load(), unavai.Load(), transfers, failed.Load(), unknown.Load())
	for _, e := range errs {
		t.Error(e)
	}
	for _, id := range ids {
		j, err := c.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		tok, ok := got[id]
		switch {
		case !ok && j.GetState() == hodeiv1.JobState_JOB_STATE_RUNNING:
			t.Errorf("job %s is leased (token %d, worker %s, attempt %d) but no worker received it", id, j.GetLeaseToken(), j.GetLeaseWorker(), j.GetAttempts())
		case !ok:
			t.Errorf("job %s was never leased (state %v)", id, j.GetState())
		case j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING || j.GetAttempts() != 1 || j.GetLeaseToken() != tok || j.GetLeaseWorker() != by[id]:
			t.Errorf("job %s: state %v attempts %d token %d worker %s; received token %d by %s", id, j.GetState(), j.GetAttempts(), j.GetLeaseToken(), j.GetLeaseWorker(), tok, by[id])
		}
	}
}
