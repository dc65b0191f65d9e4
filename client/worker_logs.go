package client

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Live logs (issue 11). A handler writes its output lines with Job.Stdout,
// Job.Stderr or Job.Logf; the runtime cuts them into lines (at most
// MaxLogLine bytes: a longer line is cut into pieces), numbers them per
// attempt (seq 1, 2, ...), queues them and the stream's sender sends every
// queued line in WorkerLogs messages ahead of the round's completions, so a
// job's last lines reach the node before its completion. Writing never
// blocks the job: when the queue is full (LogQueueBytes) or the send rate
// is over LogRate, lines are dropped and the next line that fits is
// preceded by a marker line "[n bytes dropped]". Lines sent on a stream
// that breaks are lost (the result's output tail still has the end).

const (
	// MaxLogLine is the longest log line sent (the server's limit).
	MaxLogLine = 16 << 10
	// DefaultLogQueueBytes bounds the lines a worker holds unsent.
	DefaultLogQueueBytes = 1 << 20
	// DefaultLogRate is the most log bytes per second a worker sends.
	DefaultLogRate = 4 << 20

	logMsgBytes = 256 << 10 // data per WorkerLogs message
	logMsgLines = 4096      // lines per WorkerLogs message
	logLineCost = 64        // queue accounting per line besides its data
)

// logQueue holds a worker's unsent lines, in the order they were written.
type logQueue struct {
	max  int
	rate float64 // bytes/s; 0 = unlimited

	mu      sync.Mutex
	lines   []*hodeiv1.LogLine
	bytes   int
	tokens  float64
	last    time.Time
	waiting atomic.Bool // lines are queued
	wake    func()
}

func newLogQueue(max, rate int, wake func()) *logQueue {
	return &logQueue{max: max, rate: float64(rate), tokens: float64(rate), wake: wake}
}

// push queues l unless the queue is full; false: dropped.
func (q *logQueue) push(l *hodeiv1.LogLine) bool {
	cost := len(l.Data) + logLineCost
	q.mu.Lock()
	if q.bytes+cost > q.max {
		q.mu.Unlock()
		return false
	}
	first := len(q.lines) == 0
	q.lines = append(q.lines, l)
	q.bytes += cost
	q.mu.Unlock()
	if first {
		q.waiting.Store(true)
		q.wake()
	}
	return true
}

// take returns the lines the rate allows now, oldest first, and how long to
// wait before the rest may go (0: nothing left).
func (q *logQueue) take(now time.Time) ([]*hodeiv1.LogLine, time.Duration) {
	if !q.waiting.Load() {
		return nil, 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.rate > 0 {
		if !q.last.IsZero() {
			q.tokens = min(q.tokens+now.Sub(q.last).Seconds()*q.rate, q.rate)
		}
		q.last = now
	}
	n, size := 0, 0
	for n < len(q.lines) {
		c := len(q.lines[n].Data) + logLineCost
		if q.rate > 0 && float64(size+c) > q.tokens {
			break
		}
		size += c
		n++
	}
	out := append([]*hodeiv1.LogLine(nil), q.lines[:n]...)
	clear(q.lines[:n])
	q.lines = q.lines[n:]
	q.bytes -= size
	if q.rate > 0 {
		q.tokens -= float64(size)
	}
	if len(q.lines) == 0 {
		q.lines = nil
		q.waiting.Store(false)
		return out, 0
	}
	need := float64(len(q.lines[0].Data)+logLineCost) - q.tokens
	return out, time.Duration(need/q.rate*float64(time.Second)) + time.Millisecond // rounding up
}

// jobLog is one attempt's log writer state (made on the first write).
type jobLog struct {
	q       *logQueue
	jobID   string
	token   uint64
	attempt int32
	mu      sync.Mutex
	seq     uint64
	partial [3][]byte // by LogStream: a line not ended yet
	dropped int64     // bytes dropped since the last line sent
}

// emit queues one line (data is copied), preceded by a drop marker when
// lines were dropped before it.
func (l *jobLog) emit(stream hodeiv1.LogStream, data []byte) {
	now := time.Now().UnixMilli()
	if l.dropped > 0 {
		msg := fmt.Sprintf("[%d bytes dropped]", l.dropped)
		m := &hodeiv1.LogLine{JobId: l.jobID, Token: l.token, Seq: l.seq + 1, Stream: hodeiv1.LogStream_LOG_STREAM_STDERR,
			Data: []byte(msg), TimeMs: now, DroppedBytes: l.dropped, Attempt: l.attempt}
		if !l.q.push(m) {
			l.dropped += int64(len(data)) + 1
			return
		}
		l.seq++
		l.dropped = 0
	}
	line := &hodeiv1.LogLine{JobId: l.jobID, Token: l.token, Seq: l.seq + 1, Stream: stream,
		Data: bytes.Clone(data), TimeMs: now, Attempt: l.attempt}
	if !l.q.push(line) {
		l.dropped += int64(len(data)) + 1
		return
	}
	l.seq++
}

func (l *jobLog) write(stream hodeiv1.LogStream, p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	buf := l.partial[stream]
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			buf = append(buf, p...)
			for len(buf) >= MaxLogLine {
				l.emit(stream, buf[:MaxLogLine])
				buf = append(buf[:0], buf[MaxLogLine:]...)
			}
			break
		}
		part := p[:i]
		p = p[i+1:]
		if len(buf) > 0 {
			buf = append(buf, part...)
			part, buf = buf, buf[:0]
		}
		for len(part) > MaxLogLine {
			l.emit(stream, part[:MaxLogLine])
			part = part[MaxLogLine:]
		}
		l.emit(stream, part)
	}
	l.partial[stream] = buf
}

// flush sends the unfinished lines and a last drop marker.
func (l *jobLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.partial {
		if len(l.partial[s]) > 0 {
			l.emit(hodeiv1.LogStream(s), l.partial[s])
			l.partial[s] = nil
		}
	}
	if l.dropped > 0 {
		d := l.dropped
		m := &hodeiv1.LogLine{JobId: l.jobID, Token: l.token, Seq: l.seq + 1, Stream: hodeiv1.LogStream_LOG_STREAM_STDERR,
			Data: []byte(fmt.Sprintf("[%d bytes dropped]", d)), TimeMs: time.Now().UnixMilli(), DroppedBytes: d, Attempt: l.attempt}
		if l.q.push(m) {
			l.seq++
			l.dropped = 0
		}
	}
}

type logWriter struct {
	j      *Job
	stream hodeiv1.LogStream
}

func (w logWriter) Write(p []byte) (int, error) {
	if l := w.j.logger(); l != nil {
		l.write(w.stream, p)
	}
	return len(p), nil
}

// logger returns the attempt's log state, made on first use; nil when the
// job has no stream to log to (a Job made outside a Worker).
func (j *Job) logger() *jobLog {
	if j.lq == nil {
		return nil
	}
	if l := j.log.Load(); l != nil {
		return l
	}
	j.log.CompareAndSwap(nil, &jobLog{q: j.lq, jobID: j.job.GetId(), token: j.token, attempt: j.job.GetAttempts()})
	return j.log.Load()
}

// Stdout returns a writer for the job's standard output log: lines written
// to it are streamed live to the node (`hodei job logs ID --follow`). It
// never blocks and never fails; lines over the worker's bounds are dropped
// with a "[n bytes dropped]" marker. Writes from several goroutines are
// kept whole per Write call. The output recorded in the result is set
// separately (SetOutput).
func (j *Job) Stdout() io.Writer { return logWriter{j: j, stream: hodeiv1.LogStream_LOG_STREAM_STDOUT} }

// Stderr is Stdout for the standard error log.
func (j *Job) Stderr() io.Writer { return logWriter{j: j, stream: hodeiv1.LogStream_LOG_STREAM_STDERR} }

// Logf writes one line to the job's standard output log.
func (j *Job) Logf(format string, args ...any) {
	if l := j.logger(); l != nil {
		s := fmt.Sprintf(format, args...)
		if len(s) == 0 || s[len(s)-1] != '\n' {
			s += "\n"
		}
		l.write(hodeiv1.LogStream_LOG_STREAM_STDOUT, []byte(s))
	}
}

// flushLog sends what the handler left unfinished (called when it returns).
func (j *Job) flushLog() {
	if l := j.log.Load(); l != nil {
		l.flush()
	}
}

// sendLogs sends lines in WorkerLogs messages of bounded size.
func sendLogs(st hodeiv1.WorkerService_ConnectClient, lines []*hodeiv1.LogLine) error {
	for len(lines) > 0 {
		n, size := 0, 0
		for n < len(lines) && n < logMsgLines && (n == 0 || size < logMsgBytes) {
			size += len(lines[n].Data) + logLineCost
			n++
		}
		if err := st.Send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Logs{Logs: &hodeiv1.WorkerLogs{Lines: lines[:n]}}}); err != nil {
			return err
		}
		lines = lines[n:]
	}
	return nil
}
