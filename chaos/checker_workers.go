package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// WorkerFault is a fault that hit worker processes, in wall-clock ms (the
// clock of the exec log), for invariant 9.
type WorkerFault struct {
	Kind string `json:"kind"`
	// Signal is what the workers got: "kill" (SIGKILL), "stop" (SIGSTOP
	// until EndMs), "reset" (their TCP connections reset; the first at
	// AtMs), or "" when the node their streams were on was killed.
	Signal  string   `json:"signal"`
	Workers []string `json:"workers"`
	AtMs    int64    `json:"at_ms"`
	EndMs   int64    `json:"end_ms"` // restart, SIGCONT or the node's restart
}

// WorkerFaultsOf converts the run's fault events (times since start) to
// WorkerFaults.
func WorkerFaultsOf(events []FaultEvent, startWallMs int64) []WorkerFault {
	var out []WorkerFault
	for _, e := range events {
		if len(e.Workers) == 0 || e.Err != "" {
			continue
		}
		out = append(out, WorkerFault{Kind: e.Kind, Signal: e.Signal, Workers: e.Workers,
			AtMs: startWallMs + e.Start.Milliseconds(), EndMs: startWallMs + e.Heal.Milliseconds()})
	}
	return out
}

// runningMargin: an execution counts as running at a signal only if its
// planned end is at least this much after it (its handler had not returned,
// so no completion of it can have been sent before).
const runningMargin = 20

// MustRefuse reports whether a stopped worker's leases had all surely
// expired before it could send anything again: stopped for at least two
// lease TTLs (the lease's TTL, plus a new leader's grace of one TTL) and a
// second for the expiry to be applied.
func (f WorkerFault) MustRefuse(ttl time.Duration) bool {
	switch f.Signal {
	case "kill":
		return true
	case "stop":
		return time.Duration(f.EndMs-f.AtMs)*time.Millisecond >= 2*ttl+time.Second
	}
	return false
}

// 9. Attempts that were running in a worker when it was killed, or stopped
// past its leases' expiry: none of their completions is accepted, and their
// jobs come back (leased again, or ended by the expiry) no earlier than a
// third of a TTL after the signal (the worker extended every TTL/3 until
// then, so its leases were valid for at least 2/3 TTL more). For streams
// cut by a node kill or a TCP reset the figures are reported, not judged: the workers
// reconnect and complete with their still-valid tokens, or the leases
// expire.
func checkWorkerFaults(ev *Evidence, ix *jobIndex) InvariantResult {
	var v violations
	name := "attempts of killed or stopped workers: no completion accepted; jobs come back after the lease"
	ttl := ev.LeaseTTL
	if ttl <= 0 {
		ttl = 5 * time.Second
	}
	byJob := map[string][]Exec{}
	byWorker := map[string][]Exec{}
	for _, e := range ev.Execs {
		if e.Token == 0 {
			continue
		}
		byJob[e.JobID] = append(byJob[e.JobID], e)
		byWorker[e.Worker] = append(byWorker[e.Worker], e)
	}
	// accepted results seen by any read, per job: token -> seen
	seenAccepted := map[string]map[uint64]bool{}
	for _, op := range ev.Ops {
		if op.Outcome != OK || !op.Found || op.ResultToken == 0 || op.ResultExpired || !IsTerminal(op.State) || op.State == StCancelled {
			continue
		}
		id := op.JobID
		if id == "" {
			id = ix.idOf[op.Job]
		}
		if seenAccepted[id] == nil {
			seenAccepted[id] = map[uint64]bool{}
		}
		seenAccepted[id][op.ResultToken] = true
	}
	type tally struct {
		faults, running, accepted, cameBack, expired, cancelled, kept, reexec int
		delays                                                                []int64
	}
	tallies := map[string]*tally{}
	var kinds []string
	checked := 0
	for _, wf := range ev.WorkerFaults {
		key := wf.Kind + "/" + wf.Signal
		t := tallies[key]
		if t == nil {
			t = &tally{}
			tallies[key] = t
			kinds = append(kinds, key)
		}
		t.faults++
		judge := wf.MustRefuse(ttl)
		what := map[string]string{"kill": "killed", "stop": "stopped", "reset": "reset", "": "cut from its node"}[wf.Signal]
		for _, w := range wf.Workers {
			for _, e := range byWorker[w] {
				if e.AtMs == 0 || e.PlannedMs < 0 || e.AtMs > wf.AtMs || e.AtMs+e.PlannedMs <= wf.AtMs+runningMargin {
					continue
				}
				t.running++
				checked++
				f, ok := ix.finalByID[e.JobID]
				if !ok {
					continue // invariants 1 and 2
				}
				if f.State == StCancelled {
					t.cancelled++
					continue
				}
				accepted := (f.ResultToken == e.Token && !f.ResultExpired && IsTerminal(f.State)) || seenAccepted[e.JobID][e.Token]
				if accepted {
					t.accepted++
					t.kept++
					if judge {
						v.add(e.JobID, fmt.Sprintf("%s attempt %d (token %d) ran on %s, which was %s at %s (%s), yet its completion was accepted",
							e.JobID, e.Attempt, e.Token, w, what, fmtMs(wf.AtMs), wf.Kind))
					}
					continue
				}
				var next *Exec
				for i, e2 := range byJob[e.JobID] {
					if e2.Token > e.Token && (next == nil || e2.Token < next.Token) {
						next = &byJob[e.JobID][i]
					}
				}
				switch {
				case next != nil:
					t.cameBack++
					t.reexec++
					d := next.AtMs - wf.AtMs
					t.delays = append(t.delays, d)
					if judge && time.Duration(d)*time.Millisecond < ttl/3 {
						v.add(e.JobID, fmt.Sprintf("%s attempt %d (token %d) ran on %s, %s at %s; attempt %d (token %d) started on %s only %d ms later, before that lease could have expired",
							e.JobID, e.Attempt, e.Token, w, what, fmtMs(wf.AtMs), next.Attempt, next.Token, next.Worker, d))
					}
				case f.ResultToken >= e.Token && f.ResultExpired:
					t.cameBack++
					t.expired++ // the lease expired and the job ended (attempts exhausted)
				case f.ResultToken > e.Token:
					t.cameBack++ // leased again; that lease was never run (expired too)
				case judge && IsTerminal(f.State):
					v.add(e.JobID, fmt.Sprintf("%s attempt %d (token %d) ran on %s, %s at %s: the job is %s with token %d and never came back",
						e.JobID, e.Attempt, e.Token, w, what, fmtMs(wf.AtMs), f.State, f.ResultToken))
				}
			}
		}
	}
	r := v.result(9, name, checked)
	sort.Strings(kinds)
	var notes []string
	for _, k := range kinds {
		t := tallies[k]
		kind, sig, _ := strings.Cut(k, "/")
		s := fmt.Sprintf("%s (%s): %d faults, %d attempts running at the signal", kind, map[string]string{"kill": "SIGKILL", "stop": "SIGSTOP", "reset": "TCP reset", "": "node killed"}[sig], t.faults, t.running)
		if sig == "" || sig == "reset" {
			s += fmt.Sprintf(": %d completed with their original token after the reconnect, %d leased again", t.kept, t.reexec)
		} else {
			s += fmt.Sprintf(": %d completions accepted, %d came back (%d leased again, %d ended by the expiry), %d cancelled", t.accepted, t.cameBack, t.reexec, t.expired, t.cancelled)
		}
		if len(t.delays) > 0 {
			sort.Slice(t.delays, func(i, j int) bool { return t.delays[i] < t.delays[j] })
			s += fmt.Sprintf("; leased again %.1f / %.1f / %.1f s (min / median / max) after the signal",
				float64(t.delays[0])/1000, float64(t.delays[len(t.delays)/2])/1000, float64(t.delays[len(t.delays)-1])/1000)
		}
		if sig == "stop" && len(ev.WorkerFaults) > 0 {
			s += fmt.Sprintf(" (judged only when stopped for at least 2 TTLs + 1 s = %v)", 2*ttl+time.Second)
		}
		notes = append(notes, s)
	}
	if len(notes) == 0 {
		notes = append(notes, "no worker was killed or stopped")
	}
	r.Note = strings.Join(notes, "; ")
	return r
}

func fmtMs(ms int64) string { return time.UnixMilli(ms).UTC().Format("15:04:05.000") }
