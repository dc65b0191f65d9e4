package pipeline

import "github.com/hodei-io/hodei/proto/hodeiv1"

// Counts are a step's parents' outcomes so far. The FSM keeps them per
// step and adds one parent's outcome when it ends, so deciding is O(1) per
// finished parent whatever the fan-in. A cancelled parent counts as
// Failed; a parent that was skipped counts as Skipped.
type Counts struct {
	Parents   int32 // parents in all
	Succeeded int32
	Failed    int32 // failed (DEAD or FAILED job) or cancelled
	Skipped   int32
}

// Done is the number of parents that ended.
func (c Counts) Done() int32 { return c.Succeeded + c.Failed + c.Skipped }

// Decision is what a step's trigger rule says about it now.
type Decision int

const (
	// Wait: the rule is not decided yet; more parents must end.
	Wait Decision = iota
	// Run: release the step as a job.
	Run
	// Skip: the rule can no longer be satisfied; the step is SKIPPED.
	Skip
)

func (d Decision) String() string {
	switch d {
	case Run:
		return "run"
	case Skip:
		return "skip"
	}
	return "wait"
}

// Decide applies a trigger rule to a step's parent outcomes. The rules
// follow Airflow's of the same names:
//
//   - all_success (default): run when every parent succeeded; skip as soon
//     as one failed or was skipped.
//   - all_done: run when every parent ended, whatever the outcome.
//   - one_success: run as soon as one parent succeeded (not waiting for
//     the others); skip when all ended and none succeeded.
//   - one_failed: run as soon as one parent failed; skip when all ended and
//     none failed.
//   - none_failed: run when every parent ended and none failed (each
//     succeeded or was skipped); skip as soon as one failed.
//
// A step without parents runs at once, whatever its rule. The decision is
// final once it is Run or Skip: later outcomes of other parents do not
// change it (the FSM decides each step at most once per run).
func Decide(rule hodeiv1.TriggerRule, c Counts) Decision {
	if c.Parents == 0 {
		return Run
	}
	all := c.Done() >= c.Parents
	switch rule {
	case hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE:
		if all {
			return Run
		}
	case hodeiv1.TriggerRule_TRIGGER_RULE_ONE_SUCCESS:
		if c.Succeeded > 0 {
			return Run
		}
		if all {
			return Skip
		}
	case hodeiv1.TriggerRule_TRIGGER_RULE_ONE_FAILED:
		if c.Failed > 0 {
			return Run
		}
		if all {
			return Skip
		}
	case hodeiv1.TriggerRule_TRIGGER_RULE_NONE_FAILED:
		if c.Failed > 0 {
			return Skip
		}
		if all {
			return Run
		}
	default: // ALL_SUCCESS and UNSPECIFIED
		if c.Failed > 0 || c.Skipped > 0 {
			return Skip
		}
		if c.Succeeded >= c.Parents {
			return Run
		}
	}
	return Wait
}
