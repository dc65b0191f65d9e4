package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hodei-io/hodei/client"
)

// ExecKind is the kind of the harness's handler jobs. `hodei worker` runs
// them only when started with the hidden, test-only --test-exec-log flag
// (the harness does so); they cost no process per job, which is what lets a
// 2-core machine offer 1,000 jobs/s while the cluster runs beside it.
const ExecKind = "chaos.exec"

// ExecPayload is what a handler job asks its handler to do: record its
// execution, wait Sleep, and fail its first attempt when FailFirst.
type ExecPayload struct {
	Sleep     time.Duration
	FailFirst bool
}

// Encode renders p as the job's payload ("ms=<n>" and ",fail1").
func (p ExecPayload) Encode() []byte {
	s := "ms=" + strconv.FormatInt(p.Sleep.Milliseconds(), 10)
	if p.FailFirst {
		s += ",fail1"
	}
	return []byte(s)
}

// ParseExecPayload parses what Encode wrote.
func ParseExecPayload(b []byte) (ExecPayload, error) {
	var p ExecPayload
	for _, f := range strings.Split(string(b), ",") {
		switch {
		case strings.HasPrefix(f, "ms="):
			ms, err := strconv.ParseInt(f[3:], 10, 64)
			if err != nil || ms < 0 {
				return p, fmt.Errorf("chaos payload %q: bad ms", b)
			}
			p.Sleep = time.Duration(ms) * time.Millisecond
		case f == "fail1":
			p.FailFirst = true
		case f == "":
		default:
			return p, fmt.Errorf("chaos payload %q: unknown field %q", b, f)
		}
	}
	return p, nil
}

// errPlannedFailure is the planned failure of a FailFirst job's first attempt.
var errPlannedFailure = errors.New("chaos: planned failure of the first attempt")

// ExecHandler returns the handler of ExecKind jobs: it appends the same
// execution line a shell job writes (FormatExecLine: job id, lease token,
// attempt, worker, tenant, key, start ms, planned ms) to execLog in one
// O_APPEND write (the worker is the lease's holder as the node sent it,
// like the shell executor's HODEI_WORKER_ID), then waits the planned time (returning early with the
// context's cause when the runtime stops the job), and fails a FailFirst
// job's first attempt. close closes the file.
func ExecHandler(execLog string) (h client.Handler, close func() error, err error) {
	f, err := os.OpenFile(execLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err != nil {
		return nil, nil, err
	}
	var bufs sync.Pool
	h = func(ctx context.Context, job *client.Job) error {
		p, err := ParseExecPayload(job.Payload())
		if err != nil {
			return client.NoRetry(err)
		}
		spec := job.Spec()
		bp, _ := bufs.Get().(*[]byte)
		if bp == nil {
			b := make([]byte, 0, 160)
			bp = &b
		}
		worker := job.Proto().GetLeaseWorker() // what the shell executor exports as HODEI_WORKER_ID
		if worker == "" {
			worker = "?"
		}
		line := appendExecLine((*bp)[:0], job.ID(), job.Token(), int32(job.Attempt()), worker,
			spec.GetTenant(), spec.GetIdempotencyKey(), time.Now().UnixMilli(), p.Sleep.Milliseconds())
		_, werr := f.Write(line) // one write: atomic with O_APPEND
		*bp = line
		bufs.Put(bp)
		if werr != nil {
			return fmt.Errorf("chaos: exec log: %w", werr)
		}
		if p.Sleep > 0 {
			t := time.NewTimer(p.Sleep)
			select {
			case <-ctx.Done():
				t.Stop()
				return context.Cause(ctx)
			case <-t.C:
			}
		}
		if p.FailFirst && job.Attempt() < 2 {
			return errPlannedFailure
		}
		return nil
	}
	return h, f.Close, nil
}

// appendExecLine appends one exec-log line (see ParseExecLog).
func appendExecLine(b []byte, id string, token uint64, attempt int32, worker, tenant, key string, startMs, plannedMs int64) []byte {
	b = append(b, id...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, token, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(attempt), 10)
	b = append(b, ' ')
	b = append(b, worker...)
	b = append(b, ' ')
	b = append(b, tenant...)
	b = append(b, ' ')
	b = append(b, key...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, startMs, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, plannedMs, 10)
	return append(b, '\n')
}
