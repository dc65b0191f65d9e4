package client

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// routeNode is a fake node for routing tests. Its Status reports the shard
// map it is given; it records every request it serves; SubmitJobs rejects
// the whole batch if one spec is invalid (no command), as the server does,
// and dedups by request id.
type routeNode struct {
	hodeiv1.UnimplementedJobServiceServer
	hodeiv1.UnimplementedAdminServiceServer

	name string

	mu          sync.Mutex
	leaders     []string // Status: leader address per shard (nil: no shards)
	statusCalls int
	fail        []error // errors for the next calls of any job RPC, in order
	failAfter   []error // errors for the next SubmitJobs, after committing
	gate        chan struct{}
	arrived     chan struct{} // if set, SubmitJobs sends on it (non-blocking) on arrival
	noIndex     bool          // InvalidArgument of a batch names no spec
	batches     []*hodeiv1.SubmitJobsRequest
	singles     []*hodeiv1.SubmitJobRequest
	gets        []string
	cancels     []string
	seen        map[string]*hodeiv1.SubmitJobsResponse // by request id
	seq         int
}

func (n *routeNode) setLeaders(l ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.leaders = l
}

func (n *routeNode) failNext(errs ...error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fail = append(n.fail, errs...)
}

// nextFail pops the next programmed failure. n.mu is held.
func (n *routeNode) nextFail() error {
	if len(n.fail) == 0 {
		return nil
	}
	err := n.fail[0]
	n.fail = n.fail[1:]
	return err
}

func (n *routeNode) Status(context.Context, *hodeiv1.StatusRequest) (*hodeiv1.StatusResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.statusCalls++
	st := &hodeiv1.StatusResponse{NodeId: n.name}
	for i, l := range n.leaders {
		st.Shards = append(st.Shards, &hodeiv1.ShardStatus{Shard: uint32(i), LeaderAddress: l})
	}
	return st, nil
}

func validSpec(sp *hodeiv1.JobSpec) error {
	if len(sp.GetCommand()) == 0 {
		return errors.New("command is required")
	}
	return nil
}

func (n *routeNode) SubmitJobs(ctx context.Context, req *hodeiv1.SubmitJobsRequest) (*hodeiv1.SubmitJobsResponse, error) {
	n.mu.Lock()
	gate, arrived := n.gate, n.arrived
	n.mu.Unlock()
	if arrived != nil {
		select {
		case arrived <- struct{}{}:
		default:
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.batches = append(n.batches, req)
	if err := n.nextFail(); err != nil {
		return nil, err
	}
	if r, ok := n.seen[req.GetRequestId()]; ok {
		return r, nil
	}
	for i, sp := range req.GetSpecs() {
		if err := validSpec(sp); err != nil {
			switch {
			case len(req.GetSpecs()) == 1:
				return nil, status.Errorf(codes.InvalidArgument, "%v", err)
			case n.noIndex:
				return nil, status.Errorf(codes.InvalidArgument, "a spec: %v", err)
			}
			return nil, status.Errorf(codes.InvalidArgument, "spec %d: %v", i, err)
		}
	}
	out := &hodeiv1.SubmitJobsResponse{}
	for _, sp := range req.GetSpecs() {
		n.seq++
		out.Results = append(out.Results, &hodeiv1.SubmitJobResponse{Job: &hodeiv1.Job{Id: fmt.Sprintf("%s:%d", n.name, n.seq), Spec: sp}})
	}
	if n.seen == nil {
		n.seen = map[string]*hodeiv1.SubmitJobsResponse{}
	}
	n.seen[req.GetRequestId()] = out
	if len(n.failAfter) > 0 {
		err := n.failAfter[0]
		n.failAfter = n.failAfter[1:]
		return nil, err
	}
	return out, nil
}

func (n *routeNode) SubmitJob(_ context.Context, req *hodeiv1.SubmitJobRequest) (*hodeiv1.SubmitJobResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.singles = append(n.singles, req)
	if err := n.nextFail(); err != nil {
		return nil, err
	}
	return &hodeiv1.SubmitJobResponse{Job: &hodeiv1.Job{Id: n.name, Spec: req.GetSpec()}}, nil
}

func (n *routeNode) GetJob(_ context.Context, req *hodeiv1.GetJobRequest) (*hodeiv1.GetJobResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gets = append(n.gets, req.GetId())
	if err := n.nextFail(); err != nil {
		return nil, err
	}
	return &hodeiv1.GetJobResponse{Job: &hodeiv1.Job{Id: req.GetId(), LeaseWorker: n.name}}, nil
}

func (n *routeNode) CancelJob(_ context.Context, req *hodeiv1.CancelJobRequest) (*hodeiv1.CancelJobResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cancels = append(n.cancels, req.GetId())
	if err := n.nextFail(); err != nil {
		return nil, err
	}
	return &hodeiv1.CancelJobResponse{Job: &hodeiv1.Job{Id: req.GetId(), LeaseWorker: n.name}}, nil
}

// seenBatches returns copies of the SubmitJobs requests served.
func (n *routeNode) seenBatches() []*hodeiv1.SubmitJobsRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*hodeiv1.SubmitJobsRequest(nil), n.batches...)
}

func (n *routeNode) seenSingles() []*hodeiv1.SubmitJobRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*hodeiv1.SubmitJobRequest(nil), n.singles...)
}

func (n *routeNode) seenStatus() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.statusCalls
}

func serveRoute(t *testing.T, n *routeNode) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	hodeiv1.RegisterJobServiceServer(s, n)
	hodeiv1.RegisterAdminServiceServer(s, n)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(lis) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return lis.Addr().String()
}

// eventually waits for cond, failing the test after a deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling, not synchronisation
	}
}

// tenantOf returns a tenant name whose shard (of shards) is sh.
func tenantOf(t *testing.T, sh, shards int) string {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if name := fmt.Sprintf("t%d", i); shardOf(name, shards) == sh {
			return name
		}
	}
	t.Fatalf("no tenant for shard %d of %d", sh, shards)
	return ""
}

func cmdSpec(tenant string) *hodeiv1.JobSpec {
	return &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"true"}}
}

// twoShards starts a cluster of two fake nodes, each the leader of one of
// two shards, both answering Status with that map.
func twoShards(t *testing.T) (l0, l1 *routeNode, a0, a1 string) {
	l0, l1 = &routeNode{name: "l0"}, &routeNode{name: "l1"}
	a0, a1 = serveRoute(t, l0), serveRoute(t, l1)
	l0.setLeaders(a0, a1)
	l1.setLeaders(a0, a1)
	return l0, l1, a0, a1
}

// TestShardOfMatchesServer pins values computed by the server's
// cluster.ShardOf, so that the client's copy cannot drift silently.
func TestShardOfMatchesServer(t *testing.T) {
	cases := []struct {
		tenant     string
		s1, s3, s8 int
	}{
		{"", 0, 0, 6},
		{"default", 0, 0, 6},
		{"a", 0, 1, 4},
		{"acme", 0, 1, 7},
		{"tenant-1", 0, 2, 3},
		{"tenant-2", 0, 1, 6},
		{"tenant-3", 0, 0, 1},
		{"t3", 0, 0, 0},
		{"t4", 0, 2, 5},
		{"t5", 0, 0, 2},
		{"t6", 0, 1, 7},
		{"Ünïcode", 0, 0, 3},
	}
	for _, c := range cases {
		if got := [3]int{shardOf(c.tenant, 1), shardOf(c.tenant, 3), shardOf(c.tenant, 8)}; got != [3]int{c.s1, c.s3, c.s8} {
			t.Errorf("shardOf(%q) = %v, want %v", c.tenant, got, [3]int{c.s1, c.s3, c.s8})
		}
	}
	// And it is FNV-1a 32 of the name.
	for _, name := range []string{"x", "default", "a long tenant name with spaces", "\x00\xff"} {
		h := fnv.New32a()
		h.Write([]byte(name))
		if got, want := shardOf(name, 1<<20), int(h.Sum32()%(1<<20)); got != want {
			t.Errorf("shardOf(%q) = %d, fnv says %d", name, got, want)
		}
	}
}

func TestJobIDShard(t *testing.T) {
	for id, want := range map[string]int{"0-1": 0, "3-17": 3, "12-9": 12} {
		if sh, ok := jobIDShard(id); !ok || sh != want {
			t.Errorf("jobIDShard(%q) = %d %v", id, sh, ok)
		}
	}
	for _, id := range []string{"", "x", "1", "1-", "-1", "01-2", "1-02", "1-0", "a-1", "1-b", "99999999999-1"} {
		if _, ok := jobIDShard(id); ok {
			t.Errorf("jobIDShard(%q) accepted", id)
		}
	}
}

func TestLeaderHint(t *testing.T) {
	err := status.Error(codes.Unavailable, "node n2 is not the leader of shard 3 (leader: 10.0.0.1:7000)")
	if sh, addr, ok := leaderHint(err); !ok || sh != 3 || addr != "10.0.0.1:7000" {
		t.Fatalf("hint %d %q %v", sh, addr, ok)
	}
	for _, e := range []error{
		nil,
		errors.New("node n2 is not the leader of shard 3 (leader: a:1)"),
		status.Error(codes.Internal, "node n2 is not the leader of shard 3 (leader: a:1)"),
		status.Error(codes.Unavailable, "node n2 is not the leader of shard 3"),
		status.Error(codes.Unavailable, "node n2 is not the leader of shard x (leader: a:1)"),
		status.Error(codes.Unavailable, "node n2 is not the leader of shard 3 (leader: )"),
	} {
		if _, _, ok := leaderHint(e); ok {
			t.Errorf("hint parsed from %v", e)
		}
	}
}

func TestSpecIndex(t *testing.T) {
	for msg, want := range map[string]int{"spec 0: x": 0, "spec 12: y": 12, "spec 3 is empty": 3} {
		if k, _, ok := specIndex(msg); !ok || k != want {
			t.Errorf("specIndex(%q) = %d %v", msg, k, ok)
		}
	}
	for _, msg := range []string{"", "spec", "spec x: y", "spec 1", "spec 01: x", "spec 1x", "command is required"} {
		if _, _, ok := specIndex(msg); ok {
			t.Errorf("specIndex(%q) accepted", msg)
		}
	}
}

func TestPlanBatch(t *testing.T) {
	specs := make([]*hodeiv1.JobSpec, 25001)
	for i := range specs {
		specs[i] = &hodeiv1.JobSpec{Tenant: fmt.Sprintf("t%d", i%3)}
	}
	// Unknown map: pieces in request order.
	parts := planBatch(specs, 0, "r")
	if len(parts) != 3 || parts[0].rid != "r.0" || parts[2].rid != "r.2" || len(parts[2].idx) != 5001 || parts[1].idx[0] != 10000 {
		t.Fatalf("unrouted plan %+v", summary(parts))
	}
	// One shard, one piece: the call's id.
	if p := planBatch(specs[:5], 1, "r"); len(p) != 1 || p[0].rid != "r" || p[0].shard != 0 || len(p[0].idx) != 5 {
		t.Fatalf("one-shard plan %+v", summary(p))
	}
	// Several shards: "<id>/<shard>", then ".<piece>".
	parts = planBatch(specs, 2, "r")
	seen := map[int]bool{}
	ids := map[string]bool{}
	for _, p := range parts {
		if ids[p.rid] {
			t.Fatalf("duplicate id %s", p.rid)
		}
		ids[p.rid] = true
		if !strings.HasPrefix(p.rid, fmt.Sprintf("r/%d", p.shard)) || len(p.idx) > MaxSubmitBatch {
			t.Fatalf("part %s shard %d with %d specs", p.rid, p.shard, len(p.idx))
		}
		for _, k := range p.idx {
			if seen[k] || shardOf(specs[k].GetTenant(), 2) != p.shard {
				t.Fatalf("spec %d misplaced", k)
			}
			seen[k] = true
		}
	}
	if len(seen) != len(specs) {
		t.Fatalf("%d of %d specs planned", len(seen), len(specs))
	}
	// Big specs: pieces bounded by bytes.
	big := make([]*hodeiv1.JobSpec, 5)
	for i := range big {
		big[i] = &hodeiv1.JobSpec{Payload: make([]byte, 6<<20)}
	}
	if p := planBatch(big, 0, "r"); len(p) != 3 || len(p[0].idx) != 2 || len(p[2].idx) != 1 {
		t.Fatalf("byte-bounded plan %+v", summary(p))
	}
}

func summary(parts []batchPart) []string {
	var out []string
	for _, p := range parts {
		out = append(out, fmt.Sprintf("%s:%d:%d", p.rid, p.shard, len(p.idx)))
	}
	return out
}

func TestRoutingSendsPartsToShardLeaders(t *testing.T) {
	l0, l1, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	ctx := ctxT(t)
	t0, t1 := tenantOf(t, 0, 2), tenantOf(t, 1, 2)

	specs := []*hodeiv1.JobSpec{cmdSpec(t1), cmdSpec(t0), cmdSpec(t1), cmdSpec(t0), cmdSpec(t0)}
	res, err := c.SubmitBatch(ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		wantNode := map[string]string{t0: "l0", t1: "l1"}[specs[i].GetTenant()]
		if r.GetJob().GetSpec().GetTenant() != specs[i].GetTenant() || !strings.HasPrefix(r.GetJob().GetId(), wantNode+":") {
			t.Fatalf("result %d: %v", i, r)
		}
	}
	b0, b1 := l0.seenBatches(), l1.seenBatches()
	if len(b0) != 1 || len(b1) != 1 || len(b0[0].GetSpecs()) != 3 || len(b1[0].GetSpecs()) != 2 {
		t.Fatalf("batches l0=%v l1=%v", b0, b1)
	}
	id0, id1 := b0[0].GetRequestId(), b1[0].GetRequestId()
	base, ok := strings.CutSuffix(id0, "/0")
	if !ok || id1 != base+"/1" || base == "" {
		t.Fatalf("part ids %q %q", id0, id1)
	}

	// A one-shard batch keeps the call's id.
	if _, err := c.SubmitBatch(ctx, []*hodeiv1.JobSpec{cmdSpec(t1), cmdSpec(t1)}); err != nil {
		t.Fatal(err)
	}
	if b1 = l1.seenBatches(); len(b1) != 2 || strings.Contains(b1[1].GetRequestId(), "/") {
		t.Fatalf("one-shard batch %v", b1)
	}

	// Submit, Get, Cancel go to the leader.
	if r, err := c.Submit(ctx, cmdSpec(t1)); err != nil || r.GetJob().GetId() != "l1" {
		t.Fatalf("submit %v %v", r, err)
	}
	if j, err := c.Get(ctx, "1-5"); err != nil || j.GetLeaseWorker() != "l1" {
		t.Fatalf("get %v %v", j, err)
	}
	if j, err := c.Cancel(ctx, "0-5", "r"); err != nil || j.GetLeaseWorker() != "l0" {
		t.Fatalf("cancel %v %v", j, err)
	}
	// A stale read, and an id of no known shard, go to the current node.
	if j, err := c.Get(ctx, "1-5", Stale()); err != nil || j.GetLeaseWorker() != "l0" {
		t.Fatalf("stale get %v %v", j, err)
	}
	if j, err := c.Get(ctx, "7-5"); err != nil || j.GetLeaseWorker() != "l0" {
		t.Fatalf("get of shard 7 %v %v", j, err)
	}
	// The map was loaded once, and not reloaded by successful calls.
	if n := l0.seenStatus() + l1.seenStatus(); n != 1 {
		t.Fatalf("%d Status calls", n)
	}
}

func TestRouteAnySendsEverythingToCurrentNode(t *testing.T) {
	l0, l1, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}, Routing: RouteAny})
	ctx := ctxT(t)
	t1 := tenantOf(t, 1, 2)
	if _, err := c.SubmitBatch(ctx, []*hodeiv1.JobSpec{cmdSpec(t1), cmdSpec(tenantOf(t, 0, 2))}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Submit(ctx, cmdSpec(t1)); err != nil || r.GetJob().GetId() != "l0" {
		t.Fatalf("submit %v %v", r, err)
	}
	if len(l1.seenBatches())+len(l1.seenSingles()) != 0 || l0.seenStatus()+l1.seenStatus() != 0 {
		t.Fatal("RouteAny routed")
	}
	if b := l0.seenBatches(); len(b) != 1 || strings.Contains(b[0].GetRequestId(), "/") {
		t.Fatalf("batch %v", b)
	}
	if _, err := New(Config{Addrs: []string{a0}, Routing: 7}); err == nil {
		t.Fatal("unknown Routing accepted")
	}
	if _, err := New(Config{Addrs: []string{a0}, RefreshInterval: -1}); err == nil {
		t.Fatal("negative RefreshInterval accepted")
	}
}

func TestRoutingFallsBackWhenLeaderDown(t *testing.T) {
	entry := &routeNode{name: "entry"}
	l1 := &routeNode{name: "l1"}
	ae, a1, dead := serveRoute(t, entry), serveRoute(t, l1), deadAddr(t)
	entry.setLeaders(dead, a1)
	c := newClient(t, Config{Addrs: []string{ae}, RefreshInterval: time.Hour})
	ctx := ctxT(t)
	t0, t1 := tenantOf(t, 0, 2), tenantOf(t, 1, 2)

	res, err := c.SubmitBatch(ctx, []*hodeiv1.JobSpec{cmdSpec(t0), cmdSpec(t1)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res[0].GetJob().GetId(), "entry:") || !strings.HasPrefix(res[1].GetJob().GetId(), "l1:") {
		t.Fatalf("results %v", res)
	}
	be, b1 := entry.seenBatches(), l1.seenBatches()
	if len(be) != 1 || len(b1) != 1 || !strings.HasSuffix(be[0].GetRequestId(), "/0") ||
		strings.TrimSuffix(be[0].GetRequestId(), "/0") != strings.TrimSuffix(b1[0].GetRequestId(), "/1") {
		t.Fatalf("entry %v l1 %v", be, b1)
	}
	// The dead leader is forgotten: shard 0 goes to the current node at once.
	if c.leaderFor(0) != "" || c.leaderFor(1) != a1 {
		t.Fatalf("leaders %q %q", c.leaderFor(0), c.leaderFor(1))
	}
	if r, err := c.Submit(ctx, cmdSpec(t0)); err != nil || r.GetJob().GetId() != "entry" {
		t.Fatalf("submit %v %v", r, err)
	}
}

func TestRoutingRefreshAfterNotLeader(t *testing.T) {
	l0, l1, a0, a1 := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}, RefreshInterval: 10 * time.Millisecond})
	ctx := ctxT(t)
	t0 := tenantOf(t, 0, 2)
	if _, err := c.Get(ctx, "0-1"); err != nil { // loads the map
		t.Fatal(err)
	}
	if c.leaderFor(0) != a0 {
		t.Fatalf("leader of 0: %q", c.leaderFor(0))
	}
	// Shard 0's leadership moves to l1; l0 answers one call "not the
	// leader" without a hint. The retry goes to the current node (l0, now
	// a forwarder) or, if the refresh was quicker, to l1: with the same id.
	l0.setLeaders(a1, a1)
	l1.setLeaders(a1, a1)
	l0.failNext(status.Error(codes.Unavailable, "node l0 is not the leader of shard 0"))
	if _, err := c.Submit(ctx, cmdSpec(t0)); err != nil {
		t.Fatal(err)
	}
	s := append(l0.seenSingles(), l1.seenSingles()...)
	if len(s) != 2 || s[0].GetRequestId() != s[1].GetRequestId() {
		t.Fatalf("attempts %v", s)
	}
	eventually(t, "the refreshed map", func() bool { return c.leaderFor(0) == a1 })
	n0, n1 := len(l0.seenSingles()), len(l1.seenSingles())
	if _, err := c.Submit(ctx, cmdSpec(t0)); err != nil {
		t.Fatal(err)
	}
	if len(l0.seenSingles()) != n0 || len(l1.seenSingles()) != n1+1 {
		t.Fatal("the submit after the refresh did not go to the new leader")
	}
	if l0.seenStatus()+l1.seenStatus() < 2 {
		t.Fatal("no refresh")
	}
}

func TestRoutingUsesLeaderHint(t *testing.T) {
	l0, l1, a0, a1 := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}, RefreshInterval: time.Hour})
	ctx := ctxT(t)
	t0 := tenantOf(t, 0, 2)
	if _, err := c.Get(ctx, "0-1"); err != nil {
		t.Fatal(err)
	}
	l0.failNext(status.Errorf(codes.Unavailable, "node l0 is not the leader of shard 0 (leader: %s)", a1))
	if _, err := c.SubmitBatch(ctx, []*hodeiv1.JobSpec{cmdSpec(t0)}); err != nil {
		t.Fatal(err)
	}
	// The retry went straight to the hinted leader with the same id.
	b0, b1 := l0.seenBatches(), l1.seenBatches()
	if len(b0) != 1 || len(b1) != 1 || b0[0].GetRequestId() != b1[0].GetRequestId() {
		t.Fatalf("l0 %v l1 %v", b0, b1)
	}
	if c.leaderFor(0) != a1 {
		t.Fatalf("leader of 0: %q", c.leaderFor(0))
	}
}

func TestRoutingPartRetriesReuseTheirIDs(t *testing.T) {
	l0, l1, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}, RefreshInterval: time.Hour})
	ctx := ctxT(t)
	t0, t1 := tenantOf(t, 0, 2), tenantOf(t, 1, 2)
	// Shard 1's leader is overloaded twice: its part is retried on it.
	l1.failNext(status.Error(codes.ResourceExhausted, "busy"), status.Error(codes.ResourceExhausted, "busy"))
	specs := []*hodeiv1.JobSpec{cmdSpec(t0), cmdSpec(t1), cmdSpec(t0)}
	res, err := c.SubmitBatch(ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	b0, b1 := l0.seenBatches(), l1.seenBatches()
	if len(b0) != 1 || len(b1) != 3 {
		t.Fatalf("l0 %d l1 %d calls", len(b0), len(b1))
	}
	for _, b := range b1 {
		if b.GetRequestId() != b1[0].GetRequestId() {
			t.Fatalf("part ids changed on retry: %v", b1)
		}
	}
	if b0[0].GetRequestId() == b1[0].GetRequestId() {
		t.Fatal("two parts share an id")
	}
	if len(res) != 3 || res[1].GetJob().GetSpec().GetTenant() != t1 {
		t.Fatalf("results %v", res)
	}
	if n := len(l0.seenBatches()); n != 1 {
		t.Fatalf("l0 %d calls", n)
	}
	l0.mu.Lock()
	l0.failAfter = []error{status.Error(codes.Unavailable, "lost the answer")}
	l0.mu.Unlock()
	res, err = c.SubmitBatch(ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	b0 = l0.seenBatches()[1:]
	if len(b0) != 2 || b0[0].GetRequestId() != b0[1].GetRequestId() {
		t.Fatalf("l0 retried with %v", b0)
	}
	l0.mu.Lock()
	created := l0.seq
	l0.mu.Unlock()
	// 2 jobs from the first batch, 2 from the second: the retry was deduped.
	if created != 4 || res[0].GetJob().GetId() != "l0:3" || res[2].GetJob().GetId() != "l0:4" {
		t.Fatalf("created %d, results %v", created, res)
	}
}

func TestSubmitBatchPartialFailure(t *testing.T) {
	_, _, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	ctx := ctxT(t)
	t0, t1 := tenantOf(t, 0, 2), tenantOf(t, 1, 2)
	bad := &hodeiv1.JobSpec{Tenant: t1}
	specs := []*hodeiv1.JobSpec{cmdSpec(t0), cmdSpec(t1), cmdSpec(t0), bad}
	res, err := c.SubmitBatch(ctx, specs)
	var be *BatchError
	if res != nil || !errors.As(err, &be) {
		t.Fatalf("res %v err %v", res, err)
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("code of %v", err)
	}
	if be.Results[0] == nil || be.Results[2] == nil || be.Results[1] != nil || be.Results[3] != nil {
		t.Fatalf("results %v", be.Results)
	}
	if be.Errs[0] != nil || be.Errs[1] == nil || be.Errs[3] == nil {
		t.Fatalf("errs %v", be.Errs)
	}
	// The index names the spec in the whole batch.
	if st := status.Convert(be.Errs[3]); st.Message() != "spec 3: command is required" {
		t.Fatalf("message %q", st.Message())
	}

	// One part: the server's error, unchanged.
	_, err = c.SubmitBatch(ctx, []*hodeiv1.JobSpec{cmdSpec(t1), bad})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != "spec 1: command is required" || errors.As(err, &be) {
		t.Fatalf("one-part error %v", err)
	}
}

func TestSubmitBatchChunksLargeBatches(t *testing.T) {
	l0, l1, a0, _ := twoShards(t)
	c := newClient(t, Config{Addrs: []string{a0}})
	t0, t1 := tenantOf(t, 0, 2), tenantOf(t, 1, 2)
	specs := make([]*hodeiv1.JobSpec, 2*12000)
	for i := range specs {
		specs[i] = cmdSpec([]string{t0, t1}[i%2])
		specs[i].IdempotencyKey = fmt.Sprint(i)
	}
	res, err := c.SubmitBatch(ctxT(t), specs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.GetJob().GetSpec().GetIdempotencyKey() != fmt.Sprint(i) {
			t.Fatalf("result %d is %v", i, r.GetJob().GetSpec())
		}
	}
	ids := map[string]int{}
	for _, b := range append(l0.seenBatches(), l1.seenBatches()...) {
		if len(b.GetSpecs()) > MaxSubmitBatch {
			t.Fatalf("%d specs in one call", len(b.GetSpecs()))
		}
		i := strings.Index(b.GetRequestId(), "/")
		ids[b.GetRequestId()[i:]] = len(b.GetSpecs())
	}
	want := map[string]int{"/0.0": 10000, "/0.1": 2000, "/1.0": 10000, "/1.1": 2000}
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("parts %v, want %v", ids, want)
	}
}

func TestClosedClientStopsRefresh(t *testing.T) {
	_, _, a0, _ := twoShards(t)
	c, err := New(Config{Addrs: []string{a0}, RefreshInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctxT(t), "0-1"); err != nil {
		t.Fatal(err)
	}
	c.leaderFailed(0, c.leaderFor(0)) // a refresh now waits an hour
	_ = c.Close()                     // and Close ends it (goleak checks)
	if _, err := c.Submit(ctxT(t), cmdSpec("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("err %v", err)
	}
}

func TestBatchErrorStatusPrefersUnknownOutcome(t *testing.T) {
	inv := status.Error(codes.InvalidArgument, "spec 0: bad")
	unav := status.Error(codes.Unavailable, "down")
	be := &BatchError{Errs: []error{inv, nil, unav}, parts: []error{inv, unav}}
	if status.Code(be) != codes.Unavailable || !errors.Is(be, unav) {
		t.Fatalf("code %v", status.Code(be))
	}
	be = &BatchError{Errs: []error{nil, inv}, parts: []error{inv}}
	if status.Code(be) != codes.InvalidArgument || !strings.Contains(be.Error(), "1 of 2 specs failed") {
		t.Fatalf("code %v: %v", status.Code(be), be)
	}
	be = &BatchError{Errs: []error{ErrClosed}, parts: []error{ErrClosed}}
	if status.Code(be) != codes.Unknown || !errors.Is(be, ErrClosed) {
		t.Fatalf("code %v", status.Code(be))
	}
}
