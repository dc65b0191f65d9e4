package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/worker"
)

// waitLimits waits until every live replica of the tenant's shard applies l.
func (tc *testCluster) waitLimits(tenant string, l *hodeiv1.TenantLimits) {
	tc.t.Helper()
	sh := ShardOf(tenant, tc.shards)
	for _, n := range tc.nodes {
		if n == nil {
			continue
		}
		waitFor(tc.t, 20*time.Second, fmt.Sprintf("node %s shard %d to apply the limits of %s", n.cfg.NodeID, sh, tenant), func() bool {
			return fsm.LimitsEqual(n.shards[sh].fsm.TenantLimits(tenant), l)
		})
	}
}

func u32(v uint32) *uint32 { return &v }

// TestTenantQuotaRefusals: with real Raft over loopback gRPC, tenant A over
// its max-queued gets ResourceExhausted (single submits and the specs of a
// batch), nothing is stored for those specs, tenant B's submits succeed;
// bad limits are InvalidArgument naming the flag and change nothing.
func TestTenantQuotaRefusals(t *testing.T) {
	tc := startCluster(t, 3, 2)
	defer tc.close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newClient(t, tc.addrs()[followerOf(tc)])

	for name, req := range map[string]*hodeiv1.SetTenantRequest{
		"max-queued":  {Tenant: "qa", MaxQueued: u32(fsm.MaxQueuedLimit + 1)},
		"burst":       {Tenant: "qa", Burst: u32(5)},
		"submit-rate": {Tenant: "qa", SubmitRate: ptr(0.0001)},
		"weight":      {Tenant: "qa"},
	} {
		_, err := c.SetTenantSettings(ctx, req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want InvalidArgument naming it", name, err)
		}
	}
	if list, err := c.ListTenants(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after rejected settings: %v %v", list, err)
	}

	want := &hodeiv1.TenantLimits{MaxQueued: 3}
	st, err := c.SetTenantSettings(ctx, &hodeiv1.SetTenantRequest{Tenant: "qa", MaxQueued: u32(3)})
	if err != nil || st.GetWeight() != 1 || !fsm.LimitsEqual(st.GetLimits(), want) {
		t.Fatalf("set: %v %v", st, err)
	}
	tc.waitLimits("qa", want)

	spec := func(tn string) *hodeiv1.JobSpec { return &hodeiv1.JobSpec{Tenant: tn, Command: []string{"true"}} }
	for i := 0; i < 3; i++ {
		if _, err := c.Submit(ctx, spec("qa")); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	_, err = c.Submit(ctx, spec("qa"))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max-queued limit of 3") || !client.IsQuotaRefusal(err) {
		t.Fatalf("4th submit: %v, want ResourceExhausted naming max-queued", err)
	}
	if _, err := c.Submit(ctx, spec("qb")); err != nil {
		t.Fatalf("tenant qb: %v", err)
	}
	// A batch: the specs over the limit are refused, the others stored.
	_, err = c.SubmitBatch(ctx, []*hodeiv1.JobSpec{spec("qb"), spec("qa"), spec("qb"), spec("qa")})
	var be *client.BatchError
	if !errors.As(err, &be) || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("batch: %v, want a BatchError of ResourceExhausted", err)
	}
	for i, refusedWant := range []bool{false, true, false, true} {
		if got := be.Errs[i] != nil; got != refusedWant || (got && status.Code(be.Errs[i]) != codes.ResourceExhausted) || (!got && be.Results[i].GetJob().GetId() == "") {
			t.Errorf("batch spec %d: err %v result %v", i, be.Errs[i], be.Results[i])
		}
	}
	// Usage is the answering node's replica: it catches up.
	waitFor(t, 20*time.Second, "tenant list to show qa's usage (3 queued, 3 refused)", func() bool {
		list, err := c.ListTenants(ctx)
		if err != nil || len(list) != 1 {
			t.Fatalf("list: %v %v", list, err)
		}
		u := list[0].GetUsage()
		return u.GetQueued() == 3 && u.GetRefusedQueued() == 3
	})
	// The weight is kept when only a limit changes, and the limit when
	// only the weight does.
	if st, err := c.SetTenantSettings(ctx, &hodeiv1.SetTenantRequest{Tenant: "qa", Weight: 4}); err != nil || st.GetWeight() != 4 || !fsm.LimitsEqual(st.GetLimits(), want) {
		t.Fatalf("weight only: %v %v", st, err)
	}
	// Raising the limit lets submits in again.
	want = &hodeiv1.TenantLimits{MaxQueued: 4}
	if _, err := c.SetTenantSettings(ctx, &hodeiv1.SetTenantRequest{Tenant: "qa", MaxQueued: u32(4)}); err != nil {
		t.Fatal(err)
	}
	tc.waitLimits("qa", want)
	if _, err := c.Submit(ctx, spec("qa")); err != nil {
		t.Fatalf("after raising the limit: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// gateExec holds every job until released, counting the jobs running per
// tenant and the most seen at once.
type gateExec struct {
	mu      sync.Mutex
	running map[string]int
	peak    map[string]int
	done    int
	release chan struct{}
}

func (e *gateExec) Run(ctx context.Context, job *hodeiv1.Job) worker.Result {
	tn := job.GetSpec().GetTenant()
	e.mu.Lock()
	e.running[tn]++
	e.peak[tn] = max(e.peak[tn], e.running[tn])
	e.mu.Unlock()
	start := time.Now()
	select {
	case <-e.release:
	case <-ctx.Done():
	}
	e.mu.Lock()
	e.running[tn]--
	e.done++
	e.mu.Unlock()
	return worker.Result{Started: start, Finished: time.Now()}
}

func (e *gateExec) snapshot() (running map[string]int, done int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]int{}
	for k, v := range e.running {
		out[k] = v
	}
	return out, e.done
}

// TestTenantMaxRunningWithWorkers: tenant A capped at 2 RUNNING jobs, B
// unlimited, real workers with room for 10: A never runs more than 2 at
// once while B fills the rest, and everything finishes.
func TestTenantMaxRunningWithWorkers(t *testing.T) {
	tc := startCluster(t, 3, 2)
	defer tc.close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := newClient(t, tc.addrs()...)
	a, b := sameShardTenants(t, "ra", tc.shards)
	want := &hodeiv1.TenantLimits{MaxRunning: 2}
	if _, err := c.SetTenantSettings(ctx, &hodeiv1.SetTenantRequest{Tenant: a, MaxRunning: u32(2)}); err != nil {
		t.Fatal(err)
	}
	tc.waitLimits(a, want)
	backlog(t, ctx, c, 8, a, b)

	e := &gateExec{running: map[string]int{}, peak: map[string]int{}, release: make(chan struct{})}
	startWorker(t, e, 10, tc.addrs()...)
	waitFor(t, 30*time.Second, "A at its cap of 2 and B running 8", func() bool {
		r, _ := e.snapshot()
		return r[a] == 2 && r[b] == 8
	})
	sh := ShardOf(a, tc.shards)
	if n := tc.nodes[tc.shardLeader(sh)].shards[sh].fsm.TenantUsage(a).GetRunning(); n != 2 {
		t.Fatalf("the FSM has %d RUNNING jobs of %s, cap 2", n, a)
	}
	close(e.release) // from now on every job finishes at once
	waitFor(t, 60*time.Second, "all 16 jobs to finish", func() bool {
		_, done := e.snapshot()
		return done >= 16
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.peak[a] > 2 {
		t.Fatalf("tenant %s ran %d jobs at once, cap 2", a, e.peak[a])
	}
}

// TestUnmatchedJobReported: a job whose constraint no connected worker
// meets is leased to nobody, and GetJob says why; a worker that meets it
// then runs it.
func TestUnmatchedJobReported(t *testing.T) {
	tc := startCluster(t, 3, 2)
	defer tc.close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newClient(t, tc.addrs()...)
	con, err := fsm.ParseConstraint("region in (eu,us)")
	if err != nil {
		t.Fatal(err)
	}
	// A worker in ap, on the node that leads the job's shard (its sessions
	// are seen; a remote worker that can run nothing ready is not).
	sh := ShardOf(fsm.DefaultTenant, tc.shards)
	var lead int
	waitFor(t, 10*time.Second, "a leader of the job's shard", func() bool { lead = tc.shardLeader(sh); return lead >= 0 })
	ap := openStream(t, tc.addrs()[lead], &hodeiv1.WorkerHello{WorkerId: "ap", Slots: 4,
		Labels: []*hodeiv1.KeyValue{{Key: "region", Value: "ap"}}})
	if m := ap.next(10 * time.Second); m.GetWelcome() == nil {
		t.Fatalf("first message %v", m)
	}
	resp, err := c.Submit(ctx, &hodeiv1.JobSpec{Command: []string{"true"}, Constraints: []*hodeiv1.Constraint{con}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetJob().GetId()
	var last *hodeiv1.Job
	waitFor(t, 20*time.Second, "GetJob to report the job unmatched", func() bool {
		last, err = c.Get(ctx, id)
		return err == nil && last.GetUnmatched() == "no connected worker has label region in (eu,us)"
	})
	if last.GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("state %v", last.GetState())
	}
	eu := openStream(t, tc.addrs()[0], &hodeiv1.WorkerHello{WorkerId: "eu", Slots: 4,
		Labels: []*hodeiv1.KeyValue{{Key: "region", Value: "eu"}}})
	for {
		m := eu.next(20 * time.Second)
		if m == nil {
			t.Fatal("the eu worker got no lease")
		}
		if ls := m.GetLeases().GetLeases(); len(ls) > 0 {
			if ls[0].GetJob().GetId() != id {
				t.Fatalf("leased %v", ls[0].GetJob().GetId())
			}
			break
		}
	}
}
