package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// MaxOutput is how much of a job's combined stdout/stderr is kept: the last 64 KiB.
const MaxOutput = 64 << 10

// Executor runs one attempt of a job. Run must return when ctx is cancelled
// (lease lost, worker stopping), having stopped everything it started.
type Executor interface {
	Run(ctx context.Context, job *hodeiv1.Job) Result
}

// LogExecutor is an Executor that can also stream the output live: stdout
// and stderr receive the process's output as it is written (ShellHandler
// passes the job's live log writers, client.Job.Stdout and Stderr).
type LogExecutor interface {
	Executor
	RunLogged(ctx context.Context, job *hodeiv1.Job, stdout, stderr io.Writer) Result
}

// Result is the outcome of one attempt.
type Result struct {
	ExitCode  int32
	Output    []byte // tail of the combined output
	Err       string // executor error: spawn failure, timeout, killed
	Retryable bool   // on failure: may the job be tried again
	Started   time.Time
	Finished  time.Time
}

// Success reports whether the attempt succeeded: exit 0 and no executor error.
func (r Result) Success() bool { return r.ExitCode == 0 && r.Err == "" }

// ShellExecutor runs a job's command as a process: argv as given, or with
// spec.shell through "/bin/sh -c command[0]". The process gets its own
// process group, and the whole group is killed on timeout or cancellation.
type ShellExecutor struct {
	// Shell runs shell jobs; default "/bin/sh".
	Shell string
	// MaxOutput bounds the kept output tail; default MaxOutput (64 KiB).
	MaxOutput int
	// WaitDelay bounds how long to wait for output pipes after the process
	// exits or is killed (a daemonised grandchild may hold them); default 2s.
	WaitDelay time.Duration
}

// Run implements Executor.
func (e *ShellExecutor) Run(ctx context.Context, job *hodeiv1.Job) Result {
	return e.RunLogged(ctx, job, nil, nil)
}

// RunLogged implements LogExecutor: like Run, and the output also goes to
// stdout and stderr (nil: not streamed) as the process writes it.
func (e *ShellExecutor) RunLogged(ctx context.Context, job *hodeiv1.Job, stdout, stderr io.Writer) Result {
	spec := job.GetSpec()
	res := Result{Started: time.Now()}
	fail := func(msg string, retryable bool) Result {
		res.ExitCode, res.Err, res.Retryable, res.Finished = -1, msg, retryable, time.Now()
		return res
	}
	argv := spec.GetCommand()
	if len(argv) == 0 || argv[0] == "" {
		return fail("empty command", false)
	}
	if spec.GetShell() {
		shell := e.Shell
		if shell == "" {
			shell = "/bin/sh"
		}
		argv = []string{shell, "-c", argv[0]}
	}

	runCtx := ctx
	var timeout time.Duration
	if ms := spec.GetTimeoutMs(); ms > 0 {
		timeout = time.Duration(ms) * time.Millisecond
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	out := newRing(cmp(e.MaxOutput, MaxOutput))
	cmd := exec.CommandContext(runCtx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), jobEnv(job)...)
	for _, kv := range spec.GetEnv() {
		cmd.Env = append(cmd.Env, kv.GetKey()+"="+kv.GetValue())
	}
	if stdout == nil || stderr == nil {
		cmd.Stdout, cmd.Stderr = out, out // same writer: one pipe, ordered output
	} else {
		// Two pipes, so that the live log tells the streams apart; the
		// tail interleaves them in the order the copies arrive.
		cmd.Stdout, cmd.Stderr = io.MultiWriter(out, stdout), io.MultiWriter(out, stderr)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// Kill the whole process group, not just the direct child.
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return cmd.Process.Kill()
		}
		return nil
	}
	cmd.WaitDelay = cmp(e.WaitDelay, 2*time.Second)

	if err := cmd.Start(); err != nil {
		if ctx.Err() != nil {
			return fail("killed before start: "+context.Cause(ctx).Error(), true)
		}
		return fail("spawn: "+err.Error(), false)
	}
	err := cmd.Wait()
	// Make sure nothing of the group survives, even on a normal exit
	// (background children of a shell job).
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	res.Finished = time.Now()
	res.Output = out.Bytes()
	if cmd.ProcessState != nil {
		res.ExitCode = int32(cmd.ProcessState.ExitCode())
	} else {
		res.ExitCode = -1
	}

	switch {
	case ctx.Err() != nil:
		res.Err = "killed: " + context.Cause(ctx).Error()
		res.Retryable = true
		if res.ExitCode == 0 {
			res.ExitCode = -1
		}
	case timeout > 0 && runCtx.Err() != nil:
		res.Err = fmt.Sprintf("timeout after %v", timeout)
		res.Retryable = true
		if res.ExitCode == 0 {
			res.ExitCode = -1
		}
	case err != nil && !isExitError(err):
		// Waiting failed beyond a non-zero exit (e.g. WaitDelay expired
		// with the pipes still held open).
		res.Err = err.Error()
		res.Retryable = true
	case res.ExitCode != 0:
		res.Retryable = true
	}
	return res
}

func isExitError(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee)
}

// cmp returns v if positive, else def.
func cmp[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// ring is an io.Writer keeping the last len(buf) bytes written to it.
type ring struct {
	mu    sync.Mutex
	buf   []byte
	pos   int  // next write position
	full  bool // buf has wrapped at least once
	total int64
}

func newRing(size int) *ring { return &ring{buf: make([]byte, size)} }

func (r *ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	r.total += int64(n)
	if len(p) >= len(r.buf) {
		copy(r.buf, p[len(p)-len(r.buf):])
		r.pos, r.full = 0, true
		return n, nil
	}
	c := copy(r.buf[r.pos:], p)
	if c < len(p) {
		copy(r.buf, p[c:])
		r.full = true
	}
	r.pos = (r.pos + len(p)) % len(r.buf)
	if r.pos == 0 && len(p) > 0 {
		r.full = true
	}
	return n, nil
}

// Bytes returns a copy of the kept tail, oldest byte first.
func (r *ring) Bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return append([]byte(nil), r.buf[:r.pos]...)
	}
	out := make([]byte, 0, len(r.buf))
	out = append(out, r.buf[r.pos:]...)
	return append(out, r.buf[:r.pos]...)
}

// jobEnv is what every job sees about itself (the job's own env wins on a clash).
func jobEnv(job *hodeiv1.Job) []string {
	return []string{
		"HODEI_JOB_ID=" + job.GetId(),
		"HODEI_TENANT=" + job.GetSpec().GetTenant(),
		fmt.Sprintf("HODEI_LEASE_TOKEN=%d", job.GetLeaseToken()),
		fmt.Sprintf("HODEI_ATTEMPT=%d", job.GetAttempts()),
		"HODEI_WORKER_ID=" + job.GetLeaseWorker(),
	}
}
