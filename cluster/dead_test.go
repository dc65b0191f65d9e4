package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// deadMetric sums a dead-letter metric of n for one tenant.
func deadMetric(t *testing.T, n *Node, name, tenant string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" && l.GetValue() == tenant {
					total += m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// Dead letters on a real cluster: a Go handler returns NoRetry and the job
// ends DEAD with its attempt; RetryJob makes it run again and succeed,
// keeping the first attempt in its history. A tenant over its dead bound
// has its oldest dead job evicted, counted in the metric; a bulk requeue
// puts the rest back; bad requests get their gRPC codes.
func TestDeadLetterRetryEndToEnd(t *testing.T) {
	tc := startClusterWith(t, 3, 2, func(c *Config) { c.FSM.MaxDeadPerTenant = 2 })
	c := newClient(t, tc.addrs()...)
	wc := newClient(t, tc.addrs()[followerOf(tc)])
	w, err := client.NewWorker(wc, client.WorkerConfig{ID: "dead", Concurrency: 4, LeaseTTL: 2 * time.Second, DrainTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	w.Handle("flaky", func(ctx context.Context, j *client.Job) error {
		mu.Lock()
		calls[j.ID()]++
		n := calls[j.ID()]
		mu.Unlock()
		if n == 1 {
			j.SetOutput([]byte("first try"))
			return client.NoRetry(errors.New("upstream said no"))
		}
		j.SetOutput([]byte("second try"))
		return nil
	})
	w.Handle("never", func(ctx context.Context, j *client.Job) error {
		return client.NoRetry(errors.New("never"))
	})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	bg := context.Background()
	submit := func(spec *hodeiv1.JobSpec) string {
		t.Helper()
		r, err := c.Submit(bg, spec)
		if err != nil {
			t.Fatal(err)
		}
		return r.GetJob().GetId()
	}
	wait := func(id string, want hodeiv1.JobState) *hodeiv1.Job {
		t.Helper()
		var j *hodeiv1.Job
		waitFor(t, 20*time.Second, "job "+id+" to be "+want.String(), func() bool {
			var err error
			j, err = c.Get(bg, id)
			return err == nil && j.GetState() == want
		})
		return j
	}

	id := submit(&hodeiv1.JobSpec{Tenant: "t1", Kind: "flaky", MaxAttempts: 3})
	j := wait(id, hodeiv1.JobState_JOB_STATE_DEAD)
	if j.GetAttempts() != 1 || j.GetDeadReason() != "not retryable" || !strings.Contains(j.GetLastResult().GetError(), "upstream said no") {
		t.Fatalf("dead job %v", j)
	}
	list, err := c.List(bg, &hodeiv1.ListJobsRequest{State: hodeiv1.JobState_JOB_STATE_DEAD})
	if err != nil || len(list.GetJobs()) != 1 || list.GetJobs()[0].GetId() != id {
		t.Fatalf("list dead: %v %v", list, err)
	}

	r, err := c.RetryJob(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetRetries() != 1 || r.GetAttempts() != 0 {
		t.Fatalf("retried job %v", r)
	}
	j = wait(id, hodeiv1.JobState_JOB_STATE_SUCCEEDED)
	h := j.GetHistory()
	if len(h) != 1 || string(h[0].GetOutputTail()) != "first try" || !strings.Contains(h[0].GetError(), "upstream said no") || h[0].GetWorkerId() != "dead" ||
		string(j.GetLastResult().GetOutput()) != "second try" || j.GetRetries() != 1 {
		t.Fatalf("job after retry: history %v, last %v", h, j.GetLastResult())
	}

	// Errors, with nothing changed.
	if _, err := c.RetryJob(bg, id); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "SUCCEEDED") {
		t.Fatalf("retry of a SUCCEEDED job: %v", err)
	}
	if _, err := c.RetryJob(bg, "0-999999"); status.Code(err) != codes.NotFound {
		t.Fatalf("retry of an unknown job: %v", err)
	}
	if _, err := c.RequeueJobs(bg, &hodeiv1.RequeueJobsRequest{SinceMs: 10, UntilMs: 5}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "until") {
		t.Fatalf("requeue with until before since: %v", err)
	}

	// Over the bound: three dead jobs of t2, bound 2.
	var dead []string
	for i := 0; i < 3; i++ {
		dead = append(dead, submit(&hodeiv1.JobSpec{Tenant: "t2", Kind: "never", MaxAttempts: 1}))
		wait(dead[i], hodeiv1.JobState_JOB_STATE_DEAD)
	}
	waitFor(t, 20*time.Second, "the eviction to be counted on every node", func() bool {
		for _, n := range tc.nodes {
			if deadMetric(t, n, "hodei_dead_jobs_evicted_total", "t2") != 1 || deadMetric(t, n, "hodei_dead_jobs", "t2") != 2 {
				return false
			}
		}
		return true
	})
	if _, err := c.Get(bg, dead[0]); status.Code(err) != codes.NotFound {
		t.Fatalf("the oldest dead job was not evicted: %v", err)
	}
	n, err := c.RequeueJobs(bg, &hodeiv1.RequeueJobsRequest{Tenant: "t2", Kind: "never", Limit: 10})
	if err != nil || n != 2 {
		t.Fatalf("requeue: %d, %v", n, err)
	}
	for _, id := range dead[1:] {
		waitFor(t, 20*time.Second, id+" to die again after its requeue", func() bool {
			j, err := c.Get(bg, id)
			return err == nil && j.GetState() == hodeiv1.JobState_JOB_STATE_DEAD && j.GetRetries() == 1 && len(j.GetHistory()) == 1
		})
	}
}
