package cluster

// End-to-end tests of the dispatcher's handling of a lease whose outcome it
// did not learn (chaos F6), on real nodes over loopback gRPC. The ambiguity
// is made with the test-only leaseResultHook (dispatch.go), which replaces
// the result of one lease call after the leader committed the grant: the
// reply of a forwarded (work-stealing) LeaseFor is lost, or the leader's own
// proposal reports raft.ErrLeadershipLost. The policy itself is unit-tested
// against a fake backend in scheduler/dispatcher_test.go.

import (
	"context"
	"fmt"
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
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// startLeaseCluster starts 3 nodes with one job shard and leases that do
// not expire during a test (a job leased to nobody shows as RUNNING).
func startLeaseCluster(t *testing.T) *testCluster {
	return startClusterWith(t, 3, 1, func(c *Config) { c.LeaseTTL, c.LeaderGrace = time.Minute, time.Minute })
}

func setLeaseHook(t *testing.T, h func(node string, sh uint32, req *hodeiv1.LeaseForRequest, forwarded bool, g []*hodeiv1.LeaseGrant, err error) ([]*hodeiv1.LeaseGrant, error)) {
	leaseResultHook.Store(&h)
	t.Cleanup(func() { leaseResultHook.Store(nil) })
}

// submitReady submits n command jobs and waits until every node sees them.
func submitReady(ctx context.Context, t *testing.T, tc *testCluster, c *client.Client, n int) []string {
	t.Helper()
	var specs []*hodeiv1.JobSpec
	for i := 0; i < n; i++ {
		specs = append(specs, &hodeiv1.JobSpec{Tenant: "t", Command: []string{"true"}, MaxAttempts: 3})
	}
	res, err := c.SubmitBatch(ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range res {
		ids = append(ids, r.GetJob().GetId())
	}
	waitFor(t, 10*time.Second, "the jobs to be ready on every replica", func() bool {
		for _, nd := range tc.nodes {
			if nd.shards[0].fsm.ReadyCount() < n {
				return false
			}
		}
		return true
	})
	return ids
}

// rawWorker is a WorkerService stub to one node, without the Go client's retries.
func rawWorker(t *testing.T, addr string) hodeiv1.WorkerServiceClient {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return hodeiv1.NewWorkerServiceClient(cc)
}

func grantKeys(g []*hodeiv1.LeaseGrant) string {
	var ls []*hodeiv1.Lease
	for _, x := range g {
		ls = append(ls, x.GetLeases()...)
	}
	return leaseKeys(ls)
}

func leaseKeys(ls []*hodeiv1.Lease) string {
	var out []string
	for _, l := range ls {
		out = append(out, fmt.Sprintf("%s@%d", l.GetJob().GetId(), l.GetToken()))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// checkJobs asserts that exactly the jobs of leases are RUNNING, on their
// first attempt, under their tokens and leased to worker, and that the
// others wait unleased.
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

// lossyHook loses the result of the first lose lease calls of node
// (forwarded or local, as given) with errFor(), after the leader answered;
// it records every call's request id and real result.
type lossyHook struct {
	mu        sync.Mutex
	node      string
	forwarded bool
	lose      int
	errFor    func() error
	ids       []string
	granted   []string
}

func (h *lossyHook) hook(node string, _ uint32, req *hodeiv1.LeaseForRequest, forwarded bool, g []*hodeiv1.LeaseGrant, err error) ([]*hodeiv1.LeaseGrant, error) {
	if node != h.node || forwarded != h.forwarded {
		return g, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.granted = append(h.granted, "error: "+err.Error())
	} else {
		h.granted = append(h.granted, grantKeys(g))
	}
	h.ids = append(h.ids, req.GetRequestId())
	if len(h.ids) <= h.lose && err == nil && grantKeys(g) != "" {
		return nil, h.errFor()
	}
	return g, err
}

func (h *lossyHook) snapshot() ([]string, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.ids...), append([]string(nil), h.granted...)
}

// A worker long-polls a follower, whose dispatcher steals the work from the
// leader; the leader commits the grant, but its reply is lost. The
// dispatcher retries under the same request id and delivers the original
// grant: the worker gets exactly the jobs that were leased, each on its
// first attempt, and the rest stay unleased.
func TestLeaseForwardedReplyLost(t *testing.T) {
	tc := startLeaseCluster(t)
	fo := followerOf(tc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newClient(t, tc.addrs()...)
	ids := submitReady(ctx, t, tc, c, 3)
	h := &lossyHook{node: tc.nodes[fo].NodeID(), forwarded: true, lose: 1,
		errFor: func() error { return status.Error(codes.Unavailable, "test: reply lost") }}
	setLeaseHook(t, h.hook)

	resp, err := rawWorker(t, tc.addrs()[fo]).Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w1", Capacity: 10, WaitMs: 2000})
	if err != nil {
		t.Fatalf("lease through follower %d: %v", fo, err)
	}
	rids, granted := h.snapshot()
	if len(rids) < 2 || rids[0] != rids[1] || granted[0] == "" || strings.HasPrefix(granted[0], "error") {
		t.Fatalf("the hook saw calls %q with results %q, want a grant then a retry under its id", rids, granted)
	}
	if got := leaseKeys(resp.GetLeases()); got != granted[0] || len(resp.GetLeases()) != 3 {
		t.Fatalf("worker got leases %q, the leader granted %q (want all 3)", got, granted[0])
	}
	checkJobs(ctx, t, c, ids, resp.GetLeases(), "w1")
	for _, l := range resp.GetLeases() {
		if _, err := c.Complete(ctx, &hodeiv1.CompleteJobRequest{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true}); err != nil {
			t.Fatalf("complete %s with the returned token: %v", l.GetJob().GetId(), err)
		}
	}
}

// The leader's own lease commits, but the proposal reports
// raft.ErrLeadershipLost, as when leadership is lost after the entry was
// dispatched. The dispatcher retries under the same id and delivers the
// original grant.
func TestLeaseLocalLeadershipLostAfterCommit(t *testing.T) {
	tc := startLeaseCluster(t)
	ld := tc.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newClient(t, tc.addrs()...)
	ids := submitReady(ctx, t, tc, c, 4)
	h := &lossyHook{node: tc.nodes[ld].NodeID(), forwarded: false, lose: 1,
		errFor: func() error { return fmt.Errorf("test: %w", raft.ErrLeadershipLost) }}
	setLeaseHook(t, h.hook)

	resp, err := rawWorker(t, tc.addrs()[ld]).Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w2", Capacity: 10, WaitMs: 2000})
	if err != nil {
		t.Fatalf("lease on the leader: %v", err)
	}
	rids, granted := h.snapshot()
	if len(rids) < 2 || rids[0] != rids[1] {
		t.Fatalf("the hook saw calls %q (%q), want a grant then a retry under its id", rids, granted)
	}
	if got := leaseKeys(resp.GetLeases()); got != granted[0] || len(resp.GetLeases()) != 4 {
		t.Fatalf("worker got leases %q, the leader granted %q (want all 4)", got, granted[0])
	}
	checkJobs(ctx, t, c, ids, resp.GetLeases(), "w2")
}

// A LeaseFor refused without a proposal (the node asked does not lead the
// shard) carries the not-proposed trailer, so the stealing node knows
// nothing was granted and may move on.
func TestLeaseForNotProposedTrailer(t *testing.T) {
	tc := startLeaseCluster(t)
	fo := followerOf(tc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fctx := metadata.AppendToOutgoingContext(ctx, "x-hodei-forwarded", "1", "x-hodei-shard", "0")
	var tr metadata.MD
	_, err := rawWorker(t, tc.addrs()[fo]).LeaseFor(fctx, &hodeiv1.LeaseForRequest{RequestId: "req-4",
		Demands: []*hodeiv1.LeaseDemand{{WorkerId: "w4", Capacity: 1}}}, grpc.Trailer(&tr))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("LeaseFor to a follower: %v, want Unavailable", err)
	}
	if len(tr.Get("x-hodei-lease-not-proposed")) == 0 {
		t.Fatalf("no not-proposed trailer in %v", tr)
	}
	// Bad LeaseFor requests are refused before anything is proposed.
	for _, req := range []*hodeiv1.LeaseForRequest{
		{Demands: []*hodeiv1.LeaseDemand{{WorkerId: "w", Capacity: 1}}},
		{RequestId: "r"},
	} {
		if _, err := rawWorker(t, tc.addrs()[tc.leader()]).LeaseFor(fctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("LeaseFor(%v): %v, want InvalidArgument", req, err)
		}
	}
}

// Leadership of the shard moves every 100 ms while three streams, one per
// node, take every job (one slot each, a new slot after each lease). Lease
// calls in flight when leadership moves fail, mostly definitely and rarely
// ambiguously. In the end every job has been leased once, on its first
// attempt, under the token a worker received: no job is leased to nobody,
// none is delivered twice. Nothing is injected.
func TestLeaseUnderLeadershipTransfers(t *testing.T) {
	tc := startLeaseCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := newClient(t, tc.addrs()...)
	const jobs = 100
	ids := submitReady(ctx, t, tc, c, jobs)
	var failed atomic.Int64
	setLeaseHook(t, func(_ string, _ uint32, _ *hodeiv1.LeaseForRequest, _ bool, g []*hodeiv1.LeaseGrant, err error) ([]*hodeiv1.LeaseGrant, error) {
		if err != nil {
			failed.Add(1)
		}
		return g, err
	})

	var (
		mu   sync.Mutex
		got  = map[string]uint64{}
		by   = map[string]string{}
		errs []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	transfers := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := c.Admin().TransferLeader(tctx, &hodeiv1.TransferLeaderRequest{Shard: 0}); err == nil {
				transfers++
			}
			tcancel()
		}
	}()
	for i := range tc.nodes {
		name := fmt.Sprintf("w%d", i)
		rs := openStream(t, tc.addrs()[i], &hodeiv1.WorkerHello{WorkerId: name, Slots: 1})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var m *hodeiv1.ServerMessage
				select {
				case <-stop:
					return
				case m = <-rs.msgs:
				}
				if m == nil {
					return
				}
				ls := m.GetLeases().GetLeases()
				mu.Lock()
				for _, l := range ls {
					id := l.GetJob().GetId()
					if tok, dup := got[id]; dup {
						errs = append(errs, fmt.Sprintf("job %s delivered twice: token %d to %s, token %d to %s", id, tok, by[id], l.GetToken(), name))
					}
					got[id], by[id] = l.GetToken(), name
				}
				mu.Unlock()
				if len(ls) > 0 {
					if err := rs.s.Send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{Slots: int32(len(ls))}}}); err != nil {
						return
					}
				}
			}
		}()
	}
	waitFor(t, 60*time.Second, "every job to be leased", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == jobs })
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d/%d jobs leased, %d leadership transfers, %d failed lease calls", len(got), jobs, transfers, failed.Load())
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
		case !ok:
			t.Errorf("job %s was never received (state %v, worker %q)", id, j.GetState(), j.GetLeaseWorker())
		case j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING || j.GetAttempts() != 1 || j.GetLeaseToken() != tok || j.GetLeaseWorker() != by[id]:
			t.Errorf("job %s: state %v attempts %d token %d worker %s; received token %d by %s", id, j.GetState(), j.GetAttempts(), j.GetLeaseToken(), j.GetLeaseWorker(), tok, by[id])
		}
	}
}
