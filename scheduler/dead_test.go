package scheduler

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// The leader's GC timer also removes DEAD jobs once their own retention
// (not the finished-job retention) has passed.
func TestDeadJobsRemovedAfterDeadRetention(t *testing.T) {
	cfg := fsm.DefaultConfig()
	cfg.DeadRetentionMs = (10 * time.Minute).Milliseconds()
	f, err := fsm.New(cfg, fsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{now: time.UnixMilli(1_700_000_000_000)}
	p := &fsmProposer{f: f, clock: c, version: fsm.EntryVersionSemantics}
	id := submit(t, p, &hodeiv1.JobSpec{Command: []string{"false"}, MaxAttempts: 1})
	ctx := context.Background()
	res, _ := p.Propose(ctx, &internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: "w", Capacity: 1}}})
	tok := res.GetLeases()[0].GetToken()
	p.Propose(ctx, &internalpb.Command{Kind: &internalpb.Command_Complete{Complete: &internalpb.CompleteJob{JobId: id, Token: tok, Retryable: false}}})
	if j, _ := f.GetJob(id); j.GetState() != hodeiv1.JobState_JOB_STATE_DEAD {
		t.Fatalf("job is %v", j.GetState())
	}
	var rounds atomic.Int64
	tm := Start(Config{Grace: time.Second, Retention: time.Minute, DeadRetention: 10 * time.Minute, Tick: time.Millisecond, Now: c.Now,
		OnRound: func() { rounds.Add(1) }}, p, f)
	defer tm.Stop()
	// Past the finished-job retention only: the DEAD job stays.
	c.Advance(2 * time.Minute)
	start := rounds.Load()
	waitFor(t, "a few timer rounds", func() bool { tm.Poke(); return rounds.Load() >= start+5 })
	if _, ok := f.GetJob(id); !ok {
		t.Fatal("DEAD job removed by the finished-job retention")
	}
	c.Advance(9 * time.Minute)
	waitFor(t, "dead retention GC", func() bool { _, ok := f.GetJob(id); return !ok })
}
