package chaos

import (
	"strings"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// cleanEvidence is a small history that satisfies every invariant: two jobs
// submitted (one retried after an unknown outcome), read, one cancelled, both
// executed (one twice, at-least-once), drained, converged.
func cleanEvidence() *Evidence {
	a := JobKey{"t1", "k1"}
	b := JobKey{"t2", "k2"}
	ev := &Evidence{
		Ops: []Op{
			{Client: 0, Kind: OpSubmit, Job: a, Invoke: ms(0), Return: ms(5), Outcome: Unknown, Code: "DeadlineExceeded"},
			{Client: 0, Kind: OpSubmit, Job: a, JobID: "0-1", Invoke: ms(6), Return: ms(9), Outcome: OK, Found: true, State: StPending, Duplicate: true},
			{Client: 1, Kind: OpSubmit, Job: b, JobID: "1-1", Invoke: ms(1), Return: ms(4), Outcome: OK, Found: true, State: StPending},
			{Client: 1, Kind: OpGet, Job: a, JobID: "0-1", Invoke: ms(10), Return: ms(12), Outcome: OK, Found: true, State: StRunning, Attempts: 1},
			{Client: 0, Kind: OpGetStale, Job: a, JobID: "0-1", Invoke: ms(11), Return: ms(13), Outcome: OK, Found: true, State: StPending, Attempts: 0},
			{Client: 0, Kind: OpGet, Job: a, JobID: "0-1", Invoke: ms(20), Return: ms(22), Outcome: OK, Found: true, State: StRunning, Attempts: 2},
			{Client: 1, Kind: OpGet, Job: a, JobID: "0-1", Invoke: ms(30), Return: ms(32), Outcome: OK, Found: true, State: StSucceeded, Attempts: 2, ResultToken: 40, ResultAttempt: 2},
			{Client: 1, Kind: OpCancel, Job: a, JobID: "0-1", Invoke: ms(33), Return: ms(34), Outcome: Fail, Code: "FailedPrecondition"},
			{Client: 0, Kind: OpCancel, Job: b, JobID: "1-1", Invoke: ms(15), Return: ms(18), Outcome: OK, Found: true, State: StCancelled, Attempts: 1},
			{Client: 0, Kind: OpGet, Job: b, JobID: "1-1", Invoke: ms(19), Return: ms(21), Outcome: OK, Found: true, State: StCancelled, Attempts: 1},
			{Client: 2, Kind: OpGet, Job: b, JobID: "1-1", Invoke: ms(19), Return: ms(21), Outcome: Unknown, Code: "Unavailable"},
		},
		Execs: []Exec{
			{JobID: "0-1", Token: 20, Attempt: 1, Worker: "w1", Line: 1},
			{JobID: "1-1", Token: 21, Attempt: 1, Worker: "w2", Line: 2},
			{JobID: "0-1", Token: 40, Attempt: 2, Worker: "w2", Line: 3},
		},
		Final: []FinalJob{
			{Job: a, ID: "0-1", State: StSucceeded, Attempts: 2, ResultToken: 40, ResultAttempt: 2, ResultWorker: "w2"},
			{Job: b, ID: "1-1", State: StCancelled, Attempts: 1},
		},
		Drain: DrainResult{Drained: true, DrainTime: time.Second, Bound: 10 * time.Second, FinalWriteOK: true},
		Convergence: Convergence{Converged: true, Samples: []DigestSample{
			{Node: "n1", Shard: 0, Applied: 10, Digest: "aa"},
			{Node: "n2", Shard: 0, Applied: 9, Digest: "bb"},
			{Node: "n2", Shard: 0, Applied: 10, Digest: "aa"},
		}},
		LinTimeout: 5 * time.Second,
	}
	// the final read is part of the linearizable history
	for _, f := range ev.Final {
		ev.Ops = append(ev.Ops, Op{Client: 9, Kind: OpFinalRead, Job: f.Job, JobID: f.ID, Invoke: ms(100), Return: ms(101),
			Outcome: OK, Found: true, State: f.State, Attempts: f.Attempts, ResultToken: f.ResultToken, ResultAttempt: f.ResultAttempt})
	}
	return ev
}

func inv(t *testing.T, r CheckResult, id int) InvariantResult {
	t.Helper()
	for _, i := range r.Invariants {
		if i.ID == id {
			return i
		}
	}
	t.Fatalf("invariant %d missing", id)
	return InvariantResult{}
}

func TestCheckerCleanHistoryPasses(t *testing.T) {
	r := Check(cleanEvidence())
	for _, i := range r.Invariants {
		if !i.OK {
			t.Errorf("invariant %d (%s) failed: %v %v %s", i.ID, i.Name, i.JobIDs, i.Details, i.Note)
		}
	}
	if !r.OK {
		t.Fatal("clean history rejected")
	}
	if r.Linearizability.Ok != 2 || r.Linearizability.Illegal != 0 {
		t.Fatalf("lin = %+v", r.Linearizability)
	}
	if r.Counts.ExtraExecutions != 1 || r.Counts.JobsExecutedTwice != 1 || r.Counts.AcknowledgedJobs != 2 {
		t.Fatalf("counts = %+v", r.Counts)
	}
}

// Each case breaks one invariant of the clean history; the checker must
// report that invariant (and the run must fail).
func TestCheckerCatchesViolations(t *testing.T) {
	a := JobKey{"t1", "k1"}
	cases := []struct {
		name   string
		want   int
		break_ func(ev *Evidence)
		jobID  string
	}{
		{"1 lost acknowledged job", 1, func(ev *Evidence) {
			ev.Final = ev.Final[1:]
			ev.Ops = ev.Ops[:len(ev.Ops)-2]
		}, "0-1"},
		{"1 stuck job", 1, func(ev *Evidence) { ev.Final[1].State = StPending }, "1-1"},
		{"2 phantom job", 2, func(ev *Evidence) {
			ev.Final = append(ev.Final, FinalJob{Job: JobKey{"t9", "nobody"}, ID: "3-7", State: StSucceeded})
		}, "3-7"},
		{"2 executed job that does not exist", 2, func(ev *Evidence) {
			ev.Execs = append(ev.Execs, Exec{JobID: "2-2", Token: 5, Attempt: 1, Worker: "w1"})
		}, "2-2"},
		{"3 token did not increase", 3, func(ev *Evidence) { ev.Execs[2].Token = 10; ev.Final[0].ResultToken = 10 }, "0-1"},
		{"3 stale completion accepted", 3, func(ev *Evidence) {
			ev.Final[0].ResultToken, ev.Final[0].ResultAttempt = 20, 1
		}, "0-1"},
		{"3 two tokens for one attempt", 3, func(ev *Evidence) {
			ev.Execs = append(ev.Execs, Exec{JobID: "0-1", Token: 41, Attempt: 2, Worker: "w3"})
			ev.Final[0].ResultToken = 41
		}, "0-1"},
		{"3 one lease token executed twice", 3, func(ev *Evidence) {
			ev.Execs = append(ev.Execs, Exec{JobID: "0-1", Token: 40, Attempt: 2, Worker: "w3", Line: 4})
		}, "0-1"},
		{"3 completion accepted from a worker that did not hold the lease", 3, func(ev *Evidence) {
			ev.Final[0].ResultWorker = "w1"
		}, "0-1"},
		{"3 execution without a lease token when tokens are required", 3, func(ev *Evidence) {
			ev.RequireTokens = true
			ev.Execs = append(ev.Execs, Exec{JobID: "1-1", Token: 0, Attempt: 1, Worker: "w1", Line: 4})
		}, "1-1"},
		{"2 executed under another job's id", 2, func(ev *Evidence) {
			ev.Execs[1].Tenant, ev.Execs[1].Key = "t1", "k1" // ran as 1-1, but t1/k1 is 0-1
		}, "1-1"},
		{"4 two accepted completions", 4, func(ev *Evidence) {
			ev.Ops = append(ev.Ops, Op{Kind: OpGetStale, Job: a, JobID: "0-1", Invoke: ms(40), Return: ms(41), Outcome: OK,
				Found: true, State: StSucceeded, Attempts: 2, ResultToken: 20, ResultAttempt: 1})
		}, "0-1"},
		{"4 terminal state changed", 4, func(ev *Evidence) {
			ev.Ops = append(ev.Ops, Op{Kind: OpGetStale, Job: a, JobID: "0-1", Invoke: ms(40), Return: ms(41), Outcome: OK,
				Found: true, State: StFailed, Attempts: 2})
		}, "0-1"},
		{"5 state moved back", 5, func(ev *Evidence) {
			ev.Ops = append(ev.Ops, Op{Kind: OpGet, Job: a, JobID: "0-1", Invoke: ms(35), Return: ms(36), Outcome: OK,
				Found: true, State: StPending, Attempts: 2})
		}, "0-1"},
		{"5 attempts decreased", 5, func(ev *Evidence) {
			ev.Ops = append(ev.Ops, Op{Kind: OpGet, Job: a, JobID: "0-1", Invoke: ms(25), Return: ms(26), Outcome: OK,
				Found: true, State: StRunning, Attempts: 1})
		}, "0-1"},
		{"6 not drained", 6, func(ev *Evidence) { ev.Drain.Drained = false; ev.Drain.Stuck = []string{"0-1"} }, "0-1"},
		{"6 drained too slowly", 6, func(ev *Evidence) { ev.Drain.DrainTime = time.Minute }, "(drain)"},
		{"6 final write failed", 6, func(ev *Evidence) { ev.Drain.FinalWriteOK = false }, "(final-write)"},
		{"7 digests differ", 7, func(ev *Evidence) {
			ev.Convergence.Samples = append(ev.Convergence.Samples, DigestSample{Node: "n3", Shard: 0, Applied: 10, Digest: "cc"})
		}, "shard-0@10"},
		{"7 replica divergence logged", 7, func(ev *Evidence) {
			ev.Convergence.Divergences = []string{`n2: level=ERROR msg="replica divergence: ..." checkpoint_at=120 index=118`}
		}, "(divergence)"},
		{"7 never converged", 7, func(ev *Evidence) { ev.Convergence.Converged = false }, "(not-converged)"},
		{"8 stale linearizable read", 8, func(ev *Evidence) {
			// acknowledged, then a linearizable read says it does not exist
			ev.Ops = append(ev.Ops, Op{Client: 3, Kind: OpGet, Job: a, JobID: "0-1", Invoke: ms(14), Return: ms(15), Outcome: OK, Found: false, Code: "NotFound"})
		}, "0-1"},
		{"8 read of an uncancelled state after cancel ack", 8, func(ev *Evidence) {
			b := JobKey{"t2", "k2"}
			ev.Ops = append(ev.Ops, Op{Client: 3, Kind: OpGet, Job: b, JobID: "1-1", Invoke: ms(23), Return: ms(24), Outcome: OK, Found: true, State: StRunning, Attempts: 1})
		}, "1-1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := cleanEvidence()
			c.break_(ev)
			r := Check(ev)
			if r.OK {
				t.Fatal("violating history passed")
			}
			got := inv(t, r, c.want)
			if got.OK || got.Violations == 0 {
				t.Fatalf("invariant %d not reported: %+v", c.want, got)
			}
			found := false
			for _, id := range got.JobIDs {
				if id == c.jobID {
					found = true
				}
			}
			if !found {
				t.Fatalf("invariant %d: offending ids %v do not include %s (details %v)", c.want, got.JobIDs, c.jobID, got.Details)
			}
		})
	}
}

func TestLinearizabilityUnknownSubmitMayOrMayNotExist(t *testing.T) {
	k := JobKey{"t", "k"}
	// unknown submit, then NotFound by a read: fine (it did not happen)...
	ops := []Op{
		{Kind: OpSubmit, Job: k, Invoke: ms(0), Return: ms(5), Outcome: Unknown},
		{Kind: OpGet, Job: k, Invoke: ms(6), Return: ms(7), Outcome: OK, Found: false},
		{Kind: OpGet, Job: k, Invoke: ms(8), Return: ms(9), Outcome: OK, Found: true, State: StPending},
	}
	if r := CheckLinearizable(ops, time.Second, time.Second); r.Ok != 1 {
		t.Fatalf("late effect of an unknown submit rejected: %+v", r)
	}
	// ...but once seen, it cannot disappear.
	ops = append(ops, Op{Kind: OpGet, Job: k, Invoke: ms(10), Return: ms(11), Outcome: OK, Found: false})
	if r := CheckLinearizable(ops, time.Second, time.Second); r.Illegal != 1 {
		t.Fatalf("disappearing job accepted: %+v", r)
	}
}

func TestParseExecLog(t *testing.T) {
	in := "0-1 20 1 w1 t1\ngarbage\n0-1 40 2 w2 t1\n1-1 x 1 w\n"
	es, bad, err := ParseExecLog(strings.NewReader(in))
	if err != nil || bad != 2 || len(es) != 2 || es[1].Token != 40 || es[1].Attempt != 2 || es[0].Tenant != "t1" {
		t.Fatalf("got %+v bad=%d err=%v", es, bad, err)
	}
}

func TestExecWithoutEnvIsAttributedByKey(t *testing.T) {
	ev := cleanEvidence()
	ev.Execs = append(ev.Execs, Exec{JobID: "?", Token: 0, Attempt: 0, Worker: "?", Tenant: "t1", Key: "k1"})
	r := Check(ev)
	if !r.OK {
		t.Fatalf("rejected: %+v", r.Invariants)
	}
	if r.Counts.ExtraExecutions != 2 {
		t.Fatalf("extra executions = %d, want 2", r.Counts.ExtraExecutions)
	}
	ev = cleanEvidence()
	ev.Execs = append(ev.Execs, Exec{JobID: "?", Tenant: "t9", Key: "ghost"})
	if r := Check(ev); inv(t, r, 2).OK {
		t.Fatal("execution of a job nobody submitted passed")
	}
}

func TestDuplicatesSplitPlannedRetriesFromReexecutions(t *testing.T) {
	ev := cleanEvidence()
	// 0-1 ran twice: unplanned (its key does not end in -f)
	r := Check(ev)
	if r.Counts.PlannedRetries != 0 || r.Counts.UnplannedJobs != 1 || r.Counts.UnplannedExtra != 1 || r.Counts.FencingChecked != 3 {
		t.Fatalf("counts = %+v", r.Counts)
	}
	for i := range ev.Execs {
		ev.Execs[i].Tenant, ev.Execs[i].Key = "t1", "k1-f"
		if ev.Execs[i].JobID == "1-1" {
			ev.Execs[i].Tenant, ev.Execs[i].Key = "t2", "k2"
		}
	}
	r = Check(ev)
	if r.Counts.PlannedRetries != 1 || r.Counts.UnplannedJobs != 0 || r.Counts.UnplannedExtra != 0 {
		t.Fatalf("planned failure counted as a duplicate: %+v", r.Counts)
	}
	if !PlannedFailure("s1-c2-7-f") || PlannedFailure("s1-c2-7") {
		t.Fatal("PlannedFailure")
	}
}

// A job whose last attempt's lease expired (granted, never run: e.g. a
// forwarded poll timed out after the leader committed the lease) ends
// FAILED with that lease's token. That is the server's expiry record, not a
// completion: invariant 3 must not ask for an execution of it; the same
// token as a worker's completion must still be flagged.
func TestExpiredLastAttemptIsNotACompletion(t *testing.T) {
	ev := cleanEvidence()
	ev.Final[0].State, ev.Final[0].Attempts = StFailed, 3
	ev.Final[0].ResultToken, ev.Final[0].ResultAttempt, ev.Final[0].ResultExpired = 55, 3, true
	for i := range ev.Ops {
		if ev.Ops[i].Kind == OpFinalRead && ev.Ops[i].JobID == "0-1" {
			ev.Ops[i].State, ev.Ops[i].Attempts, ev.Ops[i].ResultToken, ev.Ops[i].ResultAttempt = StFailed, 3, 55, 3
		}
	}
	if r := inv(t, Check(ev), 3); !r.OK {
		t.Fatalf("expired last attempt flagged: %v", r.Details)
	}
	ev.Final[0].ResultExpired = false
	r := inv(t, Check(ev), 3)
	if r.OK || !strings.Contains(strings.Join(r.Details, " "), "no execution held") {
		t.Fatalf("a completion with a token nobody executed passed: %+v", r)
	}
}
