package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func newSubmitter(t *testing.T, c *Client, cfg SubmitterConfig) *Submitter {
	t.Helper()
	s, err := c.NewSubmitter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// queued returns how many submits wait in the lane of shard.
func (s *Submitter) queued(shard int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.lanes[shard]; l != nil {
		return len(l.queue)
	}
	return 0
}

// gated makes n's SubmitJobs wait until the returned func is called, and
// report their arrival on the returned channel.
func gated(n *routeNode) (arrived chan struct{}, release func()) {
	gate := make(chan struct{})
	arrived = make(chan struct{}, 100)
	n.mu.Lock()
	n.gate, n.arrived = gate, arrived
	n.mu.Unlock()
	var once sync.Once
	return arrived, func() { once.Do(func() { close(gate) }) }
}

type outcome struct {
	resp *hodeiv1.SubmitJobResponse
	err  error
}

// submitAll runs one Submit per spec concurrently and returns a channel
// of the outcomes, by index, once all are done.
func submitAll(ctx context.Context, s *Submitter, specs []*hodeiv1.JobSpec) <-chan []outcome {
	out := make([]outcome, len(specs))
	done := make(chan []outcome, 1)
	var wg sync.WaitGroup
	for i, sp := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.Submit(ctx, sp)
			out[i] = outcome{r, err}
		}()
	}
	go func() { wg.Wait(); done <- out }()
	return done
}

func keyed(tenant string, n int) []*hodeiv1.JobSpec {
	specs := make([]*hodeiv1.JobSpec, n)
	for i := range specs {
		specs[i] = cmdSpec(tenant)
		specs[i].IdempotencyKey = fmt.Sprintf("k%d", i)
	}
	return specs
}

func TestSubmitterConfig(t *testing.T) {
	c := newClient(t, Config{Addrs: []string{"127.0.0.1:1"}, Routing: RouteAny})
	s := newSubmitter(t, c, SubmitterConfig{})
	if s.cfg.MaxBatch != DefaultSubmitterMaxBatch || s.cfg.MaxInFlight != DefaultSubmitterMaxInFlight {
		t.Fatalf("defaults %+v", s.cfg)
	}
	for _, cfg := range []SubmitterConfig{{MaxBatch: -1}, {MaxBatch: MaxSubmitBatch + 1}, {MaxInFlight: -1}} {
		if _, err := c.NewSubmitter(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if _, err := s.Submit(ctxT(t), nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("nil spec: %v", err)
	}
}

func TestSubmitterCoalescesConcurrentSubmits(t *testing.T) {
	l0, _, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	s := newSubmitter(t, c, SubmitterConfig{MaxInFlight: 1})
	arrived, release := gated(l0)
	defer release()
	specs := keyed(tenantOf(t, 0, 2), 200)

	// The first submit goes out alone at once; the others queue behind it.
	first := submitAll(ctxT(t), s, specs[:1])
	<-arrived
	rest := submitAll(ctxT(t), s, specs[1:])
	eventually(t, "199 queued submits", func() bool { return s.queued(0) == 199 })
	release()

	got := append(<-first, <-rest...)
	for i, o := range got {
		if o.err != nil || o.resp.GetJob().GetSpec().GetIdempotencyKey() != specs[i].GetIdempotencyKey() {
			t.Fatalf("caller %d: %v %v", i, o.resp, o.err)
		}
	}
	b := l0.seenBatches()
	if len(b) != 2 || len(b[0].GetSpecs()) != 1 || len(b[1].GetSpecs()) != 199 || b[0].GetRequestId() == b[1].GetRequestId() {
		t.Fatalf("%d calls", len(b))
	}
}

func TestSubmitterBatchesPerShardAndMaxBatch(t *testing.T) {
	l0, l1, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	s := newSubmitter(t, c, SubmitterConfig{MaxInFlight: 1, MaxBatch: 50})
	arr0, rel0 := gated(l0)
	arr1, rel1 := gated(l1)
	defer rel0()
	defer rel1()
	t0, t1 := tenantOf(t, 0, 2), tenantOf(t, 1, 2)

	heads := submitAll(ctxT(t), s, []*hodeiv1.JobSpec{cmdSpec(t0), cmdSpec(t1)})
	<-arr0
	<-arr1
	specs := append(keyed(t0, 120), keyed(t1, 30)...)
	rest := submitAll(ctxT(t), s, specs)
	eventually(t, "queued submits", func() bool { return s.queued(0) == 120 && s.queued(1) == 30 })
	rel0()
	rel1()
	for _, o := range append(<-heads, <-rest...) {
		if o.err != nil {
			t.Fatal(o.err)
		}
	}
	var n0, n1 []int
	for _, b := range l0.seenBatches() {
		n0 = append(n0, len(b.GetSpecs()))
	}
	for _, b := range l1.seenBatches() {
		n1 = append(n1, len(b.GetSpecs()))
		if shardOf(b.GetSpecs()[0].GetTenant(), 2) != 1 {
			t.Fatal("shard 0 spec at shard 1's leader")
		}
	}
	if fmt.Sprint(n0) != "[1 50 50 20]" || fmt.Sprint(n1) != "[1 30]" {
		t.Fatalf("batch sizes l0 %v l1 %v", n0, n1)
	}
}

func TestSubmitterInvalidSpecFailsOnlyItsCaller(t *testing.T) {
	for _, noIndex := range []bool{false, true} {
		t.Run(fmt.Sprintf("noIndex=%v", noIndex), func(t *testing.T) {
			l0, _, a0, _ := twoShards(t)
			l0.mu.Lock()
			l0.noIndex = noIndex
			l0.mu.Unlock()
			c := newClient(t, Config{Addrs: []string{a0}})
			s := newSubmitter(t, c, SubmitterConfig{MaxInFlight: 1})
			arrived, release := gated(l0)
			defer release()
			t0 := tenantOf(t, 0, 2)
			specs := keyed(t0, 40)
			bad := map[int]bool{3: true, 17: true, 18: true, 39: true}
			for i := range bad {
				specs[i].Command = nil
			}
			head := submitAll(ctxT(t), s, []*hodeiv1.JobSpec{cmdSpec(t0)})
			<-arrived
			rest := submitAll(ctxT(t), s, specs)
			eventually(t, "queued submits", func() bool { return s.queued(0) == len(specs) })
			release()
			if o := (<-head)[0]; o.err != nil {
				t.Fatal(o.err)
			}
			for i, o := range <-rest {
				if bad[i] {
					if st := status.Convert(o.err); st.Code() != codes.InvalidArgument || st.Message() != "command is required" {
						t.Fatalf("bad caller %d: %v", i, o.err)
					}
					continue
				}
				if o.err != nil || o.resp.GetJob().GetSpec().GetIdempotencyKey() != specs[i].GetIdempotencyKey() {
					t.Fatalf("good caller %d: %v %v", i, o.resp, o.err)
				}
			}
			// Each good spec was committed exactly once.
			committed := map[string]int{}
			for _, b := range l0.seenBatches() {
				if len(b.GetSpecs()) == 1 && validSpec(b.GetSpecs()[0]) != nil {
					continue
				}
				ok := true
				for _, sp := range b.GetSpecs() {
					ok = ok && validSpec(sp) == nil
				}
				if ok {
					for _, sp := range b.GetSpecs() {
						committed[sp.GetIdempotencyKey()]++
					}
				}
			}
			for i, sp := range specs {
				if n := committed[sp.GetIdempotencyKey()]; !bad[i] && n != 1 {
					t.Fatalf("spec %d committed %d times", i, n)
				}
			}
		})
	}
}

func TestSubmitterOtherErrorsFailTheBatch(t *testing.T) {
	l0, _, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	s := newSubmitter(t, c, SubmitterConfig{})
	l0.failNext(status.Error(codes.FailedPrecondition, "no"))
	if _, err := s.Submit(ctxT(t), cmdSpec(tenantOf(t, 0, 2))); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("err %v", err)
	}
	// A retryable error is retried with the batch's request id.
	l0.failNext(status.Error(codes.ResourceExhausted, "busy"))
	if _, err := s.Submit(ctxT(t), cmdSpec(tenantOf(t, 0, 2))); err != nil {
		t.Fatal(err)
	}
	b := l0.seenBatches()
	if len(b) != 3 || b[1].GetRequestId() != b[2].GetRequestId() || b[0].GetRequestId() == b[1].GetRequestId() {
		t.Fatalf("calls %v", b)
	}
}

func TestSubmitterCloseFlushes(t *testing.T) {
	l0, _, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	s, err := c.NewSubmitter(SubmitterConfig{MaxInFlight: 1})
	if err != nil {
		t.Fatal(err)
	}
	arrived, release := gated(l0)
	defer release()
	specs := keyed(tenantOf(t, 0, 2), 30)
	head := submitAll(ctxT(t), s, specs[:1])
	<-arrived
	rest := submitAll(ctxT(t), s, specs[1:])
	eventually(t, "queued submits", func() bool { return s.queued(0) == 29 })
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// Close refuses new submits at once, and flushes the queued ones.
	eventually(t, "Close to start", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.closed
	})
	if _, err := s.Submit(ctxT(t), cmdSpec("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("submit after Close: %v", err)
	}
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for i, o := range append(<-head, <-rest...) {
		if o.err != nil || o.resp == nil {
			t.Fatalf("caller %d: %v", i, o.err)
		}
	}
	if n := len(l0.seenBatches()); n != 2 {
		t.Fatalf("%d calls", n)
	}
}

func TestSubmitterCallerLeavesWhileQueued(t *testing.T) {
	l0, _, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	s := newSubmitter(t, c, SubmitterConfig{MaxInFlight: 1})
	arrived, release := gated(l0)
	defer release()
	t0 := tenantOf(t, 0, 2)
	head := submitAll(ctxT(t), s, []*hodeiv1.JobSpec{cmdSpec(t0)})
	<-arrived
	ctx, cancel := context.WithCancel(ctxT(t))
	left := submitAll(ctx, s, keyed(t0, 1))
	stay := submitAll(ctxT(t), s, []*hodeiv1.JobSpec{cmdSpec(t0)})
	eventually(t, "queued submits", func() bool { return s.queued(0) == 2 })
	cancel()
	if o := (<-left)[0]; !errors.Is(o.err, context.Canceled) {
		t.Fatalf("left: %v", o.err)
	}
	release()
	if (<-head)[0].err != nil || (<-stay)[0].err != nil {
		t.Fatal("others failed")
	}
	for _, b := range l0.seenBatches() {
		for _, sp := range b.GetSpecs() {
			if sp.GetIdempotencyKey() != "" {
				t.Fatal("the abandoned spec was sent")
			}
		}
	}
}

func TestSubmitterUnknownMapGoesToCurrentNode(t *testing.T) {
	n := &routeNode{name: "n"} // no shards in its Status
	c := newClient(t, Config{Addrs: []string{serveRoute(t, n)}})
	s := newSubmitter(t, c, SubmitterConfig{})
	r, err := s.Submit(ctxT(t), cmdSpec("a"))
	if err != nil || !strings.HasPrefix(r.GetJob().GetId(), "n:") {
		t.Fatalf("%v %v", r, err)
	}
}

func TestSubmitterAfterClientClose(t *testing.T) {
	_, _, a0, _ := twoShards(t)
	c, err := New(Config{Addrs: []string{a0}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSubmitter(SubmitterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if _, err := s.Submit(ctxT(t), cmdSpec("a")); !errors.Is(err, ErrClosed) {
		t.Fatalf("err %v", err)
	}
	_ = s.Close()
}
