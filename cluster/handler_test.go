package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Go handlers on a real cluster, through the worker stream: success, a
// panic (a failed attempt with the stack, retried, then DEAD), NoRetry (DEAD
// at once), and a cancel that reaches the running handler's context.
func TestGoHandlersEndToEnd(t *testing.T) {
	tc := startCluster(t, 3, 4)
	c := newClient(t, tc.addrs()...)
	wc := newClient(t, tc.addrs()[followerOf(tc)])
	w, err := client.NewWorker(wc, client.WorkerConfig{ID: "handlers", Concurrency: 8, LeaseTTL: 2 * time.Second, DrainTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cancelled := make(chan error, 1)
	blocking := make(chan struct{}, 1)
	w.Handle("ok", func(ctx context.Context, j *client.Job) error {
		j.SetOutput(append([]byte("got "), j.Payload()...))
		return nil
	})
	w.Handle("panic", func(ctx context.Context, j *client.Job) error { panic("boom") })
	w.Handle("noretry", func(ctx context.Context, j *client.Job) error {
		return client.NoRetry(errors.New("bad payload"))
	})
	w.Handle("block", func(ctx context.Context, j *client.Job) error {
		blocking <- struct{}{}
		<-ctx.Done()
		cancelled <- context.Cause(ctx)
		return ctx.Err()
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

	submit := func(spec *hodeiv1.JobSpec) string {
		t.Helper()
		r, err := c.Submit(context.Background(), spec)
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
			j, err = c.Get(context.Background(), id)
			return err == nil && j.GetState() == want
		})
		return j
	}
	okID := submit(&hodeiv1.JobSpec{Tenant: "a", Kind: "ok", Payload: []byte("hello")})
	panicID := submit(&hodeiv1.JobSpec{Tenant: "b", Kind: "panic", MaxAttempts: 2, BackoffBaseMs: 1})
	noRetryID := submit(&hodeiv1.JobSpec{Tenant: "c", Kind: "noretry", MaxAttempts: 5})
	blockID := submit(&hodeiv1.JobSpec{Tenant: "d", Kind: "block"})

	if j := wait(okID, hodeiv1.JobState_JOB_STATE_SUCCEEDED); string(j.GetLastResult().GetOutput()) != "got hello" {
		t.Fatalf("ok job output %q", j.GetLastResult().GetOutput())
	}
	if j := wait(panicID, hodeiv1.JobState_JOB_STATE_DEAD); j.GetAttempts() != 2 || !strings.Contains(j.GetLastResult().GetError(), "boom") ||
		!strings.Contains(j.GetLastResult().GetError()+string(j.GetLastResult().GetOutput()), "goroutine") {
		t.Fatalf("panic job: attempts %d, result %v", j.GetAttempts(), j.GetLastResult())
	}
	if j := wait(noRetryID, hodeiv1.JobState_JOB_STATE_DEAD); j.GetAttempts() != 1 || !strings.Contains(j.GetLastResult().GetError(), "bad payload") {
		t.Fatalf("noretry job: attempts %d, result %v", j.GetAttempts(), j.GetLastResult())
	}
	<-blocking
	if _, err := c.Cancel(context.Background(), blockID, "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-cancelled:
		if !errors.Is(cause, client.ErrJobCancelled) {
			t.Fatalf("handler context cause %v, want ErrJobCancelled", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancel did not reach the running handler")
	}
	wait(blockID, hodeiv1.JobState_JOB_STATE_CANCELLED)
}
