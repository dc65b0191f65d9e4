package fsm

import (
	"strings"
	"testing"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

func schedCmd(sc *hodeiv1.Schedule) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_CreateSchedule{CreateSchedule: &internalpb.CreateSchedule{Schedule: sc}}}
}

func fireCmd(id string, slot int64) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_FireSchedules{FireSchedules: &internalpb.FireSchedules{
		Fires: []*internalpb.ScheduleFire{{Id: id, SlotMs: slot}}}}}
}

func pauseCmd(id string, paused bool, note string) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_PauseSchedule{PauseSchedule: &internalpb.PauseSchedule{Id: id, Paused: paused, Note: note}}}
}

func backfillCmd(id string, from, to int64) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_BackfillSchedule{BackfillSchedule: &internalpb.BackfillSchedule{Id: id, FromMs: from, ToMs: to}}}
}

func every1s(id string, overlap hodeiv1.OverlapPolicy) *hodeiv1.Schedule {
	return &hodeiv1.Schedule{Id: id, Spec: "@every 1s", Template: spec("true"), Overlap: overlap}
}

func (h *harness) sched(id string) *hodeiv1.Schedule {
	h.t.Helper()
	sc, ok := h.f.GetSchedule("", id)
	if !ok {
		h.t.Fatalf("schedule %s not found", id)
	}
	return sc
}

// fireDue proposes what the leader would: every due slot, until none is.
func (h *harness) fireDue() []*hodeiv1.Job {
	h.t.Helper()
	var out []*hodeiv1.Job
	for {
		due := h.f.DueSchedules(h.now, 100)
		if len(due) == 0 {
			return out
		}
		r := h.applyNew(&internalpb.Command{Kind: &internalpb.Command_FireSchedules{FireSchedules: &internalpb.FireSchedules{Fires: due}}})[0]
		if err := ResultError(r); err != nil {
			h.t.Fatal(err)
		}
		for _, sj := range r.GetScheduleJobs() {
			out = append(out, sj.GetJob())
		}
	}
}

// jobsBySlot counts the jobs of a schedule per slot.
func (h *harness) jobsBySlot(id string) map[int64]int {
	out := map[int64]int{}
	jobs, _ := h.f.ListJobs("", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, 0, 1_000_000)
	for _, j := range jobs {
		if j.GetScheduleId() == id {
			out[j.GetScheduleSlotMs()]++
		}
	}
	return out
}

func TestScheduleFiresEachSlotOnce(t *testing.T) {
	h := newHarness(t)
	h.now = 1_000_500
	r := h.applyNew(schedCmd(every1s("s", hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL)))[0]
	if err := ResultError(r); err != nil {
		t.Fatal(err)
	}
	sc := r.GetSchedule()
	if sc.GetNextFireMs() != 1_001_000 || sc.GetCatchUpWindowMs() != DefaultCatchUpWindowMs || sc.GetOverlap() != hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL {
		t.Fatalf("created %v", sc)
	}
	if due := h.f.DueSchedules(h.now, 10); len(due) != 0 {
		t.Fatalf("due before its slot: %v", due)
	}
	for i := 0; i < 5; i++ {
		h.now += 1000
		if jobs := h.fireDue(); len(jobs) != 1 {
			t.Fatalf("tick %d: %d jobs", i, len(jobs))
		}
	}
	// A repeated fire (a new leader re-proposing) and a fire of a slot
	// that is not the next are no-ops.
	before := h.digest()
	for _, slot := range []int64{1_001_000, 1_005_000, 1_007_000} {
		if r := h.applyNew(fireCmd("s", slot))[0]; r.GetCount() != 0 || r.GetCode() != internalpb.Code_CODE_OK {
			t.Fatalf("fire of slot %d: %v", slot, r)
		}
	}
	if h.digest() != before {
		t.Fatal("a no-op fire changed the state")
	}
	by := h.jobsBySlot("s")
	for slot := int64(1_001_000); slot <= 1_005_000; slot += 1000 {
		if by[slot] != 1 {
			t.Fatalf("slot %d has %d jobs (%v)", slot, by[slot], by)
		}
	}
	sc = h.sched("s")
	if sc.GetFired() != 5 || sc.GetLastFireMs() != 1_005_000 || sc.GetNextFireMs() != 1_006_000 {
		t.Fatalf("after 5 fires: %v", sc)
	}
	j := h.job(sc.GetLastJobId())
	if j.GetSpec().GetIdempotencyKey() != SlotIdempotencyKey("s", 1_005_000) || j.GetScheduleSlotMs() != 1_005_000 {
		t.Fatalf("job %v", j)
	}
}

func TestScheduleCatchUpWindow(t *testing.T) {
	h := newHarness(t)
	h.now = 1_000_000
	sc := every1s("s", hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL)
	sc.CatchUpWindowMs = 10_000
	h.applyNew(schedCmd(sc))
	// Down for 100 s: slots 1,001,000 .. 1,100,000 are due; the ones
	// before now-10s (1,001,000 .. 1,089,000: 89) are missed, the 11 in
	// the window (1,090,000 .. 1,100,000) are made up, no more.
	h.now = 1_100_000
	jobs := h.fireDue()
	if len(jobs) != 11 {
		t.Fatalf("made up %d slots, want 11", len(jobs))
	}
	got := h.sched("s")
	if got.GetMissed() != 89 || got.GetFired() != 11 || got.GetNextFireMs() != 1_101_000 {
		t.Fatalf("after catch-up: %v", got)
	}
	by := h.jobsBySlot("s")
	for slot := int64(1_090_000); slot <= 1_100_000; slot += 1000 {
		if by[slot] != 1 {
			t.Fatalf("slot %d: %d jobs", slot, by[slot])
		}
	}
	// The same with a cron spec (per minute), counted one by one.
	h2 := newHarness(t)
	h2.now = 0
	h2.applyNew(schedCmd(&hodeiv1.Schedule{Id: "m", Spec: "* * * * *", Template: spec("true"), Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL, CatchUpWindowMs: 5 * 60_000}))
	h2.now = 120 * 60_000 // slots 1..120 min due; 115..120 inside the window
	if jobs := h2.fireDue(); len(jobs) != 6 {
		t.Fatalf("cron catch-up made %d jobs, want 6", len(jobs))
	}
	if m := h2.sched("m"); m.GetMissed() != 114 || m.GetFired() != 6 {
		t.Fatalf("cron catch-up: %v", m)
	}
}

func TestScheduleCatchUpWithSkipIsNoFlood(t *testing.T) {
	h := newHarness(t)
	h.now = 1_000_000
	h.applyNew(schedCmd(every1s("s", 0))) // skip (default)
	h.now = 1_000_000 + 3_600_000 + 500_000
	jobs := h.fireDue()
	sc := h.sched("s")
	if len(jobs) != 1 || sc.GetFired() != 1 || sc.GetSkipped() != 3600 || sc.GetMissed() != 499 {
		t.Fatalf("jobs %d, schedule %v", len(jobs), sc)
	}
}

// lease leases the next ready job.
func (h *harness) lease() *hodeiv1.Lease {
	h.t.Helper()
	ls := h.ok(leaseCmd("w", 1)).GetLeases()
	if len(ls) != 1 {
		h.t.Fatalf("leased %d jobs", len(ls))
	}
	return ls[0]
}

func TestScheduleOverlapPolicies(t *testing.T) {
	P := hodeiv1.OverlapPolicy_OVERLAP_POLICY_SKIP
	for _, tc := range []struct {
		policy           hodeiv1.OverlapPolicy
		jobs             int // jobs after slots 1-3 while job 1 runs
		skipped          uint64
		afterFinish      int // jobs once job 1 finishes
		firstCancelled   bool
		bufferedSlotWant int64
	}{
		{P, 1, 2, 1, false, 0},
		{hodeiv1.OverlapPolicy_OVERLAP_POLICY_BUFFER_ONE, 1, 1, 2, false, 1_002_000},
		{hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL, 3, 0, 3, false, 0},
		{hodeiv1.OverlapPolicy_OVERLAP_POLICY_CANCEL_PREVIOUS, 3, 0, 3, true, 0},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			h := newHarness(t)
			h.now = 1_000_000
			h.applyNew(schedCmd(every1s("s", tc.policy)))
			h.now = 1_001_000
			first := h.fireDue()[0]
			l := h.lease() // the slow run
			if l.GetJob().GetId() != first.GetId() {
				t.Fatal("leased another job")
			}
			h.now = 1_002_000
			h.fireDue()
			h.now = 1_003_000
			h.fireDue()
			sc := h.sched("s")
			n := 0
			for _, c := range h.jobsBySlot("s") {
				n += c
			}
			if n != tc.jobs || sc.GetSkipped() != tc.skipped || sc.GetBufferedSlotMs() != tc.bufferedSlotWant {
				t.Fatalf("%d jobs, schedule %v", n, sc)
			}
			if got := h.job(first.GetId()).GetState() == hodeiv1.JobState_JOB_STATE_CANCELLED; got != tc.firstCancelled {
				t.Fatalf("first job cancelled = %v", got)
			}
			if !tc.firstCancelled {
				h.ok(completeCmd(first.GetId(), l.GetToken(), true, false))
			}
			n = 0
			for _, c := range h.jobsBySlot("s") {
				n += c
			}
			if n != tc.afterFinish {
				t.Fatalf("after the slow run: %d jobs", n)
			}
			if tc.bufferedSlotWant != 0 {
				if h.jobsBySlot("s")[tc.bufferedSlotWant] != 1 || h.sched("s").GetBufferedSlotMs() != 0 {
					t.Fatalf("buffered slot not run: %v", h.sched("s"))
				}
			}
		})
	}
}

func TestScheduleBadInput(t *testing.T) {
	h := newHarness(t)
	h.now = 2_000_000
	h.applyNew(schedCmd(every1s("ok", 0)))
	before := h.digest()
	tmpl := spec("true")
	for _, tc := range []struct {
		sc   *hodeiv1.Schedule
		want string
	}{
		{nil, "schedule is required"},
		{&hodeiv1.Schedule{Spec: "@daily", Template: tmpl}, "id is required"},
		{&hodeiv1.Schedule{Id: "a b", Spec: "@daily", Template: tmpl}, "id \"a b\""},
		{&hodeiv1.Schedule{Id: "x", Spec: "61 * * * *", Template: tmpl}, "spec: minute field"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", TimeZone: "Europe/Atlantis", Template: tmpl}, "time_zone: unknown time zone"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", StartMs: 5000, EndMs: 4000, Template: tmpl}, "end_ms (4000) must be after start_ms (5000)"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", Overlap: 9, Template: tmpl}, "overlap: unknown policy 9"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", CatchUpWindowMs: -1, Template: tmpl}, "catch_up_window_ms"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", JitterMs: MaxJitterMs + 1, Template: tmpl}, "jitter_ms"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily"}, "template is required"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", Template: &hodeiv1.JobSpec{}}, "template: invalid job spec: command is empty"},
		{&hodeiv1.Schedule{Id: "x", Spec: "@daily", Template: &hodeiv1.JobSpec{Command: []string{"true"}, IdempotencyKey: "k"}}, "template.idempotency_key"},
		{&hodeiv1.Schedule{Id: "x", Tenant: "a", Spec: "@daily", Template: &hodeiv1.JobSpec{Command: []string{"true"}, Tenant: "b"}}, "template.tenant"},
	} {
		r := h.applyNew(schedCmd(tc.sc))[0]
		wantCode(t, r, internalpb.Code_CODE_INVALID_ARGUMENT, tc.want)
	}
	wantCode(t, h.applyNew(schedCmd(every1s("ok", 0)))[0], internalpb.Code_CODE_ALREADY_EXISTS, "already exists")
	wantCode(t, h.applyNew(backfillCmd("ok", 1000, 1_001_000))[0], internalpb.Code_CODE_INVALID_ARGUMENT, "more than 1000 slots")
	wantCode(t, h.applyNew(backfillCmd("ok", 5000, 4000))[0], internalpb.Code_CODE_INVALID_ARGUMENT, "to_ms (4000) is before from_ms")
	wantCode(t, h.applyNew(backfillCmd("ok", 5000, 2_000_001))[0], internalpb.Code_CODE_INVALID_ARGUMENT, "in the future")
	wantCode(t, h.applyNew(backfillCmd("nope", 5000, 6000))[0], internalpb.Code_CODE_NOT_FOUND, "not found")
	wantCode(t, h.applyNew(pauseCmd("ok", true, strings.Repeat("n", MaxPauseNoteBytes+1)))[0], internalpb.Code_CODE_INVALID_ARGUMENT, "note is")
	// An old entry version refuses schedule commands.
	wantCode(t, h.apply(schedCmd(every1s("y", 0))), internalpb.Code_CODE_INVALID_ARGUMENT, "need an entry of version 4")
	if h.digest() != before {
		t.Fatal("bad input changed the state")
	}
}

func TestScheduleBackfillTriggerPause(t *testing.T) {
	h := newHarness(t)
	h.now = 1_000_000
	h.applyNew(schedCmd(every1s("s", 0)))
	h.now = 1_001_000
	h.fireDue()
	// Backfill [998 s, 1001 s]: 4 slots, one of which (1,001,000) already
	// has its job.
	r := h.applyNew(backfillCmd("s", 998_000, 1_001_000))[0]
	if err := ResultError(r); err != nil {
		t.Fatal(err)
	}
	dups := 0
	for _, sj := range r.GetScheduleJobs() {
		if sj.GetDuplicate() {
			dups++
		}
	}
	if len(r.GetScheduleJobs()) != 4 || dups != 1 || r.GetSchedule().GetFired() != 4 {
		t.Fatalf("backfill: %v", r)
	}
	// Pause: no fires; resume: the slots that passed are not made up.
	r = h.applyNew(pauseCmd("s", true, "maintenance"))[0]
	if !r.GetSchedule().GetPaused() || r.GetSchedule().GetPauseNote() != "maintenance" {
		t.Fatalf("pause: %v", r)
	}
	h.now = 1_010_000
	if len(h.f.DueSchedules(h.now, 10)) != 0 || h.applyNew(fireCmd("s", 1_002_000))[0].GetCount() != 0 {
		t.Fatal("a paused schedule fired")
	}
	r = h.applyNew(pauseCmd("s", false, ""))[0]
	if r.GetSchedule().GetPaused() || r.GetSchedule().GetNextFireMs() != 1_011_000 {
		t.Fatalf("resume: %v", r.GetSchedule())
	}
	tr := h.applyNew(&internalpb.Command{Kind: &internalpb.Command_TriggerSchedule{TriggerSchedule: &internalpb.TriggerSchedule{Id: "s"}}})[0]
	if len(tr.GetScheduleJobs()) != 1 || tr.GetSchedule().GetLastJobId() != tr.GetScheduleJobs()[0].GetJob().GetId() {
		t.Fatalf("trigger: %v", tr)
	}
	wantCode(t, h.applyNew(&internalpb.Command{Kind: &internalpb.Command_DeleteSchedule{DeleteSchedule: &internalpb.DeleteSchedule{Id: "s"}}})[0], internalpb.Code_CODE_OK, "")
	if _, ok := h.f.GetSchedule("", "s"); ok || len(h.f.DueSchedules(1<<60, 10)) != 0 {
		t.Fatal("deleted schedule remains")
	}
}

func TestScheduleStartEndAndZone(t *testing.T) {
	h := newHarness(t)
	h.now = 1_774_742_400_000 // 2026-03-29T00:00:00Z
	r := h.applyNew(schedCmd(&hodeiv1.Schedule{Id: "b", Spec: "30 2 * * *", TimeZone: "Europe/Berlin", Template: spec("true"), Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL,
		EndMs: 1_774_742_400_000 + 2*86_400_000}))[0]
	// 02:30 does not exist on 2026-03-29 in Berlin: 03:00 CEST = 01:00Z.
	if got := r.GetSchedule().GetNextFireMs(); got != 1_774_746_000_000 {
		t.Fatalf("next fire %d", got)
	}
	h.now = 1_774_746_000_000
	h.fireDue()
	if sc := h.sched("b"); sc.GetNextFireMs() != 1_774_830_600_000 { // 2026-03-30T00:30:00Z
		t.Fatalf("after the gap: %v", sc)
	}
	h.now = 1_774_830_600_000
	h.fireDue()
	if sc := h.sched("b"); sc.GetNextFireMs() != 0 || sc.GetFired() != 2 {
		t.Fatalf("past end_ms: %v", sc)
	}
	// start_ms in the future: the first slot is at or after it.
	r = h.applyNew(schedCmd(&hodeiv1.Schedule{Id: "s", Spec: "@every 1m", StartMs: h.now + 90_000, Template: spec("true")}))[0]
	if got := r.GetSchedule().GetNextFireMs(); got != h.now+120_000 {
		t.Fatalf("first slot %d, want %d", got, h.now+120_000)
	}
}

func TestScheduleSnapshotRoundTrip(t *testing.T) {
	h := newHarness(t)
	h.now = 1_000_000
	if v := snapshotBytes(t, h.f)[11]; v != 1 {
		t.Fatalf("empty state written as version %d", v)
	}
	h.applyNew(schedCmd(every1s("s", hodeiv1.OverlapPolicy_OVERLAP_POLICY_BUFFER_ONE)))
	sc := every1s("t", 0)
	sc.Tenant, sc.TimeZone, sc.Spec, sc.JitterMs = "acme", "America/New_York", "*/5 * * * mon-fri", 2000
	h.applyNew(schedCmd(sc))
	h.now = 1_003_000
	h.fireDue()
	h.applyNew(pauseCmd("s", true, "why"))
	data := snapshotBytes(t, h.f)
	if v := data[11]; v != snapshotVersionSemantics {
		t.Fatalf("snapshot version %d, want %d", v, snapshotVersionSemantics)
	}
	g := restoreInto(t, data)
	_, d1 := h.f.Digest()
	_, d2 := g.Digest()
	if d1 != d2 {
		t.Fatal("restored state differs")
	}
	if n, _ := g.NextScheduleFire(); n == 0 || len(g.ListSchedules("")) != 2 || len(g.ListSchedules("acme")) != 1 {
		t.Fatal("restored schedules are not indexed")
	}
	tot := g.ScheduleTotals()
	if tot["default"].Paused != 1 || tot["acme"].Schedules != 1 {
		t.Fatalf("totals %v", tot)
	}
}

// checkScheduleInvariants: the due index holds exactly the active
// schedules at their next fire; no schedule's next slot is at or before its
// last handled one; counters agree with what is stored. Callers hold the
// read lock.
func checkScheduleInvariants(t testing.TB, s *state) {
	t.Helper()
	active := 0
	for key, e := range s.schedules {
		sc := e.sc
		if key != schedKey(sc.GetTenant(), sc.GetId()) {
			t.Fatalf("invariant: schedule %q stored under %q", sc.GetId(), key)
		}
		if sc.GetNextFireMs() != 0 && sc.GetLastFireMs() != 0 && sc.GetNextFireMs() <= sc.GetLastFireMs() {
			t.Fatalf("invariant: schedule %q next fire %d is not after its last %d", sc.GetId(), sc.GetNextFireMs(), sc.GetLastFireMs())
		}
		inIndex := s.schedDue.Has(dueKey{sc.GetNextFireMs(), key})
		if want := !sc.GetPaused() && sc.GetNextFireMs() != 0; inIndex != want {
			t.Fatalf("invariant: schedule %q in the due index = %v, want %v", sc.GetId(), inIndex, want)
		}
		if inIndex {
			active++
		}
	}
	if s.schedDue.Len() != active {
		t.Fatalf("invariant: due index has %d entries for %d active schedules", s.schedDue.Len(), active)
	}
}

// TestScheduleReplicasAgree replays the log of a schedule workload into a
// second FSM: identical snapshots.
func TestScheduleReplicasAgree(t *testing.T) {
	h := newHarness(t)
	h.now = 1_000_000
	h.applyNew(schedCmd(every1s("a", hodeiv1.OverlapPolicy_OVERLAP_POLICY_BUFFER_ONE)))
	h.applyNew(schedCmd(&hodeiv1.Schedule{Id: "b", Spec: "* * * * *", TimeZone: "America/New_York", Template: spec("true"), JitterMs: 5000}))
	for i := 0; i < 120; i++ {
		h.now += 700
		h.fireDue()
		if i%7 == 0 {
			if ls := h.f.ListSchedules(""); len(ls) > 0 {
				h.applyNew(leaseCmd("w", 2))
			}
		}
	}
	g, err := New(DefaultConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range h.log {
		g.ApplyEntry(uint64(i+1), e)
	}
	_, d1 := h.f.Digest()
	_, d2 := g.Digest()
	if d1 != d2 {
		t.Fatal("replicas fed the same log differ")
	}
	checkInvariants(t, h.f)
	checkInvariants(t, g)
}

// Schedule writes with a request id go in version 5 entries, and a retry
// gets the first answer: a retried trigger does not run the job twice, a
// retried create is not AlreadyExists, a retried delete is not NotFound.
// In a version 4 entry the record stays what the previous release made.
func TestScheduleWritesRetriedWithRequestID(t *testing.T) {
	h := newHarness(t)
	h.now = 1_000_000
	create := withRID("c1", schedCmd(every1s("s", 0)))
	if v := EntryVersionFor([]*internalpb.Command{create}); v != EntryVersionPipelines {
		t.Fatalf("a schedule write with a request id goes in version %d entries", v)
	}
	if v := EntryVersionFor([]*internalpb.Command{schedCmd(every1s("s", 0))}); v != EntryVersionSemantics {
		t.Fatalf("without a request id: version %d", v)
	}
	first := h.applyNew(create)[0]
	h.now += 10
	again := h.applyNew(create)[0]
	if ResultError(again) != nil || again.GetSchedule().GetId() != "s" || again.GetSchedule().GetNextFireMs() != first.GetSchedule().GetNextFireMs() {
		t.Fatalf("retried create: %v (first %v)", again, first)
	}
	trig := withRID("t1", &internalpb.Command{Kind: &internalpb.Command_TriggerSchedule{TriggerSchedule: &internalpb.TriggerSchedule{Id: "s"}}})
	r1 := h.applyNew(trig)[0]
	h.now += 500
	r2 := h.applyNew(trig)[0]
	if len(r1.GetScheduleJobs()) != 1 || len(r2.GetScheduleJobs()) != 1 || r1.GetScheduleJobs()[0].GetJob().GetId() != r2.GetScheduleJobs()[0].GetJob().GetId() {
		t.Fatalf("retried trigger made another job: %v / %v", r1.GetScheduleJobs(), r2.GetScheduleJobs())
	}
	if got := h.sched("s").GetFired(); got != 1 {
		t.Fatalf("fired %d after a retried trigger", got)
	}
	bf := withRID("b1", backfillCmd("s", 990_000, 993_000))
	b1 := h.applyNew(bf)[0]
	b2 := h.applyNew(bf)[0]
	if len(b1.GetScheduleJobs()) != 4 || len(b2.GetScheduleJobs()) != 4 || b2.GetScheduleJobs()[3].GetJob().GetId() != b1.GetScheduleJobs()[3].GetJob().GetId() {
		t.Fatalf("retried backfill: %v / %v", b1.GetScheduleJobs(), b2.GetScheduleJobs())
	}
	// The records survive a snapshot (version 5) and answer the same after it.
	data := snapshotBytes(t, h.f)
	if v := snapshotVersionOf(data); v != snapshotVersionPipelines {
		t.Fatalf("snapshot with schedule records has version %d", v)
	}
	g := restoreInto(t, data)
	res := g.ApplyEntry(h.index+1, &internalpb.Entry{Version: EntryVersionPipelines, NowMs: h.now + 1000, Commands: []*internalpb.Command{trig}})
	if len(res[0].GetScheduleJobs()) != 1 || res[0].GetScheduleJobs()[0].GetJob().GetId() != r1.GetScheduleJobs()[0].GetJob().GetId() {
		t.Fatalf("after restore, the retried trigger answered %v", res[0])
	}
	del := withRID("d1", &internalpb.Command{Kind: &internalpb.Command_DeleteSchedule{DeleteSchedule: &internalpb.DeleteSchedule{Id: "s"}}})
	if r := h.applyNew(del)[0]; ResultError(r) != nil {
		t.Fatal(ResultError(r))
	}
	if r := h.applyNew(del)[0]; ResultError(r) != nil {
		t.Fatalf("retried delete: %v", ResultError(r))
	}
	// A version 4 entry with a request id: the old (empty) record.
	h4 := newHarness(t)
	h4.now = 1_000_000
	h4.applyV(EntryVersionSemantics, withRID("c1", schedCmd(every1s("s", 0))))
	if r := h4.applyV(EntryVersionSemantics, withRID("c1", schedCmd(every1s("s", 0))))[0]; ResultError(r) != nil || r.GetSchedule() != nil {
		t.Fatalf("version 4 retry answered %v, want the old empty answer", r)
	}
}
