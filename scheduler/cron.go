package scheduler

import (
	"context"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// ScheduleState is the read side of the shard's cron schedules the timers
// need. The FSM keeps its active schedules ordered by next fire time, so a
// round costs one O(log n) look at the earliest and nothing more while no
// slot is due, however many schedules the shard holds.
type ScheduleState interface {
	// NextScheduleFire is the earliest next slot of an active schedule.
	NextScheduleFire() (int64, bool)
	// DueSchedules lists up to max fires whose slot is at or before nowMs.
	DueSchedules(nowMs int64, max int) []*internalpb.ScheduleFire
}

// maxFireRounds bounds the FireSchedules proposals of one timer round.
const maxFireRounds = 4

// fireSchedules proposes FireSchedules for the schedules whose next slot
// is due. The slots come from the replicated state and each fire names
// its slot, so a new leader (or a repeated proposal) cannot fire a slot
// twice: the FSM ignores a fire of a slot that is not the next.
func (t *Timers) fireSchedules(ctx context.Context, nowMs int64) {
	ss := t.cfg.Schedules
	if ss == nil {
		return
	}
	var first *internalpb.ScheduleFire
	for round := 0; round < maxFireRounds; round++ {
		if at, ok := ss.NextScheduleFire(); !ok || at > nowMs {
			return
		}
		due := ss.DueSchedules(nowMs, t.cfg.MaxBatch)
		if len(due) == 0 {
			return
		}
		if first != nil && due[0].GetTenant() == first.GetTenant() && due[0].GetId() == first.GetId() && due[0].GetSlotMs() == first.GetSlotMs() {
			// The last proposal did not move it (not due by the entry's
			// time): the next round tries again.
			return
		}
		first = due[0]
		res := t.propose(ctx, &internalpb.Command{Kind: &internalpb.Command_FireSchedules{FireSchedules: &internalpb.FireSchedules{Fires: due}}})
		if res == nil {
			return
		}
		if t.cfg.OnFire != nil && res.GetCount() > 0 {
			t.cfg.OnFire(int(res.GetCount()))
		}
	}
}
