package scheduler

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fsmProposer applies commands straight to a real FSM as Raft would deliver
// them (one encoded entry per command, term 1), stamping the test clock
// like the leader's batcher does.
type fsmProposer struct {
	mu    sync.Mutex
	f     *fsm.FSM
	clock *clock
	index uint64
	// version of the entries proposed; 0 is fsm.EntryVersion.
	version uint32

	checkpoints int
}

func (p *fsmProposer) Propose(_ context.Context, cmd *internalpb.Command) (*internalpb.CommandResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.index++
	cmds := []*internalpb.Command{cmd}
	v := p.version
	if v == 0 {
		v = fsm.EntryVersionFor(cmds)
	}
	data, err := proto.Marshal(&internalpb.Entry{Version: v, NowMs: p.clock.Now().UnixMilli(), Commands: cmds})
	if err != nil {
		return nil, err
	}
	res := p.f.Apply(&raft.Log{Index: p.index, Term: 1, Type: raft.LogCommand, Data: data}).([]*internalpb.CommandResult)
	p.count(cmd)
	return res[0], nil
}

func (p *fsmProposer) count(cmd *internalpb.Command) {
	if cmd.GetCheckpoint() != nil {
		p.checkpoints++
	}
}

func (p *fsmProposer) checkpointCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checkpoints
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func setup(t *testing.T) (*fsm.FSM, *fsmProposer, *clock) {
	f, err := fsm.New(fsm.DefaultConfig(), fsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{now: time.UnixMilli(1_700_000_000_000)}
	return f, &fsmProposer{f: f, clock: c}, c
}

func submit(t *testing.T, p *fsmProposer, spec *hodeiv1.JobSpec) string {
	res, _ := p.Propose(context.Background(), &internalpb.Command{Kind: &internalpb.Command_Submit{Submit: &internalpb.SubmitJobs{Specs: []*hodeiv1.JobSpec{spec}}}})
	if res.GetCode() != internalpb.Code_CODE_OK {
		t.Fatalf("submit: %v", res)
	}
	return res.GetSubmitted()[0].GetJob().GetId()
}

func TestLeaseExpiresOnlyAfterGrace(t *testing.T) {
	f, p, c := setup(t)
	id := submit(t, p, &hodeiv1.JobSpec{Command: []string{"true"}, MaxAttempts: 2})
	res, _ := p.Propose(context.Background(), &internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: "w", Capacity: 1, TtlMs: 1000}}})
	if len(res.GetLeases()) != 1 {
		t.Fatalf("lease: %v", res)
	}
	var expired, rounds int
	var mu sync.Mutex
	tm := Start(Config{Grace: 10 * time.Second, Retention: time.Hour, Tick: time.Millisecond, Now: c.Now,
		OnExpire: func(n int) { mu.Lock(); expired += n; mu.Unlock() },
		OnRound:  func() { mu.Lock(); rounds++; mu.Unlock() }}, p, f)
	defer tm.Stop()

	// The lease is past its TTL but the new leader is within its grace period.
	c.Advance(5 * time.Second)
	mu.Lock()
	seen := rounds
	mu.Unlock()
	waitFor(t, "timer rounds after the clock moved", func() bool { mu.Lock(); defer mu.Unlock(); return rounds >= seen+3 })
	if j, _ := f.GetJob(id); j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING {
		t.Fatalf("lease expired during the grace period: %v", j.GetState())
	}
	// After the grace period the expiry is proposed: the attempt fails and
	// the job is retried after its backoff.
	c.Advance(6 * time.Second)
	waitFor(t, "lease expiry", func() bool {
		j, _ := f.GetJob(id)
		return j.GetState() == hodeiv1.JobState_JOB_STATE_PENDING
	})
	mu.Lock()
	if expired != 1 {
		t.Fatalf("expired = %d", expired)
	}
	mu.Unlock()
	j, _ := f.GetJob(id)
	if j.GetLastResult().GetError() == "" || j.GetReadyAtMs() <= c.Now().UnixMilli() {
		t.Fatalf("retry not delayed by backoff: %v", j)
	}
	// The backoff passes: the timers promote the job so it can be leased.
	c.Advance(2 * time.Second)
	waitFor(t, "promotion", func() bool { return f.ReadyCount() == 1 })
}

func TestDelayedJobPromotedWhenDue(t *testing.T) {
	f, p, c := setup(t)
	submit(t, p, &hodeiv1.JobSpec{Command: []string{"true"}, DelayMs: 3000})
	tm := Start(Config{Grace: time.Second, Retention: time.Hour, Tick: time.Millisecond, Now: c.Now}, p, f)
	defer tm.Stop()
	tm.Poke()
	if f.ReadyCount() != 0 {
		t.Fatal("delayed job ready too early")
	}
	c.Advance(3 * time.Second)
	waitFor(t, "promotion", func() bool { return f.ReadyCount() == 1 })
}

func TestFinishedJobsRemovedAfterRetention(t *testing.T) {
	f, p, c := setup(t)
	id := submit(t, p, &hodeiv1.JobSpec{Command: []string{"true"}})
	p.Propose(context.Background(), &internalpb.Command{Kind: &internalpb.Command_Cancel{Cancel: &internalpb.CancelJob{JobId: id}}})
	tm := Start(Config{Grace: time.Second, Retention: time.Minute, Tick: time.Millisecond, Now: c.Now}, p, f)
	defer tm.Stop()
	c.Advance(2 * time.Minute)
	waitFor(t, "retention GC", func() bool { _, ok := f.GetJob(id); return !ok })
}

func TestSignalWakesAllWaiters(t *testing.T) {
	s := NewSignal()
	a, b := s.Wait(), s.Wait()
	s.Fire()
	<-a
	<-b
	select {
	case <-s.Wait():
		t.Fatal("new waiter woken by an old fire")
	default:
	}
}

func TestCheckpointProposedOnlyWhenTheShardMoved(t *testing.T) {
	f, p, c := setup(t)
	submit(t, p, &hodeiv1.JobSpec{Command: []string{"true"}})
	var rounds int
	var mu sync.Mutex
	tm := Start(Config{Grace: time.Hour, Retention: time.Hour, Tick: time.Millisecond, Now: c.Now, CheckpointEvery: 5 * time.Second,
		OnRound: func() { mu.Lock(); rounds++; mu.Unlock() }}, p, f)
	defer tm.Stop()
	roundsAfter := func(n int) {
		t.Helper()
		mu.Lock()
		seen := rounds
		mu.Unlock()
		waitFor(t, "timer rounds", func() bool { mu.Lock(); defer mu.Unlock(); return rounds >= seen+n })
	}
	roundsAfter(3)
	if n := p.checkpointCount(); n != 0 {
		t.Fatalf("%d checkpoints before the interval passed", n)
	}
	c.Advance(6 * time.Second)
	waitFor(t, "a checkpoint", func() bool { return p.checkpointCount() == 1 })
	if st := f.ChainStats(); st.Verified != 1 || st.Mismatched != 0 {
		t.Fatalf("chain stats after the leader's own checkpoint: %+v", st)
	}
	// Idle: nothing applied since the checkpoint landed, so none is proposed.
	c.Advance(6 * time.Second)
	roundsAfter(3)
	if n := p.checkpointCount(); n != 1 {
		t.Fatalf("%d checkpoints on an idle shard, want still 1", n)
	}
	// New work: the next interval checkpoints again.
	submit(t, p, &hodeiv1.JobSpec{Command: []string{"true"}})
	c.Advance(6 * time.Second)
	waitFor(t, "a second checkpoint", func() bool { return p.checkpointCount() == 2 })
}
