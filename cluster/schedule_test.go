package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// scheduleJobsBySlot lists every job of tenant and counts those of schedule
// id per slot.
func scheduleJobsBySlot(t *testing.T, ctx context.Context, c *client.Client, tenant, id string) map[int64]int {
	t.Helper()
	out := map[int64]int{}
	tok := ""
	for {
		resp, err := c.List(ctx, &hodeiv1.ListJobsRequest{Tenant: tenant, Limit: 1000, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range resp.GetJobs() {
			if j.GetScheduleId() == id {
				out[j.GetScheduleSlotMs()]++
			}
		}
		if tok = resp.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

// TestScheduleEverySecondThroughFailoversAndRestore runs an "@every 1s"
// schedule for more than 30 s on a 3-node cluster (real Raft over gRPC)
// while the leader of its shard is killed twice, each killed node is
// restarted from its data dir after a snapshot (so its FSM is restored from
// the snapshot), and checks from the jobs created that every slot of the
// window fired exactly once.
func TestScheduleEverySecondThroughFailoversAndRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 30+ s")
	}
	tc := startCluster(t, 3, 1)
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const tenant, id = "cron", "tick"
	sc, err := c.CreateSchedule(ctx, &hodeiv1.Schedule{Id: id, Tenant: tenant, Spec: "@every 1s",
		Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL, Template: &hodeiv1.JobSpec{Command: []string{"true"}}})
	if err != nil {
		t.Fatal(err)
	}
	first := sc.GetNextFireMs()
	if sc.GetCatchUpWindowMs() != time.Hour.Milliseconds() || first%1000 != 0 {
		t.Fatalf("created %v", sc)
	}
	start := time.Now()
	waitSlot := func(after time.Duration) {
		t.Helper()
		want := first + after.Milliseconds()
		waitFor(t, 60*time.Second, "the schedule to fire past "+after.String(), func() bool {
			got, err := c.GetSchedule(ctx, tenant, id)
			return err == nil && got.GetLastFireMs() >= want
		})
	}
	killLeader := func() {
		t.Helper()
		ld := tc.leader()
		if ld < 0 {
			t.Fatal("no leader")
		}
		// A snapshot first: the restarted node restores its FSM from it.
		if err := tc.nodes[ld].shards[0].raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		t.Logf("killing leader n%d at +%v", ld+1, time.Since(start).Round(time.Millisecond))
		tc.nodes[ld].Kill()
		tc.nodes[ld] = nil
		waitFor(t, 30*time.Second, "a new leader", func() bool { return tc.leader() >= 0 })
		tc.restart(ld)
		if st := tc.nodes[ld].shards[0].raft.Stats(); st["last_snapshot_index"] == "0" {
			t.Fatalf("restarted node has no snapshot: %v", st)
		}
	}
	waitSlot(8 * time.Second)
	killLeader()
	waitSlot(18 * time.Second)
	killLeader()
	waitSlot(31 * time.Second)
	// Stop it, then count: every slot from the first to the last handled
	// has exactly one job, and the counters agree.
	if _, err := c.PauseSchedule(ctx, tenant, id, "test over"); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetSchedule(ctx, tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	by := scheduleJobsBySlot(t, ctx, c, tenant, id)
	n := 0
	for slot := first; slot <= got.GetLastFireMs(); slot += 1000 {
		if by[slot] != 1 {
			t.Errorf("slot %d (+%ds) has %d jobs", slot, (slot-first)/1000, by[slot])
		}
		n++
	}
	if len(by) != n || got.GetFired() != uint64(n) || got.GetMissed() != 0 || got.GetSkipped() != 0 || n < 31 {
		t.Fatalf("%d slots, %d with jobs; schedule %v", n, len(by), got)
	}
	t.Logf("%d slots fired exactly once in %v", n, time.Since(start).Round(time.Millisecond))
}

// TestScheduleCatchUpAfterClusterDown stops the whole cluster for ~12
// slots of an "@every 1s" schedule with a 4 s catch-up window and checks
// that, once it is back, exactly the slots inside the window (relative to
// the time of the first fire after the restart) are made up, the older
// ones are counted as missed, and nothing fires twice.
func TestScheduleCatchUpAfterClusterDown(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 20+ s")
	}
	tc := startCluster(t, 3, 1)
	c := newClient(t, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const tenant, id = "cron", "catchup"
	const window = 4000
	sc, err := c.CreateSchedule(ctx, &hodeiv1.Schedule{Id: id, Tenant: tenant, Spec: "@every 1s", CatchUpWindowMs: window,
		Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL, Template: &hodeiv1.JobSpec{Command: []string{"true"}}})
	if err != nil {
		t.Fatal(err)
	}
	first := sc.GetNextFireMs()
	waitFor(t, 30*time.Second, "a few fires", func() bool {
		got, err := c.GetSchedule(ctx, tenant, id)
		return err == nil && got.GetLastFireMs() >= first+3000
	})
	for i := range tc.nodes {
		tc.nodes[i].Kill()
		tc.nodes[i] = nil
	}
	downAt := time.Now()
	// The outage itself (not a synchronisation): the cluster is down for
	// about 12 slots.
	time.Sleep(12 * time.Second)
	for i := range tc.nodes {
		tc.restart(i)
	}
	t.Logf("cluster down for %v", time.Since(downAt).Round(time.Millisecond))
	backAt := time.Now().UnixMilli()
	waitFor(t, 60*time.Second, "fires after the restart", func() bool {
		got, err := c.GetSchedule(ctx, tenant, id)
		return err == nil && got.GetLastFireMs() >= backAt+2000
	})
	if _, err := c.PauseSchedule(ctx, tenant, id, "test over"); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetSchedule(ctx, tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	jobs := map[int64]*hodeiv1.Job{}
	tok := ""
	for {
		resp, err := c.List(ctx, &hodeiv1.ListJobsRequest{Tenant: tenant, Limit: 1000, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range resp.GetJobs() {
			if j.GetScheduleId() != id {
				continue
			}
			if jobs[j.GetScheduleSlotMs()] != nil {
				t.Fatalf("slot %d fired twice", j.GetScheduleSlotMs())
			}
			jobs[j.GetScheduleSlotMs()] = j
		}
		if tok = resp.GetNextPageToken(); tok == "" {
			break
		}
	}
	// The slots without a job form one run (the outage's old slots); the
	// first slot after it was made up at a time when it was inside the
	// window, and the last missed one was not.
	var gapFrom, gapTo int64
	missed := uint64(0)
	for slot := first; slot <= got.GetLastFireMs(); slot += 1000 {
		if jobs[slot] != nil {
			continue
		}
		if gapFrom == 0 {
			gapFrom = slot
		} else if slot != gapTo+1000 {
			t.Fatalf("two runs of missing slots: ..%d and %d", gapTo, slot)
		}
		gapTo = slot
		missed++
	}
	if missed == 0 || got.GetMissed() != missed {
		t.Fatalf("%d slots without a job, schedule says %d missed (%v)", missed, got.GetMissed(), got)
	}
	madeUp := jobs[gapTo+1000]
	at := madeUp.GetCreatedAtMs()
	if madeUp.GetScheduleSlotMs() < at-window || gapTo >= at-window {
		t.Fatalf("first made-up slot %d created at %d, last missed slot %d, window %d ms", madeUp.GetScheduleSlotMs(), at, gapTo, window)
	}
	// No flood: at most the window's slots (and the one due now) made up
	// at once.
	burst := 0
	for _, j := range jobs {
		if j.GetCreatedAtMs() == at {
			burst++
		}
	}
	if burst > window/1000+1 {
		t.Fatalf("%d jobs made up in one go, window holds %d slots", burst, window/1000+1)
	}
	t.Logf("missed %d slots (%d..%d), made up %d at once; schedule %v", missed, gapFrom, gapTo, burst, got)
}

// TestScheduleServiceOnAFollower calls ScheduleService on a node that does
// not lead the shard (raw gRPC, no client routing): writes are forwarded,
// reads answered, bad input refused with InvalidArgument naming the field
// and nothing stored.
func TestScheduleServiceOnAFollower(t *testing.T) {
	tc := startCluster(t, 3, 1)
	f := followerOf(tc, tc.leader())
	cc, err := grpc.NewClient(tc.peers[f].Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	s := hodeiv1.NewScheduleServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tmpl := &hodeiv1.JobSpec{Command: []string{"true"}}
	for _, bad := range []struct {
		sc   *hodeiv1.Schedule
		want string
	}{
		{&hodeiv1.Schedule{Id: "x", Spec: "* * * *", Template: tmpl}, "spec:"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", TimeZone: "Nowhere/City", Template: tmpl}, "time_zone:"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", StartMs: 2000, EndMs: 1000, Template: tmpl}, "end_ms"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", Overlap: 42, Template: tmpl}, "overlap:"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily"}, "template"},
	} {
		_, err := s.CreateSchedule(ctx, &hodeiv1.CreateScheduleRequest{Schedule: bad.sc})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("create %v: %v, want InvalidArgument naming %q", bad.sc, err, bad.want)
		}
	}
	if resp, err := s.ListSchedules(ctx, &hodeiv1.ListSchedulesRequest{}); err != nil || len(resp.GetSchedules()) != 0 {
		t.Fatalf("after bad input: %v %v", resp, err)
	}
	created, err := s.CreateSchedule(ctx, &hodeiv1.CreateScheduleRequest{Schedule: &hodeiv1.Schedule{Id: "ok", Spec: "@hourly", Template: tmpl}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSchedule(ctx, &hodeiv1.CreateScheduleRequest{Schedule: &hodeiv1.Schedule{Id: "ok", Spec: "@hourly", Template: tmpl}}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second create: %v", err)
	}
	got, err := s.GetSchedule(ctx, &hodeiv1.GetScheduleRequest{Id: "ok"})
	if err != nil || got.GetSchedule().GetNextFireMs() != created.GetSchedule().GetNextFireMs() {
		t.Fatalf("get: %v %v", got, err)
	}
	now := time.Now().UnixMilli()
	if _, err := s.BackfillSchedule(ctx, &hodeiv1.BackfillScheduleRequest{Id: "ok", FromMs: now - 2000*3600_000, ToMs: now}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("backfill over the limit: %v", err)
	}
	tr, err := s.TriggerSchedule(ctx, &hodeiv1.TriggerScheduleRequest{Id: "ok"})
	if err != nil || tr.GetJob().GetScheduleId() != "ok" {
		t.Fatalf("trigger: %v %v", tr, err)
	}
	if p, err := s.PauseSchedule(ctx, &hodeiv1.PauseScheduleRequest{Id: "ok", Note: "n"}); err != nil || !p.GetSchedule().GetPaused() {
		t.Fatalf("pause: %v %v", p, err)
	}
	if _, err := s.DeleteSchedule(ctx, &hodeiv1.DeleteScheduleRequest{Id: "ok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSchedule(ctx, &hodeiv1.GetScheduleRequest{Id: "ok"}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v", err)
	}
}
