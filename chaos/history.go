package chaos

import (
	"sort"
	"sync"
	"time"
)

// Outcome is what a client learnt from one operation.
type Outcome string

const (
	// OK: the operation took effect (or, for a read, returned an answer).
	OK Outcome = "ok"
	// Fail: the operation definitely did not take effect.
	Fail Outcome = "fail"
	// Unknown: the operation may or may not have taken effect (timeout,
	// connection lost, leader changed while it was in flight).
	Unknown Outcome = "unknown"
)

// OpKind names the kinds of operations the workload records.
type OpKind string

const (
	OpSubmit    OpKind = "submit"     // single or batch submit, one Op per job spec
	OpGet       OpKind = "get"        // linearizable read of one job
	OpGetStale  OpKind = "get_stale"  // stale read served by any replica
	OpCancel    OpKind = "cancel"     // cancel of one job
	OpFinalRead OpKind = "final_read" // the checker's read of every job after heal and drain
)

// Job states as short strings, the way they appear in the history and report.
const (
	StNone      = ""
	StPending   = "PENDING"
	StRunning   = "RUNNING"
	StSucceeded = "SUCCEEDED"
	StFailed    = "FAILED"
	StCancelled = "CANCELLED"
	StDead      = "DEAD" // issue 11: out of attempts in an entry of version 4 (checked as FAILED)
)

// IsTerminal reports whether st is a terminal state.
func IsTerminal(st string) bool {
	return st == StSucceeded || st == StFailed || st == StCancelled || st == StDead
}

// JobKey identifies a job the way its submitter does: ids may be unknown
// (an unknown outcome, or an ack that carried no id), keys never are.
type JobKey struct {
	Tenant string `json:"tenant"`
	Key    string `json:"key"`
}

func (k JobKey) String() string { return k.Tenant + "/" + k.Key }

// Op is one recorded operation: invoked at Invoke, answered at Return (both
// measured from the start of the run on a monotonic clock).
type Op struct {
	Seq     int64         `json:"seq"`
	Client  int           `json:"client"`
	Kind    OpKind        `json:"kind"`
	Batch   int           `json:"batch,omitempty"` // jobs in the batch submit this op belongs to (0 = single)
	Job     JobKey        `json:"job"`
	JobID   string        `json:"job_id,omitempty"`
	Invoke  time.Duration `json:"invoke_ns"`
	Return  time.Duration `json:"return_ns"`
	Outcome Outcome       `json:"outcome"`
	Code    string        `json:"code,omitempty"` // gRPC code of an error
	Err     string        `json:"err,omitempty"`
	Node    string        `json:"node,omitempty"`

	// What the answer said about the job (reads, submits, cancels).
	Found         bool   `json:"found,omitempty"`
	State         string `json:"state,omitempty"`
	Attempts      int32  `json:"attempts,omitempty"`
	ResultToken   uint64 `json:"result_token,omitempty"`   // lease token of the accepted completion
	ResultAttempt int32  `json:"result_attempt,omitempty"` // attempt of the accepted completion
	// ResultExpired: that result is the server's record of a lease expiry,
	// not a completion.
	ResultExpired bool `json:"result_expired,omitempty"`
	Duplicate     bool `json:"duplicate,omitempty"`
}

// History records operations from many goroutines. The zero value is not
// usable; use NewHistory.
type History struct {
	start time.Time
	mu    sync.Mutex
	seq   int64
	ops   []Op
}

// NewHistory starts a history whose times are measured from start.
func NewHistory(start time.Time) *History { return &History{start: start} }

// Now is the time since the start of the history (monotonic).
func (h *History) Now() time.Duration { return time.Since(h.start) }

// Start returns the wall-clock start of the history.
func (h *History) Start() time.Time { return h.start }

// Add records a completed operation and returns its sequence number.
func (h *History) Add(op Op) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	op.Seq = h.seq
	h.ops = append(h.ops, op)
	return op.Seq
}

// Ops returns a copy of the recorded operations ordered by invocation time.
func (h *History) Ops() []Op {
	h.mu.Lock()
	out := append([]Op(nil), h.ops...)
	h.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Invoke < out[j].Invoke })
	return out
}
