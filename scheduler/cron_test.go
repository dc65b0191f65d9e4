package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

func createSchedule(t testing.TB, p *fsmProposer, sc *hodeiv1.Schedule) {
	t.Helper()
	res, _ := p.Propose(context.Background(), &internalpb.Command{Kind: &internalpb.Command_CreateSchedule{CreateSchedule: &internalpb.CreateSchedule{Schedule: sc}}})
	if err := fsm.ResultError(res); err != nil {
		t.Fatal(err)
	}
}

func slotsOf(f *fsm.FSM, id string) map[int64]int {
	out := map[int64]int{}
	jobs, _ := f.ListJobs("", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, 0, 1<<30)
	for _, j := range jobs {
		if j.GetScheduleId() == id {
			out[j.GetScheduleSlotMs()]++
		}
	}
	return out
}

// TestTimersFireScheduleSlotsOnceAcrossLeaders runs the schedule timers of
// two successive "leaders" over one real FSM with a fake clock: every
// slot of the run fires exactly once, the slots the outage makes older
// than the catch-up window are counted as missed, the rest are made up.
func TestTimersFireScheduleSlotsOnceAcrossLeaders(t *testing.T) {
	f, p, c := setup(t)
	start := c.Now().UnixMilli() // a whole second
	createSchedule(t, p, &hodeiv1.Schedule{Id: "s", Spec: "@every 1s", Template: &hodeiv1.JobSpec{Command: []string{"true"}},
		Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL, CatchUpWindowMs: 5000})
	var mu sync.Mutex
	fired := 0
	run := func(seconds int) {
		tm := Start(Config{Grace: time.Second, Retention: time.Hour, Tick: time.Millisecond, Now: c.Now, Schedules: f,
			OnFire: func(n int) { mu.Lock(); fired += n; mu.Unlock() }}, p, f)
		defer tm.Stop()
		for i := 0; i < seconds; i++ {
			c.Advance(time.Second)
			want := c.Now().UnixMilli()
			waitFor(t, fmt.Sprintf("slot %d", want), func() bool {
				sc, _ := f.GetSchedule("", "s")
				return sc.GetLastFireMs() == want
			})
		}
	}
	run(10)
	// The leader dies; the clock moves 20 s before the next one starts.
	c.Advance(20 * time.Second)
	run(10)
	sc, _ := f.GetSchedule("", "s")
	by := slotsOf(f, "s")
	// Slots 1..10 fired, 11..25 missed (older than 5 s when the second
	// leader looked at second 30), 26..40 fired.
	for i := int64(1); i <= 40; i++ {
		want := 1
		if i >= 11 && i <= 25 {
			want = 0
		}
		if by[start+i*1000] != want {
			t.Fatalf("slot +%ds has %d jobs, want %d (%v)", i, by[start+i*1000], want, sc)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if sc.GetMissed() != 15 || sc.GetFired() != 25 || fired != 25 {
		t.Fatalf("schedule %v, OnFire total %d", sc, fired)
	}
}

// BenchmarkScheduleBookkeeping10k is the schedule timers' cost on a shard
// leader with 10,000 schedules: one op is one minute of wall time (1,200
// rounds at the default 50 ms tick). "every-minute": each schedule fires
// once a minute ("* * * * *"), 10,000 slots at the start of each minute
// (167 jobs/s); "hourly": each fires once an hour at its own minute (2.8
// jobs/s). ns/wall-s is the cost per second of wall time, including
// proposing and applying the fires (creating the jobs) on the real FSM;
// look-ns/wall-s is the leader's look for due slots alone.
func BenchmarkScheduleBookkeeping10k(b *testing.B) {
	for _, bc := range []struct {
		name string
		spec func(i int) string
	}{
		{"every-minute", func(int) string { return "* * * * *" }},
		{"hourly", func(i int) string { return fmt.Sprintf("%d * * * *", i%60) }},
	} {
		b.Run(bc.name, func(b *testing.B) { benchScheduleBookkeeping(b, bc.spec) })
	}
}

func benchScheduleBookkeeping(b *testing.B, spec func(i int) string) {
	f, err := fsm.New(fsm.DefaultConfig(), fsm.Options{})
	if err != nil {
		b.Fatal(err)
	}
	c := &clock{now: time.UnixMilli(1_700_000_000_000)}
	p := &fsmProposer{f: f, clock: c}
	for i := 0; i < 10_000; i++ {
		createSchedule(b, p, &hodeiv1.Schedule{Id: fmt.Sprintf("s%05d", i), Spec: spec(i),
			Template: &hodeiv1.JobSpec{Command: []string{"true"}}, Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL})
	}
	tm := &Timers{cfg: Config{Schedules: f, MaxBatch: 1024, Logger: slog.New(slog.DiscardHandler)}, p: p}
	ctx := context.Background()
	b.ResetTimer()
	var look time.Duration
	for i := 0; i < b.N; i++ {
		for r := 0; r < 1200; r++ {
			c.Advance(50 * time.Millisecond)
			t0 := time.Now()
			f.NextScheduleFire()
			look += time.Since(t0)
			tm.fireSchedules(ctx, c.Now().UnixMilli())
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/60, "ns/wall-s")
	b.ReportMetric(float64(look.Nanoseconds())/float64(b.N)/60, "look-ns/wall-s")
}
