package chaos

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Exec is one execution of a job attempt, as written by the job itself into
// the run's exec log ("<job id> <lease token> <attempt> <worker id> <tenant>
// <idempotency key> <start ms> <planned ms>"; the last three may be
// missing). Job id "?" and token 0 mean the worker did not export them; the
// job is then identified by tenant and key.
type Exec struct {
	JobID   string `json:"job_id"`
	Key     string `json:"key,omitempty"`
	Token   uint64 `json:"token"`
	Attempt int32  `json:"attempt"`
	Worker  string `json:"worker"`
	Tenant  string `json:"tenant"`
	Line    int    `json:"line"`
	AtMs    int64  `json:"at_ms,omitempty"` // wall clock when it started (0: not written)
	// PlannedMs is how long the job planned to run after writing the line
	// (its sleep), -1 when the line does not say.
	PlannedMs int64 `json:"planned_ms,omitempty"`
}

// ParseExecLog reads an exec log. Lines that do not parse are counted, not
// fatal: a worker killed mid-write may leave a torn line.
func ParseExecLog(r io.Reader) (execs []Exec, bad int, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			bad++
			continue
		}
		tok, err1 := strconv.ParseUint(f[1], 10, 64)
		att, err2 := strconv.ParseInt(f[2], 10, 32)
		if err1 != nil || err2 != nil || f[0] == "" {
			bad++
			continue
		}
		e := Exec{JobID: f[0], Token: tok, Attempt: int32(att), Worker: f[3], Line: n, PlannedMs: -1}
		if len(f) > 4 {
			e.Tenant = f[4]
		}
		if len(f) > 5 {
			e.Key = f[5]
		}
		if len(f) > 6 {
			e.AtMs, _ = strconv.ParseInt(f[6], 10, 64)
		}
		if len(f) > 7 {
			if p, err := strconv.ParseInt(f[7], 10, 64); err == nil {
				e.PlannedMs = p
			}
		}
		execs = append(execs, e)
	}
	return execs, bad, sc.Err()
}

// ExecLine is the shell command a job runs to record its execution in the
// exec log: job id, lease token, attempt and worker from the HODEI_*
// environment, then tenant and key literally (so an execution is attributed
// even without the environment), then the start time in ms and the time the
// job plans to run after it (its sleep), in ms.
func ExecLine(tenant, key, execLog string, planned time.Duration) string {
	return fmt.Sprintf(`printf '%%s %%s %%s %%s %%s %%s %%s %%s\n' "${HODEI_JOB_ID:-?}" "${HODEI_LEASE_TOKEN:-0}" "${HODEI_ATTEMPT:-0}" "${HODEI_WORKER_ID:-?}" %s %s "$(date +%%s%%3N)" %d >> %s`,
		tenant, key, planned.Milliseconds(), shellQuote(execLog))
}

// FinalJob is a job as read from the cluster after heal and drain.
type FinalJob struct {
	Job           JobKey `json:"job"`
	ID            string `json:"id"`
	State         string `json:"state"`
	Attempts      int32  `json:"attempts"`
	ResultToken   uint64 `json:"result_token,omitempty"`
	ResultAttempt int32  `json:"result_attempt,omitempty"`
	ResultWorker  string `json:"result_worker,omitempty"`
	// ResultExpired: the last result is a lease expiry recorded by the
	// server, not a completion a worker reported (nobody need have run
	// that attempt: e.g. a lease granted to a forwarded poll that timed out).
	ResultExpired bool `json:"result_expired,omitempty"`
	// Wall-clock times (ms since the epoch) as the cluster stamped them, for
	// diagnosing slow drains: when it was created, last changed, ready to run
	// (after a delay or a retry backoff), leased until, and when the accepted
	// completion's attempt ran.
	CreatedAtMs     int64  `json:"created_at_ms,omitempty"`
	UpdatedAtMs     int64  `json:"updated_at_ms,omitempty"`
	ReadyAtMs       int64  `json:"ready_at_ms,omitempty"`
	LeaseWorker     string `json:"lease_worker,omitempty"`
	LeaseExpiresMs  int64  `json:"lease_expires_at_ms,omitempty"`
	ResultStartedMs int64  `json:"result_started_at_ms,omitempty"`
	ResultFinishMs  int64  `json:"result_finished_at_ms,omitempty"`
	// A job a cron schedule made (no client submitted it): the schedule's
	// id and the slot (ms) it is for (invariant 10, schedules.go).
	ScheduleID     string `json:"schedule_id,omitempty"`
	ScheduleSlotMs int64  `json:"schedule_slot_ms,omitempty"`
}

// DrainResult is what happened after the last fault was healed.
type DrainResult struct {
	HealedAt      time.Duration `json:"healed_at_ns"`
	Drained       bool          `json:"drained"`
	DrainTime     time.Duration `json:"drain_time_ns"` // from heal to every acknowledged job terminal
	Bound         time.Duration `json:"bound_ns"`      // allowed drain time
	FinalWriteOK  bool          `json:"final_write_ok"`
	FinalWriteErr string        `json:"final_write_err,omitempty"`
	Stuck         []string      `json:"stuck,omitempty"` // jobs not terminal at the last poll before the drain ended
	// StuckJobs are the first of those jobs as read at that poll, with the
	// cluster's timestamps; StartWallMs converts them to run time.
	StuckJobs []FinalJob `json:"stuck_jobs,omitempty"`
	// StuckExecs: per stuck job, its executions "attempt N token T on W at Xs".
	StuckExecs  map[string][]string `json:"stuck_execs,omitempty"`
	StartWallMs int64               `json:"start_wall_ms"`
	// ListErrors counts drain polls whose List failed (the cluster did not
	// answer a linearizable list of all jobs); LastListErr is the last error.
	ListErrors  int    `json:"list_errors,omitempty"`
	LastListErr string `json:"last_list_err,omitempty"`
}

// DigestSample is one node's view of one shard at one poll.
type DigestSample struct {
	At      time.Duration `json:"at_ns"`
	Node    string        `json:"node"`
	Shard   uint32        `json:"shard"`
	Applied uint64        `json:"applied_index"`
	Digest  string        `json:"fsm_digest"`
}

// Convergence is the record of the replica-convergence poll after the drain.
type Convergence struct {
	Samples []DigestSample `json:"samples,omitempty"`
	// Converged is set when, at one poll, every node reported the same
	// applied index and digest for every shard.
	Converged bool   `json:"converged"`
	Err       string `json:"err,omitempty"`
	// Divergences are the "replica divergence" lines of the node logs: a
	// replica consistency checkpoint that did not match (fsm/chain.go). It
	// catches replicas that applied different entries even when their
	// states agree again by the end of the run.
	Divergences []string `json:"divergences,omitempty"`
}

// Evidence is everything the checker looks at.
type Evidence struct {
	Ops         []Op
	Execs       []Exec
	BadExecLine int
	Final       []FinalJob
	FinalErr    string // non-empty if the final read could not complete
	Drain       DrainResult
	Convergence Convergence
	// LinTimeout bounds porcupine per job; 0 means 10s.
	LinTimeout time.Duration
	// LinTotal bounds porcupine over all jobs; 0 means 2 minutes.
	LinTotal time.Duration
	// WorkerFaults are the faults that killed or stopped workers or cut
	// their streams (invariant 9); LeaseTTL is the runs' lease TTL.
	WorkerFaults []WorkerFault
	LeaseTTL     time.Duration
	// RequireTokens makes an execution without HODEI_LEASE_TOKEN (or
	// HODEI_JOB_ID) a violation of invariant 3 instead of a note: the real
	// worker exports them, so their absence means fencing went unchecked.
	RequireTokens bool
	// Schedules: the run's cron schedules (invariant 10); their jobs are
	// not in Final.
	Schedules []*ScheduleEvidence
}

// InvariantResult is the verdict on one invariant.
type InvariantResult struct {
	ID         int      `json:"id"`
	Name       string   `json:"name"`
	OK         bool     `json:"ok"`
	Checked    int      `json:"checked"`    // how many jobs (or samples) were examined
	Violations int      `json:"violations"` // how many offended
	JobIDs     []string `json:"job_ids,omitempty"`
	Details    []string `json:"details,omitempty"`
	Note       string   `json:"note,omitempty"`
}

// LinResult is porcupine's verdict, one check per job.
type LinResult struct {
	Jobs        int      `json:"jobs"`
	Ok          int      `json:"ok"`
	Illegal     int      `json:"illegal"`
	Unknown     int      `json:"unknown"` // timed out: neither proven nor refuted
	IllegalJobs []string `json:"illegal_jobs,omitempty"`
	UnknownJobs []string `json:"unknown_jobs,omitempty"`
}

// Duplicates counts executions beyond the first (at-least-once is allowed).
type Duplicates struct {
	JobsExecuted      int `json:"jobs_executed"`
	Executions        int `json:"executions"`
	JobsExecutedTwice int `json:"jobs_executed_more_than_once"`
	ExtraExecutions   int `json:"extra_executions"`
	SameLeaseTwice    int `json:"same_lease_executed_twice"` // one lease token run twice
	// PlannedRetries are second attempts of jobs built to fail their first
	// (idempotency key ending in "-f"); UnplannedExtra are executions beyond
	// what the job asked for: re-runs after a lost lease (at-least-once).
	PlannedRetries     int `json:"planned_retry_executions"`
	UnplannedJobs      int `json:"jobs_reexecuted_unplanned"`
	UnplannedExtra     int `json:"unplanned_extra_executions"`
	FencingChecked     int `json:"executions_with_lease_token"`
	BadExecLogLines    int `json:"bad_exec_log_lines"`
	AcknowledgedJobs   int `json:"acknowledged_jobs"`
	LostJobs           int `json:"lost_jobs"`
	UnknownSubmitsSeen int `json:"unknown_submits_that_exist"`
}

// CheckResult is the checker's verdict.
type CheckResult struct {
	OK              bool              `json:"ok"`
	Invariants      []InvariantResult `json:"invariants"`
	Linearizability LinResult         `json:"linearizability"`
	Counts          Duplicates        `json:"counts"`
}

const maxListed = 50

type violations struct {
	ids     []string
	details []string
	n       int
	seen    map[string]bool
}

func (v *violations) add(id, detail string) {
	if v.seen == nil {
		v.seen = map[string]bool{}
	}
	if !v.seen[id] {
		v.seen[id] = true
		v.n++
		if len(v.ids) < maxListed {
			v.ids = append(v.ids, id)
		}
	}
	if detail != "" && len(v.details) < maxListed {
		v.details = append(v.details, detail)
	}
}

func (v *violations) result(id int, name string, checked int) InvariantResult {
	return InvariantResult{ID: id, Name: name, OK: v.n == 0, Checked: checked, Violations: v.n, JobIDs: v.ids, Details: v.details}
}

// index of the evidence by job.
type jobIndex struct {
	submitted map[JobKey]bool   // any submit invoked
	acked     map[JobKey]bool   // a submit answered ok
	notFailed map[JobKey]bool   // a submit answered ok or unknown
	idOf      map[JobKey]string // id learnt from any answer
	keyOf     map[string]JobKey // reverse
	final     map[JobKey]FinalJob
	finalByID map[string]FinalJob
}

func buildIndex(ev *Evidence) *jobIndex {
	ix := &jobIndex{
		submitted: map[JobKey]bool{}, acked: map[JobKey]bool{}, notFailed: map[JobKey]bool{},
		idOf: map[JobKey]string{}, keyOf: map[string]JobKey{},
		final: map[JobKey]FinalJob{}, finalByID: map[string]FinalJob{},
	}
	for _, op := range ev.Ops {
		if op.Kind == OpSubmit {
			ix.submitted[op.Job] = true
			if op.Outcome == OK {
				ix.acked[op.Job] = true
			}
			if op.Outcome != Fail {
				ix.notFailed[op.Job] = true
			}
		}
		if op.JobID != "" && op.Job.Key != "" {
			if _, ok := ix.idOf[op.Job]; !ok {
				ix.idOf[op.Job] = op.JobID
			}
			ix.keyOf[op.JobID] = op.Job
		}
	}
	for _, f := range ev.Final {
		ix.final[f.Job] = f
		if f.ID != "" {
			ix.finalByID[f.ID] = f
			ix.keyOf[f.ID] = f.Job
			if _, ok := ix.idOf[f.Job]; !ok {
				ix.idOf[f.Job] = f.ID
			}
		}
	}
	return ix
}

func (ix *jobIndex) label(k JobKey) string {
	if id := ix.idOf[k]; id != "" {
		return id
	}
	return k.String()
}

// Check runs every invariant over the evidence.
func Check(ev *Evidence) CheckResult {
	ix := buildIndex(ev)
	// attribute executions whose job id was not exported
	for i := range ev.Execs {
		e := &ev.Execs[i]
		if (e.JobID == "?" || e.JobID == "") && e.Key != "" {
			if id := ix.idOf[JobKey{e.Tenant, e.Key}]; id != "" {
				e.JobID = id
			} else {
				e.JobID = JobKey{e.Tenant, e.Key}.String()
			}
		}
	}
	var res CheckResult
	res.Invariants = append(res.Invariants,
		checkNoLoss(ev, ix),
		checkNoPhantom(ev, ix),
		checkFencing(ev, ix),
		checkSingleCompletion(ev, ix),
		checkMonotonic(ev, ix),
		checkDrain(ev),
		checkConvergence(ev),
	)
	lin := CheckLinearizable(ev.Ops, ev.LinTimeout, ev.LinTotal)
	res.Linearizability = lin
	inv8 := InvariantResult{ID: 8, Name: "linearizable reads (porcupine, per job)", OK: lin.Illegal == 0,
		Checked: lin.Jobs, Violations: lin.Illegal, JobIDs: lin.IllegalJobs}
	if lin.Unknown > 0 {
		inv8.Note = fmt.Sprintf("%d job histories timed out (Unknown), reported separately", lin.Unknown)
	}
	res.Invariants = append(res.Invariants, inv8, checkWorkerFaults(ev, ix), checkSchedules(ev.Schedules, ev.FinalErr))
	res.Counts = countExecutions(ev, ix)
	for k := range ix.acked {
		if _, ok := ix.final[k]; !ok && ev.FinalErr == "" {
			res.Counts.LostJobs++ // missing; stuck jobs are counted by invariant 1 only
		}
	}
	res.OK = true
	for _, inv := range res.Invariants {
		if !inv.OK {
			res.OK = false
		}
	}
	return res
}

// 1. Every acknowledged job exists after heal and drain, and is terminal.
func checkNoLoss(ev *Evidence, ix *jobIndex) InvariantResult {
	var v violations
	name := "no acknowledged job is lost (exists and terminal after drain)"
	if ev.FinalErr != "" {
		r := v.result(1, name, 0)
		r.OK, r.Violations, r.Note = false, 1, "final read failed: "+ev.FinalErr
		return r
	}
	keys := sortedKeys(ix.acked)
	for _, k := range keys {
		f, ok := ix.final[k]
		switch {
		case !ok:
			v.add(ix.label(k), "lost: acknowledged "+k.String()+" does not exist")
		case !IsTerminal(f.State):
			v.add(ix.label(k), fmt.Sprintf("stuck: %s is %s after drain", ix.label(k), f.State))
		}
	}
	return v.result(1, name, len(keys))
}

// 2. Nothing exists that no client submitted; nothing ran that does not exist.
func checkNoPhantom(ev *Evidence, ix *jobIndex) InvariantResult {
	var v violations
	name := "no phantom jobs"
	for _, f := range ev.Final {
		switch {
		case !ix.submitted[f.Job]:
			v.add(f.ID, "exists but never submitted: "+f.Job.String())
		case !ix.notFailed[f.Job]:
			v.add(f.ID, "exists although every submit of "+f.Job.String()+" failed definitely")
		}
	}
	for _, e := range ev.Execs {
		if e.Key == "" || e.JobID == "" {
			continue
		}
		k := JobKey{e.Tenant, e.Key}
		if id, ok := ix.idOf[k]; ok && id != e.JobID {
			v.add(e.JobID, fmt.Sprintf("ran as job %s (HODEI_JOB_ID) but %s is job %s", e.JobID, k, id))
		}
	}
	if ev.FinalErr == "" {
		for _, e := range ev.Execs {
			if _, ok := ix.finalByID[e.JobID]; !ok {
				v.add(e.JobID, "executed (token "+strconv.FormatUint(e.Token, 10)+") but does not exist after drain")
			}
		}
	}
	return v.result(2, name, len(ev.Final))
}

// 3. Fencing: tokens strictly increase with the attempt, one token per
// attempt, one execution per token, and the accepted completion carries the
// newest token ever executed and came from the worker that held it.
func checkFencing(ev *Evidence, ix *jobIndex) InvariantResult {
	var v violations
	name := "one lease holder at a time (fencing tokens increase; no stale completion accepted)"
	byJob := map[string][]Exec{}
	unknownTok, withTok := 0, 0
	lateStarts := 0
	var lateEx []string
	for _, e := range ev.Execs {
		if e.Token == 0 {
			unknownTok++ // the worker did not export its lease token
			if ev.RequireTokens {
				v.add(e.JobID, fmt.Sprintf("%s: execution (exec.log line %d) without HODEI_LEASE_TOKEN", e.JobID, e.Line))
			}
			continue
		}
		withTok++
		byJob[e.JobID] = append(byJob[e.JobID], e)
	}
	ids := make([]string, 0, len(byJob))
	for id := range byJob {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		es := byJob[id]
		tokOfAttempt := map[int32]uint64{}
		execOfTok := map[uint64]Exec{}
		var maxTok uint64
		for _, e := range es {
			if t, ok := tokOfAttempt[e.Attempt]; ok && t != e.Token {
				v.add(id, fmt.Sprintf("%s attempt %d ran under two tokens %d and %d", id, e.Attempt, t, e.Token))
			}
			tokOfAttempt[e.Attempt] = e.Token
			if p, ok := execOfTok[e.Token]; ok {
				v.add(id, fmt.Sprintf("%s lease token %d executed twice (%s line %d, %s line %d)", id, e.Token, p.Worker, p.Line, e.Worker, e.Line))
			}
			execOfTok[e.Token] = e
			if e.Token > maxTok {
				maxTok = e.Token
			}
		}
		// An execution that starts after one of a newer lease of its job
		// has started ran a lease that had already ended (a newer token is
		// granted only once the older lease is over): fencing refuses its
		// completion, but the job ran twice at once. Counted, not judged.
		for _, e := range es {
			for _, e2 := range es {
				if e2.Token > e.Token && e.AtMs > 0 && e2.AtMs > 0 && e.AtMs > e2.AtMs {
					lateStarts++
					if len(lateEx) < 5 {
						lateEx = append(lateEx, fmt.Sprintf("%s token %d on %s started %d ms after token %d on %s", id, e.Token, e.Worker, e.AtMs-e2.AtMs, e2.Token, e2.Worker))
					}
					break
				}
			}
		}
		atts := make([]int32, 0, len(tokOfAttempt))
		for a := range tokOfAttempt {
			atts = append(atts, a)
		}
		sort.Slice(atts, func(i, j int) bool { return atts[i] < atts[j] })
		for i := 1; i < len(atts); i++ {
			if tokOfAttempt[atts[i]] <= tokOfAttempt[atts[i-1]] {
				v.add(id, fmt.Sprintf("%s token did not increase: attempt %d token %d, attempt %d token %d",
					id, atts[i-1], tokOfAttempt[atts[i-1]], atts[i], tokOfAttempt[atts[i]]))
			}
		}
		f, ok := ix.finalByID[id]
		if !ok || f.ResultToken == 0 || (f.State != StSucceeded && f.State != StFailed && f.State != StDead) {
			continue
		}
		if f.ResultToken < maxTok {
			v.add(id, fmt.Sprintf("%s completion accepted with token %d after a lease with token %d was granted", id, f.ResultToken, maxTok))
		}
		e, found := execOfTok[f.ResultToken]
		switch {
		case f.ResultExpired:
			// An expiry: the server's own record, no completion to attribute.
		case !found:
			v.add(id, fmt.Sprintf("%s completion accepted with token %d that no execution held", id, f.ResultToken))
		case f.ResultWorker != "" && e.Worker != "?" && f.ResultWorker != e.Worker:
			v.add(id, fmt.Sprintf("%s completion with token %d accepted from %s, but %s held that lease", id, f.ResultToken, f.ResultWorker, e.Worker))
		}
	}
	r := v.result(3, name, len(ids))
	r.Note = fmt.Sprintf("%d executions of %d jobs carried a lease token; heartbeats are not observable from outside, checked through executions and accepted completions", withTok, len(ids))
	if lateStarts > 0 {
		r.Note += fmt.Sprintf("; %d executions started after an execution of a newer lease of their job had started (a lease run after it had ended; e.g. %s)",
			lateStarts, strings.Join(lateEx, "; "))
	}
	switch {
	case unknownTok > 0:
		r.Note += fmt.Sprintf("; %d executions without HODEI_LEASE_TOKEN could not be checked", unknownTok)
	case withTok == 0 && len(ev.Execs) > 0:
		r.Note += "; NOT CHECKED: no execution carried a lease token"
	}
	return r
}

// 4. At most one accepted completion per job; a terminal state never changes.
func checkSingleCompletion(ev *Evidence, ix *jobIndex) InvariantResult {
	var v violations
	name := "at most one accepted completion per job; terminal states never change"
	type obs struct {
		st       string
		tok      uint64
		att      int32
		ret, inv time.Duration
		kind     OpKind
	}
	byJob := map[JobKey][]obs{}
	for _, op := range ev.Ops {
		if op.Outcome != OK || !op.Found || op.State == "" {
			continue
		}
		byJob[op.Job] = append(byJob[op.Job], obs{op.State, op.ResultToken, op.ResultAttempt, op.Return, op.Invoke, op.Kind})
	}
	for _, f := range ev.Final {
		byJob[f.Job] = append(byJob[f.Job], obs{f.State, f.ResultToken, f.ResultAttempt, 1<<62 + 1, 1 << 62, OpFinalRead})
	}
	keys := make([]JobKey, 0, len(byJob))
	for k := range byJob {
		keys = append(keys, k)
	}
	sortKeys(keys)
	for _, k := range keys {
		os := byJob[k]
		var term *obs
		firstTermReturn := time.Duration(1 << 62)
		for i := range os {
			o := &os[i]
			if !IsTerminal(o.st) {
				continue
			}
			if o.ret < firstTermReturn {
				firstTermReturn = o.ret
			}
			if term == nil {
				term = o
				continue
			}
			if o.st != term.st {
				v.add(ix.label(k), fmt.Sprintf("%s seen terminal as %s and as %s", ix.label(k), term.st, o.st))
			}
			if o.tok != 0 && term.tok != 0 && (o.tok != term.tok || o.att != term.att) {
				v.add(ix.label(k), fmt.Sprintf("%s two accepted completions: token %d attempt %d and token %d attempt %d",
					ix.label(k), term.tok, term.att, o.tok, o.att))
			}
			if term.tok == 0 && o.tok != 0 {
				term = o
			}
		}
		for _, o := range os {
			linear := o.kind != OpGetStale
			if linear && !IsTerminal(o.st) && o.inv > firstTermReturn {
				v.add(ix.label(k), fmt.Sprintf("%s read %s after it was seen terminal", ix.label(k), o.st))
			}
		}
	}
	return v.result(4, name, len(keys))
}

func rank(st string) int {
	switch st {
	case StPending, StRunning:
		return 1
	case StSucceeded, StFailed, StCancelled, StDead:
		return 2
	}
	return 0
}

// 5. States only move forward and attempts never decrease, across
// linearizable observations ordered in real time.
func checkMonotonic(ev *Evidence, ix *jobIndex) InvariantResult {
	var v violations
	name := "states only move forward; attempts never decrease"
	type obs struct {
		inv, ret time.Duration
		st       string
		att      int32
	}
	byJob := map[JobKey][]obs{}
	for _, op := range ev.Ops {
		if op.Outcome != OK || !op.Found || op.State == "" || op.Kind == OpGetStale {
			continue
		}
		byJob[op.Job] = append(byJob[op.Job], obs{op.Invoke, op.Return, op.State, op.Attempts})
	}
	for _, f := range ev.Final {
		byJob[f.Job] = append(byJob[f.Job], obs{1 << 62, 1<<62 + 1, f.State, f.Attempts})
	}
	keys := make([]JobKey, 0, len(byJob))
	for k := range byJob {
		keys = append(keys, k)
	}
	sortKeys(keys)
	for _, k := range keys {
		os := byJob[k]
		byInv := append([]obs(nil), os...)
		sort.Slice(byInv, func(i, j int) bool { return byInv[i].inv < byInv[j].inv })
		byRet := append([]obs(nil), os...)
		sort.Slice(byRet, func(i, j int) bool { return byRet[i].ret < byRet[j].ret })
		j := 0
		maxRank, maxAtt := 0, int32(0)
		var maxRankSt string
		for _, b := range byInv {
			for j < len(byRet) && byRet[j].ret < b.inv {
				a := byRet[j]
				if rank(a.st) > maxRank {
					maxRank, maxRankSt = rank(a.st), a.st
				}
				if a.att > maxAtt {
					maxAtt = a.att
				}
				j++
			}
			if rank(b.st) < maxRank {
				v.add(ix.label(k), fmt.Sprintf("%s moved back from %s to %s", ix.label(k), maxRankSt, b.st))
			}
			if b.att < maxAtt {
				v.add(ix.label(k), fmt.Sprintf("%s attempts went back from %d to %d", ix.label(k), maxAtt, b.att))
			}
		}
	}
	return v.result(5, name, len(keys))
}

// 6. The queue drains in bounded time after healing and a final write succeeds.
func checkDrain(ev *Evidence) InvariantResult {
	var v violations
	name := "queue drains after heal within the bound; a final write succeeds"
	d := ev.Drain
	if !d.Drained {
		for _, id := range d.Stuck {
			v.add(id, "")
		}
		if v.n == 0 {
			v.add("(drain)", "")
		}
		v.details = append(v.details, fmt.Sprintf("not drained within %v", d.Bound))
	} else if d.DrainTime > d.Bound {
		v.add("(drain)", fmt.Sprintf("drained in %v, bound %v", d.DrainTime.Round(time.Millisecond), d.Bound))
	}
	if !d.FinalWriteOK {
		v.add("(final-write)", "final write failed: "+d.FinalWriteErr)
	}
	r := v.result(6, name, 1)
	r.Note = fmt.Sprintf("drain time %v, bound %v", d.DrainTime.Round(time.Millisecond), d.Bound)
	return r
}

// 7. Replicas converge: equal digests at equal applied indexes, and at one
// poll every node at the same index.
func checkConvergence(ev *Evidence) InvariantResult {
	var v violations
	name := "replicas converge (equal FSM digest at equal applied index)"
	c := ev.Convergence
	type k struct {
		shard   uint32
		applied uint64
	}
	first := map[k]DigestSample{}
	for _, s := range c.Samples {
		if s.Digest == "" {
			continue
		}
		kk := k{s.Shard, s.Applied}
		f, ok := first[kk]
		if !ok {
			first[kk] = s
			continue
		}
		if f.Digest != s.Digest {
			v.add(fmt.Sprintf("shard-%d@%d", s.Shard, s.Applied),
				fmt.Sprintf("shard %d index %d: %s has %.12s, %s has %.12s", s.Shard, s.Applied, f.Node, f.Digest, s.Node, s.Digest))
		}
	}
	for _, d := range c.Divergences {
		v.add("(divergence)", d)
	}
	if !c.Converged && v.n == 0 {
		v.add("(not-converged)", "nodes never reported the same applied index and digest: "+c.Err)
	}
	return v.result(7, name, len(c.Samples))
}

func countExecutions(ev *Evidence, ix *jobIndex) Duplicates {
	var d Duplicates
	per := map[string]int{}
	perLease := map[string]int{}
	for _, e := range ev.Execs {
		per[e.JobID]++
		if e.Token != 0 {
			perLease[e.JobID+"#"+strconv.FormatUint(e.Token, 10)]++
		}
	}
	planned := map[string]bool{}
	for _, e := range ev.Execs {
		if e.Token != 0 {
			d.FencingChecked++
		}
		if PlannedFailure(e.Key) {
			planned[e.JobID] = true
		}
	}
	d.Executions = len(ev.Execs)
	d.JobsExecuted = len(per)
	for id, n := range per {
		if n > 1 {
			d.JobsExecutedTwice++
			d.ExtraExecutions += n - 1
		}
		want := 1
		if planned[id] {
			want = 2
			if n >= 2 {
				d.PlannedRetries++
			}
		}
		if n > want {
			d.UnplannedJobs++
			d.UnplannedExtra += n - want
		}
	}
	for _, n := range perLease {
		if n > 1 {
			d.SameLeaseTwice += n - 1
		}
	}
	d.BadExecLogLines = ev.BadExecLine
	d.AcknowledgedJobs = len(ix.acked)
	for k := range ix.notFailed {
		if !ix.acked[k] {
			if _, ok := ix.final[k]; ok {
				d.UnknownSubmitsSeen++
			}
		}
	}
	return d
}

// PlannedFailure reports whether the workload built the job with this
// idempotency key to fail its first attempt.
func PlannedFailure(key string) bool { return strings.HasSuffix(key, "-f") }

func sortedKeys(m map[JobKey]bool) []JobKey {
	out := make([]JobKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sortKeys(out)
	return out
}

func sortKeys(ks []JobKey) {
	sort.Slice(ks, func(i, j int) bool {
		if ks[i].Tenant != ks[j].Tenant {
			return ks[i].Tenant < ks[j].Tenant
		}
		return ks[i].Key < ks[j].Key
	})
}
