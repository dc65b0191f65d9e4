package client

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// KindShell is the kind of command jobs (JobSpec.kind "" or "shell").
const KindShell = "shell"

// MaxOutput is how much of a job's output is kept: the server records the
// last 64 KiB, and the worker sends no more than that.
const MaxOutput = 64 << 10

// Causes given to a job's context (context.Cause) when the runtime stops it.
var (
	// ErrLeaseLost: the lease is lost (an extension was refused, or none
	// succeeded for a whole TTL). The job's outcome is not reported: the
	// cluster has given, or will give, the job to another worker.
	ErrLeaseLost = errors.New("client: lease lost")
	// ErrJobCancelled: the server cancelled the job (ServerCancel). Its
	// outcome is not reported.
	ErrJobCancelled = errors.New("client: job cancelled")
	// ErrDrainTimeout: the worker is stopping and the job was still running
	// at the drain deadline. The attempt is reported as a retryable failure.
	ErrDrainTimeout = errors.New("client: drain timeout")
)

// ErrNoRetry is matched (errors.Is) by every error made by NoRetry.
var ErrNoRetry = errors.New("client: no retry")

// NoRetryError marks a handler's error as final: the attempt fails and the
// job is not retried (Completion.retryable=false). Make one with NoRetry.
type NoRetryError struct{ Err error }

func (e *NoRetryError) Error() string        { return e.Err.Error() }
func (e *NoRetryError) Unwrap() error        { return e.Err }
func (e *NoRetryError) Is(target error) bool { return target == ErrNoRetry }

// NoRetry wraps err so that a handler returning it (or an error wrapping it)
// fails the attempt without a retry. NoRetry(nil) is nil.
func NoRetry(err error) error {
	if err == nil {
		return nil
	}
	return &NoRetryError{Err: err}
}

// Handler runs one attempt of a job. Returning nil reports success; an error
// reports a failed attempt that may be retried, unless it is (or wraps) a
// NoRetry error. A panic is a failed, retryable attempt. ctx is cancelled,
// with a cause (ErrLeaseLost, ErrJobCancelled, ErrDrainTimeout), when the
// runtime needs the job to stop; a handler should then return promptly.
type Handler func(ctx context.Context, job *Job) error

// Job is a leased job attempt, as a Handler sees it. Its accessors may be
// called from any goroutine; SetOutput and SetExitCode only by the handler,
// before it returns.
type Job struct {
	job   *hodeiv1.Job
	token uint64

	output   []byte
	exitCode int32

	lq  *logQueue              // the worker's log queue; nil: logs are discarded
	log atomic.Pointer[jobLog] // made on the first log write (worker_logs.go)

	// Runtime state, owned by the Worker (guarded by Worker.mu unless noted).
	h       Handler                 // immutable
	ctx     context.Context         // immutable; nil for a lease failed without running
	cancel  context.CancelCauseFunc // immutable
	expires time.Time               // local, conservative estimate of the lease's end
	extSent time.Time               // when the latest extension naming this lease was sent
	state   jobState
	gone    goneReason // the lease is lost or cancelled: report nothing
	noExt   bool       // an extension was refused after the job finished: stop extending
	compl   *hodeiv1.Completion
}

type jobState uint8

const (
	stRunning jobState = iota // queued to the pool or running
	stPending                 // completion queued for the current stream
	stSent                    // completion sent, no answer yet
	stRetry                   // completion refused as unavailable; re-sent after a pause
)

type goneReason uint8

const (
	notGone goneReason = iota
	goneLost
	goneCancelled
)

// ID returns the job's id.
func (j *Job) ID() string { return j.job.GetId() }

// Kind returns the job's kind; command jobs are KindShell.
func (j *Job) Kind() string { return jobKind(j.job) }

// Payload returns the job's payload (JobSpec.payload). Do not modify it.
func (j *Job) Payload() []byte { return j.job.GetSpec().GetPayload() }

// Tenant returns the job's tenant.
func (j *Job) Tenant() string { return j.job.GetSpec().GetTenant() }

// Attempt returns the number of this attempt (1 for the first lease).
func (j *Job) Attempt() int { return int(j.job.GetAttempts()) }

// Token returns the lease's fencing token.
func (j *Job) Token() uint64 { return j.token }

// Spec returns the job's spec. Do not modify it.
func (j *Job) Spec() *hodeiv1.JobSpec { return j.job.GetSpec() }

// Proto returns the leased job. Do not modify it.
func (j *Job) Proto() *hodeiv1.Job { return j.job }

// SetOutput sets the output recorded with the attempt's result. Only the last
// MaxOutput bytes are kept (the slice is kept, not copied: do not modify it).
func (j *Job) SetOutput(b []byte) {
	if len(b) > MaxOutput {
		b = b[len(b)-MaxOutput:]
	}
	j.output = b
}

// SetExitCode sets the exit code recorded with the attempt's result.
func (j *Job) SetExitCode(code int) { j.exitCode = int32(code) }

func jobKind(j *hodeiv1.Job) string {
	if k := j.GetSpec().GetKind(); k != "" {
		return k
	}
	return KindShell
}

// validJobKind reports whether kind is a valid job kind: 1..128 bytes of
// [A-Za-z0-9._:/-] (the server's rule).
func validJobKind(kind string) bool {
	if kind == "" || len(kind) > 128 {
		return false
	}
	for i := 0; i < len(kind); i++ {
		c := kind[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == ':' || c == '/' || c == '-':
		default:
			return false
		}
	}
	return true
}

// handlerPanic is a recovered handler panic.
type handlerPanic struct {
	value any
	stack []byte
}

func (p *handlerPanic) Error() string { return fmt.Sprintf("panic: %v\n\n%s", p.value, p.stack) }

// call runs the handler, turning a panic into a *handlerPanic.
func (j *Job) call() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &handlerPanic{value: r, stack: debug.Stack()}
		}
	}()
	return j.h(j.ctx, j)
}

// completion builds the report of a finished attempt. Nothing is formatted
// for a success.
func (j *Job) completion(workerID string, err error, started, finished time.Time) *hodeiv1.Completion {
	res := &hodeiv1.JobResult{
		ExitCode:     j.exitCode,
		Output:       j.output,
		WorkerId:     workerID,
		StartedAtMs:  started.UnixMilli(),
		FinishedAtMs: finished.UnixMilli(),
	}
	c := &hodeiv1.Completion{JobId: j.job.GetId(), Token: j.token, Success: err == nil, Result: res}
	if err == nil {
		return c
	}
	c.Retryable = !errors.Is(err, ErrNoRetry)
	msg := err.Error()
	var pe *handlerPanic
	if errors.As(err, &pe) {
		c.Retryable = true
		out := make([]byte, 0, len(j.output)+1+len(msg))
		out = append(out, j.output...)
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		out = append(out, msg...)
		if len(out) > MaxOutput {
			out = out[len(out)-MaxOutput:]
		}
		res.Output = out
	} else if cause := context.Cause(j.ctx); cause != nil && !errors.Is(err, cause) {
		// Say why the context ended: "context canceled (client: drain timeout)".
		msg += " (" + cause.Error() + ")"
	}
	if len(msg) > MaxOutput {
		msg = msg[:MaxOutput]
	}
	res.Error = msg
	return c
}

// rejectedCompletion builds the report of a lease failed without running it.
func rejectedCompletion(j *hodeiv1.Job, token uint64, workerID, why string) *hodeiv1.Completion {
	now := time.Now().UnixMilli()
	return &hodeiv1.Completion{
		JobId:     j.GetId(),
		Token:     token,
		Retryable: true,
		Result:    &hodeiv1.JobResult{ExitCode: -1, Error: why, WorkerId: workerID, StartedAtMs: now, FinishedAtMs: now},
	}
}
