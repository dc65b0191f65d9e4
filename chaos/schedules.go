package chaos

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Cron schedules through faults (issue 11). With Config.Schedules > 0 the
// run creates that many "@every 1s" schedules (allow-all overlap, so every
// slot makes a job whatever the previous one does; a one-hour catch-up
// window, longer than any fault) before the load starts, each in its own
// tenant so that they land on different shards. The schedules fire through
// the kills, pauses and partitions; once the faults are healed and the
// schedules have caught up they are paused, and invariant 10 checks, from
// the jobs that exist afterwards (each names its schedule and slot):
//
//   - no slot made two jobs (a leader change, restart or snapshot restore
//     fired it again);
//   - the slots are contiguous from the first to the last (none skipped:
//     slots a dead leader missed were made up by the next one);
//   - the first slot follows the schedule's creation, the last is no later
//     than the pause and close to it (the schedule kept firing);
//   - the replicated counters agree: fired equals the jobs found, nothing
//     skipped (overlap) or missed (outside the catch-up window).

// scheduleEvery is the schedules' period.
const scheduleEvery = time.Second

// ScheduleEvidence is what the run saw of one schedule.
type ScheduleEvidence struct {
	Tenant string `json:"tenant"`
	ID     string `json:"id"`
	// Wall-clock ms: the create call's start and acknowledgement, and the
	// pause call's start and acknowledgement.
	CreateInvokeMs int64 `json:"create_invoke_ms"`
	CreatedMs      int64 `json:"created_ms"`
	PauseInvokeMs  int64 `json:"pause_invoke_ms"`
	PausedMs       int64 `json:"paused_ms"`
	// The schedule's replicated counters after the pause.
	Fired   uint64 `json:"fired"`
	Skipped uint64 `json:"skipped"`
	Missed  uint64 `json:"missed"`
	// Slots of the jobs found after the run (ms), sorted, duplicates kept.
	Slots []int64 `json:"slots"`
	Err   string  `json:"error,omitempty"` // the run could not create, pause or read it
}

// createSchedules creates n schedules, one per tenant "cron-<i>".
func createSchedules(ctx context.Context, api *client.Client, n int) ([]*ScheduleEvidence, error) {
	var out []*ScheduleEvidence
	for i := 0; i < n; i++ {
		se := &ScheduleEvidence{Tenant: fmt.Sprintf("cron-%d", i), ID: "every-second"}
		sc := &hodeiv1.Schedule{Id: se.ID, Tenant: se.Tenant, Spec: "@every " + scheduleEvery.String(),
			Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL, CatchUpWindowMs: time.Hour.Milliseconds(),
			Template: &hodeiv1.JobSpec{Command: []string{"true"}}}
		se.CreateInvokeMs = time.Now().UnixMilli()
		err := retryFor(ctx, 30*time.Second, func() error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := api.CreateSchedule(cctx, sc)
			if status.Code(err) == codes.AlreadyExists {
				return nil // an earlier attempt that timed out created it
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("create schedule %s/%s: %w", se.Tenant, se.ID, err)
		}
		se.CreatedMs = time.Now().UnixMilli()
		out = append(out, se)
	}
	return out, nil
}

// pauseSchedules waits (up to bound) until every schedule has handled the
// slot of a few seconds ago (so slots missed during the last fault are
// made up), then pauses each.
func pauseSchedules(ctx context.Context, api *client.Client, ses []*ScheduleEvidence, bound time.Duration, log *slog.Logger) {
	deadline := time.Now().Add(bound)
	for _, se := range ses {
		for time.Now().Before(deadline) {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			sc, err := api.GetSchedule(cctx, se.Tenant, se.ID)
			cancel()
			if err == nil && sc.GetLastFireMs() >= time.Now().Add(-3*scheduleEvery).UnixMilli() {
				break
			}
			if sleepCtx(ctx, 200*time.Millisecond) != nil {
				return
			}
		}
	}
	for _, se := range ses {
		se.PauseInvokeMs = time.Now().UnixMilli()
		err := retryFor(ctx, 30*time.Second, func() error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := api.PauseSchedule(cctx, se.Tenant, se.ID, "chaos run over")
			return err
		})
		if err != nil {
			se.Err = "pause: " + err.Error()
			log.Warn("pause schedule", "tenant", se.Tenant, "err", err)
			continue
		}
		se.PausedMs = time.Now().UnixMilli()
	}
}

// readSchedules fills in the counters of each schedule and the slots of
// final's schedule jobs. It returns final without the schedule jobs (the
// other invariants judge the jobs clients submitted).
func readSchedules(ctx context.Context, api *client.Client, ses []*ScheduleEvidence, final []FinalJob) []FinalJob {
	byTenant := map[string]*ScheduleEvidence{}
	for _, se := range ses {
		byTenant[se.Tenant+"/"+se.ID] = se
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sc, err := api.GetSchedule(cctx, se.Tenant, se.ID)
		cancel()
		if err != nil {
			if se.Err == "" {
				se.Err = "get: " + err.Error()
			}
			continue
		}
		se.Fired, se.Skipped, se.Missed = sc.GetFired(), sc.GetSkipped(), sc.GetMissed()
	}
	rest := final[:0:0]
	for _, f := range final {
		if f.ScheduleID == "" {
			rest = append(rest, f)
			continue
		}
		if se := byTenant[f.Job.Tenant+"/"+f.ScheduleID]; se != nil {
			se.Slots = append(se.Slots, f.ScheduleSlotMs)
		}
	}
	for _, se := range ses {
		sort.Slice(se.Slots, func(i, j int) bool { return se.Slots[i] < se.Slots[j] })
	}
	return rest
}

// checkSchedules is invariant 10 (see the top of this file).
func checkSchedules(ses []*ScheduleEvidence, finalErr string) InvariantResult {
	var v violations
	name := "every schedule slot fires exactly once (no repeat, no gap) through the faults"
	if len(ses) == 0 {
		r := v.result(10, name, 0)
		r.Note = "no schedules in this run (--schedules 0)"
		return r
	}
	if finalErr != "" {
		r := v.result(10, name, 0)
		r.OK, r.Violations, r.Note = false, 1, "final read failed: "+finalErr
		return r
	}
	step := scheduleEvery.Milliseconds()
	checked := 0
	for _, se := range ses {
		id := se.Tenant + "/" + se.ID
		if se.Err != "" {
			v.add(id, se.Err)
			continue
		}
		checked += len(se.Slots)
		if len(se.Slots) == 0 {
			v.add(id, "no slot fired")
			continue
		}
		for i := 1; i < len(se.Slots); i++ {
			switch d := se.Slots[i] - se.Slots[i-1]; {
			case d == 0:
				v.add(id, fmt.Sprintf("slot %s fired twice", fmtMs(se.Slots[i])))
			case d != step:
				v.add(id, fmt.Sprintf("gap: no job for the %d slot(s) between %s and %s", d/step-1, fmtMs(se.Slots[i-1]), fmtMs(se.Slots[i])))
			}
		}
		first, last := se.Slots[0], se.Slots[len(se.Slots)-1]
		if first < se.CreateInvokeMs-step || first > se.CreatedMs+2*step {
			v.add(id, fmt.Sprintf("first slot %s is not the first after the schedule's creation at %s", fmtMs(first), fmtMs(se.CreatedMs)))
		}
		if last > se.PausedMs {
			v.add(id, fmt.Sprintf("slot %s fired after the pause was acknowledged at %s", fmtMs(last), fmtMs(se.PausedMs)))
		}
		if last < se.PauseInvokeMs-5*step {
			v.add(id, fmt.Sprintf("the last slot %s is long before the pause at %s: the schedule stopped firing", fmtMs(last), fmtMs(se.PauseInvokeMs)))
		}
		if se.Fired != uint64(len(se.Slots)) {
			v.add(id, fmt.Sprintf("the schedule counts %d fired slots, %d jobs exist", se.Fired, len(se.Slots)))
		}
		if se.Skipped != 0 || se.Missed != 0 {
			v.add(id, fmt.Sprintf("%d slots skipped and %d missed (allow-all overlap, 1 h catch-up: want none)", se.Skipped, se.Missed))
		}
	}
	return v.result(10, name, checked)
}
