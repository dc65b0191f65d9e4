package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// runLogWorker runs a Go worker connected to addr only, until the test ends.
func runLogWorker(t *testing.T, addr string, handlers map[string]client.Handler) *client.Worker {
	return runLogWorkerOn(t, []string{addr}, 2*time.Second, handlers)
}

// runLogWorkerOn runs a Go worker with the client addresses addrs (it
// connects to the first, then the next on errors).
func runLogWorkerOn(t *testing.T, addrs []string, ttl time.Duration, handlers map[string]client.Handler) *client.Worker {
	t.Helper()
	wc := newClient(t, addrs...)
	w, err := client.NewWorker(wc, client.WorkerConfig{ID: "logger", Concurrency: 2, LeaseTTL: ttl, DrainTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for k, h := range handlers {
		w.Handle(k, h)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w
}

// Live logs followed from a node the worker is not connected to: the
// handler writes a line and waits until the reader has seen it before it
// writes the next, so every line must travel worker → node W → reader's
// node R while the job runs. The reader sees all lines, in order, then the
// stream ends when the job ends; a later read shows them all again.
func TestLiveLogsFollowedFromAnotherNode(t *testing.T) {
	tc := startCluster(t, 3, 2)
	const lines = 25
	wi, ri := 0, 1
	seen := make(chan int, lines)
	runLogWorker(t, tc.addrs()[wi], map[string]client.Handler{
		"slow": func(ctx context.Context, j *client.Job) error {
			for i := 1; i <= lines; i++ {
				if i%2 == 0 {
					fmt.Fprintf(j.Stderr(), "err %d\n", i)
				} else {
					j.Logf("line %d", i)
				}
				select {
				case got := <-seen:
					if got != i {
						return fmt.Errorf("reader saw line %d, want %d", got, i)
					}
				case <-time.After(15 * time.Second):
					return fmt.Errorf("the reader did not see line %d live", i)
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			j.SetOutput([]byte("tail"))
			return nil
		},
	})
	reader := newClient(t, tc.addrs()[ri]) // the reader's node: never the worker's
	r, err := reader.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetJob().GetId()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got []*hodeiv1.LogLine
	finished := false
	err = reader.FollowJobLogs(ctx, &hodeiv1.FollowJobLogsRequest{JobId: id}, func(m *hodeiv1.FollowJobLogsResponse) error {
		if finished {
			t.Fatal("a message after the last one")
		}
		for _, l := range m.GetLines() {
			got = append(got, l)
			seen <- len(got)
		}
		finished = m.GetJobFinished()
		return nil
	})
	if err != nil {
		t.Fatalf("follow: %v", err)
	}
	if !finished || len(got) != lines {
		t.Fatalf("follow ended (finished=%v) with %d lines, want %d", finished, len(got), lines)
	}
	for i, l := range got {
		want, stream := fmt.Sprintf("line %d", i+1), hodeiv1.LogStream_LOG_STREAM_STDOUT
		if (i+1)%2 == 0 {
			want, stream = fmt.Sprintf("err %d", i+1), hodeiv1.LogStream_LOG_STREAM_STDERR
		}
		if string(l.GetData()) != want || l.GetSeq() != uint64(i+1) || l.GetStream() != stream || l.GetAttempt() != 1 ||
			l.GetNodeId() != tc.peers[wi].ID {
			t.Fatalf("line %d: %v, want %q on %v from %s", i, l, want, stream, tc.peers[wi].ID)
		}
	}
	job, err := reader.Get(ctx, id)
	if err != nil || job.GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v, %v", job, err)
	}
	// After the end, from the third node: every stored line.
	other := newClient(t, tc.addrs()[2])
	resp, err := other.JobLogs(ctx, &hodeiv1.GetJobLogsRequest{JobId: id})
	if err != nil || len(resp.GetLines()) != lines || !resp.GetJobFinished() || resp.GetFromResultTail() || resp.GetAttempt() != 1 {
		t.Fatalf("logs after the end: %d lines, %v, %v", len(resp.GetLines()), resp, err)
	}
	if c := tc.nodes[wi].logs.counters(); c.LinesReceived != lines || c.Jobs != 1 {
		t.Fatalf("worker's node store: %+v", c)
	}
	for _, i := range []int{ri, 2} {
		if c := tc.nodes[i].logs.counters(); c.LinesReceived != 0 {
			t.Fatalf("node %d stored lines: %+v", i, c)
		}
	}
	// Bad reads: a clear error naming the field.
	for _, tcase := range []struct {
		req  *hodeiv1.GetJobLogsRequest
		code codes.Code
		want string
	}{
		{&hodeiv1.GetJobLogsRequest{JobId: "nope"}, codes.InvalidArgument, "job_id"},
		{&hodeiv1.GetJobLogsRequest{JobId: id, Attempt: -1}, codes.InvalidArgument, "attempt"},
		{&hodeiv1.GetJobLogsRequest{JobId: id, Attempt: 7}, codes.OutOfRange, "attempt 7"},
		{&hodeiv1.GetJobLogsRequest{JobId: id, Limit: 100000}, codes.InvalidArgument, "limit"},
		{&hodeiv1.GetJobLogsRequest{JobId: id, WaitMs: 10}, codes.InvalidArgument, "wait_ms"},
		{&hodeiv1.GetJobLogsRequest{JobId: "0-999999"}, codes.NotFound, "not found"},
	} {
		_, err := other.JobLogs(ctx, tcase.req)
		if status.Code(err) != tcase.code || !strings.Contains(err.Error(), tcase.want) {
			t.Errorf("JobLogs(%v): %v, want %v naming %q", tcase.req, err, tcase.code, tcase.want)
		}
	}
}

// When the node holding an attempt's lines is gone, a reader gets the
// output tail replicated with the job's result, and is told so.
func TestLiveLogsAfterHoldingNodeDies(t *testing.T) {
	tc := startCluster(t, 3, 1)
	wi := followerOf(tc)
	ri := followerOf(tc, wi)
	runLogWorker(t, tc.addrs()[wi], map[string]client.Handler{
		"say": func(ctx context.Context, j *client.Job) error {
			j.Logf("hello from the worker")
			j.SetOutput([]byte("the tail\n"))
			return nil
		},
	})
	reader := newClient(t, tc.addrs()[ri])
	r, err := reader.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "say"})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetJob().GetId()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	waitFor(t, 20*time.Second, "the job to succeed with its line stored", func() bool {
		resp, err := reader.JobLogs(ctx, &hodeiv1.GetJobLogsRequest{JobId: id})
		return err == nil && resp.GetJobFinished() && len(resp.GetLines()) == 1
	})
	tc.nodes[wi].Kill()
	resp, err := reader.JobLogs(ctx, &hodeiv1.GetJobLogsRequest{JobId: id})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetFromResultTail() || string(resp.GetResultTail()) != "the tail\n" || len(resp.GetLines()) != 0 ||
		len(resp.GetUnreachableNodes()) != 1 || resp.GetUnreachableNodes()[0] != tc.peers[wi].ID {
		t.Fatalf("after the holding node died: %v", resp)
	}
	// A follow of the ended job ends at once with the tail.
	var last *hodeiv1.FollowJobLogsResponse
	if err := reader.FollowJobLogs(ctx, &hodeiv1.FollowJobLogsRequest{JobId: id}, func(m *hodeiv1.FollowJobLogsResponse) error {
		last = m
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !last.GetJobFinished() || !last.GetFromResultTail() || string(last.GetResultTail()) != "the tail\n" {
		t.Fatalf("follow after the node died: %v", last)
	}
}

// Malformed log messages on a worker stream (unknown job, a stale or
// foreign token, an oversized line, no seq, an unknown stream) are dropped
// and counted; the stream stays up and keeps leasing and completing.
func TestWorkerStreamBadLogLines(t *testing.T) {
	tc := startCluster(t, 3, 1)
	addr := tc.addrs()[0]
	c := newClient(t, tc.addrs()...)
	for i := 0; i < 2; i++ {
		if _, err := c.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "k"}); err != nil {
			t.Fatal(err)
		}
	}
	rs := openStream(t, addr, &hodeiv1.WorkerHello{WorkerId: "bad-logs", Kinds: []string{"k"}, Slots: 2})
	rs.next(10 * time.Second) // welcome
	var leases []*hodeiv1.Lease
	for len(leases) < 2 {
		if m := rs.next(20 * time.Second); m.GetLeases() != nil {
			leases = append(leases, m.GetLeases().GetLeases()...)
		}
	}
	// The lease with the higher token: the other's token is stale for it.
	lease, older := leases[0], leases[1]
	if lease.GetToken() < older.GetToken() {
		lease, older = older, lease
	}
	id, tok := lease.GetJob().GetId(), lease.GetToken()
	// Fencing uses this node's replica: let it see the lease first.
	waitFor(t, 10*time.Second, "the replica to apply the lease", func() bool {
		jl, ok := tc.nodes[0].logs.lease(id)
		return ok && jl.LeaseToken == tok
	})
	out := hodeiv1.LogStream_LOG_STREAM_STDOUT
	send := func(ls ...*hodeiv1.LogLine) {
		rs.send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Logs{Logs: &hodeiv1.WorkerLogs{Lines: ls}}})
	}
	send(&hodeiv1.LogLine{JobId: "0-999999", Token: tok, Seq: 1, Stream: out, Data: []byte("unknown job")})
	send(&hodeiv1.LogLine{JobId: id, Token: older.GetToken(), Seq: 1, Stream: out, Data: []byte("stale token")})
	send(&hodeiv1.LogLine{JobId: id, Token: tok, Seq: 1, Stream: out, Data: make([]byte, 17<<10)})
	send(&hodeiv1.LogLine{JobId: id, Token: tok, Stream: out, Data: []byte("no seq")},
		&hodeiv1.LogLine{JobId: id, Token: tok, Seq: 1, Stream: 7, Data: []byte("bad stream")},
		&hodeiv1.LogLine{JobId: id, Seq: 1, Stream: out, Data: []byte("no token")})
	send() // an empty message
	send(&hodeiv1.LogLine{JobId: id, Token: tok, Seq: 1, Stream: out, Data: []byte("good")},
		&hodeiv1.LogLine{JobId: id, Token: tok, Seq: 1, Stream: out, Data: []byte("repeat")})
	rs.send(complete(lease, older))
	for done := 0; done < 2; {
		if m := rs.next(20 * time.Second); m.GetCompletions() != nil {
			for _, r := range m.GetCompletions().GetResults() {
				if !r.GetOk() {
					t.Fatalf("completion refused: %v", r)
				}
				done++
			}
		}
	}
	n := tc.nodes[0]
	waitFor(t, 10*time.Second, "the good line", func() bool { return n.logs.counters().LinesReceived == 1 })
	d := n.logs.counters().Dropped
	if d["unknown_job"] != 1 || d["stale_token"] != 1 || d["oversized"] != 1 || d["malformed"] != 3 || d["duplicate"] != 1 {
		t.Fatalf("dropped %v", d)
	}
	resp, err := c.JobLogs(context.Background(), &hodeiv1.GetJobLogsRequest{JobId: id})
	if err != nil || len(resp.GetLines()) != 1 || string(resp.GetLines()[0].GetData()) != "good" {
		t.Fatalf("logs %v, %v", resp, err)
	}
	// The same counts in the node's metrics.
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	metric := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "hodei_job_logs_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				key += "/" + lp.GetValue()
			}
			metric[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"hodei_job_logs_lines_received_total":            1,
		"hodei_job_logs_lines_dropped_total/malformed":   3,
		"hodei_job_logs_lines_dropped_total/unknown_job": 1,
		"hodei_job_logs_lines_dropped_total/stale_token": 1,
		"hodei_job_logs_lines_dropped_total/oversized":   1,
		"hodei_job_logs_lines_dropped_total/duplicate":   1,
		"hodei_job_logs_evictions_total/node":            0,
		"hodei_job_logs_jobs":                            1,
	} {
		if got, ok := metric[key]; !ok || got != want {
			t.Errorf("metric %s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	if metric["hodei_job_logs_bytes"] <= 0 {
		t.Errorf("hodei_job_logs_bytes = %v", metric["hodei_job_logs_bytes"])
	}
}

// A worker that moves to another node mid-job leaves the attempt's lines on
// two nodes: a follower on a third node shows them all, in order, as one
// attempt, and the stream ends with the job.
func TestLiveLogsAcrossWorkerReconnect(t *testing.T) {
	tc := startCluster(t, 3, 1)
	// The worker's first node is a follower, so that closing it costs no
	// election; a long TTL keeps the lease through the move (the test is
	// about the lines, not about lease expiry).
	first := followerOf(tc)
	second := followerOf(tc, first)
	ri := 3 - first - second
	seen := make(chan int, 16)
	moved := make(chan struct{})
	w := runLogWorkerOn(t, []string{tc.addrs()[first], tc.addrs()[second]}, 20*time.Second, map[string]client.Handler{
		"move": func(ctx context.Context, j *client.Job) error {
			for i := 1; i <= 10; i++ {
				if i == 6 {
					select {
					case <-moved:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				j.Logf("line %d", i)
				if i <= 5 {
					select {
					case <-seen:
					case <-time.After(15 * time.Second):
						return fmt.Errorf("line %d not seen", i)
					}
				}
			}
			return nil
		},
	})
	reader := newClient(t, tc.addrs()[ri])
	r, err := reader.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "move"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got []string
	var nodes []string
	err = reader.FollowJobLogs(ctx, &hodeiv1.FollowJobLogsRequest{JobId: r.GetJob().GetId()}, func(m *hodeiv1.FollowJobLogsResponse) error {
		for _, l := range m.GetLines() {
			got = append(got, string(l.GetData()))
			nodes = append(nodes, l.GetNodeId())
			if len(got) <= 5 {
				seen <- len(got)
			}
			if len(got) == 5 {
				// The worker's node goes away; the worker reconnects to the other.
				go func() {
					defer close(moved)
					tc.nodes[first].Close()
					for deadline := time.Now().Add(20 * time.Second); w.Stats().Streams < 2 && time.Now().Before(deadline); {
						time.Sleep(10 * time.Millisecond) // polling a condition (no event to wait on)
					}
				}()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 1; i <= 10; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("followed %v", got)
	}
	if nodes[0] != tc.peers[first].ID || nodes[9] != tc.peers[second].ID {
		t.Fatalf("lines held by %v", nodes)
	}
}

// Following attempt 0 moves on to the retry: the first attempt's lines,
// then the second's, each tagged with its attempt; a read of attempt 1
// afterwards still shows the first attempt's lines.
func TestLiveLogsFollowMovesToRetry(t *testing.T) {
	tc := startCluster(t, 3, 1)
	wi := followerOf(tc)
	ri := followerOf(tc, wi)
	gate := make(chan struct{})
	runLogWorker(t, tc.addrs()[wi], map[string]client.Handler{
		"flaky": func(ctx context.Context, j *client.Job) error {
			j.Logf("try %d", j.Attempt())
			if j.Attempt() == 1 {
				select { // fail only once the follower is following
				case <-gate:
				case <-ctx.Done():
				}
				return fmt.Errorf("first try fails")
			}
			return nil
		},
	})
	reader := newClient(t, tc.addrs()[ri])
	r, err := reader.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "flaky", MaxAttempts: 2, BackoffBaseMs: 1})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetJob().GetId()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got []string
	err = reader.FollowJobLogs(ctx, &hodeiv1.FollowJobLogsRequest{JobId: id}, func(m *hodeiv1.FollowJobLogsResponse) error {
		for _, l := range m.GetLines() {
			got = append(got, fmt.Sprintf("%d:%s", l.GetAttempt(), l.GetData()))
			if len(got) == 1 {
				close(gate)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "1:try 1,2:try 2" {
		t.Fatalf("followed %v", got)
	}
	resp, err := reader.JobLogs(ctx, &hodeiv1.GetJobLogsRequest{JobId: id, Attempt: 1})
	if err != nil || len(resp.GetLines()) != 1 || string(resp.GetLines()[0].GetData()) != "try 1" || resp.GetAttempt() != 1 {
		t.Fatalf("attempt 1: %v, %v", resp, err)
	}
}

// A follow whose node goes away resumes on the client's next node after
// the last line seen: no line repeated, none missing.
func TestLiveLogsFollowResumesOnAnotherNode(t *testing.T) {
	tc := startCluster(t, 3, 1)
	wi := followerOf(tc)
	r1 := followerOf(tc, wi)
	r2 := 3 - wi - r1
	seen := make(chan int, 16)
	runLogWorkerOn(t, []string{tc.addrs()[wi]}, 20*time.Second, map[string]client.Handler{
		"steady": func(ctx context.Context, j *client.Job) error {
			for i := 1; i <= 10; i++ {
				j.Logf("line %d", i)
				select {
				case <-seen:
				case <-time.After(20 * time.Second):
					return fmt.Errorf("line %d not seen", i)
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		},
	})
	reader := newClient(t, tc.addrs()[r1], tc.addrs()[r2])
	r, err := reader.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "steady", MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got []string
	closed := make(chan struct{})
	err = reader.FollowJobLogs(ctx, &hodeiv1.FollowJobLogsRequest{JobId: r.GetJob().GetId()}, func(m *hodeiv1.FollowJobLogsResponse) error {
		for _, l := range m.GetLines() {
			got = append(got, string(l.GetData()))
			if len(got) == 5 {
				go func() { defer close(closed); tc.nodes[r1].Close() }() // the reader's node goes away
				<-closed
			}
			seen <- len(got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 1; i <= 10; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("followed %v", got)
	}
}
