package chaos

import (
	"bytes"
	"errors"
	"io"
	"os"
	"time"
)

// runningJobs returns up to limit jobs that the exec log shows running in
// workers at wall-clock time atMs.
func (f *Faults) runningJobs(workers []string, atMs int64, limit int) []JobRef {
	execs, err := tailExecLog(f.cfg.ExecLog, 4<<20)
	if err != nil {
		return nil
	}
	in := map[string]bool{}
	for _, w := range workers {
		in[w] = true
	}
	var out []JobRef
	for _, e := range execs {
		if in[e.Worker] && e.AtMs <= atMs && e.AtMs+max(e.PlannedMs, 0) > atMs && e.Key != "" && len(out) < limit {
			out = append(out, JobRef{Key: JobKey{e.Tenant, e.Key}, ID: e.JobID})
		}
	}
	return out
}

// busiestWorker returns the running, unpaused worker with the most jobs
// running now according to the tail of the exec log (started in the last
// 10 s and not yet past their planned time), and that count.
func (f *Faults) busiestWorker() (*Proc, int) {
	running := map[string]int{}
	if execs, err := tailExecLog(f.cfg.ExecLog, 1<<20); err == nil {
		now := time.Now().UnixMilli()
		for _, e := range execs {
			if e.AtMs >= now-10_000 && e.AtMs+max(e.PlannedMs, 0) > now {
				running[e.Worker]++
			}
		}
	}
	var best *Proc
	for _, w := range f.c.Workers {
		if !w.Running() || w.Paused() {
			continue
		}
		if best == nil || running[w.Name] > running[best.Name] {
			best = w
		}
	}
	if best == nil {
		best = f.c.Workers[f.rng.IntN(len(f.c.Workers))]
	}
	return best, running[best.Name]
}

// tailExecLog parses the last size bytes of an exec log (the first, maybe
// partial, line dropped).
func tailExecLog(path string, size int64) ([]Exec, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	off := max(st.Size()-size, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := fh.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if off > 0 {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	execs, _, err := ParseExecLog(bytes.NewReader(buf))
	return execs, err
}
