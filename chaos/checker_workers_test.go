package chaos

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// workerFaultEvidence: w1 is killed at t=10,000 ms while running job 0-1
// (attempt 1, token 20, started at 9,000 ms, planned 2,000 ms); w2 runs
// attempt 2 (token 30) at 14,000 ms (4 s later: after the lease expired)
// and its completion is accepted. Job 1-1 ran on w1 too but ended before
// the kill.
func workerFaultEvidence() *Evidence {
	a, b := JobKey{"t1", "k1"}, JobKey{"t2", "k2"}
	return &Evidence{
		Ops: []Op{
			{Kind: OpSubmit, Job: a, JobID: "0-1", Invoke: ms(0), Return: ms(5), Outcome: OK, Found: true, State: StPending},
			{Kind: OpSubmit, Job: b, JobID: "1-1", Invoke: ms(0), Return: ms(5), Outcome: OK, Found: true, State: StPending},
		},
		Execs: []Exec{
			{JobID: "0-1", Token: 20, Attempt: 1, Worker: "w1", Tenant: "t1", Key: "k1", AtMs: 9000, PlannedMs: 2000, Line: 1},
			{JobID: "1-1", Token: 21, Attempt: 1, Worker: "w1", Tenant: "t2", Key: "k2", AtMs: 9000, PlannedMs: 5, Line: 2},
			{JobID: "0-1", Token: 30, Attempt: 2, Worker: "w2", Tenant: "t1", Key: "k1", AtMs: 14000, PlannedMs: 2000, Line: 3},
		},
		Final: []FinalJob{
			{Job: a, ID: "0-1", State: StSucceeded, Attempts: 2, ResultToken: 30, ResultAttempt: 2, ResultWorker: "w2"},
			{Job: b, ID: "1-1", State: StSucceeded, Attempts: 1, ResultToken: 21, ResultAttempt: 1, ResultWorker: "w1"},
		},
		Drain:        DrainResult{Drained: true, DrainTime: time.Second, Bound: 10 * time.Second, FinalWriteOK: true},
		Convergence:  Convergence{Converged: true, Samples: []DigestSample{{Node: "n1", Shard: 0, Applied: 10, Digest: "aa"}}},
		LeaseTTL:     5 * time.Second,
		WorkerFaults: []WorkerFault{{Kind: FaultWorkerCrash, Signal: "kill", Workers: []string{"w1"}, AtMs: 10000, EndMs: 18000}},
	}
}

func TestWorkerFaultsCleanPasses(t *testing.T) {
	r := Check(workerFaultEvidence())
	got := inv(t, r, 9)
	if !got.OK || got.Checked != 1 {
		t.Fatalf("invariant 9: %+v", got)
	}
	if !strings.Contains(got.Note, "1 came back (1 leased again") || !strings.Contains(got.Note, "4.0 / 4.0 / 4.0 s") {
		t.Fatalf("note: %s", got.Note)
	}
	if !r.OK {
		t.Fatalf("clean history failed: %+v", r.Invariants)
	}
}

func TestWorkerFaultsCatchViolations(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(ev *Evidence)
	}{
		{"completion of a killed worker's running attempt accepted", func(ev *Evidence) {
			ev.Execs = ev.Execs[:2]
			ev.Final[0].ResultToken, ev.Final[0].ResultAttempt, ev.Final[0].ResultWorker, ev.Final[0].Attempts = 20, 1, "w1", 1
		}},
		{"a read saw it accepted", func(ev *Evidence) {
			ev.Ops = append(ev.Ops, Op{Kind: OpGetStale, Job: JobKey{"t1", "k1"}, JobID: "0-1", Invoke: ms(12000), Return: ms(12001),
				Outcome: OK, Found: true, State: StSucceeded, Attempts: 1, ResultToken: 20, ResultAttempt: 1})
		}},
		{"leased again before the lease could expire", func(ev *Evidence) { ev.Execs[2].AtMs = 10500 }},
		{"never came back", func(ev *Evidence) {
			ev.Execs = ev.Execs[:2]
			ev.Final[0].ResultToken, ev.Final[0].ResultAttempt = 0, 0
		}},
		{"late completion of a worker stopped past its TTL accepted", func(ev *Evidence) {
			ev.WorkerFaults[0] = WorkerFault{Kind: FaultWorkerPause, Signal: "stop", Workers: []string{"w1"}, AtMs: 10000, EndMs: 24000}
			ev.Execs = ev.Execs[:2]
			ev.Final[0].ResultToken, ev.Final[0].ResultAttempt, ev.Final[0].ResultWorker, ev.Final[0].Attempts = 20, 1, "w1", 1
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := workerFaultEvidence()
			c.break_(ev)
			got := inv(t, Check(ev), 9)
			if got.OK || len(got.JobIDs) != 1 || got.JobIDs[0] != "0-1" {
				t.Fatalf("invariant 9 not reported for 0-1: %+v", got)
			}
		})
	}
}

// Not judged: a stop shorter than two TTLs (the late completion may be
// accepted), a completion that may have left before the signal, and a
// node kill (reported only).
func TestWorkerFaultsNotJudged(t *testing.T) {
	accepted := func(ev *Evidence) {
		ev.Execs = ev.Execs[:2]
		ev.Final[0].ResultToken, ev.Final[0].ResultAttempt, ev.Final[0].ResultWorker, ev.Final[0].Attempts = 20, 1, "w1", 1
	}
	for name, f := range map[string]func(ev *Evidence){
		"short stop": func(ev *Evidence) {
			ev.WorkerFaults[0] = WorkerFault{Kind: FaultWorkers, Signal: "stop", Workers: []string{"w1"}, AtMs: 10000, EndMs: 18000}
			accepted(ev)
		},
		"finished before the signal": func(ev *Evidence) { ev.Execs[0].PlannedMs = 1010; accepted(ev) },
		"node kill": func(ev *Evidence) {
			ev.WorkerFaults[0] = WorkerFault{Kind: FaultStreamNode, Workers: []string{"w1"}, AtMs: 10000, EndMs: 14000}
			accepted(ev)
		},
	} {
		t.Run(name, func(t *testing.T) {
			ev := workerFaultEvidence()
			f(ev)
			if got := inv(t, Check(ev), 9); !got.OK {
				t.Fatalf("judged: %+v", got)
			}
		})
	}
}

// The sequential fast path agrees with porcupine on random histories of
// one job whose operations do not overlap.
func TestSequentialAgreesWithPorcupine(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	states := []string{StPending, StRunning, StSucceeded, StFailed, StCancelled}
	kinds := []OpKind{OpSubmit, OpGet, OpCancel, OpFinalRead}
	illegal, legal := 0, 0
	for n := 0; n < 3000; n++ {
		var ops []Op
		at := time.Duration(0)
		for i := 0; i < 1+rng.IntN(5); i++ {
			op := Op{Kind: kinds[rng.IntN(len(kinds))], Job: JobKey{"t", "k"}, Invoke: at, Return: at + ms(1), Outcome: OK}
			at += ms(2)
			switch rng.IntN(4) {
			case 0:
				if op.Kind != OpGet && op.Kind != OpFinalRead {
					op.Outcome, op.Code = Fail, []string{"NotFound", "FailedPrecondition", "InvalidArgument"}[rng.IntN(3)]
				}
			case 1:
				op.Found = false
			default:
				op.Found, op.State, op.Attempts = true, states[rng.IntN(len(states))], int32(rng.IntN(3))
			}
			ops = append(ops, op)
		}
		var pops []porcupine.Operation
		for _, op := range ops {
			if po, ok := linOps(op); ok {
				pops = append(pops, po)
			}
		}
		ok, applicable := sequential(pops)
		if !applicable {
			t.Fatalf("history %d has no overlap but was not sequential: %+v", n, ops)
		}
		want := porcupine.CheckOperations(jobModel, pops)
		if ok != want {
			t.Fatalf("history %d: sequential says %v, porcupine %v: %+v", n, ok, want, ops)
		}
		if ok {
			legal++
		} else {
			illegal++
		}
	}
	if legal < 100 || illegal < 100 {
		t.Fatalf("too few of one kind: %d legal, %d illegal", legal, illegal)
	}
}

func TestExecPayloadAndLine(t *testing.T) {
	for _, p := range []ExecPayload{{}, {Sleep: 50 * time.Millisecond}, {Sleep: 2 * time.Second, FailFirst: true}} {
		got, err := ParseExecPayload(p.Encode())
		if err != nil || got != p {
			t.Fatalf("%+v -> %q -> %+v, %v", p, p.Encode(), got, err)
		}
	}
	if _, err := ParseExecPayload([]byte("ms=x")); err == nil {
		t.Fatal("bad payload parsed")
	}
	line := appendExecLine(nil, "3-17", 42, 2, "w3", "t07", "s1-c0-5-f", 1700000000123, 300)
	es, bad, err := ParseExecLog(strings.NewReader(string(line)))
	if err != nil || bad != 0 || len(es) != 1 {
		t.Fatalf("%q: %+v %d %v", line, es, bad, err)
	}
	e := es[0]
	if e.JobID != "3-17" || e.Token != 42 || e.Attempt != 2 || e.Worker != "w3" || e.Tenant != "t07" || e.Key != "s1-c0-5-f" ||
		e.AtMs != 1700000000123 || e.PlannedMs != 300 {
		t.Fatalf("parsed %+v", e)
	}
}
