package chaos

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// RateWindow is acknowledged throughput over a window: jobs whose submit
// was acknowledged (one Op per job, batches included), by return time.
type RateWindow struct {
	From     time.Duration `json:"from_ns"`
	To       time.Duration `json:"to_ns"`
	OKOps    int           `json:"ok_jobs"`
	OKPerSec float64       `json:"ok_jobs_per_sec"`
}

// FaultRecovery is the recovery figures of one fault.
type FaultRecovery struct {
	FaultEvent
	// WritesResumedAfter: from the fault to the return of the first
	// acknowledged submit invoked after it (-1: none before the next fault).
	WritesResumedAfter time.Duration `json:"writes_resumed_after_ns"`
	// LongestWriteGap: the longest time without any acknowledged submit,
	// from the fault to 10s after its heal.
	LongestWriteGap time.Duration `json:"longest_write_gap_ns"`
	Before          RateWindow    `json:"before"`
	During          RateWindow    `json:"during"`
	After           RateWindow    `json:"after"`
}

// Report is the result of a run.
type Report struct {
	Seed       int64         `json:"seed"`
	Faults     string        `json:"faults"`
	Nodes      int           `json:"nodes"`
	Workers    int           `json:"workers"`
	Clients    int           `json:"clients"`
	Network    string        `json:"network"` // netns or loopback
	Duration   time.Duration `json:"duration_ns"`
	TargetRate float64       `json:"target_rate"` // offered jobs/s (--rate)
	// Offered: jobs whose first submit was invoked, per second, over the
	// warm-up window (what the clients really offered).
	Offered     RateWindow      `json:"offered"`
	Warmup      RateWindow      `json:"warmup"`       // acknowledged jobs/s before the first fault
	RateReached bool            `json:"rate_reached"` // warmup acknowledged jobs/s >= 90% of target
	Ops         map[string]int  `json:"ops"`          // kind/outcome -> count
	Events      []FaultRecovery `json:"faults_injected"`
	Overall     struct {
		Before RateWindow `json:"before_first_fault"`
		During RateWindow `json:"during_faults"`
		After  RateWindow `json:"after_last_heal"`
	} `json:"overall"`
	Drain       DrainResult         `json:"drain"`
	Check       CheckResult         `json:"check"`
	Schedules   []*ScheduleEvidence `json:"schedules,omitempty"`
	Notes       []string            `json:"notes,omitempty"`
	Error       string              `json:"error,omitempty"`
	RunDir      string              `json:"run_dir"`
	StartedAt   time.Time           `json:"started_at"`
	CheckTimeNs int64               `json:"check_time_ns"`
}

// Passed reports whether the run found no violation and did not error.
func (r *Report) Passed() bool { return r.Error == "" && r.Check.OK }

func okRate(ops []Op, from, to time.Duration) RateWindow {
	w := RateWindow{From: from, To: to}
	for _, op := range ops {
		if op.Outcome == OK && op.Return >= from && op.Return < to && op.Kind == OpSubmit && op.Client >= 0 {
			w.OKOps++
		}
	}
	if d := (to - from).Seconds(); d > 0 {
		w.OKPerSec = float64(w.OKOps) / d
	}
	return w
}

// offeredRate counts the jobs whose first submit was invoked in [from, to).
func offeredRate(ops []Op, from, to time.Duration) RateWindow {
	w := RateWindow{From: from, To: to}
	seen := map[JobKey]bool{}
	for _, op := range ops { // ordered by invocation
		if op.Kind != OpSubmit || op.Client < 0 || seen[op.Job] {
			continue
		}
		seen[op.Job] = true
		if op.Invoke >= from && op.Invoke < to {
			w.OKOps++
		}
	}
	if d := (to - from).Seconds(); d > 0 {
		w.OKPerSec = float64(w.OKOps) / d
	}
	return w
}

// okSubmitReturns returns the sorted return times of acknowledged submits.
func okSubmitReturns(ops []Op) []time.Duration {
	var out []time.Duration
	for _, op := range ops {
		if op.Kind == OpSubmit && op.Outcome == OK {
			out = append(out, op.Return)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Recovery computes the per-fault and overall figures.
func Recovery(ops []Op, events []FaultEvent, end time.Duration) ([]FaultRecovery, RateWindow, RateWindow, RateWindow) {
	rets := okSubmitReturns(ops)
	var out []FaultRecovery
	for i, ev := range events {
		fr := FaultRecovery{FaultEvent: ev, WritesResumedAfter: -1}
		next := end
		if i+1 < len(events) {
			next = events[i+1].Start
		}
		for _, op := range ops {
			if op.Kind == OpSubmit && op.Outcome == OK && op.Invoke >= ev.Start && op.Return < next {
				if d := op.Return - ev.Start; fr.WritesResumedAfter < 0 || d < fr.WritesResumedAfter {
					fr.WritesResumedAfter = d
				}
			}
		}
		winEnd := min(ev.Heal+10*time.Second, next)
		prev := ev.Start
		for _, r := range rets {
			if r < ev.Start {
				continue
			}
			if r > winEnd {
				break
			}
			fr.LongestWriteGap = max(fr.LongestWriteGap, r-prev)
			prev = r
		}
		fr.LongestWriteGap = max(fr.LongestWriteGap, winEnd-prev)
		fr.Before = okRate(ops, max(0, ev.Start-10*time.Second), ev.Start)
		fr.During = okRate(ops, ev.Start, max(ev.Heal, ev.Start+time.Millisecond))
		fr.After = okRate(ops, ev.Heal, winEnd)
		out = append(out, fr)
	}
	var before, during, after RateWindow
	if len(events) > 0 {
		before = okRate(ops, 0, events[0].Start)
		during = okRate(ops, events[0].Start, events[len(events)-1].Heal)
		after = okRate(ops, events[len(events)-1].Heal, end)
	} else {
		before = okRate(ops, 0, end)
	}
	return out, before, during, after
}

// WriteSummary writes the readable summary.
func (r *Report) WriteSummary(w io.Writer) {
	verdict := "PASS"
	if !r.Passed() {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "hodei chaos: %s  (seed %d, faults %s, %d nodes, %d workers, %d clients, network %s, %v)\n",
		verdict, r.Seed, r.Faults, r.Nodes, r.Workers, r.Clients, r.Network, r.Duration.Round(time.Second))
	if r.Error != "" {
		fmt.Fprintf(w, "error: %s\n", r.Error)
	}
	reached := "yes"
	if !r.RateReached {
		reached = "NO (the run does not count as a full-load run)"
	}
	fmt.Fprintf(w, "workload: target %.0f jobs/s, offered %.1f jobs/s, %.1f acknowledged jobs/s before the first fault: reached: %s\n",
		r.TargetRate, r.Offered.OKPerSec, r.Warmup.OKPerSec, reached)
	keys := make([]string, 0, len(r.Ops))
	for k := range r.Ops {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Ops[k]))
	}
	fmt.Fprintf(w, "ops: %s\n", strings.Join(parts, " "))
	fmt.Fprintf(w, "acknowledged jobs/s: before faults %.1f, during %.1f, after heal %.1f\n",
		r.Overall.Before.OKPerSec, r.Overall.During.OKPerSec, r.Overall.After.OKPerSec)
	fmt.Fprintf(w, "faults (%d):\n", len(r.Events))
	for _, e := range r.Events {
		res := "never"
		if e.WritesResumedAfter >= 0 {
			res = e.WritesResumedAfter.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "  %7.1fs %-18s %-22s held %6.1fs  writes resumed after %-8s longest write gap %-8s acked jobs/s %.0f/%.0f/%.0f %s\n",
			e.Start.Seconds(), e.Kind, e.Target, (e.Heal - e.Start).Seconds(), res,
			e.LongestWriteGap.Round(time.Millisecond), e.Before.OKPerSec, e.During.OKPerSec, e.After.OKPerSec, e.Err)
		if e.Detail != "" && len(e.Workers) > 0 {
			fmt.Fprintf(w, "           %s\n", e.Detail)
		}
	}
	c := r.Check.Counts
	fmt.Fprintf(w, "jobs: acknowledged %d, lost %d, executed %d (%d executions, %d with a lease token), executed more than once %d (+%d extra executions, same lease twice %d), unknown submits that exist %d\n",
		c.AcknowledgedJobs, c.LostJobs, c.JobsExecuted, c.Executions, c.FencingChecked, c.JobsExecutedTwice, c.ExtraExecutions, c.SameLeaseTwice, c.UnknownSubmitsSeen)
	fmt.Fprintf(w, "duplicates: %d planned retries (jobs built to fail attempt 1), %d jobs re-executed beyond plan (+%d executions: at-least-once after lost leases)\n",
		c.PlannedRetries, c.UnplannedJobs, c.UnplannedExtra)
	fmt.Fprintf(w, "drain: drained=%v in %v (bound %v), final write ok=%v\n",
		r.Drain.Drained, r.Drain.DrainTime.Round(time.Millisecond), r.Drain.Bound, r.Drain.FinalWriteOK)
	if d := r.Drain; d.ListErrors > 0 {
		fmt.Fprintf(w, "  %d drain polls could not list the jobs; last error: %s\n", d.ListErrors, d.LastListErr)
	}
	if d := r.Drain; len(d.StuckJobs) > 0 && (!d.Drained || d.DrainTime > d.Bound) {
		rel := func(ms int64) string {
			if ms == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1fs", float64(ms-d.StartWallMs)/1000)
		}
		fmt.Fprintf(w, "  last jobs not terminal (run time; heal at %.1fs):\n", d.HealedAt.Seconds())
		for _, j := range d.StuckJobs {
			fmt.Fprintf(w, "    %s %s attempts %d created %s updated %s ready %s lease %s until %s\n", j.ID, j.State, j.Attempts,
				rel(j.CreatedAtMs), rel(j.UpdatedAtMs), rel(j.ReadyAtMs), j.LeaseWorker, rel(j.LeaseExpiresMs))
			for _, e := range d.StuckExecs[j.ID] {
				fmt.Fprintf(w, "      ran: %s\n", e)
			}
		}
	}
	l := r.Check.Linearizability
	fmt.Fprintf(w, "porcupine: %d jobs: Ok %d, Illegal %d, Unknown %d\n", l.Jobs, l.Ok, l.Illegal, l.Unknown)
	fmt.Fprintln(w, "invariants:")
	for _, inv := range r.Check.Invariants {
		mark := "ok  "
		if !inv.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %d. %s: checked %d, violations %d", mark, inv.ID, inv.Name, inv.Checked, inv.Violations)
		if inv.Note != "" {
			fmt.Fprintf(w, " (%s)", inv.Note)
		}
		fmt.Fprintln(w)
		if !inv.OK {
			fmt.Fprintf(w, "       jobs: %s\n", strings.Join(inv.JobIDs, " "))
			for i, d := range inv.Details {
				if i == 10 {
					fmt.Fprintf(w, "       ... (%d more in report.json)\n", len(inv.Details)-10)
					break
				}
				fmt.Fprintf(w, "       %s\n", d)
			}
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	fmt.Fprintf(w, "run dir: %s\n", r.RunDir)
}
