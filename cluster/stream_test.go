package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// rawStream is a worker stream driven by hand, message by message.
type rawStream struct {
	t      testing.TB
	cc     *grpc.ClientConn
	s      grpc.BidiStreamingClient[hodeiv1.WorkerMessage, hodeiv1.ServerMessage]
	cancel context.CancelFunc
	msgs   chan *hodeiv1.ServerMessage
	err    chan error
}

func openStream(t testing.TB, addr string, hello *hodeiv1.WorkerHello) *rawStream {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := hodeiv1.NewWorkerServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs := &rawStream{t: t, cc: cc, s: s, cancel: cancel, msgs: make(chan *hodeiv1.ServerMessage, 1024), err: make(chan error, 1)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				rs.err <- err
				close(rs.msgs)
				return
			}
			rs.msgs <- m
		}
	}()
	t.Cleanup(rs.close)
	if hello != nil {
		rs.send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Hello{Hello: hello}})
	}
	return rs
}

func (rs *rawStream) close() {
	rs.cancel()
	for range rs.msgs {
	}
	rs.cc.Close()
}

func (rs *rawStream) send(m *hodeiv1.WorkerMessage) {
	rs.t.Helper()
	if err := rs.s.Send(m); err != nil {
		rs.t.Fatalf("send: %v", err)
	}
}

// next returns the next server message, failing after d.
func (rs *rawStream) next(d time.Duration) *hodeiv1.ServerMessage {
	rs.t.Helper()
	select {
	case m, ok := <-rs.msgs:
		if !ok {
			rs.t.Fatalf("stream ended: %v", <-rs.err)
		}
		return m
	case <-time.After(d):
		rs.t.Fatalf("no server message within %v", d)
	}
	return nil
}

// ended waits for the stream to end and returns its error.
func (rs *rawStream) ended(d time.Duration) error {
	rs.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case _, ok := <-rs.msgs:
			if !ok {
				return <-rs.err
			}
		case <-deadline:
			rs.t.Fatalf("stream did not end within %v", d)
		}
	}
}

func complete(jobs ...*hodeiv1.Lease) *hodeiv1.WorkerMessage {
	cs := &hodeiv1.WorkerCompletions{}
	for _, l := range jobs {
		cs.Completions = append(cs.Completions, &hodeiv1.Completion{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true})
	}
	return &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Completions{Completions: cs}}
}

// The worker stream end to end on a real cluster: jobs of many tenants
// (shards led by different nodes) reach one worker connected to a follower,
// never beyond its credit; completions are fenced one by one.
func TestWorkerStreamLeasesAndCompletes(t *testing.T) {
	tc := startCluster(t, 3, 4)
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var specs []*hodeiv1.JobSpec
	for i := 0; i < 40; i++ {
		specs = append(specs, &hodeiv1.JobSpec{Tenant: fmt.Sprintf("t%d", i%8), Kind: "noop", Payload: []byte{byte(i)}})
	}
	if _, err := c.SubmitBatch(ctx, specs); err != nil {
		t.Fatal(err)
	}
	rs := openStream(t, tc.addrs()[followerOf(tc)], &hodeiv1.WorkerHello{WorkerId: "w1", Kinds: []string{"noop"}, Slots: 7})
	if w := rs.next(10 * time.Second).GetWelcome(); w == nil || w.GetTtlMs() <= 0 {
		t.Fatalf("want a welcome first")
	}
	done := 0
	held := 0
	var stale *hodeiv1.Lease
	for done < 40 {
		m := rs.next(20 * time.Second)
		switch {
		case m.GetLeases() != nil:
			ls := m.GetLeases().GetLeases()
			held += len(ls)
			if held > 7 {
				t.Fatalf("%d leases held with 7 slots", held)
			}
			for _, l := range ls {
				if l.GetJob().GetSpec().GetKind() != "noop" || l.GetToken() == 0 {
					t.Fatalf("lease %v", l)
				}
			}
			msg := complete(ls...)
			if stale == nil {
				// One stale completion in the batch is refused alone.
				stale = &hodeiv1.Lease{Job: ls[0].GetJob(), Token: ls[0].GetToken() + 1000}
				msg.GetCompletions().Completions = append([]*hodeiv1.Completion{{JobId: stale.GetJob().GetId(), Token: stale.GetToken(), Success: true}}, msg.GetCompletions().Completions...)
			}
			rs.send(msg)
		case m.GetCompletions() != nil:
			for _, r := range m.GetCompletions().GetResults() {
				if r.GetToken() == stale.GetToken() {
					if r.GetOk() || r.GetCode() != "FAILED_PRECONDITION" {
						t.Fatalf("stale completion: %v", r)
					}
					continue
				}
				if !r.GetOk() || r.GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED {
					t.Fatalf("completion refused: %v", r)
				}
				done++
				held--
				rs.send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{Slots: 1}}})
			}
		}
	}
	res, err := c.List(ctx, &hodeiv1.ListJobsRequest{State: hodeiv1.JobState_JOB_STATE_SUCCEEDED, Limit: 100})
	if err != nil || len(res.GetJobs()) != 40 {
		t.Fatalf("succeeded jobs: %d, %v", len(res.GetJobs()), err)
	}
}

// Bad input on a stream ends that stream with InvalidArgument (or
// AlreadyExists) and leaves the others alone.
func TestWorkerStreamBadInput(t *testing.T) {
	tc := startCluster(t, 3, 2)
	addr := tc.addrs()[0]
	good := openStream(t, addr, &hodeiv1.WorkerHello{WorkerId: "good", Slots: 1})
	good.next(10 * time.Second) // welcome
	for _, tc := range []struct {
		name  string
		hello *hodeiv1.WorkerHello
		then  *hodeiv1.WorkerMessage
		code  codes.Code
	}{
		{"no hello first", nil, &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{Slots: 1}}}, codes.InvalidArgument},
		{"empty worker id", &hodeiv1.WorkerHello{Slots: 1}, nil, codes.InvalidArgument},
		{"negative slots", &hodeiv1.WorkerHello{WorkerId: "a", Slots: -1}, nil, codes.InvalidArgument},
		{"huge slots", &hodeiv1.WorkerHello{WorkerId: "a", Slots: 1 << 30}, nil, codes.InvalidArgument},
		{"bad kind", &hodeiv1.WorkerHello{WorkerId: "a", Kinds: []string{"no spaces"}}, nil, codes.InvalidArgument},
		{"id connected", &hodeiv1.WorkerHello{WorkerId: "good"}, nil, codes.AlreadyExists},
		{"hello twice", &hodeiv1.WorkerHello{WorkerId: "b"}, &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Hello{Hello: &hodeiv1.WorkerHello{WorkerId: "b"}}}, codes.InvalidArgument},
		{"slots overflow", &hodeiv1.WorkerHello{WorkerId: "c", Slots: 10000}, &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{Slots: 1}}}, codes.InvalidArgument},
		{"zero slots", &hodeiv1.WorkerHello{WorkerId: "d"}, &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{}}}, codes.InvalidArgument},
		{"empty completions", &hodeiv1.WorkerHello{WorkerId: "e"}, &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Completions{Completions: &hodeiv1.WorkerCompletions{}}}, codes.InvalidArgument},
		{"empty message", &hodeiv1.WorkerHello{WorkerId: "f"}, &hodeiv1.WorkerMessage{}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := openStream(t, addr, tc.hello)
			if tc.then != nil {
				rs.send(tc.then)
			}
			err := rs.ended(10 * time.Second)
			if status.Code(err) != tc.code {
				t.Fatalf("stream ended with %v, want %v", err, tc.code)
			}
		})
	}
	// The good stream still works: a job reaches it.
	c := newClient(t, tc.addrs()...)
	if _, err := c.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "k"}); err != nil {
		t.Fatal(err)
	}
	for {
		if m := good.next(10 * time.Second); m.GetLeases() != nil {
			break
		}
	}
}
