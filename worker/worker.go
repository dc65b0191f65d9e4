// Package worker is the Hodei worker agent (`hodei worker`): a
// client.Worker, the SDK's runtime over the worker stream, with the shell
// executor registered as the handler of command jobs (kind "shell").
//
// The runtime does the protocol: credit for free slots, leases pushed by
// the node, batched completions, lease extensions every TTL/3, reconnection
// to the next node, and a graceful drain on shutdown (see client.Worker).
// This package adds what runs a command: argv or /bin/sh -c, the job's
// environment, its timeout, the kill of the whole process group when the
// job must stop (lease lost, cancelled, drain deadline), and the last 64 KiB
// of output. The exit code and output go into the attempt's result; a
// non-zero exit or an executor error is a failed attempt, and an invalid
// command (empty, or one that cannot be started) fails without a retry.
package worker

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"github.com/hodei-io/hodei/client"
)

// Defaults of Config: those of client.WorkerConfig, which owns them.
const (
	DefaultConcurrency  = client.DefaultWorkerConcurrency
	DefaultLeaseTTL     = client.DefaultLeaseTTL
	DefaultDrainTimeout = client.DefaultDrainTimeout
)

// Causes given to a running job's context; see the client package.
var (
	ErrLeaseLost    = client.ErrLeaseLost
	ErrJobCancelled = client.ErrJobCancelled
	ErrDrainTimeout = client.ErrDrainTimeout
)

// Config configures a Worker. Zero values mean the defaults.
type Config struct {
	Client       *client.Client
	ID           string // default hostname-pid-random
	Concurrency  int    // jobs run at once; default 4
	Labels       map[string]string
	LeaseTTL     time.Duration // default 30s; leases are extended every TTL/3
	DrainTimeout time.Duration // on shutdown, how long running jobs may still run; default 30s
	Logger       *slog.Logger
	// Executor runs command jobs; default &ShellExecutor{}.
	Executor Executor

	// PollWait is ignored: the worker stream pushes work as slots free up.
	//
	// Deprecated: kept so that existing callers compile.
	PollWait time.Duration
}

// runtimeConfig is the client.WorkerConfig that cfg describes.
func (c Config) runtimeConfig() client.WorkerConfig {
	return client.WorkerConfig{
		ID:           c.ID,
		Concurrency:  c.Concurrency,
		Labels:       c.Labels,
		LeaseTTL:     c.LeaseTTL,
		DrainTimeout: c.DrainTimeout,
		Logger:       c.Logger,
	}
}

// Validate checks cfg without changing it.
func (c Config) Validate() error {
	if c.Client == nil {
		return errors.New("worker: no client")
	}
	return c.runtimeConfig().Validate()
}

// Stats are the worker's counters since it was created.
type Stats = client.WorkerStats

// Worker is the worker agent. Create it with New and run it with Run.
type Worker struct {
	w *client.Worker
}

// New validates cfg and returns a Worker that runs command jobs with
// cfg.Executor.
func New(cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w, err := client.NewWorker(cfg.Client, cfg.runtimeConfig())
	if err != nil {
		return nil, err
	}
	exec := cfg.Executor
	if exec == nil {
		exec = &ShellExecutor{}
	}
	w.Handle(client.KindShell, ShellHandler(exec))
	return &Worker{w: w}, nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.w.ID() }

// Handle registers a handler for another kind of job, before Run (see
// client.Worker.Handle). Command jobs are already handled.
func (w *Worker) Handle(kind string, h client.Handler) { w.w.Handle(kind, h) }

// Stats returns the worker's counters.
func (w *Worker) Stats() Stats { return w.w.Stats() }

// Run runs jobs until ctx is done, then drains (see client.Worker.Run).
func (w *Worker) Run(ctx context.Context) error { return w.w.Run(ctx) }

// ShellHandler returns a handler running command jobs with e: the exit code
// and output go into the result; a non-zero exit or an executor error fails
// the attempt, without a retry when the executor says it cannot succeed.
func ShellHandler(e Executor) client.Handler {
	return func(ctx context.Context, job *client.Job) error {
		var res Result
		if le, ok := e.(LogExecutor); ok {
			res = le.RunLogged(ctx, job.Proto(), job.Stdout(), job.Stderr())
		} else {
			res = e.Run(ctx, job.Proto())
		}
		job.SetExitCode(int(res.ExitCode))
		job.SetOutput(res.Output)
		if res.Success() {
			return nil
		}
		err := &execError{msg: res.Err}
		if err.msg == "" {
			err.msg = "exit status " + strconv.Itoa(int(res.ExitCode))
		}
		if ctx.Err() != nil {
			// The message already says why (killed: <cause>).
			err.cause = context.Cause(ctx)
		}
		if !res.Retryable {
			return client.NoRetry(err)
		}
		return err
	}
}

// execError is a failed execution; it wraps the context's cause when the
// job was stopped.
type execError struct {
	msg   string
	cause error
}

func (e *execError) Error() string { return e.msg }
func (e *execError) Unwrap() error { return e.cause }
