package fsm

// Cron schedules (issue 11). A schedule lives in the shard of its tenant,
// with its bookkeeping: next_fire_ms (the next slot), last_fire_ms (the
// last slot handled) and the fired/skipped/missed counters. The shard
// leader proposes FireSchedules for due slots; Apply handles a slot at most
// once, because next_fire_ms only moves forward and a fire for any other
// slot is a no-op. The job of a slot carries the idempotency key
// "sched:<id>:<slot ms>", so even a backfill of a slot that already ran
// does not run it twice.
//
// Every fire time is computed here, from the spec (fsm/cron, which is
// pure) and the entry's now_ms, so every replica agrees.

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/btree"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/fsm/cron"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Schedule limits and defaults.
const (
	// DefaultCatchUpWindowMs is the catch-up window of a schedule that does
	// not set one: after downtime, missed slots up to an hour old are made
	// up; older ones are counted as missed.
	DefaultCatchUpWindowMs = int64(time.Hour / time.Millisecond)
	// MaxCatchUpWindowMs bounds catch_up_window_ms (7 days).
	MaxCatchUpWindowMs = 7 * 24 * DefaultCatchUpWindowMs
	// MaxJitterMs bounds jitter_ms (1 hour).
	MaxJitterMs = DefaultCatchUpWindowMs
	// MaxBackfillSlots bounds the slots of one backfill.
	MaxBackfillSlots = 1000
	// MaxSlotsPerFire bounds the slots one fire handles: catching up a long
	// window takes several entries instead of one huge one.
	MaxSlotsPerFire = 1000
	// MaxScheduleIDBytes bounds a schedule id (it is part of job keys).
	MaxScheduleIDBytes = 64
	// MaxPauseNoteBytes bounds a pause note.
	MaxPauseNoteBytes = 1024
	// MaxSchedulesPerShard bounds the schedules of one shard.
	MaxSchedulesPerShard = 100_000
	// maxMissedSteps bounds the slots counted one by one when a cron
	// schedule skips a long outage (2 years of a per-minute spec); the
	// rest of a longer outage is not counted.
	maxMissedSteps = 1 << 20
)

// ErrInvalidSchedule is wrapped by ValidateSchedule errors.
var ErrInvalidSchedule = errors.New("invalid schedule")

// schedEntry is one stored schedule: the record (owned by the FSM, cloned
// for readers) and its parsed spec.
type schedEntry struct {
	sc *hodeiv1.Schedule
	cs *cron.Schedule
}

// dueKey orders active schedules by next fire time.
type dueKey struct {
	at  int64
	key string
}

func dueLess(a, b dueKey) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.key < b.key
}

func newDueTree() *btree.BTreeG[dueKey] { return btree.NewG(btreeDegree, dueLess) }

func schedKey(tenant, id string) string { return tenant + "\x00" + id }

// SlotIdempotencyKey is the idempotency key of the job a schedule creates
// for a slot.
func SlotIdempotencyKey(id string, slotMs int64) string {
	return "sched:" + id + ":" + strconv.FormatInt(slotMs, 10)
}

func triggerIdempotencyKey(id string, nowMs int64) string {
	return "sched:" + id + ":trigger:" + strconv.FormatInt(nowMs, 10)
}

func schedInvalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidSchedule, fmt.Sprintf(format, args...))
}

// ValidateSchedule checks the user fields of a schedule and returns a
// normalized copy (tenant and template defaults filled, catch-up window
// resolved, bookkeeping cleared) and its parsed spec. Errors wrap
// ErrInvalidSchedule and name the field.
func ValidateSchedule(in *hodeiv1.Schedule, cfg Config) (*hodeiv1.Schedule, *cron.Schedule, error) {
	if in == nil {
		return nil, nil, schedInvalid("schedule is required")
	}
	sc := &hodeiv1.Schedule{
		Id: in.GetId(), Tenant: in.GetTenant(), Spec: in.GetSpec(), TimeZone: in.GetTimeZone(),
		StartMs: in.GetStartMs(), EndMs: in.GetEndMs(), Overlap: in.GetOverlap(),
		CatchUpWindowMs: in.GetCatchUpWindowMs(), JitterMs: in.GetJitterMs(),
		Paused: in.GetPaused(), PauseNote: in.GetPauseNote(),
	}
	if sc.Tenant == "" {
		sc.Tenant = DefaultTenant
	}
	switch id := sc.GetId(); {
	case id == "":
		return nil, nil, schedInvalid("id is required")
	case len(id) > MaxScheduleIDBytes || !validTenant(id):
		return nil, nil, schedInvalid("id %q must match [A-Za-z0-9._-]+ and be at most %d bytes", id, MaxScheduleIDBytes)
	}
	if !validTenant(sc.Tenant) {
		return nil, nil, schedInvalid("tenant %q must match [A-Za-z0-9._-]+ and be at most %d bytes", sc.Tenant, MaxNameBytes)
	}
	cronMsg := func(err error) string { return strings.TrimPrefix(err.Error(), cron.ErrInvalid.Error()+": ") }
	if _, err := cron.LoadZone(sc.GetTimeZone()); err != nil {
		return nil, nil, schedInvalid("time_zone: %s", cronMsg(err))
	}
	cs, err := cron.Parse(sc.GetSpec(), sc.GetTimeZone())
	if err != nil {
		return nil, nil, schedInvalid("spec: %s", cronMsg(err))
	}
	switch {
	case sc.StartMs < 0:
		return nil, nil, schedInvalid("start_ms is negative (%d)", sc.StartMs)
	case sc.EndMs < 0:
		return nil, nil, schedInvalid("end_ms is negative (%d)", sc.EndMs)
	case sc.EndMs != 0 && sc.EndMs <= sc.StartMs:
		return nil, nil, schedInvalid("end_ms (%d) must be after start_ms (%d)", sc.EndMs, sc.StartMs)
	}
	if _, ok := hodeiv1.OverlapPolicy_name[int32(sc.Overlap)]; !ok {
		return nil, nil, schedInvalid("overlap: unknown policy %d (want skip, buffer-one, allow-all or cancel-previous)", sc.Overlap)
	}
	if sc.Overlap == hodeiv1.OverlapPolicy_OVERLAP_POLICY_UNSPECIFIED {
		sc.Overlap = hodeiv1.OverlapPolicy_OVERLAP_POLICY_SKIP
	}
	switch w := sc.CatchUpWindowMs; {
	case w < 0 || w > MaxCatchUpWindowMs:
		return nil, nil, schedInvalid("catch_up_window_ms %d is outside 0..%d (0 = default %d)", w, MaxCatchUpWindowMs, DefaultCatchUpWindowMs)
	case w == 0:
		sc.CatchUpWindowMs = DefaultCatchUpWindowMs
	}
	if j := sc.JitterMs; j < 0 || j > MaxJitterMs {
		return nil, nil, schedInvalid("jitter_ms %d is outside 0..%d", j, MaxJitterMs)
	}
	if n := len(sc.PauseNote); n > MaxPauseNoteBytes {
		return nil, nil, schedInvalid("pause_note is %d bytes, limit is %d", n, MaxPauseNoteBytes)
	}
	t := in.GetTemplate()
	if t == nil {
		return nil, nil, schedInvalid("template is required (the job each slot creates)")
	}
	if t.GetTenant() != "" && t.GetTenant() != sc.Tenant {
		return nil, nil, schedInvalid("template.tenant %q differs from the schedule's tenant %q", t.GetTenant(), sc.Tenant)
	}
	if t.GetIdempotencyKey() != "" {
		return nil, nil, schedInvalid("template.idempotency_key must be empty: the schedule sets one per slot")
	}
	// The stored template is normalized (defaults filled), so a slot's job
	// is a copy with its key and jitter: checked here with the longest key
	// and the largest delay a slot can give it.
	probe := proto.Clone(t).(*hodeiv1.JobSpec)
	probe.Tenant = sc.Tenant
	probe.IdempotencyKey = triggerIdempotencyKey(sc.Id, -1<<63)
	probe.DelayMs = satAdd(probe.GetDelayMs(), sc.JitterMs)
	if _, err := NormalizeSpec(probe, cfg); err != nil {
		return nil, nil, schedInvalid("template: %v", err)
	}
	probe.IdempotencyKey, probe.DelayMs = "", t.GetDelayMs()
	tmpl, err := NormalizeSpec(probe, cfg)
	if err != nil {
		return nil, nil, schedInvalid("template: %v", err)
	}
	sc.Template = tmpl
	return sc, cs, nil
}

// isScheduleCommand reports whether c is one of the schedule commands
// (entry version 4).
// scheduleOfCommand is the (tenant, id) a schedule write names.
func scheduleOfCommand(c *internalpb.Command) (tenant, id string) {
	switch k := c.GetKind().(type) {
	case *internalpb.Command_CreateSchedule:
		tenant, id = k.CreateSchedule.GetSchedule().GetTenant(), k.CreateSchedule.GetSchedule().GetId()
	case *internalpb.Command_PauseSchedule:
		tenant, id = k.PauseSchedule.GetTenant(), k.PauseSchedule.GetId()
	case *internalpb.Command_TriggerSchedule:
		tenant, id = k.TriggerSchedule.GetTenant(), k.TriggerSchedule.GetId()
	case *internalpb.Command_BackfillSchedule:
		tenant, id = k.BackfillSchedule.GetTenant(), k.BackfillSchedule.GetId()
	case *internalpb.Command_DeleteSchedule:
		tenant, id = k.DeleteSchedule.GetTenant(), k.DeleteSchedule.GetId()
	}
	if tenant == "" {
		tenant = DefaultTenant
	}
	return tenant, id
}

func isScheduleCommand(c *internalpb.Command) bool {
	switch c.GetKind().(type) {
	case *internalpb.Command_CreateSchedule, *internalpb.Command_PauseSchedule, *internalpb.Command_TriggerSchedule,
		*internalpb.Command_BackfillSchedule, *internalpb.Command_DeleteSchedule, *internalpb.Command_FireSchedules:
		return true
	}
	return false
}

// applySchedule dispatches the schedule commands.
func (s *state) applySchedule(now int64, c *internalpb.Command) *internalpb.CommandResult {
	if s.curVersion < EntryVersionSemantics {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "schedule commands need an entry of version %d, this one has version %d", EntryVersionSemantics, s.curVersion)
	}
	switch k := c.GetKind().(type) {
	case *internalpb.Command_CreateSchedule:
		return s.applyCreateSchedule(now, k.CreateSchedule)
	case *internalpb.Command_PauseSchedule:
		return s.applyPauseSchedule(now, k.PauseSchedule)
	case *internalpb.Command_TriggerSchedule:
		return s.applyTriggerSchedule(now, k.TriggerSchedule)
	case *internalpb.Command_BackfillSchedule:
		return s.applyBackfillSchedule(now, k.BackfillSchedule)
	case *internalpb.Command_DeleteSchedule:
		return s.applyDeleteSchedule(k.DeleteSchedule)
	case *internalpb.Command_FireSchedules:
		return s.applyFireSchedules(now, k.FireSchedules)
	}
	panic(fmt.Sprintf("fsm: applySchedule with %T", c.GetKind()))
}

func (s *state) findSchedule(tenant, id string) (*schedEntry, *internalpb.CommandResult) {
	if tenant == "" {
		tenant = DefaultTenant
	}
	e := s.schedules[schedKey(tenant, id)]
	if e == nil {
		return nil, errResult(internalpb.Code_CODE_NOT_FOUND, "schedule %q of tenant %q not found", id, tenant)
	}
	return e, nil
}

func (s *state) applyCreateSchedule(now int64, c *internalpb.CreateSchedule) *internalpb.CommandResult {
	sc, cs, err := ValidateSchedule(c.GetSchedule(), s.cfg)
	if err != nil {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "%v", err)
	}
	key := schedKey(sc.Tenant, sc.Id)
	if s.schedules[key] != nil {
		return errResult(internalpb.Code_CODE_ALREADY_EXISTS, "schedule %q of tenant %q already exists", sc.Id, sc.Tenant)
	}
	if len(s.schedules) >= MaxSchedulesPerShard {
		return errResult(internalpb.Code_CODE_RESOURCE_EXHAUSTED, "shard %d has %d schedules, the limit", s.cfg.Shard, MaxSchedulesPerShard)
	}
	sc.CreatedAtMs, sc.UpdatedAtMs = now, now
	e := &schedEntry{sc: sc, cs: cs}
	from := now
	if sc.StartMs > now {
		from = sc.StartMs - 1
	}
	sc.NextFireMs = e.next(from)
	s.schedules[key] = e
	s.indexSchedule(key, e)
	return &internalpb.CommandResult{Schedule: cloneSchedule(sc)}
}

// next is the first slot strictly after afterMs, within end_ms; 0 = none.
func (e *schedEntry) next(afterMs int64) int64 {
	t, ok := e.cs.Next(time.UnixMilli(afterMs))
	if !ok {
		return 0
	}
	ms := t.UnixMilli()
	if end := e.sc.GetEndMs(); end != 0 && ms > end {
		return 0
	}
	return ms
}

// indexSchedule puts an active schedule on the due timeline.
func (s *state) indexSchedule(key string, e *schedEntry) {
	if !e.sc.Paused && e.sc.NextFireMs != 0 {
		s.schedDue.ReplaceOrInsert(dueKey{e.sc.NextFireMs, key})
	}
}

func (s *state) unindexSchedule(key string, e *schedEntry) {
	s.schedDue.Delete(dueKey{e.sc.NextFireMs, key})
}

func (s *state) applyPauseSchedule(now int64, c *internalpb.PauseSchedule) *internalpb.CommandResult {
	e, bad := s.findSchedule(c.GetTenant(), c.GetId())
	if bad != nil {
		return bad
	}
	if n := len(c.GetNote()); n > MaxPauseNoteBytes {
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "note is %d bytes, limit is %d", n, MaxPauseNoteBytes)
	}
	key := schedKey(e.sc.Tenant, e.sc.Id)
	s.unindexSchedule(key, e)
	sc := e.sc
	if c.GetPaused() {
		sc.Paused, sc.PauseNote = true, c.GetNote()
	} else if sc.Paused {
		// Resume: slots that passed while paused are not made up.
		sc.Paused, sc.PauseNote = false, ""
		if sc.NextFireMs != 0 && sc.NextFireMs <= now {
			sc.NextFireMs = e.next(max(now, sc.LastFireMs))
		}
	}
	sc.UpdatedAtMs = now
	s.indexSchedule(key, e)
	return &internalpb.CommandResult{Schedule: cloneSchedule(sc)}
}

func (s *state) applyDeleteSchedule(c *internalpb.DeleteSchedule) *internalpb.CommandResult {
	e, bad := s.findSchedule(c.GetTenant(), c.GetId())
	if bad != nil {
		return bad
	}
	key := schedKey(e.sc.Tenant, e.sc.Id)
	s.unindexSchedule(key, e)
	delete(s.schedules, key)
	return &internalpb.CommandResult{}
}

// runSlot creates the job of a slot (or finds the one its key already
// made). dup is true when the job existed.
func (s *state) runSlot(now int64, e *schedEntry, slot int64, key string) (*hodeiv1.Job, bool) {
	if seq, ok := s.idem[idemKey(e.sc.Tenant, key)]; ok {
		return s.jobs[seq], true
	}
	// The template is normalized and was validated with the longest key
	// and the largest jitter (ValidateSchedule).
	n := proto.Clone(e.sc.Template).(*hodeiv1.JobSpec)
	n.IdempotencyKey = key
	n.DelayMs = satAdd(n.GetDelayMs(), cron.Jitter(e.sc.Id, slot, time.Duration(e.sc.JitterMs)*time.Millisecond).Milliseconds())
	j := s.createJob(now, n)
	j.ScheduleId = e.sc.Id
	j.ScheduleSlotMs = slot
	e.sc.Fired++
	return j, false
}

func (s *state) applyTriggerSchedule(now int64, c *internalpb.TriggerSchedule) *internalpb.CommandResult {
	e, bad := s.findSchedule(c.GetTenant(), c.GetId())
	if bad != nil {
		return bad
	}
	j, dup := s.runSlot(now, e, now, triggerIdempotencyKey(e.sc.Id, now))
	e.sc.LastJobId = j.GetId()
	e.sc.UpdatedAtMs = now
	return &internalpb.CommandResult{Schedule: cloneSchedule(e.sc),
		ScheduleJobs: []*hodeiv1.SubmitJobResponse{{Job: cloneJob(j), Duplicate: dup}}}
}

func (s *state) applyBackfillSchedule(now int64, c *internalpb.BackfillSchedule) *internalpb.CommandResult {
	e, bad := s.findSchedule(c.GetTenant(), c.GetId())
	if bad != nil {
		return bad
	}
	from, to := c.GetFromMs(), c.GetToMs()
	switch {
	case from <= 0:
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "from_ms must be > 0, got %d", from)
	case to < from:
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "to_ms (%d) is before from_ms (%d)", to, from)
	case to > now:
		return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "to_ms (%d) is in the future (now %d): backfill is for past slots", to, now)
	}
	var slots []int64
	for t, ok := e.cs.Next(time.UnixMilli(from - 1)); ok && t.UnixMilli() <= to; t, ok = e.cs.Next(t) {
		if len(slots) == MaxBackfillSlots {
			return errResult(internalpb.Code_CODE_INVALID_ARGUMENT, "from_ms..to_ms holds more than %d slots: backfill a shorter range", MaxBackfillSlots)
		}
		slots = append(slots, t.UnixMilli())
	}
	out := &internalpb.CommandResult{}
	for _, slot := range slots {
		j, dup := s.runSlot(now, e, slot, SlotIdempotencyKey(e.sc.Id, slot))
		out.ScheduleJobs = append(out.ScheduleJobs, &hodeiv1.SubmitJobResponse{Job: cloneJob(j), Duplicate: dup})
	}
	e.sc.UpdatedAtMs = now
	out.Schedule = cloneSchedule(e.sc)
	return out
}

// applyFireSchedules handles the due slots the leader names. A fire whose
// slot is not the schedule's next_fire_ms (already handled, or stale), of
// a paused or unknown schedule, or not yet due, changes nothing. A fire
// handles its slot and then the schedule's further due slots, up to
// MaxSlotsPerFire. Result: count = jobs created, schedule_jobs = them.
func (s *state) applyFireSchedules(now int64, c *internalpb.FireSchedules) *internalpb.CommandResult {
	out := &internalpb.CommandResult{}
	for _, f := range c.GetFires() {
		tenant := f.GetTenant()
		if tenant == "" {
			tenant = DefaultTenant
		}
		key := schedKey(tenant, f.GetId())
		e := s.schedules[key]
		if e == nil || e.sc.Paused || f.GetSlotMs() != e.sc.NextFireMs || f.GetSlotMs() == 0 || f.GetSlotMs() > now {
			continue
		}
		s.unindexSchedule(key, e)
		for n := 0; n < MaxSlotsPerFire && e.sc.NextFireMs != 0 && e.sc.NextFireMs <= now; n++ {
			if j := s.fireSlot(now, e); j != nil {
				out.ScheduleJobs = append(out.ScheduleJobs, &hodeiv1.SubmitJobResponse{Job: cloneJob(j)})
			}
		}
		e.sc.UpdatedAtMs = now
		s.indexSchedule(key, e)
	}
	out.Count = uint32(len(out.ScheduleJobs))
	return out
}

// fireSlot handles the slot next_fire_ms <= now: a slot older than the
// catch-up window is counted as missed, together with every other slot
// before the window; a slot inside it runs by the overlap policy. It
// returns the job created, if any.
func (s *state) fireSlot(now int64, e *schedEntry) *hodeiv1.Job {
	sc := e.sc
	slot := sc.NextFireMs
	cutoff := now - sc.CatchUpWindowMs
	if slot < cutoff {
		s.skipMissed(e, cutoff)
		return nil
	}
	sc.LastFireMs = slot
	sc.NextFireMs = e.next(slot)
	var prev *hodeiv1.Job
	if sc.LastJobId != "" {
		if j, ok := s.lookup(sc.LastJobId); ok && !isTerminal(j.GetState()) {
			prev = j
		}
	}
	if prev != nil {
		switch sc.Overlap {
		case hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL:
		case hodeiv1.OverlapPolicy_OVERLAP_POLICY_CANCEL_PREVIOUS:
			prev.CancelReason = fmt.Sprintf("cancelled by schedule %s: slot %d started", sc.Id, slot)
			s.finish(prev, hodeiv1.JobState_JOB_STATE_CANCELLED, now)
		case hodeiv1.OverlapPolicy_OVERLAP_POLICY_BUFFER_ONE:
			if sc.BufferedSlotMs == 0 {
				sc.BufferedSlotMs = slot
			} else {
				sc.Skipped++
			}
			return nil
		default: // skip
			sc.Skipped++
			return nil
		}
	}
	j, dup := s.runSlot(now, e, slot, SlotIdempotencyKey(sc.Id, slot))
	sc.LastJobId = j.GetId()
	if dup {
		return nil
	}
	return j
}

// skipMissed counts every slot from next_fire_ms up to (not including)
// cutoff as missed and moves next_fire_ms to the first slot at or after it.
func (s *state) skipMissed(e *schedEntry, cutoff int64) {
	sc := e.sc
	slot := sc.NextFireMs
	if d := e.cs.Every().Milliseconds(); d > 0 {
		last := slot + (cutoff-1-slot)/d*d // the last slot before cutoff
		if end := sc.EndMs; end != 0 && last > end {
			last = slot + (end-slot)/d*d
		}
		sc.Missed += uint64((last-slot)/d + 1)
		sc.LastFireMs = last
		sc.NextFireMs = e.next(last)
		return
	}
	steps := 0
	for slot != 0 && slot < cutoff && steps < maxMissedSteps {
		sc.Missed++
		sc.LastFireMs = slot
		slot = e.next(slot)
		steps++
	}
	if slot != 0 && slot < cutoff {
		slot = e.next(cutoff - 1)
	}
	sc.NextFireMs = slot
}

// scheduledJobFinished runs a buffer-one schedule's waiting slot when the
// run it waited for ends. Called by finish for jobs with a schedule id.
func (s *state) scheduledJobFinished(j *hodeiv1.Job, now int64) {
	e := s.schedules[schedKey(j.GetSpec().GetTenant(), j.GetScheduleId())]
	if e == nil || e.sc.BufferedSlotMs == 0 || e.sc.LastJobId != j.GetId() {
		return
	}
	slot := e.sc.BufferedSlotMs
	e.sc.BufferedSlotMs = 0
	nj, _ := s.runSlot(now, e, slot, SlotIdempotencyKey(e.sc.Id, slot))
	e.sc.LastJobId = nj.GetId()
}

// cloneSchedule copies a schedule for a reply or a reader; the template is
// shared (the FSM never changes it in place).
func cloneSchedule(sc *hodeiv1.Schedule) *hodeiv1.Schedule {
	c := proto.Clone(sc).(*hodeiv1.Schedule)
	return c
}

// sortedScheduleKeys returns the schedule keys in (tenant, id) order.
func (s *state) sortedScheduleKeys() []string {
	keys := make([]string, 0, len(s.schedules))
	for k := range s.schedules { // order fixed by the sort below
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// restoreSchedules rebuilds the schedules of a snapshot, which must be
// exactly what encodeSnapshot writes: sorted, unique, valid.
func (s *state) restoreSchedules(recs []*hodeiv1.Schedule) error {
	prev := ""
	for _, r := range recs {
		sc, cs, err := ValidateSchedule(r, s.cfg)
		if err != nil {
			return corrupt("schedule %q: %v", r.GetId(), err)
		}
		key := schedKey(sc.Tenant, sc.Id)
		if key <= prev {
			return corrupt("schedule %q out of order", r.GetId())
		}
		prev = key
		if r.GetCatchUpWindowMs() == 0 || r.GetOverlap() == hodeiv1.OverlapPolicy_OVERLAP_POLICY_UNSPECIFIED {
			return corrupt("schedule %q is not normalized", r.GetId())
		}
		e := &schedEntry{sc: r, cs: cs}
		s.schedules[key] = e
		s.indexSchedule(key, e)
	}
	return nil
}

// ---- reads ----

// GetSchedule returns a copy of a schedule ("" tenant = "default").
func (f *FSM) GetSchedule(tenant, id string) (*hodeiv1.Schedule, bool) {
	if tenant == "" {
		tenant = DefaultTenant
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	e := f.st.schedules[schedKey(tenant, id)]
	if e == nil {
		return nil, false
	}
	return cloneSchedule(e.sc), true
}

// ListSchedules returns copies of the schedules of tenant ("" = all), in
// (tenant, id) order.
func (f *FSM) ListSchedules(tenant string) []*hodeiv1.Schedule {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []*hodeiv1.Schedule
	for _, k := range f.st.sortedScheduleKeys() {
		e := f.st.schedules[k]
		if tenant == "" || e.sc.Tenant == tenant {
			out = append(out, cloneSchedule(e.sc))
		}
	}
	return out
}

// NextScheduleFire is the earliest next_fire_ms of an active schedule.
func (f *FSM) NextScheduleFire() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.st.schedDue.Min()
	return k.at, ok
}

// DueSchedules returns up to max fires for active schedules whose next
// slot is at or before nowMs, earliest first: what the leader proposes.
// O(log n + returned).
func (f *FSM) DueSchedules(nowMs int64, max int) []*internalpb.ScheduleFire {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []*internalpb.ScheduleFire
	f.st.schedDue.Ascend(func(k dueKey) bool {
		if k.at > nowMs || len(out) >= max {
			return false
		}
		e := f.st.schedules[k.key]
		out = append(out, &internalpb.ScheduleFire{Tenant: e.sc.Tenant, Id: e.sc.Id, SlotMs: k.at})
		return true
	})
	return out
}

// ScheduleTotals are the counters of one tenant's schedules in a shard.
type ScheduleTotals struct {
	Schedules, Paused      int
	Fired, Skipped, Missed uint64
}

// ScheduleTotals returns the per-tenant totals of this shard's schedules.
func (f *FSM) ScheduleTotals() map[string]ScheduleTotals {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := map[string]ScheduleTotals{}
	for _, e := range f.st.schedules {
		t := out[e.sc.Tenant]
		t.Schedules++
		if e.sc.Paused {
			t.Paused++
		}
		t.Fired += e.sc.Fired
		t.Skipped += e.sc.Skipped
		t.Missed += e.sc.Missed
		out[e.sc.Tenant] = t
	}
	return out
}
