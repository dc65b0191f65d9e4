package chaos

import (
	"strings"
	"testing"
)

func cleanSchedule() *ScheduleEvidence {
	se := &ScheduleEvidence{Tenant: "cron-0", ID: "every-second",
		CreateInvokeMs: 10_000, CreatedMs: 10_050, PauseInvokeMs: 20_500, PausedMs: 20_600}
	for ms := int64(11_000); ms <= 20_000; ms += 1000 {
		se.Slots = append(se.Slots, ms)
	}
	se.Fired = uint64(len(se.Slots))
	return se
}

func TestScheduleCheckPassesACleanRun(t *testing.T) {
	r := checkSchedules([]*ScheduleEvidence{cleanSchedule()}, "")
	if !r.OK || r.Violations != 0 || r.Checked != 10 {
		t.Fatalf("%+v", r)
	}
	if r := checkSchedules(nil, ""); !r.OK || !strings.Contains(r.Note, "no schedules") {
		t.Fatalf("no schedules: %+v", r)
	}
}

func TestScheduleCheckCatchesViolations(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*ScheduleEvidence)
		want string
	}{
		{"a slot fired twice", func(se *ScheduleEvidence) {
			se.Slots = append(se.Slots[:5], append([]int64{se.Slots[4]}, se.Slots[5:]...)...)
			se.Fired++
		}, "fired twice"},
		{"a skipped slot", func(se *ScheduleEvidence) {
			se.Slots = append(se.Slots[:3], se.Slots[5:]...)
			se.Fired -= 2
		}, "gap: no job for the 2 slot(s)"},
		{"a fire after the pause", func(se *ScheduleEvidence) {
			se.Slots = append(se.Slots, 21_000)
			se.Fired++
		}, "after the pause"},
		{"stopped firing early", func(se *ScheduleEvidence) {
			se.Slots = se.Slots[:3]
			se.Fired = 3
		}, "stopped firing"},
		{"late first slot", func(se *ScheduleEvidence) {
			se.Slots = se.Slots[3:]
			se.Fired = uint64(len(se.Slots))
		}, "not the first after"},
		{"counter disagrees", func(se *ScheduleEvidence) { se.Fired = 12 }, "counts 12 fired slots, 10 jobs exist"},
		{"missed slots", func(se *ScheduleEvidence) { se.Missed = 1 }, "1 missed"},
		{"nothing fired", func(se *ScheduleEvidence) { se.Slots, se.Fired = nil, 0 }, "no slot fired"},
		{"pause failed", func(se *ScheduleEvidence) { se.Err = "pause: unavailable" }, "pause: unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			se := cleanSchedule()
			tc.mod(se)
			r := checkSchedules([]*ScheduleEvidence{se}, "")
			if r.OK || r.Violations == 0 {
				t.Fatalf("passed: %+v", r)
			}
			found := false
			for _, d := range r.Details {
				if strings.Contains(d, tc.want) {
					found = true
				}
			}
			if !found {
				t.Fatalf("details %q do not mention %q", r.Details, tc.want)
			}
		})
	}
	if r := checkSchedules([]*ScheduleEvidence{cleanSchedule()}, "list: unavailable"); r.OK {
		t.Fatal("a failed final read passed")
	}
}
