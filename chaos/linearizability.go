package chaos

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// The per-job model checked by porcupine.
//
// A job is a small register whose value is (exists, state, attempts). Clients
// submit it, read it and cancel it; workers lease and complete it without the
// harness seeing when, so those are modelled as spontaneous forward moves
// that a later observation reveals: from PENDING or RUNNING a job may be seen
// in any state with at least as many attempts; a terminal job must be seen
// exactly as it was. Operations with an unknown outcome may or may not have
// taken effect (the model is nondeterministic there).

type linInput struct {
	kind OpKind
}

type linOutput struct {
	outcome  Outcome
	code     string
	found    bool
	state    string
	attempts int32
}

// linState is comparable so porcupine can cache and merge states.
type linState struct {
	exists   bool
	state    string // StNone, active states, terminal states, or "TERMINAL" (some terminal state)
	attempts int32
	exact    bool // attempts known exactly (terminal states only)
}

const stSomeTerminal = "TERMINAL"

// reach reports whether a job in s can be observed as (st, att) later.
func reach(s linState, st string, att int32) bool {
	if !s.exists {
		return false
	}
	switch s.state {
	case StPending, StRunning:
		return att >= s.attempts
	case stSomeTerminal:
		return IsTerminal(st) && att >= s.attempts
	default: // a terminal state
		if st != s.state {
			return false
		}
		if s.exact {
			return att == s.attempts
		}
		return att >= s.attempts
	}
}

func observed(st string, att int32) linState {
	return linState{exists: true, state: st, attempts: att, exact: true}
}

func linStep(state, input, output interface{}) []interface{} {
	s := state.(linState)
	in := input.(linInput)
	out := output.(linOutput)
	switch in.kind {
	case OpSubmit:
		switch out.outcome {
		case OK:
			if !s.exists {
				// a fresh job: any state reachable from PENDING/0
				return []interface{}{observed(out.state, out.attempts)}
			}
			if reach(s, out.state, out.attempts) {
				return []interface{}{observed(out.state, out.attempts)}
			}
			return nil
		case Unknown:
			if !s.exists {
				return []interface{}{s, linState{exists: true, state: StPending}}
			}
			return []interface{}{s}
		default: // a definite failure changes nothing
			return []interface{}{s}
		}
	case OpGet, OpFinalRead:
		if !out.found {
			if s.exists {
				return nil
			}
			return []interface{}{s}
		}
		if reach(s, out.state, out.attempts) {
			return []interface{}{observed(out.state, out.attempts)}
		}
		return nil
	case OpCancel:
		switch out.outcome {
		case OK:
			if !s.exists {
				return nil
			}
			if out.state == StCancelled {
				switch s.state {
				case StPending, StRunning, stSomeTerminal:
					if out.attempts >= s.attempts {
						return []interface{}{observed(StCancelled, out.attempts)}
					}
					return nil
				}
			}
			if reach(s, out.state, out.attempts) {
				return []interface{}{observed(out.state, out.attempts)}
			}
			return nil
		case Fail:
			switch out.code {
			case "NotFound":
				if s.exists {
					return nil
				}
				return []interface{}{s}
			case "FailedPrecondition": // already terminal
				if !s.exists {
					return nil
				}
				if s.state == StPending || s.state == StRunning {
					return []interface{}{linState{exists: true, state: stSomeTerminal, attempts: s.attempts}}
				}
				return []interface{}{s}
			}
			return []interface{}{s}
		default: // unknown: cancelled or not
			if s.exists && (s.state == StPending || s.state == StRunning) {
				return []interface{}{s, linState{exists: true, state: StCancelled, attempts: s.attempts}}
			}
			return []interface{}{s}
		}
	}
	return []interface{}{s}
}

var jobModel = (&porcupine.NondeterministicModel{
	Init: func() []interface{} { return []interface{}{linState{}} },
	Step: linStep,
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(linInput), output.(linOutput)
		return fmt.Sprintf("%s -> %s %s found=%v %s/%d", in.kind, out.outcome, out.code, out.found, out.state, out.attempts)
	},
}).ToModel()

// linearizable reports whether op belongs in the porcupine history.
func linOps(op Op) (porcupine.Operation, bool) {
	ret := int64(op.Return)
	switch op.Kind {
	case OpSubmit:
		if op.Outcome == Unknown {
			ret = 1 << 62 // may take effect at any time after its invocation
		}
	case OpGet:
		if op.Outcome != OK {
			return porcupine.Operation{}, false // a failed read tells nothing
		}
	case OpCancel:
		if op.Outcome == Unknown {
			ret = 1 << 62
		}
	case OpFinalRead:
		if op.Outcome != OK {
			return porcupine.Operation{}, false
		}
	default:
		return porcupine.Operation{}, false
	}
	return porcupine.Operation{
		ClientId: op.Client,
		Input:    linInput{kind: op.Kind},
		Call:     int64(op.Invoke),
		Output:   linOutput{outcome: op.Outcome, code: op.Code, found: op.Found, state: op.State, attempts: op.Attempts},
		Return:   ret,
	}, true
}

// sequential checks a history in which no two operations overlap in time
// (each returns before the next is invoked: the only order there is) by
// stepping the model through it; ok=false with applicable=true means
// Illegal. Most jobs of a 1,000 jobs/s run have just an acknowledged submit
// and the final read, and this spares porcupine's search (and its goroutine
// and timer per call) for them. Histories with overlapping operations
// (concurrent reads, unknown outcomes: their return is open) go to
// porcupine.
func sequential(ops []porcupine.Operation) (ok, applicable bool) {
	sorted := append([]porcupine.Operation(nil), ops...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })
	for i := 1; i < len(sorted); i++ {
		if sorted[i-1].Return >= sorted[i].Call {
			return false, false
		}
	}
	states := []linState{{}}
	for _, op := range sorted {
		var next []linState
		for _, st := range states {
			for _, n := range linStep(st, op.Input, op.Output) {
				ns := n.(linState)
				if !slices.Contains(next, ns) {
					next = append(next, ns)
				}
			}
		}
		if len(next) == 0 {
			return false, true
		}
		states = next
	}
	return true, true
}

// CheckLinearizable checks each job's history separately (a partition per
// job keeps porcupine's search small) with a time limit per job and in
// total. Jobs whose check times out are Unknown. Histories without
// overlapping operations are checked by stepping the model (sequential).
func CheckLinearizable(ops []Op, perJob, total time.Duration) LinResult {
	if perJob <= 0 {
		perJob = 10 * time.Second
	}
	if total <= 0 {
		total = 2 * time.Minute
	}
	byJob := map[JobKey][]porcupine.Operation{}
	label := map[JobKey]string{}
	for _, op := range ops {
		if op.Job.Key == "" {
			continue
		}
		if op.JobID != "" {
			label[op.Job] = op.JobID
		}
		if po, ok := linOps(op); ok {
			byJob[op.Job] = append(byJob[op.Job], po)
		}
	}
	keys := make([]JobKey, 0, len(byJob))
	for k := range byJob {
		keys = append(keys, k)
	}
	sortKeys(keys)

	ctx, cancel := context.WithTimeout(context.Background(), total)
	defer cancel()
	results := make([]porcupine.CheckResult, len(keys))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if ok, applicable := sequential(byJob[keys[i]]); applicable {
					results[i] = porcupine.Illegal
					if ok {
						results[i] = porcupine.Ok
					}
					continue
				}
				if ctx.Err() != nil {
					results[i] = porcupine.Unknown
					continue
				}
				results[i] = porcupine.CheckOperationsTimeout(jobModel, byJob[keys[i]], perJob)
			}
		}()
	}
	for i := range keys {
		next <- i
	}
	close(next)
	wg.Wait()

	var r LinResult
	r.Jobs = len(keys)
	for i, k := range keys {
		name := label[k]
		if name == "" {
			name = k.String()
		}
		switch results[i] {
		case porcupine.Ok:
			r.Ok++
		case porcupine.Illegal:
			r.Illegal++
			if len(r.IllegalJobs) < maxListed {
				r.IllegalJobs = append(r.IllegalJobs, name)
			}
		default:
			r.Unknown++
			if len(r.UnknownJobs) < maxListed {
				r.UnknownJobs = append(r.UnknownJobs, name)
			}
		}
	}
	sort.Strings(r.IllegalJobs)
	sort.Strings(r.UnknownJobs)
	return r
}
